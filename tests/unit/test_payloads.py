from __future__ import annotations

from typing import Any

import pytest

from jobbatch.api import JobBatchSpec
from jobbatch.payloads import PayloadError, encode_jsonl, parse_jsonl, prepare

SCHEMA = {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}}


def spec(payloads: dict[str, Any], **kw: Any) -> JobBatchSpec:
    return JobBatchSpec.model_validate(
        {"template": {"spec": {"containers": [{"name": "w", "image": "i"}]}}, "payloads": payloads, **kw}
    )


def test_inline_items_become_json_lines() -> None:
    items = prepare(spec({"items": [{"url": "a"}, 2, "x"]}))
    assert items.count == 3
    assert items.jsonl == '{"url":"a"}\n2\n"x"\n'


def test_count_source_has_no_file() -> None:
    assert prepare(spec({"count": 100_000})).jsonl is None


def test_configmap_lines_are_parsed_and_blank_lines_skipped() -> None:
    s = spec({"configMap": {"name": "cm", "key": "data"}})
    items = prepare(s, {"data": '{"url": "a"}\n\n{"url": "b"}\n'})
    assert items.count == 2
    assert parse_jsonl(items.jsonl or "", "x") == [{"url": "a"}, {"url": "b"}]


def test_missing_configmap_key_is_named() -> None:
    with pytest.raises(PayloadError) as exc:
        prepare(spec({"configMap": {"name": "cm", "key": "data"}}), {"other": ""})
    assert exc.value.reason == "ConfigMapKeyNotFound"
    assert '"cm"' in exc.value.message


def test_bad_json_line_is_named() -> None:
    with pytest.raises(PayloadError, match="line 2 is not JSON") as exc:
        prepare(spec({"configMap": {"name": "cm", "key": "d"}}), {"d": '{"a": 1}\n{oops\n'})
    assert exc.value.reason == "InvalidPayload"


def test_schema_violation_names_the_item_index() -> None:
    with pytest.raises(PayloadError, match=r"item 2\['url'\] does not match payloadSchema") as exc:
        prepare(spec({"items": [{"url": "a"}, {"url": "b"}, {"url": 3}]}, payloadSchema=SCHEMA))
    assert exc.value.reason == "PayloadSchemaViolation"


def test_invalid_schema_is_reported() -> None:
    with pytest.raises(PayloadError) as exc:
        prepare(spec({"items": [1]}, payloadSchema={"type": 12}))
    assert exc.value.reason == "InvalidPayloadSchema"


def test_too_large_payload_is_rejected() -> None:
    with pytest.raises(PayloadError) as exc:
        prepare(spec({"items": ["x" * 1000] * 1100}))
    assert exc.value.reason == "PayloadTooLarge"


def test_round_trip() -> None:
    items = [{"a": [1, 2]}, None, "é"]
    assert parse_jsonl(encode_jsonl(items), "x") == items
