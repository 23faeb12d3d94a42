"""The I/O layer above the API calls, against an in-memory fake of them: no cluster, no network.

The fake records every call; its "watch" (what the reconciler reads as observed Jobs) is whatever
the test says, so a test can hold it back and show what a lagging watch does.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import datetime
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from jobbatch import api, manifests, naming, objectstore
from jobbatch import reconciler as reconciler_module
from jobbatch.dispatch import Dispatcher
from jobbatch.kube import Conflict, merge_patch
from jobbatch.observed import ShardJob, summarize
from jobbatch.payloads import digest
from jobbatch.ranges import IndexRanges
from jobbatch.reconciler import BatchReconciler
from tests.unit.test_object_payloads import CREDENTIALS, MemoryStore

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def apply_merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies it."""
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = apply_merge_patch(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class FakeKube:
    """The Kube methods the reconciler calls, over one batch and a dict of Jobs."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.batch: dict[str, Any] = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {
                "name": "b", "namespace": "ns", "uid": "uid-1", "generation": 1, "resourceVersion": "1",
                "creationTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": {"template": {"spec": {"containers": [{"name": "w", "image": "i"}]}}, **spec},
        }  # fmt: skip
        self.jobs: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.events: list[str] = []
        self.conflicts = 0  # status writes to refuse with 409
        self.fail_creates = False
        self.time_out_creates = False
        self.refuse_creates_with_500 = False
        self.fail_job_reads = False
        self.fail_reads = False
        self.configmaps: dict[str, dict[str, Any]] = {}
        self.secrets: dict[str, dict[str, Any]] = {}

    def _bump(self) -> None:
        meta = self.batch["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)

    async def get_batch(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", name))
        if self.fail_reads:
            raise ApiException(status=500, reason="Internal Server Error")
        return copy.deepcopy(self.batch)

    async def patch_batch_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str, old: dict[str, Any]
    ) -> dict[str, Any]:
        self.calls.append(("status", name))
        if self.conflicts or resource_version != self.batch["metadata"]["resourceVersion"]:
            self.conflicts = max(0, self.conflicts - 1)
            raise Conflict("changed")
        # As the API server applies a merge patch: what the patch leaves out stays.
        self.batch["status"] = apply_merge_patch(self.batch.get("status") or {}, merge_patch(old, status))
        self._bump()
        return copy.deepcopy(self.batch)

    async def create_job(self, namespace: str, body: dict[str, Any], *, dry_run: bool = False) -> bool:
        name = body["metadata"]["name"]
        if dry_run:
            self.calls.append(("dry-run", name))
            return True
        self.calls.append(("create", name))
        if self.fail_creates:
            raise ApiException(status=422, reason="Invalid")
        if self.time_out_creates:
            self.jobs[name] = self._made(body)  # it landed; the answer did not come back
            raise TimeoutError("create timed out")
        if self.refuse_creates_with_500:  # an admission webhook that cannot be reached, failurePolicy Fail
            raise ApiException(status=500, reason="Internal error: failed calling webhook")
        if name in self.jobs:
            return False
        self.jobs[name] = self._made(body)
        return True

    @staticmethod
    def _made(body: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(body)
        body["metadata"]["uid"] = f"uid-{body['metadata']['name']}"
        body["metadata"]["ownerReferences"] = [{"kind": api.KIND, "name": "b", "uid": "uid-1", "controller": True}]
        return body

    async def get_job_metadata(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get-job", name))
        if self.fail_job_reads:
            raise ApiException(status=503, reason="Service Unavailable")
        found = self.jobs.get(name)
        return {"metadata": copy.deepcopy(found["metadata"])} if found else None

    async def scale_job(self, namespace: str, name: str, current: int, to: int) -> bool:
        self.calls.append(("scale", name))
        job = self.jobs[name]
        if job["spec"]["parallelism"] != current:
            return False
        job["spec"]["parallelism"] = to
        return True

    async def resume_job(self, namespace: str, name: str, parallelism: int) -> None:
        self.calls.append(("resume", name))
        self.jobs[name]["spec"].update(suspend=False, parallelism=parallelism)

    async def suspend_job(self, namespace: str, name: str) -> None:
        self.calls.append(("suspend", name))
        self.jobs[name]["spec"]["suspend"] = True

    async def release_job(self, namespace: str, name: str, finalizers: tuple[str, ...]) -> None:
        self.calls.append(("release", name))

    async def delete_job(self, namespace: str, name: str) -> None:
        self.calls.append(("delete", name))

    async def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append(reason)

    async def get_priority_value(self, name: str) -> int | None:
        return 0

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get-secret", name))
        return copy.deepcopy(self.secrets.get(name))

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get-configmap", name))
        return copy.deepcopy(self.configmaps.get(name))

    async def get_configmap_metadata(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get-configmap-metadata", name))
        found = self.configmaps.get(name)
        return {"metadata": copy.deepcopy(found["metadata"])} if found else None

    async def create_configmap(self, namespace: str, body: dict[str, Any]) -> bool:
        self.calls.append(("create-configmap", body["metadata"]["name"]))
        if body["metadata"]["name"] in self.configmaps:
            return False
        self.configmaps[body["metadata"]["name"]] = copy.deepcopy(body)
        self.configmaps[body["metadata"]["name"]]["metadata"]["uid"] = f"cm-{len(self.calls)}"
        return True

    def watched(self) -> dict[str, ShardJob]:
        """What an up-to-date watch would show."""
        out = {}
        for name, body in self.jobs.items():
            job = summarize(body)
            assert job is not None
            out[name] = job
        return out


def reconciler(kube: FakeKube, watch: dict[str, ShardJob], clock: Clock, cap: int = 0) -> BatchReconciler:
    return BatchReconciler(
        kube=kube,  # type: ignore[arg-type]
        dispatcher=Dispatcher(cap),
        namespace="ns",
        name="b",
        uid="uid-1",
        jobs=lambda: watch,
        clock=lambda: T0,
        monotonic=clock,
    )


async def run_for(r: BatchReconciler, seconds: float) -> None:
    """Run the real loop, on real time, for a window; then stop it."""
    stopped = asyncio.Event()

    class Stopped:
        def __bool__(self) -> bool:
            return stopped.is_set()

        async def wait(self) -> None:
            await stopped.wait()

    loop = asyncio.create_task(r.run(Stopped()))
    await asyncio.wait({loop}, timeout=seconds)
    stopped.set()
    await loop


def on_wall_time(kube: FakeKube, watch: dict[str, ShardJob] | None = None) -> tuple[BatchReconciler, Clock, WallClock]:
    """A reconciler with both of its clocks driven by the test (backoffs are wall-clock times)."""
    clock, wall = Clock(), WallClock()
    r = reconciler(kube, {} if watch is None else watch, clock)
    r._clock = wall
    return r, clock, wall


def refusal(r: BatchReconciler) -> Any:
    """The reconciler's recorded refusal (read through a call, so a type checker does not narrow it)."""
    return r.failed_create


def accept(kube: FakeKube, items: int) -> None:
    kube.batch["status"] = {
        "itemCount": items,
        "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted", "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ],
    }


def slots(kube: FakeKube) -> int:
    return sum(j.slots for j in kube.watched().values())


async def test_a_lagging_watch_never_pushes_grants_past_parallelism() -> None:
    kube = FakeKube({"payloads": {"count": 100}, "parallelism": 5})
    accept(kube, 100)
    clock = Clock()
    watch: dict[str, ShardJob] = {}  # the watch shows nothing, ever
    r = reconciler(kube, watch, clock)
    for _ in range(10):
        await r.reconcile_once()
        await r.calls.drain()
        clock.now += 2
    assert [c for c in kube.calls if c[0] == "create"] == [("create", next(iter(kube.jobs)))]
    assert slots(kube) == 5


async def test_a_raise_is_not_repeated_while_the_watch_lags() -> None:
    kube = FakeKube({"payloads": {"count": 100}, "parallelism": 5})
    accept(kube, 100)
    clock = Clock()
    watch: dict[str, ShardJob] = {}
    r = reconciler(kube, watch, clock)
    await r.reconcile_once()
    await r.calls.drain()
    watch.update(kube.watched())
    # The user raises parallelism; the raise is expected at once, so the next passes grant nothing more.
    kube.batch["spec"]["parallelism"] = 8
    r.batch_changed()
    for _ in range(3):
        await r.reconcile_once()
        await r.calls.drain()
        clock.now += 2
    assert [c[0] for c in kube.calls if c[0] in ("create", "scale")] == ["create", "scale"]
    assert slots(kube) == 8


async def test_the_echo_of_its_own_status_write_costs_no_read_but_the_next_pass_comes_at_once() -> None:
    kube = FakeKube({"payloads": {"count": 10}, "parallelism": 2})
    accept(kube, 10)
    r = reconciler(kube, {}, Clock())
    assert await r.reconcile_once() == 0.0  # it wrote Running: plan again now, from what it wrote
    await r.calls.drain()
    gets = sum(1 for c in kube.calls if c[0] == "get")
    written = kube.batch["metadata"]["resourceVersion"]
    r.wake.clear()
    r.batch_changed(written)  # the watch shows the very version the write returned
    assert not r.wake.is_set()
    await r.reconcile_once()
    assert sum(1 for c in kube.calls if c[0] == "get") == gets
    # Anyone else's change (a newer version) is read before the next pass plans.
    kube.batch["spec"]["parallelism"] = 3
    kube._bump()
    r.batch_changed(kube.batch["metadata"]["resourceVersion"])
    assert r.wake.is_set()
    await r.reconcile_once()
    assert sum(1 for c in kube.calls if c[0] == "get") == gets + 1


def complete(kube: FakeKube, name: str, indexes: str) -> None:
    kube.jobs[name]["status"] = {
        "completedIndexes": indexes,
        "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:01Z"}],
    }


