"""The pure reconcile decision, without a cluster: each step of a pass, and passes in sequence."""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

import pytest

from jobbatch import api, naming, planner
from jobbatch.api import JobBatchSpec, JobBatchStatus
from jobbatch.backoff import retry_delay
from jobbatch.observed import PodFailure, ShardJob
from jobbatch.planner import (
    Acceptance,
    Batch,
    CreateJob,
    DeleteJob,
    ReleaseJob,
    ResumeJob,
    ScaleJob,
    SuspendJob,
    chunk_size,
    plan,
)
from jobbatch.ranges import IndexRanges

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
UID = "uid-1"
FIN = ("jobbatch.io/shard-record",)


def spec(**kw: Any) -> JobBatchSpec:
    base: dict[str, Any] = {
        "template": {"spec": {"containers": [{"name": "w", "image": "i"}]}},
        "payloads": {"count": 10},
    }
    return JobBatchSpec.model_validate({**base, **kw})


def batch(s: JobBatchSpec, status: JobBatchStatus | None = None) -> Batch:
    return Batch(name="b", namespace="ns", uid=UID, generation=1, spec=s, status=status or JobBatchStatus())


def accepted(s: JobBatchSpec, items: int = 10, **status: Any) -> Batch:
    """A batch whose acceptance is already persisted."""
    first = plan(batch(s), [], T0, acceptance=Acceptance(True, "Accepted", "", item_count=items), launch_budget=0)
    return batch(s, first.status.model_copy(update=status))


def persisted(b: Batch, p: planner.Plan) -> Batch:
    return dataclasses.replace(b, status=p.status)


def name(first: int, attempt: int = 0) -> str:
    return naming.job_name("b", UID, first, attempt)


def job(
    first: int,
    count: int = 1,
    parallelism: int | None = None,
    attempt: int = 0,
    succeeded: str = "",
    failed: str = "",
    active: int | None = None,
    at: float = 0,
    **kw: Any,
) -> ShardJob:
    """A shard Job as observed; ``succeeded``/``failed`` are absolute shard ranges."""
    ok, bad = IndexRanges.parse(succeeded), IndexRanges.parse(failed)
    p = count if parallelism is None else parallelism
    unfinished = count - len(ok) - len(bad)
    finished = unfinished == 0
    return ShardJob(
        name=name(first, attempt),
        uid=f"job-{first}-{attempt}",
        first=first,
        count=count,
        attempt=attempt,
        parallelism=p,
        succeeded=ok,
        failed=bad,
        active=min(p, unfinished) if active is None else active,
        finished=kw.pop("finished", finished),
        finished_at=T0 + datetime.timedelta(seconds=at) if finished else None,
        **kw,
    )


def failure(shard: int, attempt: int = 0, code: int | None = 1, at: float = 0, reason: str = "Error") -> PodFailure:
    return PodFailure(f"job-{shard}-{attempt}", shard, attempt, code, reason, "", T0 + datetime.timedelta(seconds=at))


def failures(*items: PodFailure) -> dict[tuple[int, int, int], PodFailure]:
    return {(f.shard, f.attempt, f.node): f for f in items}


def cond(p: planner.Plan, ctype: str) -> tuple[str, str] | None:
    c = p.status.condition(ctype)
    return (c.status, c.reason) if c else None


def slots_held(jobs: list[ShardJob], p: planner.Plan) -> int:
    """Slots the batch holds once the plan is applied (what the Job controller may run)."""
    by_name = {j.name: j for j in jobs}
    for c in p.create:
        by_name[c.name] = ShardJob(c.name, c.first, c.count, c.attempt, c.parallelism)
    for s in p.scale:
        by_name[s.name] = dataclasses.replace(by_name[s.name], parallelism=s.to)
    for r in p.resume:
        by_name[r.name] = dataclasses.replace(by_name[r.name], suspended=False, parallelism=r.parallelism)
    return sum(j.slots for j in by_name.values())


# -- acceptance ---------------------------------------------------------------------------------------
def test_rejected_input_launches_nothing_and_says_why() -> None:
    p = plan(batch(spec()), [], T0, acceptance=Acceptance(False, "ConfigMapNotFound", 'configmap "x" not found'))
    assert p.create == []
    assert cond(p, "Accepted") == ("False", "ConfigMapNotFound")
    assert p.status.phase == "Pending"
    assert [e.reason for e in p.events] == ["ConfigMapNotFound"]
    assert p.requeue_after == planner.ACCEPTANCE_RECHECK_SECONDS
    # The same rejection again is not a new Event.
    again = plan(
        batch(spec(), p.status), [], T0, acceptance=Acceptance(False, "ConfigMapNotFound", 'configmap "x" not found')
    )
    assert again.events == []
    assert not again.status_changed


def test_acceptance_is_persisted_before_anything_launches() -> None:
    s = spec(parallelism=3, shardSize=4)
    p = plan(batch(s), [], T0, acceptance=Acceptance(True, "Accepted", "", item_count=10))
    assert p.create == []
    assert p.requeue_after == 0
    assert cond(p, "Accepted") == ("True", "Accepted")
    assert p.status.shards.total == 3


# -- chunks ---------------------------------------------------------------------------------------------
def test_chunk_size_follows_parallelism_within_bounds() -> None:
    assert chunk_size(1) == planner.MIN_CHUNK
    assert chunk_size(100) == 200
    assert chunk_size(1000) == 2000
    assert chunk_size(100_000) == planner.MAX_CHUNK


def test_first_pass_starts_one_chunk_with_all_slots() -> None:
    b = accepted(spec(parallelism=100, payloads={"count": 1000}), items=1000)
    p = plan(b, [], T0)
    assert p.create == [CreateJob(name(0), 0, 200, 0, 100)]
    assert p.status.phase == "Running"
    assert p.status.start_time == T0
    assert p.status.shards.running == 100
    assert p.status.shards.pending == 900
    assert "Started" in [e.reason for e in p.events]


def test_a_small_batch_is_one_chunk_of_all_its_shards() -> None:
    b = accepted(spec(parallelism=10, shardSize=4), items=10)
    assert plan(b, [], T0).create == [CreateJob(name(0), 0, 3, 0, 3)]


def test_a_chunk_with_indexes_left_to_start_keeps_its_slots() -> None:
    b = accepted(spec(parallelism=100, payloads={"count": 1000}), items=1000)
    jobs = [job(0, 200, parallelism=100, succeeded="0-49")]  # 150 unfinished: the Job controller refills
    p = plan(b, jobs, T0)
    assert p.create == []
    assert p.scale == []
    assert p.status.shards.running == 100
    assert p.status.shards.succeeded == 50


def test_slots_a_draining_chunk_frees_go_to_the_next_chunk_at_once() -> None:
    b = accepted(spec(parallelism=100, payloads={"count": 1000}), items=1000)
    draining = job(0, 200, parallelism=100, succeeded="0-169")  # 30 left: 70 slots free
    p = plan(b, [draining], T0)
    assert p.create == [CreateJob(name(200), 200, 200, 0, 70)]
    assert slots_held([draining], p) == 100
    # Later, the next chunk is raised as the first one drains further; nothing else starts.
    nxt = job(200, 200, parallelism=70, succeeded="200-209")
    p = plan(b, [job(0, 200, parallelism=100, succeeded="0-189"), nxt], T0)
    assert p.scale == [ScaleJob(name(200), 70, 90)]
    assert p.create == []


def test_the_last_chunk_is_shorter() -> None:
    b = accepted(spec(parallelism=100, payloads={"count": 250}), items=250)
    p = plan(b, [job(0, 200, parallelism=100, succeeded="0-189")], T0)
    assert p.create == [CreateJob(name(200), 200, 50, 0, 50)]


