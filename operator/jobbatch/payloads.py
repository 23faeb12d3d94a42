"""Payload items: read from their source, validated, and encoded as the JSON Lines workers read.

Everything here is pure; fetching the ConfigMap is the reconciler's job. Errors
name the first bad item so users can fix their input.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import jsonschema

from jobbatch.api import JobBatchSpec
from jobbatch.manifests import MAX_PAYLOAD_BYTES


class PayloadError(ValueError):
    """Input the operator rejects; ``reason`` becomes the Accepted condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclasses.dataclass(frozen=True)
class Items:
    """Validated items: how many, and the JSON Lines snapshot (None for a ``count`` source)."""

    count: int
    jsonl: str | None


def parse_jsonl(text: str, where: str) -> list[Any]:
    """One JSON value per non-empty line."""
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise PayloadError("InvalidPayload", f"{where} line {lineno} is not JSON: {exc.msg}") from None
    return items


def encode_jsonl(items: Sequence[Any]) -> str:
    return "".join(json.dumps(item, separators=(",", ":"), ensure_ascii=False) + "\n" for item in items)


def validate(items: Sequence[Any], schema: dict[str, Any] | None) -> None:
    """Check every item against the JSON Schema; fail on the first bad one, naming its index."""
    if schema is None:
        return
    try:
        validator_cls = jsonschema.validators.validator_for(schema)
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise PayloadError("InvalidPayloadSchema", f"payloadSchema is not a valid JSON Schema: {exc.message}") from None
    validator = validator_cls(schema)
    for index, item in enumerate(items):
        error = jsonschema.exceptions.best_match(validator.iter_errors(item))
        if error is not None:
            path = "".join(f"[{p!r}]" for p in error.absolute_path)
            raise PayloadError(
                "PayloadSchemaViolation", f"item {index}{path} does not match payloadSchema: {error.message}"
            )


def prepare(spec: JobBatchSpec, configmap_data: dict[str, str] | None = None) -> Items:
    """Validated items of a spec. ``configmap_data`` is the referenced ConfigMap's data, if any."""
    source = spec.payloads
    if source.count is not None:
        if spec.payload_schema is not None:
            validate(range(source.count), spec.payload_schema)
        return Items(source.count, None)
    if source.items is not None:
        items = source.items
    else:
        assert source.config_map is not None
        ref = source.config_map
        if configmap_data is None or ref.key not in configmap_data:
            raise PayloadError("ConfigMapKeyNotFound", f'ConfigMap "{ref.name}" has no key "{ref.key}"')
        items = parse_jsonl(configmap_data[ref.key], f'ConfigMap "{ref.name}" key "{ref.key}"')
    validate(items, spec.payload_schema)
    jsonl = encode_jsonl(items)
    size = len(jsonl.encode())
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            "PayloadTooLarge",
            f"{len(items)} items take {size} bytes as JSON Lines, over the {MAX_PAYLOAD_BYTES}-byte limit of a "
            "ConfigMap; use payloads.count and let workers fetch their data",
        )
    return Items(len(items), jsonl)
