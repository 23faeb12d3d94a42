"""Hypothesis strategies for hostile and broken input: JSON values, payload schemas, JobBatch specs.

Shared by the unit fuzz (payload validation in-process) and the integration fuzz (admission by the
API server, then acceptance by the operator). Data strings are upper case and schema strings lower
case, so a message quoting the data is told apart from one quoting the schema.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import strategies as st

from e2e.cluster import SIMULATED_PLACEMENT

DATA_TEXT = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=12, max_size=30)
SCHEMA_TEXT = st.text(alphabet="abcdefghij", min_size=1, max_size=12)

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | DATA_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(DATA_TEXT, inner, max_size=4),
    max_leaves=12,
)  # fmt: skip

_types = st.sampled_from(["string", "integer", "number", "object", "array", "boolean", "null", "nonsense"])
_refs = st.sampled_from(["#", "#/$defs/a", "#/definitions/missing", "http://127.0.0.1:9/x", "file:///etc/passwd", "a"])
_patterns = st.one_of(SCHEMA_TEXT.map(re.escape), st.sampled_from(["(", "^[a-z]+$", "\\p{L}", "[", "a{99999}"]))
_numbers = st.one_of(st.integers(-(10**20), 10**20), st.floats(allow_nan=False), st.sampled_from([1e-320, 0, -1]))

schemas: st.SearchStrategy[Any] = st.recursive(
    st.fixed_dictionaries(
        {},
        optional={
            "type": _types | st.lists(_types, max_size=3),
            "pattern": _patterns,
            "minimum": _numbers,
            "multipleOf": _numbers,
            "minLength": _numbers,
            "enum": st.lists(SCHEMA_TEXT, max_size=3),
            "$ref": _refs,
            "$schema": st.sampled_from(["https://json-schema.org/draft/2020-12/schema", "x"]) | st.integers(),
            "format": st.sampled_from(["date", "email", "regex", "uri"]),
        },
    )
    | st.booleans(),
    lambda inner: st.fixed_dictionaries(
        {},
        optional={
            "items": inner,
            "properties": st.dictionaries(SCHEMA_TEXT, inner, max_size=3),
            "additionalProperties": inner,
            "allOf": st.lists(inner, max_size=3),
            "not": inner,
            "$defs": st.fixed_dictionaries({"a": inner}),
        },
    ),
    max_leaves=8,
)

_containers = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["worker", "worker", "Bad_Name", "w" * 70]),
        "image": st.sampled_from(["example.invalid/worker:1", "example.invalid/worker:1", ""]),
    }
)
# Pods of accepted batches must be simulated (kwok nodes), even in a cluster with a real node.
_templates = st.one_of(
    _containers.map(lambda c: {"spec": {**SIMULATED_PLACEMENT, "containers": [c]}}),
    _containers.map(
        lambda c: {
            "spec": {
                **SIMULATED_PLACEMENT,
                "containers": [c],
                "volumes": [{"name": "jobbatch-payloads", "emptyDir": {}}],
            }
        }
    ),
    st.sampled_from([{"spec": {"containers": []}}, {"spec": {}}, {}, {"spec": {"containers": "x"}}]),
)
_sources = st.one_of(
    st.lists(json_values, max_size=5).map(lambda items: {"items": items}),
    st.integers(-5, 20).map(lambda n: {"count": n}),
    st.sampled_from(
        [
            {"configMap": {"name": "fuzz", "key": "k"}},
            {"configMap": {"name": "fuzz", "key": "missing"}},
            {"configMap": {"name": "missing", "key": "k"}},
            {},
            {"count": 1, "items": [1]},
        ]
    ),
)
# JobBatch specs, many of them invalid: for the API server's admission, then the operator's acceptance.
batch_specs: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {"template": _templates, "payloads": _sources},
    optional={
        "payloadSchema": schemas,
        "shardSize": st.integers(-1, 5),
        "parallelism": st.integers(-1, 5),
        "retry": st.fixed_dictionaries(
            {},
            optional={"limit": st.integers(-1, 3), "nonRetryableExitCodes": st.lists(st.integers(-1, 300), max_size=3)},
        ),
        "priorityClassName": st.just("no-such-class"),
        "startAfter": st.sampled_from(["2020-01-01T00:00:00Z", "yesterday"]),
    },
)