def test_parallelism_is_never_exceeded_by_grants() -> None:
    b = accepted(spec(parallelism=7, payloads={"count": 100}), items=100)
    jobs: list[ShardJob] = []
    for _ in range(40):  # every pass: the oldest Job finishes one more shard, the plan refills
        p = plan(b, jobs, T0)
        assert slots_held(jobs, p) <= 7
        by_name = {j.name: j for j in jobs}
        for c in p.create:
            by_name[c.name] = job(c.first, c.count, parallelism=c.parallelism)
        for s in p.scale:
            by_name[s.name] = dataclasses.replace(by_name[s.name], parallelism=s.to)
        jobs = list(by_name.values())
        oldest = next((j for j in sorted(jobs, key=lambda j: j.first) if j.unfinished), None)
        if oldest is None:
            break
        done = oldest.shards.difference(oldest.succeeded)
        first_left = next(iter(done))
        jobs = [dataclasses.replace(j, succeeded=j.succeeded.union([first_left])) if j is oldest else j for j in jobs]
        b = persisted(b, p)
    assert plan(b, jobs, T0).status.shards.running <= 7


# -- recording and releasing --------------------------------------------------------------------------
def test_success_is_recorded_before_its_job_is_released() -> None:
    b = accepted(spec(parallelism=10), items=10)
    done = job(0, 10, succeeded="0-9", at=1)
    p = plan(b, [done], T0)
    assert p.status.succeeded_shards == "0-9"
    assert p.release == []
    assert p.delete == []
    p2 = plan(persisted(b, p), [done], T0)
    assert p2.release == [ReleaseJob(done.name, FIN)]
    assert p2.delete == [DeleteJob(done.name)]


def test_a_chunk_stays_until_every_shard_is_recorded_or_retried() -> None:
    b = accepted(spec(parallelism=10, retry={"limit": 2, "backoff": {"initialSeconds": 5, "jitter": 0}}), items=10)
    chunk = job(0, 10, succeeded="0-4,6-9", failed="5", at=1)
    p = plan(b, [chunk], T0, failures=failures(failure(5, at=1)))
    b = persisted(b, p)
    assert p.status.succeeded_shards == "0-4,6-9"
    assert p.status.shards.retrying == 1
    p = plan(b, [chunk], T0, failures=failures(failure(5, at=1)))
    assert p.release == []  # shard 5's only attempt lives in this Job
    retry = job(5, 1, attempt=1)
    p = plan(b, [chunk, retry], T0 + datetime.timedelta(seconds=10))
    assert [r.name for r in p.release] == [chunk.name]  # superseded by the retry Job


def test_recorded_shards_are_not_started_again() -> None:
    b = accepted(spec(parallelism=5), items=10, succeeded_shards="0-4")
    assert plan(b, [], T0).create == [CreateJob(name(5), 5, 5, 0, 5)]


def test_failed_jobs_are_kept_for_inspection_up_to_the_limit() -> None:
    s = spec(parallelism=10, retry={"limit": 0}, maxFailedShards=10, failedJobsHistoryLimit=1)
    b = accepted(s, items=10, succeeded_shards="0-4,6-7", failed_shards="5,8-9")
    old = job(0, 8, succeeded="0-4,6-7", failed="5", at=1)
    new = job(8, 2, failed="8-9", at=2)
    p = plan(b, [old, new], T0)
    assert {r.name for r in p.release} == {old.name, new.name}
    assert p.delete == [DeleteJob(old.name)]  # the newest failed Job is kept...
    assert [r.collect_pods for r in p.release if r.name == new.name] == [False]  # ...with nothing to collect
    mixed = job(0, 8, succeeded="0-4,6-7", failed="5", at=3)
    p = plan(b, [mixed], T0)
    # ...and a kept chunk drops its succeeded pods first: only the failed attempts' pods stay.
    assert p.release == [ReleaseJob(mixed.name, FIN, collect_pods=True)]
    assert p.delete == []


def test_successful_jobs_are_kept_whole_up_to_their_own_limit() -> None:
    s = spec(parallelism=2, payloads={"count": 6}, successfulJobsHistoryLimit=1)
    b = accepted(s, items=6, succeeded_shards="0-5")
    older, newer = job(0, 2, succeeded="0-1", at=1), job(2, 2, succeeded="2-3", at=2)
    collected = job(4, 2, succeeded="4-5", at=3, pods_collected=True)  # its pods are gone: nothing to keep
    p = plan(b, [older, newer, collected], T0)
    assert {r.name for r in p.release} == {older.name, newer.name, collected.name}
    assert [r.collect_pods for r in p.release if r.name == newer.name] == [False]  # kept with its pods
    assert sorted(d.name for d in p.delete) == sorted([older.name, collected.name])


# -- retries ------------------------------------------------------------------------------------------
def test_retry_waits_out_the_backoff_then_runs_as_a_job_of_its_own() -> None:
    s = spec(parallelism=10, retry={"limit": 3, "backoff": {"initialSeconds": 10, "jitter": 0}})
    b = accepted(s, items=10)
    chunk = job(0, 10, succeeded="0-6,8-9", failed="7", at=0)
    seen = failures(failure(7, code=1, at=0))
    early = plan(b, [chunk], T0 + datetime.timedelta(seconds=4), failures=seen)
    assert early.create == []
    assert early.requeue_after == pytest.approx(6)
    assert early.status.shards.retrying == 1
    due = plan(b, [chunk], T0 + datetime.timedelta(seconds=10), failures=seen)
    assert due.create == [CreateJob(name(7, 1), 7, 1, 1, 1, retry=True)]
    retrying = [e for e in due.events if e.reason == "ShardRetrying"]
    assert retrying
    assert "exit code 1" in retrying[0].message


def test_due_retries_get_freed_slots_before_new_chunks() -> None:
    s = spec(parallelism=2, payloads={"count": 100}, retry={"backoff": {"initialSeconds": 0, "jitter": 0}})
    b = accepted(s, items=100)
    chunk = job(0, 20, parallelism=2, succeeded="0-17", failed="18", active=1)  # one slot free
    p = plan(b, [chunk], T0, failures=failures(failure(18)))
    assert p.create == [CreateJob(name(18, 1), 18, 1, 1, 1, retry=True)]


def test_second_retry_delay_doubles_and_jitter_is_deterministic() -> None:
    s = spec(retry={"limit": 3, "backoff": {"initialSeconds": 10, "multiplier": 2, "jitter": 0}})
    assert retry_delay(s.retry.backoff, UID, 0, 1) == 20
    jittery = spec(retry={"backoff": {"initialSeconds": 10, "jitter": 0.5}}).retry.backoff
    delays = {retry_delay(jittery, UID, shard, 0) for shard in range(50)}
    assert all(5 <= d <= 15 for d in delays)
    assert retry_delay(jittery, UID, 3, 0) == retry_delay(jittery, UID, 3, 0)
    assert len(delays) > 10


def test_retry_delay_stays_at_its_maximum_however_many_failures() -> None:
    """The operator's create backoff counts refusals without a limit: 2.0 ** 1100 overflows a float."""
    backoff = api.Backoff.model_validate({"initialSeconds": 2, "multiplier": 2, "maxSeconds": 300, "jitter": 0})
    assert retry_delay(backoff, UID, 0, 1100) == 300
    assert retry_delay(backoff, UID, 0, 10**6) == 300


