"""Payload items: read from their source, validated, and encoded as the JSON Lines workers read.

Everything here is pure; fetching the ConfigMap is the reconciler's job, and running ``prepare``
in a killable child process (``jobbatch.sandbox``) too: a user's schema is untrusted code in all
but name. What can be bounded here is: the schema's size, the items checked, ``$ref`` (only inside
the schema: nothing is fetched over the network or from files), and what a message may say.

For inline items, errors name the first bad item and the schema rule it breaks, never the item's
value. For a ConfigMap or object-storage source they give the verdict only: which item and which rule
fail depend on the data, and a user who may create JobBatches but not read a ConfigMap (or a bucket)
must not read it back through a condition or an Event.

An object-storage source is not copied: ``index_object`` streams it once (in the sandbox: the bytes
and the schema are the user's) and the snapshot holds its index, where each shard's records start.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import jsonschema
import referencing
import referencing.exceptions

from jobbatch import objectstore, records
from jobbatch.api import JobBatchSpec
from jobbatch.manifests import MAX_PAYLOAD_BYTES

MAX_SCHEMA_BYTES = 64 * 1024  # payloadSchema as compact JSON
# Items a schema is checked against (a count source's indices included); beyond it validation
# would take minutes of a core per batch.
MAX_VALIDATED_ITEMS = 1_000_000
MAX_MESSAGE = 512  # characters of a PayloadError message
INDEX_VERSION = 1  # of the object index a snapshot holds (jobbatch.worker reads it)
# Refusals that say nothing about the input itself: the acceptance is tried again later.
TRANSIENT_REASONS = frozenset({"PayloadObjectUnreachable", "PayloadObjectChanged"})
_MAX_SHOWN = 80  # characters of one quoted piece of a message (a path, a schema value)


class PayloadError(ValueError):
    """Input the operator rejects; ``reason`` becomes the Accepted condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        message = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[PayloadError], tuple[str, str]]:
        return PayloadError, (self.reason, self.message)  # it crosses from the sandbox's process


@dataclasses.dataclass(frozen=True)
class Items:
    """Validated items: how many, and the snapshot workers read (None for a ``count`` source): the items
    as JSON Lines, or for an object-storage source the object's index (JSON)."""

    count: int
    snapshot: str | None

    @property
    def digest(self) -> str | None:
        return digest(self.snapshot) if self.snapshot is not None else None


def digest(snapshot: str) -> str:
    return hashlib.sha256(snapshot.encode()).hexdigest()


def parse_jsonl(text: str, where: str) -> list[Any]:
    """One JSON value per non-empty line."""
    items = []
    # Lines end at "\n" only: str.splitlines also splits at U+2028, U+0085 and others, which
    # encode_jsonl writes as they are inside strings.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise PayloadError("InvalidPayload", f"{where} line {lineno} is not JSON: {exc.msg}") from None
    return items


def count_lines(jsonl: str) -> int:
    """Items in a JSON Lines text (non-empty lines, split as ``parse_jsonl`` splits them)."""
    return sum(1 for line in jsonl.split("\n") if line.strip())


def encode_jsonl(items: Sequence[Any]) -> str:
    return "".join(json.dumps(item, separators=(",", ":"), ensure_ascii=False) + "\n" for item in items)


def _refuse_retrieval(uri: str) -> referencing.Resource[Any]:
    # Remote refs would make the operator fetch any URL (or file) a tenant names.
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


_LOCAL_ONLY: referencing.Registry[Any] = referencing.Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _short(value: Any) -> str:
    return _clip(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str))


class _Unknown:
    """What ``validator_for`` answers for a ``$schema`` it does not know (instead of warning)."""


def _rule(error: jsonschema.ValidationError) -> str:
    if not error.validator:  # a `false` schema (nothing matches it): jsonschema gives no keyword
        return "a false schema"
    return f"{error.validator} {_short(error.validator_value)}"


def _invalid_schema(message: str) -> PayloadError:
    return PayloadError("InvalidPayloadSchema", f"payloadSchema {message}")


