"""The simulated-pod convention of docs/testing.md, checked against the real kwok."""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from kubernetes_asyncio import client

from e2e.cluster import SIMULATED_PLACEMENT
from tests.integration.harness import NamespaceWatch
from tests.waiting import eventually


# Manifests are plain dicts (kubernetes_asyncio accepts them); typed Any for its model-typed signatures.
def _pod(
    name: str, *, annotations: dict[str, str], labels: dict[str, str] | None = None, deadline: int | None = None
) -> Any:
    spec: dict[str, Any] = {
        **SIMULATED_PLACEMENT,
        "restartPolicy": "Never",
        "containers": [{"name": "worker", "image": "busybox"}],
    }
    if deadline is not None:
        spec["activeDeadlineSeconds"] = deadline
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations, "labels": labels or {}},
        "spec": spec,
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
    # An Indexed Job's pod: shard = first-shard + completion index (6 + 2).
    "listed-first-shard-plus-index": (
        {"sim.jobbatch.io/exit-code": "9", "sim.jobbatch.io/fail-shards": "3,8"},
        {"jobbatch.io/first-shard": "6", "batch.kubernetes.io/job-completion-index": "2"},
        "Failed",
        9,
    ),
    # 6 + 1 = 7 is not listed; the completion index wins over a jobbatch.io/shard label.
    "unlisted-first-shard-plus-index": (
        {"sim.jobbatch.io/exit-code": "9", "sim.jobbatch.io/fail-shards": "3,8"},
        {"jobbatch.io/first-shard": "6", "batch.kubernetes.io/job-completion-index": "1", "jobbatch.io/shard": "8"},
        "Succeeded",
        0,
    ),
    "index-without-first-shard": (
        {"sim.jobbatch.io/exit-code": "9", "sim.jobbatch.io/fail-shards": "3,8"},
        {"batch.kubernetes.io/job-completion-index": "3"},
        "Failed",
        9,
    ),
    "no-shard-never-listed": (
        {"sim.jobbatch.io/exit-code": "9", "sim.jobbatch.io/fail-shards": "0"},
        {},
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


# -- what a kubelet does with deleted pods and deadlines ------------------------------------------


class Recorder(NamespaceWatch):
    """Every watch event on one kind of object in a namespace, in the API server's order.

    ``events[name]`` lists ``(monotonic time received, event type, object as a dict)``; the
    listing at the start counts as ``LISTED`` events. Short-lived states (a deleted pod's
    terminal status) are seen here even when polling would miss them.
    """

    def __init__(self, api_client: client.ApiClient, list_fn: Callable[..., Awaitable[Any]], ns: str) -> None:
        super().__init__(api_client, list_fn, ns)
        self.events: dict[str, list[tuple[float, str, dict[str, Any]]]] = collections.defaultdict(list)

    def seen(self, kind: str, obj: dict[str, Any]) -> None:
        self.events[obj["metadata"]["name"]].append((time.monotonic(), kind, obj))

    def states(self, name: str) -> list[dict[str, Any]]:
        """The object's successive states (a DELETED event repeats the last one)."""
        return [obj for _, kind, obj in self.events[name] if kind != "DELETED"]

    async def exit_before_removal(self, name: str) -> tuple[str, int | None, str] | None:
        """(phase, exit code, container reason) of a deleted pod's terminal state, once it is gone."""
        if not any(kind == "DELETED" for _, kind, _ in self.events[name]):
            return None
        terminal = [p for p in self.states(name) if p["status"].get("phase") in ("Succeeded", "Failed")]
        assert terminal, f"pod {name} disappeared without a terminal status: {self.states(name)[-1]['status']}"
        last = terminal[-1]
        # The terminal status was there while the object still existed, being deleted.
        assert last["metadata"].get("deletionTimestamp"), last["metadata"]
        term = _terminated(last)
        return last["status"]["phase"], term.get("exitCode"), term.get("reason", "")

    async def ended_and_removed(self, name: str) -> tuple[str, int | None, str]:
        return await eventually(lambda: self.exit_before_removal(name), what=f"pod {name} ended and removed")


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
    return dict((statuses[0].get("state") or {}).get("terminated") or {})


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


async def _running(core: client.CoreV1Api, ns: str, name: str) -> None:
    await eventually(lambda: _is(lambda: _phase(core, ns, name), "Running"), what=f"pod {name} Running")


async def _await_finished(core: client.CoreV1Api, ns: str, name: str) -> Any:
    return await eventually(lambda: _finished(core, ns, name), what=f"pod {name} finished")


SIGTERM_FAILURE = ("Failed", 143, "Error")


async def test_deleted_pods_exit_on_sigterm_then_disappear(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    pods = {
        "worker": {"sim.jobbatch.io/duration": "1h"},  # exits 143, the default SIGTERM exit code
        "trapper": {"sim.jobbatch.io/duration": "1h", "sim.jobbatch.io/sigterm-exit-code": "0"},
        "server": {},  # would run forever; deleted, it terminates all the same
    }
    async with Recorder(api, core.list_namespaced_pod, namespace) as rec:
        for name, annots in pods.items():
            await core.create_namespaced_pod(namespace, _pod(name, annotations=annots))
        for name in pods:
            await _running(core, namespace, name)
        for name in pods:
            await core.delete_namespaced_pod(name, namespace)
        seen = {name: await rec.ended_and_removed(name) for name in pods}

    assert seen == {"worker": SIGTERM_FAILURE, "trapper": ("Succeeded", 0, "Completed"), "server": SIGTERM_FAILURE}
    for name in pods:
        last = [p for p in rec.states(name) if _terminated(p)][-1]
        assert "SIGTERM" in _terminated(last)["message"]
        assert _condition(last["status"], "Ready")["status"] == "False"
        assert _condition(last["status"], "ContainersReady")["status"] == "False"


async def test_termination_duration_delays_the_exit(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    annots = {"sim.jobbatch.io/duration": "1h", "sim.jobbatch.io/termination-duration": "3s"}
    async with Recorder(api, core.list_namespaced_pod, namespace) as rec:
        await core.create_namespaced_pod(namespace, _pod("slow-stop", annotations=annots))
        await _running(core, namespace, "slow-stop")
        await core.delete_namespaced_pod("slow-stop", namespace)
        assert await rec.ended_and_removed("slow-stop") == SIGTERM_FAILURE

    states = [(t, obj) for t, kind, obj in rec.events["slow-stop"] if kind != "DELETED"]
    deleted_at = next(t for t, obj in states if obj["metadata"].get("deletionTimestamp"))
    exited_at = next(t for t, obj in states if obj["status"].get("phase") == "Failed")
    # Still Running, being deleted, for the termination duration (times the events came in, less a margin).
    assert exited_at - deleted_at >= 2.5
    assert all(obj["status"]["phase"] == "Running" for t, obj in states if deleted_at <= t < exited_at)


async def test_active_deadline_fails_pods_that_would_outlive_it(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    cases = {
        "long": ({"sim.jobbatch.io/duration": "1h"}, 2),
        "short": ({"sim.jobbatch.io/duration": "500ms"}, 30),
        "server": ({}, 2),  # never ends by itself, but a kubelet enforces the deadline on every pod
        "custom-code": ({"sim.jobbatch.io/duration": "1m30s", "sim.jobbatch.io/sigterm-exit-code": "137"}, 2),
    }
    for name, (annots, deadline) in cases.items():
        await core.create_namespaced_pod(namespace, _pod(name, annotations=annots, deadline=deadline))
    finished = {name: await _await_finished(core, namespace, name) for name in cases}

    seen = {
        name: (pod.status.phase, pod.status.reason, pod.status.container_statuses[0].state.terminated.exit_code)
        for name, pod in finished.items()
    }
    assert seen == {
        "long": ("Failed", "DeadlineExceeded", 143),
        "short": ("Succeeded", None, 0),
        "server": ("Failed", "DeadlineExceeded", 143),
        "custom-code": ("Failed", "DeadlineExceeded", 137),
    }
    long = finished["long"]
    assert long.status.message == "Pod was active on the node longer than the specified deadline"
    # Timestamps have whole-second precision; a 2 s deadline cannot show less than 2 s.
    ran = long.status.container_statuses[0].state.terminated.finished_at - long.status.start_time
    assert ran >= timedelta(seconds=2)


# -- Jobs: the real Job controller on simulated pods ----------------------------------------------

IGNORE_DISRUPTION = {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


def _job(name: str, spec: dict[str, Any]) -> Any:
    template = {
        "metadata": {"annotations": {"sim.jobbatch.io/duration": "1h"}},
        "spec": {
            **SIMULATED_PLACEMENT,
            "restartPolicy": "Never",
            "containers": [{"name": "worker", "image": "busybox"}],
        },
    }
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": {**spec, "template": template}}


class Jobs:
    def __init__(self, api_client: client.ApiClient, ns: str) -> None:
        self.api_client = api_client
        self.batch = client.BatchV1Api(api_client)
        self.ns = ns

    async def status(self, name: str) -> dict[str, Any]:
        job = await self.batch.read_namespaced_job_status(name, self.ns)
        return dict(self.api_client.sanitize_for_serialization(job).get("status") or {})

    async def status_when(self, name: str, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            status = await self.status(name)
            return status if check(status) else None

        return await eventually(probe, what=f"Job {name}: {what}")

    async def start(self, name: str, spec: dict[str, Any], pods: int) -> None:
        await self.batch.create_namespaced_job(self.ns, _job(name, spec))
        await self.status_when(name, lambda s: s.get("ready") == pods, f"{pods} pods ready")

    async def suspend(self, name: str) -> None:
        await self.batch.patch_namespaced_job(name, self.ns, {"spec": {"suspend": True}})


async def test_job_pod_deleted_by_hand_is_counted_then_removed(api: client.ApiClient, namespace: str) -> None:
    """The Job's finalizer holds the deleted pod until the Job controller has counted it as failed."""
    core, jobs = client.CoreV1Api(api), Jobs(api, namespace)
    # With a podFailurePolicy the Job controller counts a deleted pod only once it is terminal.
    await jobs.start("by-hand", {"backoffLimit": 1, "podFailurePolicy": {"rules": [IGNORE_DISRUPTION]}}, pods=1)
    (pod,) = (await core.list_namespaced_pod(namespace, label_selector="job-name=by-hand")).items
    assert pod.metadata.finalizers == ["batch.kubernetes.io/job-tracking"]
    async with Recorder(api, core.list_namespaced_pod, namespace) as rec:
        await core.delete_namespaced_pod(pod.metadata.name, namespace)
        assert await rec.ended_and_removed(pod.metadata.name) == SIGTERM_FAILURE
    status = await jobs.status_when("by-hand", lambda s: s.get("failed") == 1, "the failure counted")
    assert not _condition(status, "Failed")


async def test_suspended_indexed_job_fails_no_index(api: client.ApiClient, namespace: str) -> None:
    """Pods deleted for suspension exit 143, yet fail no index: the Job controller takes its
    finalizer off a pod before deleting it, and counts failed indexes only on pods that have one."""
    core, jobs = client.CoreV1Api(api), Jobs(api, namespace)
    fail_index = {"action": "FailIndex", "onExitCodes": {"operator": "NotIn", "values": [0]}}
    spec = {
        "completionMode": "Indexed",
        "completions": 3,
        "parallelism": 3,
        "backoffLimitPerIndex": 0,
        "podFailurePolicy": {"rules": [IGNORE_DISRUPTION, fail_index]},
    }
    async with (
        Recorder(api, core.list_namespaced_pod, namespace) as pods,
        Recorder(api, jobs.batch.list_namespaced_job, namespace) as recorded_jobs,
    ):
        await jobs.start("indexed", spec, pods=3)
        names = sorted(pods.events)
        assert len(names) == 3
        await jobs.suspend("indexed")
        exits = {name: await pods.ended_and_removed(name) for name in names}
        await jobs.status_when(
            "indexed",
            lambda s: (
                _condition(s, "Suspended").get("status") == "True" and not s.get("active") and not s.get("terminating")
            ),
            "Suspended with no pod left",
        )

    assert set(exits.values()) == {SIGTERM_FAILURE}
    history = [obj.get("status") or {} for _, _, obj in recorded_jobs.events["indexed"]]
    assert not any(s.get("failedIndexes") or s.get("failed") for s in history), history
    assert not any(_condition(s, c) for s in history for c in ("Failed", "FailureTarget")), history


async def test_suspending_a_job_with_a_failjob_exit_code_rule_fails_it(api: client.ApiClient, namespace: str) -> None:
    """What a real kubelet node shows, reproduced: the Job controller evaluates podFailurePolicy on
    a pod deleted for suspension, so FailJob on non-zero exit codes fails the Job on exit code 143.
    It matches pods whether or not they still carry its finalizer; it sees this one terminal
    because the deleted pod's object stays sim.jobbatch.io/removal-delay (2 s) after its exit,
    longer than the controller batches pod events (1 s). With 0s the Job is not failed."""
    core, jobs = client.CoreV1Api(api), Jobs(api, namespace)
    fail_job = {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [0]}}
    async with Recorder(api, core.list_namespaced_pod, namespace) as pods:
        await jobs.start("failjob", {"backoffLimit": 0, "podFailurePolicy": {"rules": [fail_job]}}, pods=1)
        (name,) = pods.events
        await jobs.suspend("failjob")
        assert await pods.ended_and_removed(name) == SIGTERM_FAILURE

    status = await jobs.status_when("failjob", lambda s: bool(_condition(s, "Failed")), "Failed")
    failed = _condition(status, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "PodFailurePolicy")
    assert "failed with exit code 143 matching FailJob rule at index 0" in failed["message"]
    assert _condition(status, "Suspended")["status"] == "True"  # both at once