def test_retries_exhausted_fail_the_shard_with_its_exit_code() -> None:
    b = accepted(spec(parallelism=10, retry={"limit": 1}), items=2, succeeded_shards="0")
    last = job(1, 1, attempt=1, failed="1", at=3)
    p = plan(b, [last], T0, failures=failures(failure(1, attempt=1, code=9, reason="Error")))
    assert p.status.failed_shards == "1"
    (f,) = p.status.failures
    assert (f.shard, f.attempt, f.exit_code, f.reason) == (1, 1, 9, "RetriesExhausted")
    assert cond(p, "Failed") == ("True", "ShardsFailed")


def test_non_retryable_exit_code_fails_the_shard_and_the_batch() -> None:
    s = spec(parallelism=3, retry={"nonRetryableExitCodes": [3]})
    b = accepted(s, items=10)
    chunk = job(0, 10, parallelism=3, succeeded="0", failed="1", active=2)
    p = plan(b, [chunk], T0, failures=failures(failure(1, code=3)))
    assert p.status.failed_shards == "1"
    assert p.status.failures[0].reason == "NonRetryableExitCode"
    assert p.status.phase == "Failed"
    assert "shard 1 (NonRetryableExitCode, exit code 3)" in p.status.condition("Failed").message  # type: ignore[union-attr]
    assert p.suspend == [SuspendJob(chunk.name)]  # what still runs is stopped
    assert p.create == []
    # Once the outcome is persisted, the Job is released and deleted.
    p2 = plan(persisted(b, p), [dataclasses.replace(chunk, suspended=True, active=0)], T0)
    assert p2.release
    assert p2.delete


def test_an_attempt_disrupted_past_its_limit_is_retried_whatever_its_exit_code() -> None:
    """143 is the worker's answer to SIGTERM: listed as non-retryable, it still does not end a disrupted shard."""
    s = spec(parallelism=3, retry={"limit": 1, "nonRetryableExitCodes": [143], "backoff": {"initialSeconds": 0}})
    b = accepted(s, items=2)
    chunk = job(0, 2, parallelism=2, succeeded="0", failed="1")
    evicted = dataclasses.replace(failure(1, code=143, reason="Disrupted"), disrupted=True)
    p = plan(b, [chunk], T0, failures=failures(evicted))
    assert p.status.failed_shards == ""
    assert p.create == [CreateJob(name(1, 1), 1, 1, 1, 1, retry=True)]
    assert any("after attempt 0 failed (Disrupted)" in e.message for e in p.events)
    # The retry is disrupted too, and no retries are left: the failure says why.
    retry = job(1, 1, attempt=1, failed="1", at=3)
    again = dataclasses.replace(failure(1, attempt=1, code=143, reason="Disrupted"), disrupted=True)
    p2 = plan(persisted(b, p), [chunk, retry], T0 + datetime.timedelta(seconds=5), failures=failures(again))
    (f,) = p2.status.failures
    assert (f.shard, f.attempt, f.reason, f.exit_code) == (1, 1, "RetriesExhausted", 143)
    assert "Disrupted more often than retry.disruptionLimit allows" in f.message


def test_a_lost_snapshot_holds_every_pod_back_and_uses_no_retry() -> None:
    """No pod may start on a replaced or missing snapshot: the Job controller would refill a chunk's slots."""
    b = accepted(spec(parallelism=4), items=10)
    chunk = job(0, 8, parallelism=4, succeeded="0-1", active=4)
    p = plan(b, [chunk], T0, snapshot_lost="the snapshot holds other items")
    assert p.suspend == [SuspendJob(chunk.name)]
    assert (p.create, p.scale) == ([], [])
    assert cond(p, "Stalled") == ("True", "PayloadSnapshotLost")
    assert cond(p, "Running") == ("False", "PayloadSnapshotLost")
    assert (p.status.phase, p.status.shards.running, p.status.shards.retrying) == ("Pending", 0, 0)  # never started
    # Right again: the same Job resumes (the same attempt), and the rest launches.
    held = dataclasses.replace(chunk, suspended=True, active=0)
    p2 = plan(persisted(b, p), [held], T0)
    assert p2.resume
    stalled = p2.status.condition("Stalled")
    assert stalled is not None
    assert stalled.status == "False"


def test_a_missing_queue_starts_nothing_and_says_so_once() -> None:
    """The reconciler gives a batch of a missing queue no budget; what runs goes on, the rest waits, Stalled."""
    b = accepted(spec(parallelism=4, queueName="nightly"), items=10)
    chunk = job(0, 2, parallelism=2, active=2)
    why = 'BatchQueue "nightly" does not exist: no shard starts until it does'
    p = plan(b, [chunk], T0, launch_budget=0, queue_held=("QueueNotFound", why))
    assert (p.create, p.scale, p.suspend) == ([], [], [])
    assert cond(p, "Stalled") == ("True", "QueueNotFound")
    assert [e.reason for e in p.events if e.type == "Warning"] == ["QueueNotFound"]
    assert p.unmet_demand == 2  # what the reconciler keeps out of the queue's demand
    again = plan(persisted(b, p), [chunk], T0, launch_budget=0, queue_held=("QueueNotFound", why))
    assert "QueueNotFound" not in [e.reason for e in again.events]
    # The queue exists: the batch goes on.
    p3 = plan(persisted(b, again), [chunk], T0)
    assert p3.create
    assert cond(p3, "Stalled") == ("False", "Running")


def test_a_failure_waits_a_little_for_its_pod_then_counts_without_it() -> None:
    b = accepted(spec(retry={"limit": 0, "nonRetryableExitCodes": [3]}), items=1)
    failed = [job(0, 1, failed="0", at=1)]
    # The failed-pod watch lags the Job watch: the exit code (maybe non-retryable) is waited for.
    early = plan(b, failed, T0 + datetime.timedelta(seconds=2), failures={})
    assert early.status.failures == []
    assert early.status.shards.retrying == 1
    assert early.requeue_after == pytest.approx(planner.POD_GRACE_SECONDS - 1)
    # The pod is gone for good (deleted by hand, garbage-collected): decided without it.
    late = plan(b, failed, T0 + datetime.timedelta(seconds=12), failures={})
    assert late.status.failures[0].reason == "RetriesExhausted"
    assert late.status.failures[0].exit_code is None


def test_a_retry_being_created_does_not_let_the_older_attempt_go() -> None:
    s = spec(parallelism=10, retry={"backoff": {"initialSeconds": 0, "jitter": 0}})
    b = accepted(s, items=2, succeeded_shards="1")
    chunk = job(0, 2, succeeded="1", failed="0", at=1)
    unseen = dataclasses.replace(job(0, 1, attempt=1), confirmed=False)  # its create may yet fail
    p = plan(b, [chunk, unseen], T0, failures=failures(failure(0, at=1)))
    assert p.release == []
    assert p.delete == []
    assert p.create == []  # nor is it created twice
    seen = dataclasses.replace(unseen, confirmed=True)
    assert [r.name for r in plan(b, [chunk, seen], T0).release] == [chunk.name]


def test_a_finished_chunk_waiting_on_a_retry_drops_its_succeeded_pods() -> None:
    s = spec(parallelism=10, retry={"backoff": {"initialSeconds": 600, "jitter": 0}})
    b = accepted(s, items=10, succeeded_shards="0-4,6-9")
    chunk = job(0, 10, succeeded="0-4,6-9", failed="5", at=1)
    p = plan(b, [chunk], T0, failures=failures(failure(5, at=1)))
    assert p.collect == [planner.CollectPods(chunk.name)]
    assert p.release == []
    done = dataclasses.replace(chunk, pods_collected=True)
    assert plan(b, [done], T0, failures=failures(failure(5, at=1))).collect == []


