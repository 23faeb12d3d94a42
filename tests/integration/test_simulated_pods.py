"""The simulated-pod convention of docs/testing.md, checked against the real kwok."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kubernetes_asyncio import client

from tests.waiting import eventually


# Manifests are plain dicts (kubernetes_asyncio accepts them); typed Any for its model-typed signatures.
def _pod(name: str, *, annotations: dict[str, str], labels: dict[str, str] | None = None) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations, "labels": labels or {}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "worker", "image": "busybox"}]},
    }


# name -> (annotations, labels, expected phase, expected exit code)
CASES: dict[str, tuple[dict[str, str], dict[str, str], str, int]] = {
    "plain": ({"sim.jobbatch.io/duration": "0s"}, {}, "Succeeded", 0),
    "exit-code": ({"sim.jobbatch.io/exit-code": "5"}, {}, "Failed", 5),
    "listed-attempt": (
        {"sim.jobbatch.io/exit-code": "7", "sim.jobbatch.io/fail-attempts": "0,2"},
        {"jobbatch.io/attempt": "2"},
        "Failed",
        7,
    ),
    "unlisted-attempt": (
        {"sim.jobbatch.io/exit-code": "7", "sim.jobbatch.io/fail-attempts": "0,2"},
        {"jobbatch.io/attempt": "1"},
        "Succeeded",
        0,
    ),
    "no-attempt-label-is-0": (
        {"sim.jobbatch.io/exit-code": "7", "sim.jobbatch.io/fail-attempts": "0"},
        {},
        "Failed",
        7,
    ),
    "listed-shard": (
        {"sim.jobbatch.io/exit-code": "9", "sim.jobbatch.io/fail-shards": "3, 8"},
        {"jobbatch.io/shard": "8"},
        "Failed",
        9,
    ),
    "unlisted-shard": (
        {"sim.jobbatch.io/exit-code": "9", "sim.jobbatch.io/fail-shards": "3,8"},
        {"jobbatch.io/shard": "4"},
        "Succeeded",
        0,
    ),
}


async def test_pod_outcomes_follow_annotations(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    for name, (annots, labels, _, _) in CASES.items():
        await core.create_namespaced_pod(namespace, _pod(name, annotations=annots, labels=labels))

    async def all_finished() -> dict[str, tuple[str, int | None]] | None:
        pods = (await core.list_namespaced_pod(namespace)).items
        seen = {}
        for pod in pods:
            statuses = pod.status.container_statuses or []
            term = statuses[0].state.terminated if statuses else None
            seen[pod.metadata.name] = (pod.status.phase, term.exit_code if term else None)
        done = len(seen) == len(CASES) and all(p in ("Succeeded", "Failed") for p, _ in seen.values())
        return seen if done else None

    seen = await eventually(all_finished, what="every simulated pod finished")

    expected = {name: (phase, code) for name, (_, _, phase, code) in CASES.items()}
    assert seen == expected


async def test_pod_runs_for_its_duration(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod(namespace, _pod("slow", annotations={"sim.jobbatch.io/duration": "3s"}))

    async def phase() -> Any:
        return (await core.read_namespaced_pod("slow", namespace)).status.phase

    assert await eventually(lambda: _is(phase, "Running"), what="pod slow Running")
    pod = await eventually(lambda: _finished(core, namespace, "slow"), what="pod slow finished")

    term = pod.status.container_statuses[0].state.terminated
    assert pod.status.phase == "Succeeded"
    # Timestamps have whole-second precision; a 3 s run cannot show less than 3 s.
    assert term.finished_at - pod.status.start_time >= timedelta(seconds=3)


async def _is(probe: Any, value: str) -> bool:
    return bool(await probe() == value)


async def _finished(core: client.CoreV1Api, ns: str, name: str) -> Any:
    pod = await core.read_namespaced_pod(name, ns)
    return pod if pod.status.phase in ("Succeeded", "Failed") else None


async def test_pods_outside_jobs_without_annotations_keep_running(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod(namespace, _pod("server", annotations={}))
    await core.create_namespaced_pod(namespace, _pod("marker", annotations={"sim.jobbatch.io/duration": "0s"}))
    await eventually(lambda: _is(lambda: _phase(core, namespace, "server"), "Running"), what="pod server Running")
    # The annotated pod ends at once; the plain one, Running at least as long, has not ended.
    await eventually(lambda: _finished(core, namespace, "marker"), what="pod marker finished")
    assert await _is(lambda: _phase(core, namespace, "server"), "Running")


async def _phase(core: client.CoreV1Api, ns: str, name: str) -> Any:
    return (await core.read_namespaced_pod(name, ns)).status.phase
