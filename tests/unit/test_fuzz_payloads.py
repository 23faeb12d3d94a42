"""Fuzzed payloads and schemas: validation answers or refuses, boundedly, and never quotes the data."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobbatch.api import JobBatchSpec
from jobbatch.payloads import MAX_MESSAGE, Items, PayloadError, encode_jsonl, prepare
from tests.fuzz import json_values, schemas


def spec(payloads: dict[str, Any], schema: Any) -> JobBatchSpec:
    body = {"template": {"spec": {"containers": [{"name": "w", "image": "i"}]}}, "payloads": payloads}
    if isinstance(schema, dict):
        body["payloadSchema"] = schema
    return JobBatchSpec.model_validate(body)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    return []


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(json_values, min_size=1, max_size=5), schema=schemas)
def test_any_schema_over_any_items_is_accepted_or_refused_with_a_bounded_message(items: list[Any], schema: Any) -> None:
    for source, data in (({"items": items}, None), ({"configMap": {"name": "c", "key": "k"}}, encode_jsonl(items))):
        outcome = _prepare(spec(source, schema), {"k": data} if data is not None else None)
        if isinstance(outcome, PayloadError):
            assert outcome.reason
            assert len(outcome.message) <= MAX_MESSAGE
            json.dumps(outcome.message)  # a condition message: plain text
            if "configMap" in source:  # nothing of the data the batch's author may not read
                assert not any(s in outcome.message for s in _strings(items)), outcome.message
        else:
            assert outcome.count == len(items)


def _prepare(s: JobBatchSpec, data: dict[str, str] | None) -> Items | PayloadError:
    try:
        return prepare(s, data)
    except PayloadError as exc:  # anything else is a bug the fuzzer found
        return exc
