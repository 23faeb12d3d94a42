"""The pure reconcile decision, without a cluster."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from jobbatch import planner
from jobbatch.api import JobBatchSpec, JobBatchStatus
from jobbatch.backoff import retry_delay
from jobbatch.observed import ShardJob
from jobbatch.planner import Acceptance, Batch, Launch, plan
from jobbatch.ranges import IndexRanges

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
UID = "uid-1"


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
    st = first.status.model_copy(update=status)
    return batch(s, st)


def job(shard: int, attempt: int = 0, state: str = "active", at: float = 0, **kw: Any) -> ShardJob:
    finished = T0 + datetime.timedelta(seconds=at) if state in ("succeeded", "failed") else None
    return ShardJob(name=f"b-{shard}-{attempt}", shard=shard, attempt=attempt, state=state, finished_at=finished, **kw)  # type: ignore[arg-type]


def cond(p: planner.Plan, ctype: str) -> tuple[str, str] | None:
    c = p.status.condition(ctype)
    return (c.status, c.reason) if c else None


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


def test_acceptance_then_launch_in_index_order_up_to_parallelism() -> None:
    s = spec(parallelism=3, shardSize=4)
    p = plan(batch(s), [], T0, acceptance=Acceptance(True, "Accepted", "", item_count=10))
    # Acceptance is persisted before anything launches: no later pass re-reads a changed source.
    assert p.create == []
    assert p.requeue_after == 0
    assert cond(p, "Accepted") == ("True", "Accepted")
    assert p.status.shards.total == 3
    p = plan(batch(s, p.status), [], T0)
    assert p.create == [Launch(0, 0), Launch(1, 0), Launch(2, 0)]
    assert p.status.phase == "Running"
    assert p.status.start_time == T0
    assert p.status.progress == "0/3"
    assert "Started" in [e.reason for e in p.events]


def test_running_attempts_use_up_parallelism() -> None:
    b = accepted(spec(parallelism=3))
    p = plan(b, [job(0), job(1), job(4, state="suspended")], T0)
    # One slot: the parked (suspended) attempt of shard 4 resumes before anything new.
    assert p.resume == ["b-4-0"]
    assert p.create == []
    p = plan(b, [job(0), job(1), job(2)], T0)
    assert p.create == []
    assert p.status.shards.running == 3


def test_success_is_recorded_before_its_job_is_released() -> None:
    b = accepted(spec(parallelism=2), items=3)
    p1 = plan(b, [job(0, state="succeeded"), job(1)], T0)
    assert p1.status.succeeded_shards == "0"
    assert p1.release == []  # not yet persisted
    assert p1.create == [Launch(2, 0)]
    p2 = plan(batch(b.spec, p1.status), [job(0, state="succeeded"), job(1), job(2)], T0)
    assert p2.release == ["b-0-0"]
    assert p2.delete == ["b-0-0"]
    assert p2.create == []  # shard 0 is never launched again


def test_recorded_shard_without_job_is_not_relaunched() -> None:
    b = accepted(spec(parallelism=5), items=3, succeeded_shards="0-1")
    assert plan(b, [], T0).create == [Launch(2, 0)]


def test_retry_waits_out_the_backoff_then_launches_next_attempt() -> None:
    s = spec(parallelism=5, retry={"limit": 2, "backoff": {"initialSeconds": 10, "multiplier": 2, "jitter": 0.1}})
    b = accepted(s, items=1)
    failed = job(0, 0, "failed", at=0, exit_code=1, reason="PodFailurePolicy")
    delay = retry_delay(s.retry.backoff, UID, 0, 0)
    assert 9.0 <= delay <= 11.0
    early = plan(b, [failed], T0 + datetime.timedelta(seconds=delay - 1))
    assert early.create == []
    assert early.status.shards.retrying == 1
    assert early.requeue_after == pytest.approx(1.0)
    due = plan(b, [failed], T0 + datetime.timedelta(seconds=delay))
    assert due.create == [Launch(0, 1)]
    assert "ShardRetrying" in [e.reason for e in due.events]
    # The failed attempt stays until the next attempt is observed, then is released (and kept as history).
    nxt = plan(b, [failed, job(0, 1)], T0 + datetime.timedelta(seconds=delay + 1))
    assert nxt.release == ["b-0-0"]
    assert nxt.delete == []


def test_second_retry_delay_doubles() -> None:
    s = spec(retry={"backoff": {"initialSeconds": 10, "multiplier": 2, "jitter": 0}})
    assert retry_delay(s.retry.backoff, UID, 0, 0) == 10
    assert retry_delay(s.retry.backoff, UID, 0, 1) == 20
    assert retry_delay(s.retry.backoff, UID, 0, 10) == 600  # capped by maxSeconds


def test_jitter_is_deterministic_and_bounded() -> None:
    s = spec(retry={"backoff": {"initialSeconds": 100, "jitter": 0.2}})
    delays = [retry_delay(s.retry.backoff, UID, shard, 0) for shard in range(200)]
    assert delays == [retry_delay(s.retry.backoff, UID, shard, 0) for shard in range(200)]
    assert all(80 <= d <= 120 for d in delays)
    assert len(set(delays)) > 150  # spread, not one value


def test_non_retryable_exit_code_fails_the_shard_and_the_batch() -> None:
    b = accepted(spec(parallelism=5, retry={"nonRetryableExitCodes": [3]}), items=5)
    jobs = [job(0, state="failed", exit_code=3, reason="PodFailurePolicy"), job(1), job(2)]
    p = plan(b, jobs, T0)
    assert p.status.failed_shards == "0"
    assert p.status.phase == "Failed"
    assert cond(p, "Failed") == ("True", "ShardsFailed")
    failed_cond = p.status.condition("Failed")
    assert failed_cond is not None
    assert "shard 0 (NonRetryableExitCode, exit code 3)" in failed_cond.message
    assert p.create == []
    assert sorted(p.suspend) == ["b-1-0", "b-2-0"]  # running attempts are stopped
    assert {"ShardFailed", "Failed"} <= {e.reason for e in p.events}
    # Once the failure is persisted, every Job is released and the stopped ones deleted.
    p2 = plan(batch(b.spec, p.status), [*jobs[:1], job(1, state="suspended"), job(2, state="suspended")], T0)
    assert sorted(p2.release) == ["b-0-0", "b-1-0", "b-2-0"]
    assert sorted(p2.delete) == ["b-1-0", "b-2-0"]  # the failed one is kept as history


def test_tolerated_failures_still_complete() -> None:
    b = accepted(spec(maxFailedShards=1, retry={"limit": 0}), items=2)
    p = plan(b, [job(0, state="failed", exit_code=1), job(1, state="succeeded")], T0)
    assert p.status.phase == "Succeeded"
    assert cond(p, "Complete") == ("True", "Completed")
    assert p.status.failed_shards == "0"
    assert p.status.succeeded_shards == "1"
    assert p.status.failures[0].reason == "RetriesExhausted"


def test_suspend_stops_running_and_resume_restarts_them_first() -> None:
    b = accepted(spec(parallelism=2, suspend=True), items=4)
    p = plan(b, [job(0), job(1)], T0)
    assert sorted(p.suspend) == ["b-0-0", "b-1-0"]
    assert p.create == []
    assert p.status.phase == "Suspended"
    assert cond(p, "Suspended") == ("True", "Suspended")
    resumed = batch(spec(parallelism=2, suspend=False), p.status)
    p2 = plan(resumed, [job(0, state="suspended"), job(1, state="suspended")], T0)
    assert sorted(p2.resume) == ["b-0-0", "b-1-0"]
    assert p2.create == []
    assert cond(p2, "Suspended") == ("False", "Resumed")
    assert p2.status.phase == "Running"


def test_parallelism_zero_launches_nothing() -> None:
    assert plan(accepted(spec(parallelism=0)), [], T0).create == []


def test_cluster_budget_limits_launches_and_reports_demand() -> None:
    p = plan(accepted(spec(parallelism=5)), [], T0, launch_budget=2)
    assert p.create == [Launch(0, 0), Launch(1, 0)]
    assert p.unmet_demand == 3


def test_start_after_delays_everything() -> None:
    s = spec(startAfter=(T0 + datetime.timedelta(seconds=30)).isoformat())
    p = plan(accepted(s), [], T0)
    assert p.create == []
    assert p.requeue_after == 30
    assert plan(accepted(s), [], T0 + datetime.timedelta(seconds=30)).create


def test_batch_deadline_fails_it() -> None:
    b = accepted(spec(activeDeadlineSeconds=60), start_time=T0)
    p = plan(b, [job(0)], T0 + datetime.timedelta(seconds=61))
    assert cond(p, "Failed") == ("True", "DeadlineExceeded")
    assert p.suspend == ["b-0-0"]


def test_ttl_deletes_the_finished_batch() -> None:
    b = accepted(spec(ttlSecondsAfterFinished=100), items=1)
    done = plan(b, [job(0, state="succeeded")], T0).status
    assert done.phase == "Succeeded"
    later = batch(b.spec, done)
    assert not plan(later, [], T0 + datetime.timedelta(seconds=99)).delete_batch
    assert plan(later, [], T0 + datetime.timedelta(seconds=99)).requeue_after == pytest.approx(1)
    assert plan(later, [], T0 + datetime.timedelta(seconds=100)).delete_batch


def test_deleted_running_job_counts_as_a_failed_attempt() -> None:
    b = accepted(spec(retry={"backoff": {"initialSeconds": 0}}), items=1)
    p = plan(b, [job(0, state="failed", reason="Deleted")], T0)
    assert p.create == [Launch(0, 1)]


def test_nothing_changed_means_no_status_write() -> None:
    b = accepted(spec(parallelism=2), items=3)
    p = plan(b, [job(0), job(1)], T0)
    again = plan(batch(b.spec, p.status), [job(0), job(1)], T0 + datetime.timedelta(seconds=5))
    assert not again.status_changed
    assert again.create == []


def test_condition_keeps_transition_time_until_status_flips() -> None:
    conds = planner.set_condition([], "Running", "True", "Running", "", T0, 1)
    later = T0 + datetime.timedelta(seconds=9)
    same = planner.set_condition(conds, "Running", "True", "Running", "other message", later, 2)
    assert same[0].last_transition_time == T0
    flipped = planner.set_condition(same, "Running", "False", "Suspended", "", later, 2)
    assert flipped[0].last_transition_time == later


def test_status_of_100k_shards_with_scattered_failures_stays_small() -> None:
    total = 100_000
    failed = list(range(37, total, 997))  # ~100 scattered permanent failures
    s = spec(payloads={"count": total}, maxFailedShards=10_000, retry={"limit": 0}, parallelism=1000)
    b = accepted(s, items=total, succeeded_shards=str(IndexRanges.of(i for i in range(total) if i not in set(failed))))
    p = plan(b, [job(f, state="failed", exit_code=1) for f in failed], T0)
    assert p.status.phase == "Succeeded"
    assert len(p.status.failures) <= planner.MAX_RECORDED_FAILURES
    size = len(json.dumps(p.status.dump()))
    assert size < 16 * 1024, size


def test_item_ranges_cover_all_items_once() -> None:
    ranges = [planner.item_range(i, 7, 50) for i in range(planner.shard_count(50, 7))]
    assert ranges[0] == (0, 7)
    assert ranges[-1] == (49, 50)
    assert sum(end - start for start, end in ranges) == 50


def test_start_is_derived_from_observed_attempts() -> None:
    # A pass created Jobs but its status write lost a race: the next pass sees them running.
    b = accepted(spec(parallelism=5, activeDeadlineSeconds=60), items=1)
    p = plan(b, [job(0)], T0)
    assert p.status.start_time == T0
    assert p.status.phase == "Running"
    assert "Started" in [e.reason for e in p.events]
    late = plan(batch(b.spec, p.status), [job(0)], T0 + datetime.timedelta(seconds=61))
    assert cond(late, "Failed") == ("True", "DeadlineExceeded")


def test_finishing_just_before_the_deadline_is_success() -> None:
    # The last shard succeeded at 59 s; the pass that notices runs at 61 s, past the 60 s deadline.
    b = accepted(spec(activeDeadlineSeconds=60), items=1, start_time=T0)
    p = plan(b, [job(0, state="succeeded", at=59)], T0 + datetime.timedelta(seconds=61))
    assert cond(p, "Complete") == ("True", "Completed")
    assert p.status.condition("Failed") is None


def test_ttl_zero_deletes_only_after_the_outcome_is_persisted() -> None:
    b = accepted(spec(ttlSecondsAfterFinished=0), items=1)
    p = plan(b, [job(0, state="succeeded")], T0)
    assert p.status.phase == "Succeeded"
    assert not p.delete_batch
    assert plan(batch(b.spec, p.status), [], T0).delete_batch