def test_a_deleted_job_retries_after_the_backoff_from_its_deletion() -> None:
    b = accepted(spec(parallelism=4, retry={"backoff": {"initialSeconds": 10, "jitter": 0}}), items=1)
    deleted_at = T0 + datetime.timedelta(seconds=5)
    gone = job(0, 1, active=0, deleting=True, finished=False, deleted_at=deleted_at)
    assert plan(b, [gone], T0 + datetime.timedelta(seconds=14)).create == []
    assert [c.attempt for c in plan(b, [gone], T0 + datetime.timedelta(seconds=15)).create] == [1]


def test_terminal_batch_records_late_successes_before_releasing() -> None:
    b = accepted(spec(parallelism=4, activeDeadlineSeconds=1), items=4, start_time=T0)
    failed = plan(b, [job(0, 4, parallelism=4)], T0 + datetime.timedelta(seconds=2))
    b = persisted(b, failed)
    assert b.status.phase == "Failed"
    late = job(0, 4, parallelism=4, succeeded="0-1", active=0, suspended=True, finished=False)
    p = plan(b, [late], T0 + datetime.timedelta(seconds=3))
    assert p.status.succeeded_shards == "0-1"
    assert p.release == []  # only once "0-1" is persisted
    assert plan(persisted(b, p), [late], T0 + datetime.timedelta(seconds=4)).release


def test_tolerated_failures_still_complete() -> None:
    b = accepted(spec(retry={"limit": 0}, maxFailedShards=1), items=3)
    p = plan(b, [job(0, 3, succeeded="0,2", failed="1", at=1)], T0, failures=failures(failure(1)))
    assert p.status.phase == "Succeeded"
    assert "1 failed (tolerated" in p.status.condition("Complete").message  # type: ignore[union-attr]


def test_deleted_job_counts_its_unfinished_shards_as_failed_attempts() -> None:
    b = accepted(spec(parallelism=4, retry={"backoff": {"initialSeconds": 0, "jitter": 0}}), items=4)
    gone = job(0, 4, succeeded="0", active=0, deleting=True, finished=False)
    p = plan(b, [gone], T0)
    assert p.status.succeeded_shards == "0"
    assert [c.first for c in p.create] == [1, 2, 3]
    assert all(c.attempt == 1 for c in p.create)
    # While its pods still run, its shards still run.
    running = dataclasses.replace(gone, active=3)
    assert plan(b, [running], T0).create == []


# -- parallelism, suspend, cap ----------------------------------------------------------------------------
def test_lowering_parallelism_scales_the_newest_jobs_down_first() -> None:
    b = accepted(spec(parallelism=3, payloads={"count": 100}), items=100)
    retry = job(7, 1, attempt=1)
    older = job(0, 20, parallelism=4, succeeded="0-17")  # 2 running
    newer = job(20, 20, parallelism=3)  # 3 running
    p = plan(b, [older, newer, retry], T0)  # 6 held, 3 allowed
    assert p.scale == [ScaleJob(newer.name, 3, 0)]
    assert p.create == []
    # With 0, every Job goes to 0 (the retry Job last).
    p0 = plan(accepted(spec(parallelism=0, payloads={"count": 100}), items=100), [older, newer, retry], T0)
    assert {(s.name, s.to) for s in p0.scale} == {(older.name, 0), (newer.name, 0), (retry.name, 0)}


def test_stopping_pods_are_not_stopped_again() -> None:
    b = accepted(spec(parallelism=5, payloads={"count": 100}), items=100)
    # Lowered from 10 to 5: 5 pods still run, 5 are stopping (on a real node: up to the grace period).
    lowered = job(0, 20, parallelism=5, active=5, terminating=5)
    p = plan(b, [lowered], T0)
    assert p.scale == []  # the 5 within the ceiling keep running
    assert p.create == []  # and nothing starts until the stopping ones are gone
    # One of the 5 ends: the Job controller counts the Job's own stopping pods, so no write is needed.
    assert plan(b, [dataclasses.replace(lowered, active=4)], T0).scale == []


def test_stopping_pods_hold_their_slots_until_gone() -> None:
    b = accepted(spec(parallelism=3, payloads={"count": 100}), items=100)
    shrunk = job(0, 20, parallelism=0, active=0, terminating=3)
    p = plan(b, [shrunk], T0)
    assert p.create == []
    assert p.scale == []
    p = plan(b, [dataclasses.replace(shrunk, terminating=1)], T0)
    assert p.scale == [ScaleJob(shrunk.name, 0, 2)]


def test_no_job_starts_pods_beside_another_jobs_stopping_ones() -> None:
    """The Job controller counts only a Job's own stopping pods against its parallelism: after a lowering
    across several Jobs, one left with room would start pods while another's stopped pods still run."""
    b = accepted(spec(parallelism=5, payloads={"count": 60}, retry={"limit": 2}), items=60, succeeded_shards="0-17")
    draining = job(20, 20, parallelism=5, active=2, succeeded="20-37")
    filling = job(40, 20, parallelism=2, active=2)
    retry = job(19, 1, attempt=1, active=1)
    lowered = dataclasses.replace(b, spec=b.spec.model_copy(update={"parallelism": 2}))
    p = plan(lowered, [draining, filling, retry], T0)
    assert p.scale == [ScaleJob(filling.name, 2, 0), ScaleJob(draining.name, 5, 1)]  # newest first, 2 left
    # The draining chunk's stopped pod is gone and its other one succeeded; the filling chunk's two
    # pods are still stopping. The draining chunk has room for its last index: frozen, as its start
    # would make four pods against a ceiling of 2.
    draining = dataclasses.replace(draining, parallelism=1, active=0, succeeded=IndexRanges.parse("20-38"))
    filling = dataclasses.replace(filling, parallelism=0, active=0, terminating=2)
    p = plan(lowered, [draining, filling, retry], T0)
    assert p.scale == [ScaleJob(draining.name, 1, 0)]
    assert p.create == []
    # Once the stopping pods are gone the room comes back.
    p = plan(
        lowered, [dataclasses.replace(draining, parallelism=0), dataclasses.replace(filling, terminating=0), retry], T0
    )
    assert p.scale == [ScaleJob(draining.name, 0, 1)]


def test_above_a_lowered_ceiling_a_job_only_replaces_its_own_running_pods() -> None:
    """A small model of the Job controller (own stopping pods count against a Job's parallelism; a pod
    beyond it is stopped; a stopping pod lasts one tick) under random changes of parallelism: while the
    batch is above its ceiling a Job starts a pod only in place of a running pod of its own that ended
    since the last pass (the Job controller does that within one sync, before any pass can see it)."""
    import random

    for seed in range(40):
        rng = random.Random(seed)
        ceiling = rng.randint(1, 8)
        b = accepted(spec(parallelism=ceiling, payloads={"count": 60}, retry={"limit": 2}), items=60)
        par: dict[str, int] = {}
        meta: dict[str, planner.CreateJob] = {}
        active: dict[str, set[int]] = {}
        stopping: dict[str, int] = {}
        done: dict[str, set[int]] = {}
        for tick in range(150):
            now = T0 + datetime.timedelta(seconds=tick)
            if rng.random() < 0.15:
                ceiling = rng.choice([0, 1, 2, 3, 5, 8])
                b = dataclasses.replace(b, spec=b.spec.model_copy(update={"parallelism": ceiling}))
            seen = [
                ShardJob(n, c.first, c.count, c.attempt, par[n], succeeded=IndexRanges.of(c.first + i for i in done[n]),
                         active=len(active[n]), terminating=stopping[n], uid=f"u-{n}")
                for n, c in meta.items()
            ]  # fmt: skip
            p = plan(b, seen, now)
            b = persisted(b, p)
            for c in p.create:
                meta[c.name], par[c.name], active[c.name], stopping[c.name], done[c.name] = (
                    c,
                    c.parallelism,
                    set(),
                    0,
                    set(),
                )
            for sc in p.scale:
                par[sc.name] = sc.to
            running_at_pass = {n: len(active[n]) for n in meta}
            for n in rng.sample(list(meta), len(meta)):  # the Job controller, Jobs in any order
                c = meta[n]
                stopping[n] = 0
                want = min(par[n], c.count - len(done[n]))
                while len(active[n]) > want:
                    active[n].remove(max(active[n]))
                    stopping[n] += 1
                todo = [i for i in range(c.count) if i not in done[n] and i not in active[n]]
                for i in todo[: max(0, want - len(active[n]) - stopping[n])]:
                    pods = sum(len(active[k]) + stopping[k] for k in meta) + 1
                    assert pods <= ceiling or len(active[n]) + 1 <= running_at_pass[n], (seed, tick, n)
                    active[n].add(i)
            for n in meta:  # pods end (all succeed: failures are not what this is about)
                for i in [i for i in active[n] if rng.random() < 0.3]:
                    active[n].remove(i)
                    done[n].add(i)


