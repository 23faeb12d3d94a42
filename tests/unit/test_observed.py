"""Distilling Job and pod bodies into what the planner reads, and whom they are trusted for."""

from __future__ import annotations

from typing import Any

from jobbatch import naming
from jobbatch.api import (
    KIND,
    LABEL_ATTEMPT,
    LABEL_BATCH_UID,
    LABEL_COMPLETION_INDEX,
    LABEL_FIRST_SHARD,
    SHARD_FINALIZER,
)
from jobbatch.observed import batch_uid_of, summarize, summarize_failed_pod
from jobbatch.ranges import IndexRanges


def job(status: dict[str, Any], *, deleting: bool = False, suspend: bool = False, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": naming.job_name("b", "u", 10, 1),
        "uid": "job-uid",
        "labels": {LABEL_BATCH_UID: "u", LABEL_FIRST_SHARD: "10", LABEL_ATTEMPT: "1"},
        "finalizers": [SHARD_FINALIZER],
        "ownerReferences": [{"kind": KIND, "name": "b", "uid": "u", "controller": True}],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:05Z"
    body_spec = {"completionMode": "Indexed", "completions": 5, "parallelism": 2, "suspend": suspend, **spec}
    return {"metadata": meta, "spec": body_spec, "status": status}


def test_indexes_become_absolute_shards() -> None:
    j = summarize(job({"completedIndexes": "0-1,3", "failedIndexes": "2", "active": 1}))
    assert j is not None
    assert (j.first, j.count, j.attempt, j.parallelism) == (10, 5, 1, 2)
    assert j.succeeded == IndexRanges.parse("10-11,13")
    assert j.failed == IndexRanges.parse("12")
    assert j.unfinished == 1
    assert j.slots == 1
    assert not j.finished


def test_slots_count_pods_still_stopping() -> None:
    j = summarize(job({"active": 0, "terminating": 2}, parallelism=0))
    assert j is not None
    assert j.slots == 2
    suspended = summarize(job({"terminating": 1}, suspend=True))
    assert suspended is not None
    assert suspended.slots == 1


def test_finished_jobs_hold_no_slots() -> None:
    cond = {"type": "Failed", "status": "True", "reason": "FailedIndexes", "lastTransitionTime": "2026-01-01T00:00:09Z"}
    j = summarize(job({"completedIndexes": "0-3", "failedIndexes": "4", "conditions": [cond]}))
    assert j is not None
    assert j.finished
    assert j.slots == 0
    assert j.reason == "FailedIndexes"
    assert j.finished_at is not None
    assert j.finished_at.second == 9


def test_deleted_job_is_lost_once_its_pods_are_gone() -> None:
    running = summarize(job({"active": 1}, deleting=True))
    assert running is not None
    assert not running.lost
    assert running.slots == 1
    gone = summarize(job({}, deleting=True))
    assert gone is not None
    assert gone.lost


def test_not_a_shard_job() -> None:
    assert summarize({"metadata": {"name": "x", "labels": {}}, "spec": {}}) is None
    not_indexed = job({})
    not_indexed["spec"]["completionMode"] = "NonIndexed"
    assert summarize(not_indexed) is None


def test_the_owner_is_the_controller_reference_not_the_labels() -> None:
    assert batch_uid_of(job({})) == "u"
    forged = job({})
    forged["metadata"]["ownerReferences"] = []
    assert batch_uid_of(forged) is None  # labels alone prove nothing
    relabelled = job({})
    relabelled["metadata"]["labels"][LABEL_FIRST_SHARD] = "11"  # the name says 10
    assert summarize(relabelled) is None


def pod(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "b-x-10-1-3-abcde",
            "labels": {LABEL_BATCH_UID: "u", LABEL_FIRST_SHARD: "10", LABEL_ATTEMPT: "1", LABEL_COMPLETION_INDEX: "3"},
            "ownerReferences": [{"kind": "Job", "name": "b-x-10-1", "uid": "job-uid", "controller": True}],
        },
        "status": {"phase": "Failed", **status},
    }


