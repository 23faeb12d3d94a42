"""An object-storage source: indexed once, read back shard by shard (an in-memory store stands in for S3
here; tests/integration/test_object_store.py runs the same code against a real S3 server)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from jobbatch import manifests, objectstore, payloads, worker
from jobbatch.api import JobBatchSpec

CREDENTIALS = objectstore.Credentials("AKIDEXAMPLE", "secret-example")


class MemoryStore:
    """What ObjectStore does, over bytes in memory; records every range asked for."""

    objects: ClassVar[dict[tuple[str, str], bytes]] = {}
    reads: ClassVar[list[tuple[int, int, str | None]]] = []
    fail: ClassVar[objectstore.ObjectStoreError | None] = None

    def __init__(
        self,
        endpoint: str,
        credentials: objectstore.Credentials,
        region: str = "us-east-1",
        *,
        refuse_local: bool = False,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        assert credentials.secret_access_key == CREDENTIALS.secret_access_key

    def _etag(self, data: bytes) -> str:
        return '"' + hashlib.md5(data).hexdigest() + '"'  # as S3 does

    def head(self, bucket: str, key: str) -> objectstore.ObjectInfo:
        if self.fail is not None:
            raise self.fail
        data = self.objects[(bucket, key)]
        return objectstore.ObjectInfo(len(data), self._etag(data))

    def get_range(self, bucket: str, key: str, start: int, end: int, *, if_match: str | None = None) -> bytes:
        data = self.objects[(bucket, key)]
        if if_match is not None and if_match != self._etag(data):
            raise objectstore.ObjectChanged(412, "changed")
        self.reads.append((start, end, if_match))
        return data[start:end]

    def chunks(
        self, bucket: str, key: str, size: int, *, if_match: str | None = None, chunk: int = 1 << 20
    ) -> Iterator[bytes]:
        for start in range(0, size, chunk):
            yield self.get_range(bucket, key, start, min(start + chunk, size), if_match=if_match)


@pytest.fixture(autouse=True)
def store(monkeypatch: pytest.MonkeyPatch) -> type[MemoryStore]:
    monkeypatch.setattr(objectstore, "ObjectStore", MemoryStore)
    MemoryStore.objects, MemoryStore.reads, MemoryStore.fail = {}, [], None
    return MemoryStore


def spec(fmt: str = "JSONLines", shard_size: int = 2, **kw: Any) -> JobBatchSpec:
    source = {"endpoint": "http://s3.local:7070", "bucket": "bkt", "key": "k", "format": fmt,
              "credentialsSecret": {"name": "s3"}}  # fmt: skip
    return JobBatchSpec.model_validate(
        {"template": {"spec": {"containers": [{"name": "w", "image": "i"}]}},
         "payloads": {"objectStore": source}, "shardSize": shard_size, **kw}
    )  # fmt: skip


def shard_env(tmp_path: Path, s: JobBatchSpec, items: payloads.Items, shard: int) -> dict[str, str]:
    job = manifests.shard_job(
        name="b", namespace="ns", uid="u", spec=s, item_count=items.count, first_shard=0, count=10,
        attempt=0, parallelism=1, payload_digest=items.digest,
    )  # fmt: skip
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert {r["key"] for r in secret_refs.values()} == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    }
    assert all(r["name"] == "s3" for r in secret_refs.values())
    volume = job["spec"]["template"]["spec"]["volumes"][-1]
    assert volume["configMap"]["items"] == [{"key": manifests.INDEX_KEY, "path": manifests.INDEX_KEY}]
    assert items.snapshot is not None
    path = tmp_path / manifests.INDEX_KEY
    path.write_text(items.snapshot)
    env.update(
        JOB_COMPLETION_INDEX=str(shard), JOBBATCH_PAYLOAD_INDEX=str(path),
        JOBBATCH_OBJECT_STORE_ACCESS_KEY_ID=CREDENTIALS.access_key_id,
        JOBBATCH_OBJECT_STORE_SECRET_ACCESS_KEY=CREDENTIALS.secret_access_key,
    )  # fmt: skip
    return env


def test_each_worker_reads_only_its_own_bytes_of_the_indexed_version(tmp_path: Path, store: type[MemoryStore]) -> None:
    data = b"".join(json.dumps({"n": i}).encode() + b"\n" for i in range(5))
    store.objects[("bkt", "k")] = data
    s = spec(shard_size=2)
    items = payloads.index_object(s, CREDENTIALS, chunk=7)  # many small ranges: memory stays at one
    assert items.count == 5
    index = json.loads(items.snapshot or "")
    assert index["offsets"] == [0, data.index(b'{"n": 2}'), data.index(b'{"n": 4}'), len(data)]
    assert "secret-example" not in (items.snapshot or "")
    assert max(end - start for start, end, _ in store.reads) <= 7

    store.reads.clear()
    env = shard_env(tmp_path, s, items, shard=1)
    got = list(worker.items(shard=worker.Shard.from_env(env)))
    assert got == [{"n": 2}, {"n": 3}]
    assert store.reads == [(index["offsets"][1], index["offsets"][2], index["etag"])]


def test_a_piece_reads_its_shard_and_keeps_its_own_records(tmp_path: Path, store: type[MemoryStore]) -> None:
    store.objects[("bkt", "k")] = b"".join(json.dumps({"n": i}).encode() + b"\n" for i in range(8))
    s = spec(shard_size=4)
    items = payloads.index_object(s, CREDENTIALS)
    env = shard_env(tmp_path, s, items, shard=1)
    env.update(JOBBATCH_ITEM_START="5", JOBBATCH_ITEM_END="7")  # a piece of shard 1 (items 4-7)
    assert list(worker.items(shard=worker.Shard.from_env(env))) == [{"n": 5}, {"n": 6}]


def test_a_replaced_object_is_refused_by_workers(tmp_path: Path, store: type[MemoryStore]) -> None:
    store.objects[("bkt", "k")] = b'{"n":0}\n{"n":1}\n'
    s = spec(shard_size=1)
    items = payloads.index_object(s, CREDENTIALS)
    store.objects[("bkt", "k")] = b'{"n":9}\n{"n":8}\n'
    env = shard_env(tmp_path, s, items, shard=0)
    with pytest.raises(worker.PayloadMismatch, match="replaced"):
        list(worker.items(shard=worker.Shard.from_env(env)))


def test_csv_records_become_objects_of_the_header(tmp_path: Path, store: type[MemoryStore]) -> None:
    store.objects[("bkt", "k")] = b'id,name\r\n1,"Ann, A."\r\n2,Bo\r\n3,"multi\nline"\r\n'
    s = spec("CSV", shard_size=2)
    items = payloads.index_object(s, CREDENTIALS)
    assert items.count == 3
    env = shard_env(tmp_path, s, items, shard=1)
    assert list(worker.items(shard=worker.Shard.from_env(env))) == [{"id": "3", "name": "multi\nline"}]


def test_the_schema_checks_every_record_and_names_none(store: type[MemoryStore]) -> None:
    store.objects[("bkt", "k")] = b'{"url":"a"}\n{"url":"s3cr3t","n":1}\n'
    s = spec(payloadSchema={"type": "object", "additionalProperties": False, "properties": {"url": {}}})
    with pytest.raises(payloads.PayloadError) as caught:
        payloads.index_object(s, CREDENTIALS)
    assert caught.value.reason == "PayloadSchemaViolation"
    assert "s3cr3t" not in caught.value.message


def test_a_record_that_is_not_json_is_named_by_number(store: type[MemoryStore]) -> None:
    store.objects[("bkt", "k")] = b'{"a":1}\n{oops\n'
    with pytest.raises(payloads.PayloadError, match="record 1 is not JSONLines") as caught:
        payloads.index_object(spec(), CREDENTIALS)
    assert caught.value.reason == "InvalidPayload"
    assert "oops" not in caught.value.message


def test_an_index_too_big_for_a_configmap_asks_for_bigger_shards(store: type[MemoryStore]) -> None:
    store.objects[("bkt", "k")] = b"1\n" * 200_000
    with pytest.raises(payloads.PayloadError, match="larger shardSize") as caught:
        payloads.index_object(spec(shard_size=1), CREDENTIALS)
    assert caught.value.reason == "PayloadTooLarge"
    assert payloads.index_object(spec(shard_size=1000), CREDENTIALS).count == 200_000


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (objectstore.ObjectStoreError(404, "s3 HEAD b/k: HTTP 404 NoSuchKey"), "PayloadObjectNotFound"),
        (objectstore.ObjectStoreError(403, "s3 HEAD b/k: HTTP 403 AccessDenied"), "PayloadObjectAccessDenied"),
        (objectstore.ObjectStoreError(0, "s3 HEAD b/k: connection refused"), "PayloadObjectUnreachable"),
        (objectstore.ObjectStoreError(503, "s3 HEAD b/k: HTTP 503"), "PayloadObjectUnreachable"),
        (objectstore.ObjectChanged(412, "s3 GET b/k: changed"), "PayloadObjectChanged"),
    ],
)
def test_storage_errors_become_reasons_and_only_outages_are_retried(
    store: type[MemoryStore], error: objectstore.ObjectStoreError, reason: str
) -> None:
    store.fail = error
    with pytest.raises(payloads.PayloadError) as caught:
        payloads.index_object(spec(), CREDENTIALS)
    assert caught.value.reason == reason
    assert (reason in payloads.TRANSIENT_REASONS) == (reason in {"PayloadObjectUnreachable", "PayloadObjectChanged"})


def test_an_object_without_an_etag_is_refused(store: type[MemoryStore], monkeypatch: pytest.MonkeyPatch) -> None:
    store.objects[("bkt", "k")] = b"1\n"
    monkeypatch.setattr(MemoryStore, "_etag", lambda self, data: "")
    with pytest.raises(payloads.PayloadError) as caught:
        payloads.index_object(spec(), CREDENTIALS)
    assert caught.value.reason == "PayloadObjectUnversioned"


def test_indexing_stops_as_soon_as_the_index_cannot_fit(store: type[MemoryStore]) -> None:
    store.objects[("bkt", "k")] = b"1\n" * 5_000_000  # 10 MB of one-byte records, shardSize 1
    with pytest.raises(payloads.PayloadError, match="larger shardSize"):
        payloads.index_object(spec(shard_size=1), CREDENTIALS, chunk=1 << 20)
    # It stopped within the first ranges (about 125,000 offsets), not after reading all ten.
    assert len(store.reads) <= 2