def test_raising_parallelism_raises_the_job_short_of_slots() -> None:
    b = accepted(spec(parallelism=10, payloads={"count": 100}), items=100)
    p = plan(b, [job(0, 20, parallelism=4)], T0)
    assert p.scale == [ScaleJob(name(0), 4, 10)]


def test_suspend_stops_every_job_and_resume_gives_the_slots_back() -> None:
    b = accepted(spec(parallelism=4, payloads={"count": 40}, suspend=True), items=40)
    a, c = job(0, 20, parallelism=4, succeeded="0-9"), job(7, 1, attempt=1)
    p = plan(b, [a, c], T0)
    assert p.suspend == [SuspendJob(a.name), SuspendJob(c.name)]
    assert p.status.phase == "Suspended"
    assert cond(p, "Suspended") == ("True", "Suspended")
    b = persisted(b, p)
    stopped = [dataclasses.replace(j, suspended=True, active=0) for j in (a, c)]
    resumed = dataclasses.replace(b, spec=b.spec.model_copy(update={"suspend": False}))
    p = plan(resumed, stopped, T0)
    assert p.resume == [ResumeJob(a.name, 4)]  # chunks and retries share the 4 slots; none gets a retry
    assert p.create == []
    assert p.status.phase == "Running"
    assert cond(p, "Suspended") == ("False", "Resumed")
    assert "Resumed" in [e.reason for e in p.events]


def test_cluster_budget_limits_grants_and_reports_demand() -> None:
    b = accepted(spec(parallelism=5), items=10)
    p = plan(b, [], T0, launch_budget=2)
    # Under the cap a chunk holds only what it is granted, so each freed slot returns to the dispatcher.
    assert p.create == [CreateJob(name(0), 0, 2, 0, 2)]
    assert p.unmet_demand == 3
    assert plan(b, [], T0, launch_budget=0).create == []


def test_start_after_delays_everything() -> None:
    b = accepted(spec(startAfter=(T0 + datetime.timedelta(seconds=30)).isoformat()), items=10)
    p = plan(b, [], T0)
    assert p.create == []
    assert p.status.phase == "Pending"
    assert p.requeue_after == pytest.approx(30)


def test_start_after_moved_into_the_future_stops_a_running_batch_without_a_retry() -> None:
    """A running Job's controller would start its next indexes: the Jobs stop as on suspend, and the
    ceiling (even 0) holds meanwhile."""
    b = accepted(spec(parallelism=4, payloads={"count": 40}), items=40, start_time=T0, phase="Running")
    running = job(0, 20, parallelism=4, active=4)
    later = (T0 + datetime.timedelta(days=30)).isoformat()
    moved = dataclasses.replace(b, spec=spec(parallelism=0, payloads={"count": 40}, startAfter=later))
    p = plan(moved, [running], T0 + datetime.timedelta(seconds=5))
    assert p.suspend == [SuspendJob(running.name)]
    assert p.create == []
    assert p.scale == []
    assert cond(p, "Running") == ("False", "StartAfter")
    assert p.requeue_after is not None
    assert p.requeue_after > 29 * 86400
    # Unsuspended while the time is still ahead: no longer Suspended, still held back.
    was_suspended = persisted(moved, plan(dataclasses.replace(moved, spec=spec(parallelism=0, payloads={"count": 40},
                                                                              startAfter=later, suspend=True)),
                                          [running], T0))  # fmt: skip
    p = plan(
        was_suspended, [dataclasses.replace(running, suspended=True, active=0)], T0 + datetime.timedelta(seconds=9)
    )
    assert cond(p, "Suspended") == ("False", "Resumed")
    assert cond(p, "Running") == ("False", "StartAfter")
    # Once the time comes the Job resumes with the slots parallelism gives.
    due = dataclasses.replace(b, spec=spec(parallelism=2, payloads={"count": 40}, startAfter=later))
    p = plan(due, [dataclasses.replace(running, suspended=True, active=0)], T0 + datetime.timedelta(days=31))
    assert p.resume == [ResumeJob(running.name, 2)]


def test_chunks_under_a_cap_stay_within_the_chunk_size() -> None:
    """A grant larger than a chunk is several chunks: a Job's indexes (its status, its held pods, its
    pods' hostnames) stay within the chunk bound."""
    b = accepted(spec(parallelism=20_000, payloads={"count": 100_000}), items=100_000)
    p = plan(b, [], T0, launch_budget=20_000)
    assert [(c.first, c.count, c.parallelism) for c in p.create] == [(0, 10_000, 10_000), (10_000, 10_000, 10_000)]
    p = plan(b, [], T0, launch_budget=15_000)
    assert [(c.first, c.count, c.parallelism) for c in p.create] == [(0, 10_000, 10_000), (10_000, 5_000, 5_000)]


def test_batch_deadline_fails_it() -> None:
    b = accepted(spec(activeDeadlineSeconds=60), items=10, start_time=T0)
    running = [job(0, 10)]
    p = plan(b, running, T0 + datetime.timedelta(seconds=30))
    assert p.status.phase == "Running"
    assert p.requeue_after == pytest.approx(30)
    late = plan(b, running, T0 + datetime.timedelta(seconds=61))
    assert cond(late, "Failed") == ("True", "DeadlineExceeded")
    assert late.suspend == [SuspendJob(name(0))]


def test_finishing_just_before_the_deadline_is_success() -> None:
    b = accepted(spec(activeDeadlineSeconds=60), items=2, start_time=T0)
    p = plan(b, [job(0, 2, succeeded="0-1", at=59)], T0 + datetime.timedelta(seconds=61))
    assert p.status.phase == "Succeeded"


def test_ttl_deletes_the_finished_batch_only_once_its_outcome_is_persisted() -> None:
    b = accepted(spec(ttlSecondsAfterFinished=0), items=1)
    p = plan(b, [job(0, 1, succeeded="0")], T0)
    assert p.status.phase == "Succeeded"
    assert not p.delete_batch
    p2 = plan(persisted(b, p), [], T0)
    assert p2.delete_batch
    ttl = accepted(spec(ttlSecondsAfterFinished=30), items=1)
    p3 = plan(persisted(ttl, plan(ttl, [job(0, 1, succeeded="0")], T0)), [], T0 + datetime.timedelta(seconds=10))
    assert not p3.delete_batch
    assert p3.requeue_after == pytest.approx(20)


# -- status ---------------------------------------------------------------------------------------------
def test_nothing_changed_means_no_status_write() -> None:
    b = accepted(spec(parallelism=2), items=10)
    p = plan(b, [job(0, 10, parallelism=2)], T0)
    again = plan(persisted(b, p), [job(0, 10, parallelism=2)], T0 + datetime.timedelta(seconds=5))
    assert not again.status_changed