def test_failed_pod_gives_shard_attempt_and_exit_code() -> None:
    terminated = {"exitCode": 42, "reason": "Error", "finishedAt": "2026-01-01T00:00:07Z"}
    f = summarize_failed_pod(pod(containerStatuses=[{"state": {"terminated": terminated}}]))
    assert f is not None
    assert (f.job_uid, f.shard, f.attempt, f.exit_code, f.reason) == ("job-uid", 13, 1, 42, "Error")
    assert f.finished_at is not None
    assert f.finished_at.second == 7


def test_pod_reason_wins_over_the_container_reason() -> None:
    terminated = {"exitCode": 143, "reason": "Error"}
    f = summarize_failed_pod(pod(reason="DeadlineExceeded", containerStatuses=[{"state": {"terminated": terminated}}]))
    assert f is not None
    assert f.reason == "DeadlineExceeded"
    assert f.exit_code == 143


def test_a_disrupted_pod_says_who_stopped_it() -> None:
    terminated = {"exitCode": 143, "reason": "Error", "message": "simulated SIGTERM"}
    disruption = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                  "message": "Eviction API: evicting"}  # fmt: skip
    f = summarize_failed_pod(pod(conditions=[disruption], containerStatuses=[{"state": {"terminated": terminated}}]))
    assert f is not None
    assert (f.disrupted, f.reason, f.exit_code) == (True, "Disrupted", 143)
    assert f.message == "EvictionByEvictionAPI: Eviction API: evicting"
    plain = summarize_failed_pod(pod(containerStatuses=[{"state": {"terminated": terminated}}]))
    assert plain is not None
    assert not plain.disrupted
    gone = summarize_failed_pod(pod(conditions=[{**disruption, "status": "False"}]))
    assert gone is not None
    assert not gone.disrupted


def test_running_or_unowned_pods_are_not_failures() -> None:
    assert summarize_failed_pod({**pod(), "status": {"phase": "Running"}}) is None
    orphan = pod()
    orphan["metadata"]["ownerReferences"] = []
    assert summarize_failed_pod(orphan) is None


def test_a_sidecar_stopped_with_the_pod_is_not_the_verdict_and_a_skip_retry_speaks_for_the_pod() -> None:
    sidecar = {"name": "proxy", "state": {"terminated": {"exitCode": 143, "reason": "Error", "message": "bye"}}}
    helper = {"name": "helper", "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "boom"}}}
    worker = {"name": "worker", "state": {"terminated": {"exitCode": 1, "reason": "Error",
                                                         "message": "jobbatch.io/skip-retry: row 3"}}}  # fmt: skip
    body = pod(initContainerStatuses=[sidecar], containerStatuses=[helper, worker])
    body["spec"] = {"initContainers": [{"name": "proxy", "restartPolicy": "Always"}]}
    f = summarize_failed_pod(body)
    assert f is not None
    assert (f.exit_code, f.message) == (1, "jobbatch.io/skip-retry: row 3")
    body["status"]["containerStatuses"] = [helper]
    f = summarize_failed_pod(body)
    assert f is not None
    assert (f.exit_code, f.message) == (1, "boom")  # the worker's, not the sidecar's 143


def test_a_job_refills_its_own_slots_only_while_running_with_indexes_not_started() -> None:
    def refills(status: dict[str, Any], **kw: Any) -> bool:
        j = summarize(job(status, **kw))
        assert j is not None
        return j.refills_itself

    assert refills({"completedIndexes": "0", "active": 2})  # 4 left, 2 running: its next pod takes the slot
    assert refills({"completedIndexes": "0", "active": 1})  # below its parallelism: the Job controller fills it
    assert not refills({"completedIndexes": "0-2", "active": 2})  # draining: a freed slot is another Job's
    assert not refills({"active": 3}, parallelism=2)  # shrunk: its pods above parallelism free slots for others
    assert not refills({"active": 1}, suspend=True)
    assert not refills({"active": 1}, deleting=True)
    done = {"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:09Z"}
    assert not refills({"completedIndexes": "0-4", "conditions": [done]})
