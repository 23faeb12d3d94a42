from __future__ import annotations

from typing import Any

import pytest

from jobbatch.api import JobBatchSpec
from jobbatch.payloads import PayloadError, count_lines, encode_jsonl, parse_jsonl, prepare

SCHEMA = {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}}


def spec(payloads: dict[str, Any], **kw: Any) -> JobBatchSpec:
    return JobBatchSpec.model_validate(
        {"template": {"spec": {"containers": [{"name": "w", "image": "i"}]}}, "payloads": payloads, **kw}
    )


def test_inline_items_become_json_lines() -> None:
    items = prepare(spec({"items": [{"url": "a"}, 2, "x"]}))
    assert items.count == 3
    assert items.snapshot == '{"url":"a"}\n2\n"x"\n'


def test_count_source_has_no_file() -> None:
    assert prepare(spec({"count": 100_000})).snapshot is None


def test_configmap_lines_are_parsed_and_blank_lines_skipped() -> None:
    s = spec({"configMap": {"name": "cm", "key": "data"}})
    items = prepare(s, {"data": '{"url": "a"}\n\n{"url": "b"}\n'})
    assert items.count == 2
    assert parse_jsonl(items.snapshot or "", "x") == [{"url": "a"}, {"url": "b"}]


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


# -- untrusted schemas: bounded, nothing fetched, nothing of the data in messages --------------------
@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"$ref": "#"}, "refers to itself without end"),
        ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "refers to itself without end"),
        ({"$schema": {}}, "$schema must be a string"),
        ({"$ref": "http://127.0.0.1:9/schema.json"}, "does not resolve inside it"),
        ({"$ref": "file:///etc/passwd"}, "does not resolve inside it"),
        ({"allOf": [{"type": "string", "maxLength": 9}] * 5000}, "is over 65536 bytes"),
    ],
)
def test_hostile_schemas_are_invalid_not_crashes(schema: dict[str, Any], says: str) -> None:
    with pytest.raises(PayloadError) as exc:
        prepare(spec({"items": ["x"]}, payloadSchema=schema))
    assert exc.value.reason == "InvalidPayloadSchema"
    assert says in exc.value.message


def test_deeply_nested_schema_is_invalid() -> None:
    schema: dict[str, Any] = {}
    for _ in range(5000):
        schema = {"not": schema}
    with pytest.raises(PayloadError) as exc:
        prepare(spec({"items": ["x"]}, payloadSchema=schema))
    assert exc.value.reason == "InvalidPayloadSchema"


def test_a_remote_ref_is_never_fetched() -> None:
    import http.server
    import threading

    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"type": "integer"}')

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/schema.json"
        with pytest.raises(PayloadError, match="references to URLs or files are not fetched"):
            prepare(spec({"items": [1]}, payloadSchema={"$ref": url}))
    finally:
        server.shutdown()
        server.server_close()
    assert requests == []


def test_messages_never_quote_configmap_data() -> None:
    secret = "hunter2-very-secret"
    source = spec({"configMap": {"name": "cm", "key": "d"}}, payloadSchema={"type": "integer"})
    with pytest.raises(PayloadError) as exc:
        prepare(source, {"d": f'"{secret}"\n'})
    assert secret not in exc.value.message
    assert exc.value.message.startswith("an item does not match payloadSchema (which one, and why, is not shown")
    # Property names come from the data too: not shown for a ConfigMap source.
    keyed = spec({"configMap": {"name": "cm", "key": "d"}}, payloadSchema={"additionalProperties": {"type": "null"}})
    with pytest.raises(PayloadError) as exc:
        prepare(keyed, {"d": f'{{"{secret}": 1}}\n'})
    assert secret not in exc.value.message


def test_messages_are_bounded() -> None:
    with pytest.raises(PayloadError) as exc:
        prepare(spec({"items": ["x"]}, payloadSchema={"enum": ["y" * 10_000]}))
    assert len(exc.value.message) <= 512
    assert "y" * 100 not in exc.value.message


def test_too_many_items_to_validate() -> None:
    with pytest.raises(PayloadError) as exc:
        prepare(spec({"count": 10_000_000}, payloadSchema={"type": "integer"}))
    assert exc.value.reason == "TooManyItemsToValidate"
    # Without a schema nothing is checked item by item, so any count is fine.
    assert prepare(spec({"count": 10_000_000})).count == 10_000_000


def test_payload_error_crosses_processes() -> None:
    import pickle

    again = pickle.loads(pickle.dumps(PayloadError("Why", "what")))
    assert (again.reason, again.message) == ("Why", "what")


def test_a_crafted_schema_cannot_spell_out_a_configmap() -> None:
    """Found by review: per-character `if` rules put the data into the failing rule's schema path."""
    secret = "s3cr3t"
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    rules = [{"if": {"pattern": f"^.{{{k}}}{c}"}, "then": {"not": {}}} for k in range(len(secret)) for c in alphabet]
    source = spec({"configMap": {"name": "cm", "key": "d"}}, payloadSchema={"type": "string", "allOf": rules})
    with pytest.raises(PayloadError) as exc:
        prepare(source, {"d": f'"{secret}"\n"other"\n'})
    assert "allOf" not in exc.value.message
    assert not any(ch.isdigit() for ch in exc.value.message)  # no index, no path


def test_line_separators_inside_strings_are_not_line_ends() -> None:
    """Found by review: U+2028 and friends are written raw; only "\\n" ends an item."""
    items = ["a\u2028b", "c\x85d", "e\x1cf"]
    jsonl = encode_jsonl(items)
    assert count_lines(jsonl) == 3
    assert parse_jsonl(jsonl, "x") == items


def test_a_false_sub_schema_is_named_plainly() -> None:
    with pytest.raises(PayloadError) as exc:
        prepare(spec({"items": [{"a": 1}]}, payloadSchema={"properties": {"a": False}}))
    assert "it fails a false schema" in exc.value.message
    assert "None" not in exc.value.message
