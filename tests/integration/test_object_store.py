"""Object-storage payloads against a real S3 server (versitygw, e2e/objectstore.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from e2e import objectstore as local_s3
from jobbatch import manifests, naming
from tests.integration.conftest import OperatorFactory
from tests.integration.harness import Batches, PodRecorder, host_dir, real_template, template

BUCKET = "imports"


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint of a local S3 server with bucket ``imports``, for the whole session."""
    root = tmp_path_factory.mktemp("s3")
    with local_s3.serving(root / "data", root / "versitygw.log") as endpoint:
        local_s3.create_bucket(endpoint, BUCKET)
        yield endpoint


async def put(endpoint: str, key: str, data: bytes) -> None:
    await asyncio.to_thread(local_s3.put_object, endpoint, BUCKET, key, data)


async def credentials_secret(api: client.ApiClient, namespace: str, name: str = "s3", secret: str | None = None) -> str:
    values = {"AWS_ACCESS_KEY_ID": local_s3.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": secret or local_s3.SECRET_KEY}
    data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
    body = client.V1Secret(metadata=client.V1ObjectMeta(name=name), data=data)
    await client.CoreV1Api(api).create_namespaced_secret(namespace, body)
    return name


def source(endpoint: str, key: str, secret: str = "s3", fmt: str = "JSONLines") -> dict[str, Any]:
    return {
        "objectStore": {
            "endpoint": endpoint, "bucket": BUCKET, "key": key, "format": fmt, "credentialsSecret": {"name": secret},
        }
    }  # fmt: skip


async def test_a_csv_object_is_indexed_once_and_sharded_by_records(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory, s3: str
) -> None:
    await operator()
    rows = "".join(f'{i},"name {i}, with a comma"\n' for i in range(2_500))
    await put(s3, f"{namespace}/users.csv", ("id,name\n" + rows).encode())
    await credentials_secret(api, namespace)
    spec = {
        "template": template(duration="1s"),
        "payloads": source(s3, f"{namespace}/users.csv", fmt="CSV"),
        "payloadSchema": {"type": "object", "required": ["id", "name"]},
        "shardSize": 1_000,
        "parallelism": 3,
    }
    async with PodRecorder(api, namespace) as pods:
        created = await batches.create("users", spec)
        done = await batches.wait_for("users", "Complete")
    assert done["status"]["itemCount"] == 2_500
    assert done["status"]["shards"]["total"] == 3
    assert pods.attempts("users") == {0: [0], 1: [0], 2: [0]}
    # The snapshot holds where shards start, not the data: bytes 0.. of the object, 4 offsets.
    name = naming.payload_configmap_name("users", created["metadata"]["uid"])
    cm = await client.CoreV1Api(api).read_namespaced_config_map(name, namespace)
    index = json.loads(cm.data[manifests.INDEX_KEY])
    assert index["header"] == "id,name\n"
    assert len(index["offsets"]) == 4
    assert index["offsets"][0] == len("id,name\n")
    assert index["offsets"][1] == len("id,name\n") + len(
        "".join(f'{i},"name {i}, with a comma"\n' for i in range(1000))
    )
    # The credentials reach workers from the Secret, never in the clear.
    job = (await batches.jobs())[0] if await batches.jobs() else None
    text = json.dumps(done) + json.dumps(await batches.events("users")) + cm.data[manifests.INDEX_KEY]
    assert local_s3.SECRET_KEY not in text
    assert job is None or local_s3.SECRET_KEY not in json.dumps(job.to_dict(), default=str)


async def test_object_store_refusals_say_what_is_wrong_and_a_fix_is_picked_up(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory, s3: str
) -> None:
    await operator()
    await credentials_secret(api, namespace, "good")
    await credentials_secret(api, namespace, "wrong", secret="not-the-secret")
    key = f"{namespace}/later.jsonl"
    cases = {
        "no-secret": (source(s3, key, secret="absent"), "SecretNotFound"),
        "denied": (source(s3, key, secret="wrong"), "PayloadObjectAccessDenied"),
        "later": (source(s3, key, secret="good"), "PayloadObjectNotFound"),
    }
    for name, (payloads, _) in cases.items():
        await batches.create(name, {"template": template(), "payloads": payloads})
    for name, (_, reason) in cases.items():
        refused = await batches.wait_for(name, "Accepted", "False")
        (cond,) = [c for c in refused["status"]["conditions"] if c["type"] == "Accepted"]
        assert cond["reason"] == reason, cond
        assert "not-the-secret" not in json.dumps(refused)
    assert await batches.jobs() == []
    # The object appears: the batch that waited for it is accepted and runs, with no change to it.
    await put(s3, key, b'{"n": 1}\n{"n": 2}\n')
    done = await batches.wait_for("later", "Complete")
    assert done["status"]["itemCount"] == 2


async def test_a_record_that_breaks_the_schema_refuses_the_batch_without_showing_it(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory, s3: str
) -> None:
    await operator()
    await credentials_secret(api, namespace)
    lines = [json.dumps({"url": f"https://example.com/{i}"}) for i in range(500)]
    lines[321] = json.dumps({"url": 321, "secret": "s3cr3t-value"})
    await put(s3, f"{namespace}/bad.jsonl", "\n".join(lines).encode())
    spec = {
        "template": template(),
        "payloads": source(s3, f"{namespace}/bad.jsonl"),
        "payloadSchema": {"type": "object", "properties": {"url": {"type": "string"}}},
        "shardSize": 100,
    }
    await batches.create("bad", spec)
    refused = await batches.wait_for("bad", "Accepted", "False")
    (cond,) = [c for c in refused["status"]["conditions"] if c["type"] == "Accepted"]
    assert cond["reason"] == "PayloadSchemaViolation"
    assert "s3cr3t" not in cond["message"]
    assert await batches.jobs() == []


async def test_real_workers_read_exactly_their_shard_of_an_object(
    api: client.ApiClient,
    namespace: str,
    batches: Batches,
    operator: OperatorFactory,
    s3: str,
    real_node: str,
    tmp_path: Path,
) -> None:
    await operator()
    await credentials_secret(api, namespace)
    urls = [f"https://example.com/{i}" for i in range(25)]
    await put(s3, f"{namespace}/pages.jsonl", "".join(json.dumps({"url": u}) + "\n" for u in urls).encode())
    out = host_dir(tmp_path / "out")
    spec = {
        "template": real_template(env={"WORKER_OUTPUT_DIR": "/out"}, mounts={"/out": out}),
        "payloads": source(s3, f"{namespace}/pages.jsonl"),
        "shardSize": 10,
        "parallelism": 3,
    }
    async with PodRecorder(api, namespace) as pods:
        await batches.create("pages", spec)
        await batches.wait_for("pages", "Complete")
    assert set(pods.nodes.values()) == {real_node}
    written = {p.name: p.read_text().splitlines() for p in out.iterdir()}
    assert written == {"pages-0-0.txt": urls[0:10], "pages-1-0.txt": urls[10:20], "pages-2-0.txt": urls[20:25]}