async def test_a_persist_then_act_pass_waits_for_the_write_throttle_not_in_a_tight_loop() -> None:
    kube = FakeKube({"payloads": {"count": 2}, "parallelism": 2})
    accept(kube, 2)
    clock = Clock()
    watch: dict[str, ShardJob] = {}
    r = reconciler(kube, watch, clock)
    await r.reconcile_once()  # writes Running
    await r.calls.drain()
    complete(kube, next(iter(kube.jobs)), "0-1")
    watch.update(kube.watched())
    clock.now += 0.3
    # Succeeded, to be persisted before the Jobs go: the write may go in 0.7 s, and so may the pass.
    assert await r.reconcile_once() == pytest.approx(0.7)


async def test_without_any_echo_the_loop_records_a_finished_batch_then_releases_its_job() -> None:
    kube = FakeKube({"payloads": {"count": 2}, "parallelism": 2})
    accept(kube, 2)
    watch: dict[str, ShardJob] = {}
    r = BatchReconciler(  # on the real monotonic clock: the status-write throttle must pass in real time
        kube=kube,  # type: ignore[arg-type]
        dispatcher=Dispatcher(0), namespace="ns", name="b", uid="uid-1", jobs=lambda: watch, clock=lambda: T0,
    )  # fmt: skip
    await r.reconcile_once()
    await r.calls.drain()
    name = next(iter(kube.jobs))
    complete(kube, name, "0-1")
    watch.update(kube.watched())
    # The real loop, on real time, and no watch event ever comes (the fake has no echo of its writes):
    # the pass after the write that records Succeeded releases the Job, without reading the batch again.
    await run_for(r, 2.0)
    assert kube.batch["status"]["phase"] == "Succeeded"
    assert ("release", name) in kube.calls
    assert sum(1 for c in kube.calls if c[0] == "get") == 1  # the first pass's; none after its own writes


