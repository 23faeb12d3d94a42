from __future__ import annotations

from typing import Any

from jobbatch.api import LABEL_ATTEMPT, LABEL_BATCH_UID, LABEL_SHARD, SHARD_FINALIZER
from jobbatch.observed import summarize


def job(status: dict[str, Any], *, deleting: bool = False, suspend: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "b-x-3-1",
        "labels": {LABEL_BATCH_UID: "u", LABEL_SHARD: "3", LABEL_ATTEMPT: "1"},
        "finalizers": [SHARD_FINALIZER],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:05Z"
    return {"metadata": meta, "spec": {"suspend": suspend}, "status": status}


def failed(message: str, reason: str = "PodFailurePolicy") -> dict[str, Any]:
    cond = {"type": "Failed", "status": "True", "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:09Z"}  # fmt: skip
    return {"conditions": [cond], "startTime": "2026-01-01T00:00:01Z"}


def test_exit_code_comes_from_the_pod_failure_policy_message() -> None:
    msg = "Container worker for pod ns/b-x-3-1-abcde failed with exit code 42 matching FailJob rule at index 1"
    s = summarize(job(failed(msg)))
    assert s is not None
    assert (s.shard, s.attempt, s.state, s.exit_code, s.reason) == (3, 1, "failed", 42, "PodFailurePolicy")
    assert s.has_finalizer
    assert s.started_at is not None


def test_deadline_failure_has_no_exit_code() -> None:
    s = summarize(job(failed("Job was active longer than specified deadline", "DeadlineExceeded")))
    assert s is not None
    assert (s.state, s.exit_code, s.reason) == ("failed", None, "DeadlineExceeded")


def test_deleted_job_still_running_counts_as_running() -> None:
    s = summarize(job({"active": 1}, deleting=True))
    assert s is not None
    assert s.state == "active"
    gone = summarize(job({"active": 0}, deleting=True))
    assert gone is not None
    assert (gone.state, gone.reason) == ("failed", "Deleted")


def test_suspended_and_foreign_jobs() -> None:
    s = summarize(job({}, suspend=True))
    assert s is not None
    assert s.state == "suspended"
    assert summarize({"metadata": {"name": "x", "labels": {}}}) is None