def test_condition_keeps_transition_time_until_status_flips() -> None:
    conds = planner.set_condition([], "Running", "True", "Running", "a", T0, 1)
    later = T0 + datetime.timedelta(seconds=5)
    same = planner.set_condition(conds, "Running", "True", "Running", "b", later, 1)
    assert same[0].last_transition_time == T0
    flipped = planner.set_condition(same, "Running", "False", "Done", "c", later, 1)
    assert flipped[0].last_transition_time == later


def test_status_of_100k_shards_with_scattered_failures_stays_small() -> None:
    total = 100_000
    failed = list(range(37, total, 997))  # ~100 scattered permanent failures, recorded in this pass
    s = spec(payloads={"count": total}, maxFailedShards=10_000, retry={"limit": 0}, parallelism=1000)
    everything = IndexRanges([(0, total - 1)])
    b = accepted(s, items=total, succeeded_shards=str(everything.difference(IndexRanges.of(failed))))
    jobs = [job(f, 1, failed=str(f), at=1) for f in failed]
    p = plan(b, jobs, T0, failures=failures(*(failure(f) for f in failed)))
    assert p.status.phase == "Succeeded"
    assert len(p.status.failures) <= planner.MAX_RECORDED_FAILURES
    size = len(json.dumps(p.status.dump()))
    assert size < 16 * 1024, size


def test_status_at_the_most_failures_a_batch_tolerates_stays_bounded() -> None:
    """The worst case: maxFailedShards at its limit, every tenth shard failed (both range lists at their
    most fragmented): about 18 bytes per failed shard, far below etcd's 1.5 MiB object limit."""
    total = 100_000
    s = spec(payloads={"count": total}, maxFailedShards=10_000, retry={"limit": 0}, parallelism=1000)
    failed = IndexRanges.of(range(5, total, 10))
    ok = IndexRanges([(0, total - 1)]).difference(failed)
    b = accepted(s, items=total, succeeded_shards=str(ok), failed_shards=str(failed), start_time=T0, phase="Running")
    p = plan(b, [], T0)
    assert p.status.phase == "Succeeded"
    size = len(json.dumps(p.status.dump()))
    assert size < 200 * 1024, size


def test_start_is_derived_from_observed_jobs() -> None:
    # A pass whose status write lost a race has still created Jobs: the next pass sees them.
    b = accepted(spec(parallelism=2), items=10)
    p = plan(b, [job(0, 10, parallelism=2)], T0)
    assert p.status.start_time == T0
    assert p.create == []


def test_item_ranges_cover_all_items_once() -> None:
    covered = [i for s in range(planner.shard_count(10, 3)) for i in range(*planner.item_range(s, 3, 10))]
    assert covered == list(range(10))


# -- refused creates ---------------------------------------------------------------------------------
def test_refused_creates_back_off_then_probe_one_at_a_time() -> None:
    b = accepted(spec(parallelism=100, payloads={"count": 1000}), items=1000)
    refused = planner.FailedCreate(name(0), 3, T0 + datetime.timedelta(seconds=8), "HTTP 403: exceeded quota")
    waiting = plan(b, [], T0, failed_create=refused)
    assert waiting.create == []
    assert waiting.requeue_after == 8
    assert waiting.status.shards.running == 0
    assert waiting.status.shards.pending == 1000
    stalled = waiting.status.condition("Stalled")
    assert stalled is not None
    assert stalled.status == "True"
    assert stalled.reason == "FailedCreate"
    assert "3 refusals in a row" in stalled.message
    assert "exceeded quota" in stalled.message
    assert [e.reason for e in waiting.events] == ["FailedCreate"]
    # Due: one create probes (not every chunk the slots would allow).
    due = plan(b, [], T0 + datetime.timedelta(seconds=8), failed_create=refused)
    assert [c.name for c in due.create] == [name(0)]


def test_a_refused_create_is_no_demand_under_the_cap() -> None:
    """Demand it cannot use must not make the dispatcher hold slots back from other batches."""
    b = accepted(spec(parallelism=5, payloads={"count": 5}), items=5)
    refused = planner.FailedCreate(name(0), 1, T0 + datetime.timedelta(seconds=2), "HTTP 403: quota")
    p = plan(b, [], T0, launch_budget=0, failed_create=refused)
    assert p.unmet_demand == 0


def test_stalled_clears_once_creates_work() -> None:
    b = accepted(spec(parallelism=2, payloads={"count": 2}), items=2)
    refused = planner.FailedCreate(name(0), 1, T0, "HTTP 422: bad")
    stalled = persisted(b, plan(b, [], T0, failed_create=refused))
    p = plan(stalled, [job(0, count=2)], T0)
    cond = p.status.condition("Stalled")
    assert cond is not None
    assert (cond.status, cond.reason) == ("False", "Running")


def test_a_failure_records_the_workers_termination_message_bounded() -> None:
    s = spec(parallelism=1, retry={"limit": 0, "nonRetryableExitCodes": [3]})
    b = accepted(s, items=2)
    pod = dataclasses.replace(failure(0, code=3), message="row 17: no such table")
    p = plan(b, [job(0, 2, parallelism=1, failed="0")], T0, failures=failures(pod))
    assert p.status.failures[0].message == "attempt 0 exited with non-retryable code 3: row 17: no such table"
    noisy = dataclasses.replace(failure(0, code=9), message="x" * 5000)
    p = plan(b, [job(0, 2, parallelism=1, failed="0")], T0, failures=failures(noisy))
    (f,) = p.status.failures
    assert f.reason == "RetriesExhausted"
    assert f.message.startswith("attempt 0 failed (exit code 9), no retries left (limit 0): Error: xxx")
    assert len(f.message) == planner.MAX_FAILURE_MESSAGE


def kstatus(p: planner.Plan) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for ctype in ("Ready", "Reconciling", "Stalled"):
        c = p.status.condition(ctype)
        assert c is not None, ctype
        out[ctype] = (c.status, c.reason)
    return out


def test_kstatus_conditions_follow_the_batch() -> None:
    b = accepted(spec(parallelism=2, payloads={"count": 2}), items=2)
    running = plan(b, [], T0)
    assert kstatus(running) == {
        "Ready": ("False", "Running"), "Reconciling": ("True", "Running"), "Stalled": ("False", "Running")
    }  # fmt: skip
    done = plan(b, [job(0, 2, succeeded="0-1")], T0)
    assert kstatus(done) == {
        "Ready": ("True", "Completed"), "Reconciling": ("False", "Succeeded"), "Stalled": ("False", "Succeeded")
    }  # fmt: skip
    s = spec(parallelism=2, payloads={"count": 2}, retry={"limit": 0})
    failed = plan(accepted(s, items=2), [job(0, 2, failed="0", succeeded="1")], T0, failures=failures(failure(0)))
    assert kstatus(failed) == {
        "Ready": ("False", "Failed"), "Reconciling": ("False", "Failed"), "Stalled": ("True", "ShardsFailed")
    }  # fmt: skip
    refused = plan(batch(spec()), [], T0, acceptance=Acceptance(False, "ConfigMapNotFound", "no such ConfigMap"))
    assert kstatus(refused)["Stalled"] == ("True", "ConfigMapNotFound")
    assert kstatus(refused)["Reconciling"] == ("False", "Pending")
    suspended = plan(accepted(spec(suspend=True)), [], T0)
    assert kstatus(suspended)["Reconciling"] == ("False", "Suspended")