def validate(
    items: Sequence[Any], schema: dict[str, Any] | None, *, show_paths: bool = True, source: str = "a configMap"
) -> None:
    """Check every item against the JSON Schema; fail on the first bad one, naming its index and rule.

    ``show_paths``: name the item, the part of it and the rule that fail (all depend on the data, so
    not for data the batch's author may not be allowed to read: then only the verdict is given).
    """
    if schema is None:
        return
    validator = _validator(schema, len(items))
    for index, item in enumerate(items):
        _check(validator, index, item, show_paths=show_paths, source=source)


def _too_many(count: int | None) -> PayloadError:
    items = f"{count} items are" if count is not None else "there are more items than"
    return PayloadError(
        "TooManyItemsToValidate",
        f"payloadSchema is checked item by item, and {items} over the limit of "
        f"{MAX_VALIDATED_ITEMS}; drop payloadSchema and let workers check their own items",
    )


def _validator(schema: dict[str, Any], count: int | None) -> Any:
    """A validator of ``schema``, once the schema itself passed every check (and ``count`` items may be)."""
    try:
        size = len(json.dumps(schema, separators=(",", ":")))
    except RecursionError:
        raise _invalid_schema("is nested too deeply") from None
    if size > MAX_SCHEMA_BYTES:
        raise _invalid_schema(f"is over {MAX_SCHEMA_BYTES} bytes as JSON")
    if count is not None and count > MAX_VALIDATED_ITEMS:
        raise _too_many(count)
    dialect = schema.get("$schema")
    if dialect is not None and not isinstance(dialect, str):
        raise _invalid_schema("$schema must be a string (a dialect URI)")
    if dialect is not None and jsonschema.validators.validator_for(schema, default=_Unknown) is _Unknown:  # type: ignore[arg-type,comparison-overlap]
        raise _invalid_schema(f"$schema names no JSON Schema dialect this operator knows: {_short(dialect)}")
    try:
        validator_cls = jsonschema.validators.validator_for(schema)
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise _invalid_schema(f"is not a valid JSON Schema: {exc.message}") from None
    except RecursionError:
        raise _invalid_schema("is nested too deeply") from None
    return validator_cls(schema, registry=_LOCAL_ONLY)


def _check(validator: Any, index: int, item: Any, *, show_paths: bool, source: str) -> None:
    """Fail on ``item`` (item ``index``) if it breaks the schema."""
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(item))
    except RecursionError:
        raise _invalid_schema("refers to itself without end (a $ref cycle)") from None
    except referencing.exceptions.Unresolvable as exc:
        raise _invalid_schema(
            f"has a $ref that does not resolve inside it ({_short(str(exc.ref))}); "
            "references to URLs or files are not fetched"
        ) from None
    if error is not None and not show_paths:
        # Which item fails, and which rule (its schema path), depend on the data: a crafted schema
        # would spell a ConfigMap out through them. Only the verdict is given.
        raise PayloadError(
            "PayloadSchemaViolation",
            f"an item does not match payloadSchema (which one, and why, is not shown for {source} "
            "source; check the items against the schema where the data can be read)",
        )
    if error is not None:
        where = "".join(f"[{p!r}]" for p in error.absolute_path)
        rule = "/".join(str(p) for p in error.absolute_schema_path)
        raise PayloadError(
            "PayloadSchemaViolation",
            f"item {index}{_clip(where)} does not match payloadSchema: it fails {_rule(error)} (schema path /{rule})",
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
    validate(items, spec.payload_schema, show_paths=source.items is not None)
    jsonl = encode_jsonl(items)
    size = len(jsonl.encode())
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            "PayloadTooLarge",
            f"{len(items)} items take {size} bytes as JSON Lines, over the {MAX_PAYLOAD_BYTES}-byte limit of a "
            "ConfigMap; use payloads.count and let workers fetch their data",
        )
    return Items(len(items), jsonl)