async def test_events_wait_for_the_status_write_that_records_them() -> None:
    kube = FakeKube({"payloads": {"count": 2}, "parallelism": 2})
    accept(kube, 2)
    clock = Clock()
    watch: dict[str, ShardJob] = {}
    r = reconciler(kube, watch, clock)
    await r.reconcile_once()  # writes Running, posts Started
    await r.calls.drain()
    assert kube.events == ["Started"]
    # Both shards finish within the second: the status write that records Completed is throttled...
    complete(kube, next(iter(kube.jobs)), "0-1")
    watch.update(kube.watched())
    clock.now += 0.5
    requeue = await r.reconcile_once()
    assert kube.events == ["Started"]  # ...and so is the Event saying so
    assert requeue is not None
    assert requeue <= 0.5
    clock.now += 0.5
    await r.reconcile_once()
    assert kube.events == ["Started", "Completed"]
    assert kube.batch["status"]["phase"] == "Succeeded"


async def test_a_conflicting_status_write_re_reads_and_re_plans() -> None:
    kube = FakeKube({"payloads": {"count": 2}, "parallelism": 2})
    accept(kube, 2)
    r = reconciler(kube, {}, Clock())
    kube.conflicts = 1
    with pytest.raises(Conflict):
        await r.reconcile_once()
    gets = sum(1 for c in kube.calls if c[0] == "get")
    r.batch_changed()  # what the loop does on Conflict
    await r.reconcile_once()
    assert sum(1 for c in kube.calls if c[0] == "get") == gets + 1
    assert kube.batch["status"]["phase"] == "Running"


class WallClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime.datetime:
        return self.now