def test_a_remembered_refusal_no_plan_needs_is_no_stall() -> None:
    """E.g. the retry it was for is no longer planned (retry.limit lowered): nothing is blocked."""
    b = accepted(spec(parallelism=2, payloads={"count": 2}), items=2)
    refused = planner.FailedCreate(name(0, 1), 2, T0 + datetime.timedelta(seconds=60), "HTTP 403: quota")
    p = plan(b, [job(0, 2)], T0, failed_create=refused)  # the chunk runs both shards: nothing to create
    assert not p.creates_wanted
    cond = p.status.condition("Stalled")
    assert cond is not None
    assert cond.status == "False"


# -- rerun ------------------------------------------------------------------------------------------
def finished_with_failure(**kw: Any) -> tuple[Batch, ShardJob]:
    """A 4-shard batch that finished with shard 1 failed (tolerated), its chunk kept for logs."""
    s = spec(parallelism=4, payloads={"count": 4}, retry={"limit": 0}, maxFailedShards=1, **kw)
    b = accepted(s, items=4)
    chunk = job(0, 4, succeeded="0,2-3", failed="1")
    done = persisted(b, plan(b, [chunk], T0, failures=failures(failure(1, code=7))))
    assert done.status.phase == "Succeeded"
    assert done.status.failed_shards == "1"
    return done, dataclasses.replace(chunk, finalizers=())


def asking(b: Batch, **rerun: Any) -> Batch:
    return dataclasses.replace(b, spec=b.spec.model_copy(update={"rerun": api.Rerun.model_validate(rerun)}))


def test_a_rerun_records_itself_first_then_runs_the_failed_shards_from_a_new_attempt() -> None:
    done, kept = finished_with_failure()
    assert done.status.highest_attempt == 0
    start = plan(asking(done, id="r1"), [kept], T0 + datetime.timedelta(minutes=5))
    assert start.create == []  # nothing launches before the rerun is persisted
    rerun = start.status.rerun
    assert rerun is not None
    assert (rerun.id, rerun.shards, rerun.first_attempt, rerun.count) == ("r1", 1, 1, 1)
    assert start.status.phase == "Running"
    assert start.status.failed_shards == ""
    assert start.status.failures == []
    assert start.status.completion_time is None
    assert cond(start, "Complete") == ("False", "Rerun")
    assert cond(start, "Rerunning") == ("True", "Rerunning")
    assert [e.reason for e in start.events] == ["Rerun"]
    assert start.events[0].message == "rerun r1: running 1 failed shard (1) again, from attempt 1"
    assert start.status.shards.pending == 1
    b = persisted(asking(done, id="r1"), start)
    runs = plan(b, [kept], T0 + datetime.timedelta(minutes=5))
    # The kept attempt-0 chunk says nothing about shard 1 now: not failed again, not covering it.
    assert runs.status.failed_shards == ""
    assert runs.create == [CreateJob(name(1, 1), 1, 1, 1, 1)]
    assert runs.delete == []  # still kept for its logs
    assert runs.status.highest_attempt == 1
    again = plan(b, [kept], T0 + datetime.timedelta(minutes=5))  # the same rerun is never started twice
    assert again.status.rerun == rerun


def test_a_rerun_has_a_fresh_retry_budget_and_ends_again() -> None:
    done, kept = finished_with_failure()
    b = asking(done, id="r1")
    b = persisted(b, plan(b, [kept], T0))
    b = dataclasses.replace(b, spec=b.spec.model_copy(update={"retry": api.Retry(limit=1)}))
    first = job(1, 1, attempt=1, failed="1", at=60)
    p = plan(b, [kept, first], T0 + datetime.timedelta(seconds=60), failures=failures(failure(1, 1, code=7, at=60)))
    assert p.status.failed_shards == ""  # retry 0 of 1 used: it retries
    delay = retry_delay(b.spec.retry.backoff, UID, 1, 0)  # the first retry's delay, not the second's
    later = T0 + datetime.timedelta(seconds=60 + delay + 1)
    p = plan(b, [kept, first], later, failures=failures(failure(1, 1, code=7, at=60)))
    assert p.create == [CreateJob(name(1, 2), 1, 1, 2, 1, retry=True)]
    assert "attempt 2 (retry 1 of 1 in rerun r1)" in p.events[0].message
    second = job(1, 1, attempt=2, failed="1", at=200)
    end = plan(b, [kept, first, second], later, failures=failures(failure(1, 2, code=7, at=200)))
    assert end.status.phase == "Succeeded"  # one failure is tolerated, again
    assert end.status.failed_shards == "1"
    (f,) = end.status.failures
    assert f.attempt == 2
    assert "counted from the rerun's attempt 1" in f.message
    assert cond(end, "Rerunning") == ("False", "Succeeded")
    complete = end.status.condition("Complete")
    assert complete is not None
    assert complete.status == "True"
    assert complete.message.endswith("(after rerun r1)")
    assert end.status.completion_time == later


def test_a_rerun_of_a_batch_that_failed_early_also_runs_what_never_finished() -> None:
    s = spec(parallelism=2, payloads={"count": 10}, retry={"limit": 0})
    b = accepted(s, items=10)
    chunk = job(0, 10, parallelism=2, succeeded="0", failed="1", active=2)
    failed = persisted(b, plan(b, [chunk], T0, failures=failures(failure(1))))
    assert failed.status.phase == "Failed"
    stopping = dataclasses.replace(chunk, suspended=True)
    waiting = plan(asking(failed, id="again"), [stopping], T0)
    assert waiting.status.rerun is None  # its pods may still run: the rerun waits
    assert cond(waiting, "Rerunning") == ("False", "WaitingForBatchToFinish")
    assert [e.reason for e in waiting.events] == ["RerunWaiting"]
    start = plan(asking(failed, id="again"), [], T0)  # the chunk released and gone
    rerun = start.status.rerun
    assert rerun is not None
    assert (rerun.shards, rerun.first_attempt) == (9, 1)
    assert "1 failed shard (1) and 8 unfinished shards (2-9) again" in start.events[0].message
    runs = plan(persisted(asking(failed, id="again"), start), [], T0)
    assert runs.create == [CreateJob(name(1, 1), 1, 9, 1, 2)]  # one chunk, at the rerun's first attempt


def test_a_rerun_of_chosen_shards_leaves_the_others_failed() -> None:
    s = spec(parallelism=4, payloads={"count": 4}, retry={"limit": 0}, maxFailedShards=2)
    b = accepted(s, items=4)
    chunk = job(0, 4, succeeded="0,2", failed="1,3")
    done = persisted(b, plan(b, [chunk], T0, failures=failures(failure(1), failure(3))))
    start = plan(asking(done, id="one", shards="3-5"), [], T0)
    assert start.status.failed_shards == "1"
    assert [f.shard for f in start.status.failures] == [1]
    rerun = start.status.rerun
    assert rerun is not None
    assert rerun.shards == 1
    runs = plan(persisted(asking(done, id="one", shards="3-5"), start), [], T0)
    assert runs.create == [CreateJob(name(3, 1), 3, 1, 1, 1)]