def index_object(spec: JobBatchSpec, credentials: objectstore.Credentials, chunk: int = 1 << 20) -> Items:
    """Stream an object-storage source once: count its records, note each shard's first byte, and check
    every record against payloadSchema. Memory: one ``chunk`` and one record, whatever the size.

    The index is of one version of the object (its ETag): every range is read ``If-Match`` it, and so
    are the workers' reads, so no shard ever reads bytes of another version.
    """
    src = spec.payloads.object_store
    assert src is not None
    where = f"object {src.bucket}/{src.key}"
    store = objectstore.ObjectStore(src.endpoint, credentials, src.region, refuse_local=True)
    indexer = records.Indexer(src.format, spec.shard_size)
    validator = _validator(spec.payload_schema, None) if spec.payload_schema is not None else None
    max_shards = 0  # that an index fits in a ConfigMap with, once the object's size is known

    def check(found: Any) -> None:
        for index, record in found:
            if len(indexer.offsets) > max_shards:  # stop early: the offsets alone would outgrow memory
                raise _index_too_large(where, len(indexer.offsets), spec.shard_size)
            try:
                item = records.parse_one(src.format, record, indexer.header)
            except UnicodeDecodeError:
                raise PayloadError("InvalidPayload", f"{where}: record {index} is not UTF-8") from None
            except (ValueError, csv.Error) as exc:
                why = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                raise PayloadError("InvalidPayload", f"{where}: record {index} is not {src.format}: {why}") from None
            if validator is not None:
                if index >= MAX_VALIDATED_ITEMS:
                    raise _too_many(None)
                _check(validator, index, item, show_paths=False, source="an objectStore")

    try:
        info = store.head(src.bucket, src.key)
        if not info.etag:
            raise PayloadError(
                "PayloadObjectUnversioned",
                f"{where}: the server gives the object no ETag, so workers could not tell if it was replaced",
            )
        # An offset takes at most the size's digits and a comma in the index's JSON.
        max_shards = (MAX_PAYLOAD_BYTES - 8192) // (len(str(info.size)) + 1)
        for data in store.chunks(src.bucket, src.key, info.size, if_match=info.etag, chunk=chunk):
            check(indexer.feed(data))
        check(indexer.finish())
    except records.RecordError as exc:
        raise PayloadError(exc.reason, f"{where}: {exc.message}") from None
    except objectstore.ObjectStoreError as exc:
        raise object_error(exc, src.credentials_secret.name) from None
    index = {
        "version": INDEX_VERSION,
        "endpoint": store.endpoint,
        "region": src.region,
        "bucket": src.bucket,
        "key": src.key,
        "format": src.format,
        "etag": info.etag,
        "size": info.size,
        "header": indexer.header.decode("utf-8", "replace") if indexer.header is not None else None,
        "offsets": indexer.offsets,
    }
    text = json.dumps(index, separators=(",", ":"))
    if len(text.encode()) > MAX_PAYLOAD_BYTES:
        raise _index_too_large(where, len(indexer.offsets) - 1, spec.shard_size)
    return Items(indexer.count, text)


def _index_too_large(where: str, shards: int, shard_size: int) -> PayloadError:
    return PayloadError(
        "PayloadTooLarge",
        f"{where}: the index of its shards ({shards} and more at shardSize {shard_size}) would not fit the "
        f"{MAX_PAYLOAD_BYTES}-byte limit of a ConfigMap; shardSize is immutable: delete the batch and create "
        "it again with a larger shardSize",
    )


def object_error(exc: objectstore.ObjectStoreError, secret: str) -> PayloadError:
    """What an object-storage error means for the batch (never the credentials themselves)."""
    if isinstance(exc, objectstore.EndpointRefused):
        return PayloadError("PayloadEndpointRefused", str(exc))
    if exc.status == 404:
        return PayloadError("PayloadObjectNotFound", f"{exc}: no such bucket or key")
    if exc.status == 403:
        return PayloadError("PayloadObjectAccessDenied", f'{exc}: the credentials in Secret "{secret}" are refused')
    if isinstance(exc, objectstore.ObjectChanged):
        return PayloadError("PayloadObjectChanged", f"{exc} (it was replaced while being indexed); trying again")
    if exc.status == 0 or exc.status >= 500:
        return PayloadError("PayloadObjectUnreachable", f"{exc}; trying again")
    return PayloadError("PayloadObjectRefused", str(exc))