async def test_a_refused_create_backs_off_is_reported_and_not_counted() -> None:
    kube = FakeKube({"payloads": {"count": 10}, "parallelism": 3})
    accept(kube, 10)
    kube.fail_creates = True
    r, clock, wall = on_wall_time(kube)

    async def step(seconds: float) -> float | None:
        wall.now += datetime.timedelta(seconds=seconds)
        clock.now += seconds
        requeue = await r.reconcile_once()
        await r.calls.drain()
        return requeue

    def creates() -> int:
        return sum(1 for c in kube.calls if c[0] == "create")

    await step(0)
    assert creates() == 1
    requeue = await step(1)  # a pass within the backoff: it creates nothing, and reports
    assert creates() == 1
    assert requeue is not None
    assert requeue <= 1.2
    status = kube.batch["status"]
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "FailedCreate")
    assert "1 refusals in a row" in stalled["message"]
    assert "HTTP 422: Invalid" in stalled["message"]
    assert status["shards"]["running"] == 0
    assert status["shards"]["pending"] == 10
    assert kube.events.count("FailedCreate") == 1
    # Passes on other wake-ups (watch events) send nothing while the backoff runs.
    for _ in range(5):
        await step(0.1)
    assert creates() == 1
    await step(1)  # due: one probe, refused again; the next backoff is twice as long
    await step(1)
    assert creates() == 2
    stalled = next(c for c in kube.batch["status"]["conditions"] if c["type"] == "Stalled")
    assert "2 refusals in a row" in stalled["message"]
    assert kube.events.count("FailedCreate") == 1  # the same error: no new Event
    kube.fail_creates = False
    await step(2)
    assert creates() == 2  # 4 s backoff now
    await step(2)
    assert creates() == 3
    assert r.failed_create is None
    await step(1)
    stalled = next(c for c in kube.batch["status"]["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("False", "Running")
    assert kube.batch["status"]["shards"]["running"] == 3


async def test_a_job_name_taken_by_someone_else_stalls_the_batch_visibly() -> None:
    """Names are predictable: a Job of another owner under one answers every create with AlreadyExists.
    That is a refusal (backoff, Stalled, an Event), not "already done" forever with nothing said."""
    kube = FakeKube({"payloads": {"count": 10}, "parallelism": 3})
    accept(kube, 10)
    squatter = naming.job_name("b", "uid-1", 0, 0)
    kube.jobs[squatter] = {"metadata": {"name": squatter, "uid": "uid-squat", "ownerReferences": []}}
    r, clock, wall = on_wall_time(kube)
    await r.reconcile_once()
    await r.calls.drain()
    wall.now += datetime.timedelta(seconds=1)
    clock.now += 1
    await r.reconcile_once()
    stalled = next(c for c in kube.batch["status"]["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "FailedCreate")
    assert f"a Job named {squatter} already exists and is not this batch's" in stalled["message"]
    assert kube.events.count("FailedCreate") == 1
    for _ in range(5):  # backs off: no create per pass
        await r.reconcile_once()
        await r.calls.drain()
    assert sum(1 for c in kube.calls if c[0] == "create") == 1


async def test_a_create_whose_answer_was_lost_stays_expected() -> None:
    """A timed-out create may have landed: its shards must not be given to another Job before the watch
    shows whether it did (under a cap the next chunk at the same shard may differ in size)."""
    kube = FakeKube({"payloads": {"count": 100}, "parallelism": 5})
    accept(kube, 100)
    kube.time_out_creates = True
    r, clock, wall = on_wall_time(kube)  # the watch lags: it shows nothing
    await r.reconcile_once()
    await r.calls.drain()
    kube.time_out_creates = False
    for _ in range(3):
        wall.now += datetime.timedelta(seconds=30)
        clock.now += 1
        await r.reconcile_once()
        await r.calls.drain()
    assert sum(1 for c in kube.calls if c[0] == "create") == 1
    assert slots(kube) == 5


async def test_a_create_refused_with_a_server_error_is_reported_once_the_job_is_known_absent() -> None:
    """A 5xx may have landed, so the Job is read: absent, it is a refusal like any other (Stalled, an
    Event, a growing backoff), not an expected Job that hides it."""
    kube = FakeKube({"payloads": {"count": 10}, "parallelism": 3})
    accept(kube, 10)
    kube.refuse_creates_with_500 = True
    r, clock, wall = on_wall_time(kube)
    for _ in range(2):
        await r.reconcile_once()
        await r.calls.drain()
        wall.now += datetime.timedelta(seconds=1)
        clock.now += 1
    stalled = next(c for c in kube.batch["status"]["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "FailedCreate")
    assert "HTTP 500" in stalled["message"]
    assert kube.batch["status"]["shards"]["running"] == 0
    assert kube.events.count("FailedCreate") == 1
    assert ("get-job", naming.job_name("b", "uid-1", 0, 0)) in kube.calls


async def test_a_name_whose_owner_cannot_be_read_is_left_to_the_watch() -> None:
    """AlreadyExists, and the read of the Job fails: no refusal is made up (the Job may be the batch's
    own from a previous process); the next pass asks again."""
    kube = FakeKube({"payloads": {"count": 10}, "parallelism": 3})
    accept(kube, 10)
    taken = naming.job_name("b", "uid-1", 0, 0)
    kube.jobs[taken] = {"metadata": {"name": taken, "uid": "uid-squat", "ownerReferences": []}}
    kube.fail_job_reads = True
    r = reconciler(kube, {}, Clock())
    await r.reconcile_once()
    await r.calls.drain()
    assert refusal(r) is None
    kube.fail_job_reads = False
    await r.reconcile_once()
    await r.calls.drain()
    assert "is not this batch's" in refusal(r).message


async def test_a_refused_create_is_no_hot_loop_in_the_real_loop() -> None:
    """The loop with real time: a refusal wakes it, and the pass it wakes must not create again."""
    kube = FakeKube({"payloads": {"count": 10}, "parallelism": 3})
    accept(kube, 10)
    kube.fail_creates = True
    r = BatchReconciler(
        kube=kube,  # type: ignore[arg-type]
        dispatcher=Dispatcher(0), namespace="ns", name="b", uid="uid-1", jobs=lambda: {},
    )  # fmt: skip
    await run_for(r, 1.0)  # a window shorter than the first backoff (2 s)
    assert sum(1 for c in kube.calls if c[0] == "create") == 1


async def test_the_loop_backs_off_after_failed_passes() -> None:
    kube = FakeKube({"payloads": {"count": 10}, "parallelism": 3})
    accept(kube, 10)
    kube.fail_reads = True
    r = reconciler(kube, {}, Clock())
    stopped = asyncio.Event()
    sleeps: list[float] = []

    async def sleep(timeout: float, _: Any) -> None:
        sleeps.append(timeout)
        await r.calls.drain()  # let the pass's background calls end, as real time would
        if len(sleeps) >= 5:
            stopped.set()

    r._sleep = sleep  # type: ignore[method-assign,assignment]

    class Stopped:
        def __bool__(self) -> bool:
            return stopped.is_set()

    await asyncio.wait_for(r.run(Stopped()), 5)
    assert sleeps[:5] == [1.0, 2.0, 5.0, 10.0, 30.0]  # each failed pass waits longer


def running_with_a_snapshot(payloads: dict[str, Any], jsonl: str) -> FakeKube:
    kube = FakeKube({"payloads": payloads, "parallelism": 2})
    accept(kube, jsonl.count("\n"))
    kube.batch["status"].update(phase="Running", payloadDigest=digest(jsonl))
    return kube


async def test_a_deleted_payload_snapshot_is_re_created_from_the_same_items() -> None:
    kube = running_with_a_snapshot({"items": [1, 2]}, "1\n2\n")
    r = reconciler(kube, {}, Clock())
    await r.reconcile_once()
    snapshot = naming.payload_configmap_name("b", "uid-1")
    assert kube.configmaps[snapshot]["data"][manifests.PAYLOAD_KEY] == "1\n2\n"
    assert "PayloadSnapshotRecreated" in kube.events


async def test_a_checked_snapshot_is_not_read_whole_again() -> None:
    kube = running_with_a_snapshot({"items": [1, 2]}, "1\n2\n")
    clock = Clock()
    r = reconciler(kube, {}, clock)
    await r.reconcile_once()  # re-created (it was missing)
    clock.now += reconciler_module.SNAPSHOT_CHECK_SECONDS
    await r.reconcile_once()  # read whole once, to check its items
    full_reads = kube.calls.count(("get-configmap", naming.payload_configmap_name("b", "uid-1")))
    for _ in range(3):
        clock.now += reconciler_module.SNAPSHOT_CHECK_SECONDS
        await r.reconcile_once()
    assert kube.calls.count(("get-configmap", naming.payload_configmap_name("b", "uid-1"))) == full_reads
    assert kube.calls.count(("get-configmap-metadata", naming.payload_configmap_name("b", "uid-1"))) == 5
    # Replaced by another object (another UID): its items are read and checked again.
    name = squat(kube, "1\n666\n")
    kube.configmaps[name]["metadata"]["uid"] = "other"
    clock.now += reconciler_module.SNAPSHOT_CHECK_SECONDS
    await r.reconcile_once()
    assert condition_of(kube, "Stalled")["reason"] == "PayloadSnapshotLost"


async def test_a_snapshot_whose_source_changed_is_not_re_created() -> None:
    source = {"configMap": {"name": "src", "key": "k"}}
    kube = running_with_a_snapshot(source, "1\n2\n")
    kube.configmaps["src"] = {"metadata": {"name": "src", "resourceVersion": "9"}, "data": {"k": "1\n2\n3\n"}}
    clock = Clock()
    r = reconciler(kube, {}, clock)
    await r.reconcile_once()
    assert naming.payload_configmap_name("b", "uid-1") not in kube.configmaps
    stalled = next(c for c in kube.batch["status"]["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "PayloadSnapshotLost")
    assert "no longer holds exactly the items the batch accepted" in stalled["message"]
    assert kube.events.count("PayloadSnapshotLost") == 1
    # Checked again only after a while, not on every pass.
    gets = sum(1 for c in kube.calls if c[0] == "get-configmap")
    clock.now += 2
    await r.reconcile_once()
    assert sum(1 for c in kube.calls if c[0] == "get-configmap") == gets


def squat(kube: FakeKube, jsonl: str) -> str:
    """A ConfigMap under the snapshot's name, made by someone else: the batch's owner reference copied."""
    name = naming.payload_configmap_name("b", "uid-1")
    kube.configmaps[name] = manifests.payload_configmap("b", "ns", "uid-1", jsonl)
    return name


def condition_of(kube: FakeKube, ctype: str) -> dict[str, Any]:
    return dict(next(c for c in kube.batch["status"]["conditions"] if c["type"] == ctype))


async def test_a_configmap_squatting_the_snapshot_name_is_refused_not_mounted() -> None:
    kube = FakeKube({"payloads": {"items": [1, 2]}})
    name = squat(kube, '"not","these"\n')
    await reconciler(kube, {}, Clock()).reconcile_once()
    accepted = condition_of(kube, "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "PayloadSnapshotConflict")
    assert name in accepted["message"]
    assert not kube.jobs
    # Once it is deleted, the batch's own snapshot is made and the batch goes on.
    del kube.configmaps[name]
    await reconciler(kube, {}, Clock()).reconcile_once()
    assert condition_of(kube, "Accepted")["status"] == "True"
    assert kube.configmaps[name]["data"][manifests.PAYLOAD_KEY] == "1\n2\n"


async def test_a_snapshot_found_at_acceptance_is_checked_like_its_source() -> None:
    """A configMap source's snapshot found before acceptance was persisted is not taken on trust."""
    kube = FakeKube({"payloads": {"configMap": {"name": "src", "key": "k"}}, "payloadSchema": {"type": "integer"}})
    kube.configmaps["src"] = {"metadata": {"name": "src", "resourceVersion": "9"}, "data": {"k": "1\n2\n"}}
    squat(kube, '"x"\n')
    await reconciler(kube, {}, Clock()).reconcile_once()
    accepted = condition_of(kube, "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "PayloadSchemaViolation")
    assert not kube.jobs


async def test_a_snapshot_replaced_by_other_items_stalls_the_batch() -> None:
    kube = running_with_a_snapshot({"items": [1, 2]}, "1\n2\n")
    squat(kube, "1\n666\n")
    r = reconciler(kube, {}, Clock())
    await r.reconcile_once()
    await r.calls.drain()
    stalled = condition_of(kube, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "PayloadSnapshotLost")
    assert "does not hold exactly the batch's items" in stalled["message"]
    assert not kube.jobs  # no pod may read the items someone else put there


class CountingSandbox:
    """Stands in for the sandbox: counts the checks it is asked to run, and runs them here."""

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, fn: Any, *args: Any, tenant: str = "") -> Any:
        self.runs += 1
        return fn(*args)


def refused_before(kube: FakeKube, reason: str) -> None:
    kube.batch["status"] = {
        "conditions": [
            {"type": "Accepted", "status": "False", "reason": reason, "message": "recorded",
             "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ],
    }  # fmt: skip


async def test_a_recorded_verdict_on_immutable_items_is_not_paid_for_again() -> None:
    """A new leader does not check a schema again where inline items and schema alone decided."""
    sandbox = CountingSandbox()

    async def after(reason: str, payloads: dict[str, Any]) -> FakeKube:
        kube = FakeKube({"payloads": payloads, "payloadSchema": {"type": "integer"}})
        kube.configmaps["src"] = {"metadata": {"name": "src", "resourceVersion": "9"}, "data": {"k": "1\n"}}
        refused_before(kube, reason)
        r = reconciler(kube, {}, Clock())
        r.sandbox = sandbox  # type: ignore[assignment]
        await r.reconcile_once()
        return kube

    kube = await after("PayloadSchemaViolation", {"items": [1]})
    assert sandbox.runs == 0
    accepted = condition_of(kube, "Accepted")
    assert (accepted["reason"], accepted["message"]) == ("PayloadSchemaViolation", "recorded")
    assert not any(c[0] == "dry-run" for c in kube.calls)  # nothing else is asked either
    # Not where the operator's limits (a longer --payload-validation-timeout) or the cluster (a
    # PriorityClass created since) decided, nor for a ConfigMap source, which can change.
    for reason, payloads in (
        ("PayloadValidationTimeout", {"items": [1]}),
        ("PriorityClassNotFound", {"items": [1]}),
        ("PayloadSchemaViolation", {"configMap": {"name": "src", "key": "k"}}),
    ):
        runs = sandbox.runs
        kube = await after(reason, payloads)
        assert sandbox.runs == runs + 1, reason
        assert condition_of(kube, "Accepted")["status"] == "True", reason


async def test_an_unaccepted_batch_dry_runs_its_template_at_most_every_30s() -> None:
    kube = FakeKube({"payloads": {"configMap": {"name": "missing", "key": "k"}}})
    clock = Clock()
    r = reconciler(kube, {}, clock)
    for _ in range(5):  # woken by its own events, say
        r.batch_changed()
        clock.now += 1
        await r.reconcile_once()
    assert condition_of(kube, "Accepted")["reason"] == "ConfigMapNotFound"
    assert sum(1 for c in kube.calls if c[0] == "dry-run") == 1
    clock.now += reconciler_module.TEMPLATE_CHECK_SECONDS
    await r.reconcile_once()
    assert sum(1 for c in kube.calls if c[0] == "dry-run") == 2


async def test_refusals_of_several_jobs_share_one_backoff_in_the_real_loop() -> None:
    """Two retries due, every create refused: each refusal doubles the batch's one backoff."""
    from tests.unit.test_planner import failure, failures, job

    kube = FakeKube({"payloads": {"count": 20}, "parallelism": 5, "retry": {"limit": 3}})
    accept(kube, 20)
    kube.batch["status"].update(phase="Running", startTime="2026-01-01T00:00:00Z")
    kube.fail_creates = True
    chunk = job(0, 20, parallelism=5, failed="0-1", succeeded="2-19")
    failed = failures(failure(0, at=-100), failure(1, at=-100))
    loop = asyncio.get_running_loop()
    started = loop.time()

    def wall() -> datetime.datetime:
        return T0 + datetime.timedelta(minutes=5, seconds=loop.time() - started)

    r = BatchReconciler(
        kube=kube,  # type: ignore[arg-type]
        dispatcher=Dispatcher(0), namespace="ns", name="b", uid="uid-1",
        jobs=lambda: {chunk.name: chunk}, failures=lambda uids: failed, clock=wall,
    )  # fmt: skip
    await run_for(r, 3.0)  # the first pass, then one probe after ~2 s
    assert sum(1 for c in kube.calls if c[0] == "create") <= 3
    assert r.failed_create is not None
    assert r.failed_create.failures == 2


async def test_an_object_refused_for_its_data_is_read_once_per_version_and_a_fix_is_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refusal on an object's data is kept while the object is unchanged (one read per version), and
    is never final: a recorded verdict does not stop the fixed object from being indexed again."""
    monkeypatch.setattr(objectstore, "ObjectStore", MemoryStore)
    MemoryStore.objects, MemoryStore.reads, MemoryStore.fail = {("bkt", "k"): b'{"url": 1}\n'}, [], None
    source = {"endpoint": "http://s3.local:7070", "bucket": "bkt", "key": "k", "credentialsSecret": {"name": "s3"}}
    kube = FakeKube({"payloads": {"objectStore": source}, "payloadSchema": {"properties": {"url": {"type": "string"}}}})
    secret = {
        "AWS_ACCESS_KEY_ID": CREDENTIALS.access_key_id + "\n",
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS.secret_access_key,
    }
    kube.secrets["s3"] = {
        "metadata": {"name": "s3", "resourceVersion": "5"},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in secret.items()},
    }
    refused_before(kube, "PayloadSchemaViolation")  # e.g. by the previous leader
    clock = Clock()
    r = reconciler(kube, {}, clock)
    await r.reconcile_once()
    assert condition_of(kube, "Accepted")["reason"] == "PayloadSchemaViolation"
    reads = len(MemoryStore.reads)
    assert reads == 1
    await r.reconcile_once()
    assert len(MemoryStore.reads) == reads  # same object version: the verdict stands, nothing is read
    MemoryStore.objects[("bkt", "k")] = b'{"url": "https://example.com"}\n'
    await r.reconcile_once()
    clock.now += 2  # status writes are throttled: the acceptance is written by a pass a little later
    await r.reconcile_once()
    accepted = condition_of(kube, "Accepted")
    assert accepted["status"] == "True", accepted
    assert kube.batch["status"]["itemCount"] == 1
    (snapshot,) = kube.configmaps.values()
    assert manifests.INDEX_KEY in snapshot["data"]


def test_a_status_write_removes_the_fields_the_new_status_lacks() -> None:
    """A merge patch of the new status alone would keep a rerun batch's old completionTime."""
    old = {"phase": "Failed", "completionTime": "t", "rerun": {"id": "a", "startTime": "s"}, "failures": [1]}
    new = {"phase": "Running", "rerun": {"id": "b"}, "failures": []}
    patch = merge_patch(old, new)
    assert patch == {
        "phase": "Running",
        "completionTime": None,
        "rerun": {"id": "b", "startTime": None},
        "failures": [],
    }
    assert apply_merge_patch(old, patch) == new


class ResultsKube(FakeKube):
    """A FakeKube whose shard Job's pods hold results, and whose pod list can be refused."""

    def __init__(self, spec: dict[str, Any], job: str, shards: int) -> None:
        super().__init__(spec)
        self.refuse_lists = False
        self.pods = [
            {
                "metadata": {
                    "name": f"{job}-{i}-abcde",
                    "labels": {api.LABEL_FIRST_SHARD: "0", api.LABEL_COMPLETION_INDEX: str(i), api.LABEL_ATTEMPT: "0"},
                    "ownerReferences": [{"kind": "Job", "uid": "job-uid", "controller": True}],
                },
                "status": {"containerStatuses": [{"state": {"terminated": {"message": f"{api.RESULT_PREFIX}{i}"}}}]},
            }
            for i in range(shards)
        ]

    async def list_succeeded_pods(
        self, namespace: str, job_name: str, limit: int, token: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        self.calls.append(("list-pods", job_name))
        if self.refuse_lists:
            raise ApiException(status=403, reason="Forbidden")
        return copy.deepcopy(self.pods), ""

    async def merge_configmap_data(self, namespace: str, name: str, data: dict[str, str]) -> bool:
        if name not in self.configmaps:
            return False
        self.configmaps[name].setdefault("data", {}).update(data)
        return True


async def test_a_collection_that_fails_stalls_the_batch_backs_off_and_records_nothing_until_it_works() -> None:
    job = naming.job_name("b", "uid-1", 0, 0)
    kube = ResultsKube({"payloads": {"count": 4}, "parallelism": 4, "results": {"maxBytes": 100}}, job, 4)
    accept(kube, 4)
    kube.refuse_lists = True
    finished = ShardJob(
        name=job, first=0, count=4, attempt=0, parallelism=4, succeeded=IndexRanges.parse("0-3"), finished=True,
        finished_at=T0, uid="job-uid",
    )  # fmt: skip
    clock = Clock()
    r = reconciler(kube, {job: finished}, clock)

    async def step(seconds: float) -> None:
        clock.now += seconds
        await r.reconcile_once()  # a failed collection is no failed call: no ActionsFailed
        await r.calls.drain()

    def lists() -> int:
        return sum(1 for c in kube.calls if c[0] == "list-pods")

    await step(0)
    await step(1.1)  # a status write at most once a second
    assert lists() == 1  # backing off (2 s): not listed again at once
    status = kube.batch["status"]
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "ResultsNotStored")
    assert "403" in stalled["message"]
    assert status["succeededShards"] == ""  # nothing recorded without its result
    assert ("release", job) not in kube.calls
    assert "ResultsNotStored" in kube.events
    kube.refuse_lists = False
    await step(2)  # past the backoff: collected
    await step(1.1)  # ... and recorded
    status = kube.batch["status"]
    assert status["succeededShards"] == "0-3"
    assert status["results"]["stored"] == 4
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "False"
    page = kube.configmaps[naming.results_configmap_prefix("b", "uid-1") + "0"]
    assert page["data"] == {"0": "0", "1": "1", "2": "2", "3": "3"}


def pending_wake(r: BatchReconciler) -> asyncio.TimerHandle | None:
    """The wake job_changed scheduled (read through a call: each read may differ)."""
    return r._progress_wake


async def test_a_job_event_that_only_shows_progress_waits_for_the_next_status_write() -> None:
    kube = FakeKube({"payloads": {"count": 10}, "parallelism": 2})
    accept(kube, 10)
    clock = Clock()
    r = reconciler(kube, {}, clock)
    loop = asyncio.get_running_loop()
    before = ShardJob(name="c0", first=0, count=10, attempt=0, parallelism=2, active=2)
    filling = dataclasses.replace(before, succeeded=IndexRanges.parse("0"))  # a pod ended, the next runs
    assert filling.refills_itself
    # Anything else wakes the loop at once: a Job that drains, shrinks or has fewer indexes left than
    # its parallelism (its freed slots are another Job's, or the dispatcher's), a new failed index, a
    # Job that appears or goes, or one seen for the first time.
    draining = dataclasses.replace(before, succeeded=IndexRanges.parse("0-7"))  # the last two run
    shrunk = dataclasses.replace(before, parallelism=1, active=1)
    short = dataclasses.replace(
        before, parallelism=10, active=5, succeeded=IndexRanges.parse("0-3")
    )  # 6 left, 5 pods: refills, but holds 6 slots of the 10 it held
    wide = dataclasses.replace(before, parallelism=10, active=10)
    failed = dataclasses.replace(filling, failed=IndexRanges.parse("1"), active=1)
    assert short.refills_itself
    for kind, job, was in (
        ("MODIFIED", draining, before),
        ("MODIFIED", shrunk, before),
        ("MODIFIED", short, wide),
        ("MODIFIED", failed, filling),
        ("MODIFIED", filling, None),
        ("ADDED", filling, None),
        ("DELETED", filling, filling),
    ):
        r.wake.clear()
        r.job_changed(kind, job, was)
        assert r.wake.is_set(), (kind, job, was)
    # Progress alone: the loop wakes when the next status write may go (0.4 s on), once for all.
    r.wake.clear()
    r._last_status_write = clock.now - reconciler_module.MIN_STATUS_INTERVAL + 0.4
    r.job_changed("MODIFIED", filling, before)
    due = pending_wake(r)
    assert due is not None
    assert 0.3 < due.when() - loop.time() <= 0.4
    r.job_changed("MODIFIED", filling, filling)
    assert pending_wake(r) is due
    assert not r.wake.is_set()
    # A Job that frees a slot meanwhile is handed on at once, the progress wake still pending.
    r.job_changed("MODIFIED", draining, before)
    assert r.wake.is_set()
    r.wake.clear()
    await asyncio.wait_for(r.wake.wait(), 2)
    # Until a pass starts, more progress wakes nothing more; a pass reads every Job as it is then,
    # and drops a wake still pending.
    r.job_changed("MODIFIED", filling, before)
    assert pending_wake(r) is due
    await r.reconcile_once()
    assert pending_wake(r) is None
    r._last_status_write = clock.now  # the next write is a second away
    r.job_changed("MODIFIED", filling, before)
    pending = pending_wake(r)
    assert pending is not None
    assert 0.9 < pending.when() - loop.time() <= 1.0
    await r.reconcile_once()
    assert pending_wake(r) is None
    assert pending.cancelled()
    # An event during a pass (its status write may be under way) waits a full interval from then.
    r._last_status_write = clock.now - 10
    r._passing = True
    r.job_changed("MODIFIED", filling, before)
    during = pending_wake(r)
    assert during is not None
    assert 0.9 < during.when() - loop.time() <= 1.0
    during.cancel()


async def test_a_call_wanted_again_while_in_flight_wakes_the_loop_when_it_ends() -> None:
    kube = FakeKube({"payloads": {"count": 10}, "parallelism": 2})
    r = reconciler(kube, {}, Clock())
    gate = asyncio.Event()
    ran: list[str] = []

    async def first() -> None:
        await gate.wait()

    async def second() -> None:
        ran.append("second")

    r._start("c0", first, parallelism=3)
    r._start("c0", second, parallelism=4)  # a pass raises it further while the first raise is in flight
    assert ran == []
    r.wake.clear()
    gate.set()
    await asyncio.wait_for(r.wake.wait(), 1)  # ... and the next pass plans it again once that ends
    await r.calls.drain()
    assert ran == []  # the second call was never started: the next pass plans it from what is then


async def test_a_write_that_only_moves_progress_on_asks_for_no_pass_of_its_own() -> None:
    kube = FakeKube({"payloads": {"count": 10}, "parallelism": 2})
    accept(kube, 10)
    clock = Clock()
    watch: dict[str, ShardJob] = {}
    r = reconciler(kube, watch, clock)
    assert await r.reconcile_once() == 0.0  # it wrote Running, a new phase: plan again now
    await r.calls.drain()
    name = min(kube.jobs)
    kube.jobs[name]["status"] = {"completedIndexes": "0", "active": 2}  # a shard done, its Job runs on
    watch.update(kube.watched())
    assert watch[name].refills_itself
    clock.now += 2
    writes = sum(1 for c in kube.calls if c[0] == "status")
    requeue = await r.reconcile_once()
    assert sum(1 for c in kube.calls if c[0] == "status") == writes + 1
    assert kube.batch["status"]["succeededShards"] == "0"
    assert requeue != 0.0  # nothing waits on that record
    # A Job that ended is released only once its shards are recorded: that write asks for a pass at once.
    first = watch[name]
    complete(kube, name, f"0-{first.count - 1}")
    watch.update(kube.watched())
    clock.now += 2
    assert await r.reconcile_once() == 0.0
    await r.calls.drain()
    assert ("release", name) not in kube.calls
    await r.reconcile_once()
    await r.calls.drain()
    assert ("release", name) in kube.calls


def test_what_a_written_status_may_unblock() -> None:
    running = api.JobBatchStatus(phase="Running")
    job = ShardJob(name="c0", first=0, count=4, attempt=0, parallelism=2, active=2)
    assert not reconciler_module.record_may_unblock(running, {"phase": "Running"}, [job])
    assert reconciler_module.record_may_unblock(running, {"phase": "Pending"}, [job])  # a new phase
    ended = api.JobBatchStatus(phase="Succeeded")
    assert reconciler_module.record_may_unblock(ended, {"phase": "Succeeded"}, [])
    done = dataclasses.replace(job, finished=True, active=0)
    assert reconciler_module.record_may_unblock(running, {"phase": "Running"}, [job, done])
    going = dataclasses.replace(job, deleting=True)
    assert reconciler_module.record_may_unblock(running, {"phase": "Running"}, [going])
    released = dataclasses.replace(done, finalizers=())  # kept for its logs, nothing to release
    assert not reconciler_module.record_may_unblock(running, {"phase": "Running"}, [released])


async def test_a_passs_job_calls_do_not_wait_for_its_status_write() -> None:
    """A hand-over's raise (or a launch) goes out while the pass's status write is on its way."""
    kube = FakeKube({"payloads": {"count": 4}, "parallelism": 2})
    accept(kube, 4)
    created = asyncio.Event()
    write, create = kube.patch_batch_status, kube.create_job

    async def write_after_a_create(*args: Any) -> dict[str, Any]:
        # Were the calls started only after the write returned, this would time out.
        await asyncio.wait_for(created.wait(), timeout=5)
        return await write(*args)

    async def create_and_say(namespace: str, body: dict[str, Any], *, dry_run: bool = False) -> bool:
        done = await create(namespace, body, dry_run=dry_run)
        created.set()
        return done

    kube.patch_batch_status = write_after_a_create  # type: ignore[method-assign,assignment]
    kube.create_job = create_and_say  # type: ignore[method-assign]
    r = reconciler(kube, {}, Clock())
    await r.reconcile_once()
    assert kube.batch["status"]["phase"] == "Running"
    kinds = [kind for kind, _ in kube.calls]
    assert kinds.index("create") < kinds.index("status")
