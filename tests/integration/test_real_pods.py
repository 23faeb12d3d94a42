"""Batches whose workers are real containers on the real node (e2e/realnode.py).

Everything else in this tier runs kwok-simulated pods; these tests are where the image, the
payload mount, the restricted security context, a real process's exit code and the SIGTERM a
stopped pod gets meet a real kubelet and containerd.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

from kubernetes_asyncio import client

from e2e import tools
from tests.integration.conftest import OperatorFactory
from tests.integration.harness import Batches, PodRecorder, host_dir, real_template
from tests.waiting import eventually

FAST_RETRY = {"limit": 2, "backoff": {"initialSeconds": 0, "jitter": 0}}
# A worker that holds until its pod is stopped, unless the test's gate (a file in a host folder the pod
# mounts) was open when it started; it exits 143 on SIGTERM as well-behaved workers do.
GATED_WORKER = """
import os, signal, sys
from jobbatch import worker
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
shard = worker.Shard.from_env()
print(f"shard {shard.index} attempt {shard.attempt} waiting", flush=True)
if not os.path.exists("/gate/open"):
    signal.pause()  # until SIGTERM
"""


async def test_the_example_worker_processes_its_mounted_payload_in_a_real_container(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory, real_node: str, tmp_path: Path
) -> None:
    await operator()
    out = host_dir(tmp_path / "out")
    urls = [f"https://example.com/{i}" for i in range(5)]
    spec = {
        "template": real_template(env={"WORKER_OUTPUT_DIR": "/out"}, mounts={"/out": out}),
        "payloads": {"items": [{"url": u} for u in urls]},
        "payloadSchema": {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}},
        "shardSize": 2,
        "parallelism": 3,
    }
    async with PodRecorder(api, namespace) as pods:
        await batches.create("pages", spec)
        done = await batches.wait_for("pages", "Complete")
    assert done["status"]["succeededShards"] == "0-2"
    assert pods.attempts("pages") == {0: [0], 1: [0], 2: [0]}
    assert dict(pods.exit_codes) == {("pages", shard, 0): [0] for shard in range(3)}
    assert set(pods.nodes.values()) == {real_node}
    # Each real process read exactly its own shard's items from the mounted snapshot.
    written = {p.name: p.read_text().splitlines() for p in out.iterdir()}
    assert written == {
        "pages-0-0.txt": urls[0:2],
        "pages-1-0.txt": urls[2:4],
        "pages-2-0.txt": urls[4:5],
    }


async def test_a_real_worker_exiting_non_zero_is_retried(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory, real_node: str
) -> None:
    await operator()
    flaky = "import sys; from jobbatch import worker; s = worker.Shard.from_env(); "
    flaky += "sys.exit(7 if (s.index, s.attempt) == (1, 0) else 0)"
    spec = {
        "template": real_template(command=["python", "-c", flaky]),
        "payloads": {"count": 3},
        "parallelism": 3,
        "retry": FAST_RETRY,
    }
    async with PodRecorder(api, namespace) as pods:
        await batches.create("flaky", spec)
        done = await batches.wait_for("flaky", "Complete")
    assert pods.attempts("flaky") == {0: [0], 1: [0, 1], 2: [0]}
    assert pods.exit_codes[("flaky", 1, 0)] == [7]
    assert pods.exit_codes[("flaky", 1, 1)] == [0]
    assert done["status"]["failures"] == []
    assert "ShardRetrying" in [e["reason"] for e in await batches.events("flaky")]


async def test_a_real_worker_raising_skip_retry_fails_its_shard_at_once(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory, real_node: str
) -> None:
    """`raise worker.SkipRetry(...)` in a real container: one attempt, reason SkipRetry, the worker's words."""
    await operator()
    script = "from jobbatch import worker; s = worker.Shard.from_env()\n"
    script += "if s.index == 1:\n    raise worker.SkipRetry('row 3 is not an email')"
    spec = {
        "template": real_template(command=["python", "-c", script]),
        "payloads": {"count": 3},
        "parallelism": 3,
        "maxFailedShards": 1,
        "retry": FAST_RETRY,  # two retries allowed: none is used
    }
    async with PodRecorder(api, namespace) as pods:
        await batches.create("skipping", spec)
        done = await batches.wait_for("skipping", "Complete")
    assert pods.attempts("skipping") == {0: [0], 1: [0], 2: [0]}
    assert pods.exit_codes[("skipping", 1, 0)] == [1]
    (failure,) = done["status"]["failures"]
    assert (failure["shard"], failure["reason"], failure["exitCode"]) == (1, "SkipRetry", 1)
    assert failure["message"].endswith("asked for no retry: row 3 is not an email")


async def test_suspending_real_workers_sends_sigterm_and_spends_no_retry(
    api: client.ApiClient,
    namespace: str,
    batches: Batches,
    operator: OperatorFactory,
    real_node: str,
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    """The bug real pods found (issue #9): suspension must not fail shards on the workers' exit 143."""
    await operator()
    gate = host_dir(tmp_path / "gate")
    spec = {
        "template": real_template(command=["python", "-c", GATED_WORKER], mounts={"/gate": gate}),
        "payloads": {"count": 3},
        "parallelism": 3,
        "retry": {"limit": 0},  # a spent retry would fail the batch
    }
    core = client.CoreV1Api(api)
    async with PodRecorder(api, namespace) as pods:
        await batches.create("gated", spec)
        running = await eventually(lambda: _ready_pods(core, namespace, 3), what="3 worker containers ready")
        # The kubelet serves logs and exec for these pods (the API server reaches it by address).
        name = running[0]
        await eventually(lambda: _logged(core, namespace, name, "attempt 0 waiting"), what=f"{name}'s log line")
        kubectl = [str(tools.bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}", "-n", namespace]
        exec_ = await asyncio.to_thread(
            subprocess.run,
            [*kubectl, "exec", name, "--", "python", "-c", "import os; print(os.getuid())"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert exec_.stdout.strip() == "65532", exec_.stderr

        await batches.patch_spec("gated", {"suspend": True})
        await batches.wait_for("gated", "Suspended")
        await eventually(lambda: _none_running(pods), what="the stopped workers to end")
        stopped = {key: list(codes) for key, codes in pods.exit_codes.items()}
        os.close(os.open(gate / "open", os.O_CREAT | os.O_WRONLY, 0o644))
        await batches.patch_spec("gated", {"suspend": False})
        done = await batches.wait_for("gated", "Complete")
    # Every stopped worker got SIGTERM and exited 143 itself ...
    assert stopped == {("gated", shard, 0): [143] for shard in range(3)}, json.dumps(
        {str(k): v for k, v in stopped.items()}
    )
    # ... and none of it spent a retry: the same attempts ran again, and nothing failed.
    assert pods.attempts("gated") == {shard: [0] for shard in range(3)}
    assert pods.pods("gated") == {(shard, 0): 2 for shard in range(3)}
    assert done["status"]["failures"] == []
    assert done["status"]["failedShards"] == ""


async def _ready_pods(core: client.CoreV1Api, namespace: str, count: int) -> list[str] | None:
    found = await core.list_namespaced_pod(namespace)
    ready = [
        p.metadata.name
        for p in found.items
        if p.status.container_statuses and all(c.ready for c in p.status.container_statuses)
    ]
    return sorted(ready) if len(ready) >= count else None


async def _logged(core: client.CoreV1Api, namespace: str, pod: str, text: str) -> bool:
    return text in await core.read_namespaced_pod_log(pod, namespace)


async def _none_running(pods: PodRecorder) -> bool:
    return pods.total_running() == 0