def test_a_rerun_that_cannot_help_is_refused_once_and_runs_nothing() -> None:
    done, kept = finished_with_failure()
    nothing = plan(asking(done, id="n", shards="0,2"), [kept], T0)  # those succeeded
    assert nothing.status.phase == "Succeeded"
    assert cond(nothing, "Rerunning") == ("False", "NothingToRerun")
    assert [(e.type, e.reason) for e in nothing.events] == [("Warning", "NothingToRerun")]
    rerun = nothing.status.rerun
    assert rerun is not None
    assert (rerun.id, rerun.shards, rerun.first_attempt) == ("n", 0, 0)
    assert plan(persisted(asking(done, id="n", shards="0,2"), nothing), [kept], T0).events == []
    worn = dataclasses.replace(done, status=done.status.model_copy(update={"highest_attempt": 999}))
    refused = plan(asking(worn, id="late"), [kept], T0)
    assert cond(refused, "Rerunning") == ("False", "AttemptsExhausted")
    assert refused.create == []
    s = spec(parallelism=4, payloads={"count": 4}, retry={"limit": 0})
    b = accepted(s, items=4)
    failed = persisted(b, plan(b, [job(0, 4, succeeded="0", failed="1,3", active=1)], T0,
                                failures=failures(failure(1), failure(3))))  # fmt: skip
    assert failed.status.phase == "Failed"
    again = plan(asking(failed, id="part", shards="1"), [], T0)  # shard 3 stays failed: over maxFailedShards 0
    assert cond(again, "Rerunning") == ("False", "WouldFailAgain")
    assert again.status.phase == "Failed"


def test_a_rerun_asked_for_while_running_waits_and_can_be_withdrawn() -> None:
    b = accepted(spec(parallelism=2, payloads={"count": 2}), items=2)
    b = persisted(b, plan(b, [], T0))
    running = [job(0, 2)]
    waiting = plan(asking(b, id="early"), running, T0)
    assert cond(waiting, "Rerunning") == ("False", "WaitingForBatchToFinish")
    assert waiting.status.phase == "Running"
    withdrawn = plan(persisted(b, waiting), running, T0)
    assert cond(withdrawn, "Rerunning") == ("False", "Withdrawn")


def test_a_rerun_gets_its_own_active_deadline() -> None:
    done, kept = finished_with_failure(activeDeadlineSeconds=600)
    b = dataclasses.replace(done, status=done.status.model_copy(update={"start_time": T0}))
    later = T0 + datetime.timedelta(hours=3)
    b = persisted(asking(b, id="r1"), plan(asking(b, id="r1"), [kept], later))
    p = plan(b, [kept], later + datetime.timedelta(seconds=10))
    assert p.status.phase == "Running"
    assert p.create
    over = plan(b, [kept, job(1, 1, attempt=1)], later + datetime.timedelta(seconds=601))
    assert cond(over, "Failed") == ("True", "DeadlineExceeded")


def test_a_batch_from_before_highest_attempt_reruns_above_any_attempt_it_can_have_had() -> None:
    done, kept = finished_with_failure()
    legacy = dataclasses.replace(
        done, status=done.status.model_copy(update={"highest_attempt": None, "start_time": T0})
    )
    start = plan(asking(legacy, id="r1"), [kept], T0)
    rerun = start.status.rerun
    assert rerun is not None
    assert rerun.first_attempt == api.MAX_RETRY_LIMIT + 1


def test_a_finished_batch_waiting_to_rerun_keeps_looking_until_its_pods_are_gone() -> None:
    """Its reconciler must not end (nothing else would start the rerun) while a Job's pods stop."""
    s = spec(parallelism=2, payloads={"count": 10}, retry={"limit": 0})
    b = accepted(s, items=10)
    chunk = job(0, 10, parallelism=2, succeeded="0", failed="1", active=2)
    failed = persisted(b, plan(b, [chunk], T0, failures=failures(failure(1))))
    stopping = dataclasses.replace(chunk, suspended=True, active=0, terminating=2, deleting=True, finalizers=())
    p = plan(asking(failed, id="r"), [stopping], T0)
    assert cond(p, "Rerunning") == ("False", "WaitingForBatchToFinish")
    assert p.requeue_after == planner.STOPPING_RECHECK_SECONDS


def test_a_finished_batch_stops_its_pods_before_letting_its_jobs_go() -> None:
    """Deleting a running Job leaves its pods terminating, unseen: a rerun could start beside them."""
    s = spec(parallelism=2, payloads={"count": 10}, retry={"limit": 0})
    b = accepted(s, items=10)
    chunk = job(0, 10, parallelism=2, succeeded="0", failed="1", active=2)
    failed = persisted(b, plan(b, [chunk], T0, failures=failures(failure(1))))
    p = plan(failed, [chunk], T0)
    assert p.suspend == [SuspendJob(chunk.name)]
    assert (p.release, p.delete) == ([], [])
    stopping = dataclasses.replace(chunk, suspended=True, active=0, terminating=1)
    p = plan(failed, [stopping], T0)
    assert (p.suspend, p.release, p.delete) == ([], [], [])
    assert p.requeue_after == planner.STOPPING_RECHECK_SECONDS  # its reconciler must not end meanwhile
    gone = dataclasses.replace(chunk, suspended=True, active=0)
    p = plan(failed, [gone], T0)
    assert [r.name for r in p.release] == [chunk.name]
    assert p.delete == [DeleteJob(chunk.name)]


def test_a_success_seen_after_the_batch_failed_is_recorded_before_a_rerun_and_never_rerun() -> None:
    s = spec(parallelism=4, payloads={"count": 4}, retry={"limit": 0})
    b = accepted(s, items=4)
    failed = persisted(b, plan(b, [job(0, 4, succeeded="0", failed="1", active=2)], T0, failures=failures(failure(1))))
    late = job(0, 4, succeeded="0,2-3", failed="1", finalizers=FIN)  # 2 and 3 succeeded before the suspend landed
    p = plan(asking(failed, id="r"), [late], T0, failures=failures(failure(1)))
    assert p.status.rerun is None
    assert p.status.succeeded_shards == "0,2-3"
    start = plan(persisted(asking(failed, id="r"), p), [], T0)
    rerun = start.status.rerun
    assert rerun is not None
    assert rerun.shards == 1  # shard 1 only


def test_shards_that_are_not_ranges_are_refused_not_crashed_on() -> None:
    done, kept = finished_with_failure()
    p = plan(asking(done, id="bad", shards="9-3"), [kept], T0)
    assert cond(p, "Rerunning") == ("False", "InvalidShards")
    assert p.status.phase == "Succeeded"
    with pytest.raises(ValueError, match="pattern"):
        api.Rerun.model_validate({"id": "x", "shards": "1" * 9})


def test_a_rerun_the_batch_was_created_with_is_taken_as_answered() -> None:
    """A manifest applied again, rerun and all, must not rerun the new batch's failures."""
    s = spec(parallelism=4, payloads={"count": 4}, retry={"limit": 0}, maxFailedShards=1, rerun={"id": "old"})
    b = accepted(s, items=4)
    rerun = b.status.rerun
    assert rerun is not None
    assert (rerun.id, rerun.shards, rerun.count) == ("old", 0, 0)
    done = persisted(b, plan(b, [job(0, 4, succeeded="0,2-3", failed="1")], T0, failures=failures(failure(1))))
    assert plan(done, [], T0).status.rerun == rerun


def test_a_worker_that_asks_for_no_retry_fails_its_shard_at_once() -> None:
    s = spec(parallelism=2, payloads={"count": 2}, retry={"limit": 3})
    b = accepted(s, items=2)
    chunk = job(0, 2, succeeded="1", failed="0")
    asked = dataclasses.replace(failure(0, code=1), message="jobbatch.io/skip-retry: row 3 is not an email")
    p = plan(b, [chunk], T0, failures=failures(asked))
    (f,) = p.status.failures
    assert (f.reason, f.attempt, f.exit_code) == ("SkipRetry", 0, 1)
    assert f.message == "attempt 0 failed (exit code 1) and asked for no retry: row 3 is not an email"
    assert p.status.phase == "Failed"
    # Disrupted: the message is who stopped it, never the worker's verdict.
    evicted = dataclasses.replace(asked, disrupted=True)
    assert plan(b, [chunk], T0, failures=failures(evicted)).status.failures == []
