"""JSON Schemas for kubeconform, made from the OpenAPI document of the API server the tests run.

kubeconform's own schemas are downloaded from GitHub, which these machines cannot reach. The API
server publishes the same definitions (built-in kinds and every served CRD, the JobBatch one
included) at ``/openapi/v2``; this turns each kind into a standalone schema file at
``<dir>/<group>/<version>/<kind>.json`` (core kinds under ``<dir>/v1/v1``), which kubeconform reads with
``-schema-location '<dir>/{{ .Group }}/{{ .ResourceAPIVersion }}/{{ .ResourceKind }}.json'``.

The conversion follows openapi2jsonschema, which made kubeconform's upstream schemas: references
inlined, ``int-or-string`` and quantities as either type, optional fields nullable, and with
``strict`` every object closed to fields its schema does not name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LOCATION = "{{ .Group }}/{{ .ResourceAPIVersion }}/{{ .ResourceKind }}.json"

_EITHER = {
    "int-or-string": [{"type": "string"}, {"type": "integer"}],
    "quantity": [{"type": "string"}, {"type": "number"}],
}
_QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"


def write(openapi: dict[str, Any], directory: Path, *, strict: bool = True) -> int:
    """Write a schema per kind in ``openapi`` (a ``/openapi/v2`` document); return how many."""
    definitions: dict[str, Any] = openapi["definitions"]
    written = 0
    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            schema = _convert(definition, definitions, strict, seen=(name,))
            schema["$schema"] = "http://json-schema.org/schema#"
            # kubeconform's {{ .Group }} of a core kind (apiVersion "v1") is "v1", not "".
            group = gvk["group"] or gvk["version"]
            path = directory / group / gvk["version"] / f"{gvk['kind'].lower()}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(schema))
            written += 1
    return written


def _convert(node: Any, definitions: dict[str, Any], strict: bool, seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_convert(n, definitions, strict, seen) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name == _QUANTITY:
            return {"oneOf": _EITHER["quantity"]}
        if name in seen:  # a recursive type (a CRD's own validation schema): any value below this depth
            return {}
        target = _convert(definitions[name], definitions, strict, (*seen, name))
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    if node.get("format") in _EITHER or node.get("x-kubernetes-int-or-string"):
        either = _EITHER.get(node.get("format", ""), _EITHER["int-or-string"])
        return {k: v for k, v in node.items() if k not in ("type", "format")} | {"oneOf": either}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {field: _nullable(_convert(v, definitions, strict, seen)) for field, v in value.items()}
        elif key in ("items", "additionalProperties", "allOf", "anyOf", "oneOf", "not"):
            out[key] = _convert(value, definitions, strict, seen)
        else:
            out[key] = value
    closed = "properties" in out and "additionalProperties" not in out
    if strict and closed and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """A field may be null (Helm renders `key:` with no value as null; the API server drops it)."""
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    if "oneOf" in schema:
        return {**schema, "oneOf": [*schema["oneOf"], {"type": "null"}]}
    return schema
