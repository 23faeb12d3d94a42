"""The shard Job and failed-pod indexes: what watch events and fresh lists do (the watches run in integration)."""

from __future__ import annotations

from typing import Any

from jobbatch import naming
from jobbatch.api import KIND, LABEL_ATTEMPT, LABEL_BATCH_UID, LABEL_COMPLETION_INDEX, LABEL_FIRST_SHARD
from jobbatch.jobwatch import FailedPodIndex, ShardJobIndex


def job(
    name: str, uid: str = "u1", namespace: str = "ns1", first: int = 0, owner: str | None = None, **status: Any
) -> dict[str, Any]:
    """A shard Job; the test calls it ``name``, which stands for its first shard."""
    first = first or {"a": 0, "b": 3, "c": 6}.get(name, 9)
    return {
        "metadata": {
            "name": naming.job_name("b", owner or uid, first, 0),
            "uid": f"uid-{name}",
            "namespace": namespace,
            "labels": {LABEL_BATCH_UID: uid, LABEL_FIRST_SHARD: str(first), LABEL_ATTEMPT: "0"},
            "ownerReferences": [{"kind": KIND, "name": "b", "uid": owner or uid, "controller": True}],
        },
        "spec": {"completionMode": "Indexed", "completions": 3, "parallelism": 3},
        "status": status,
    }


def firsts(index: ShardJobIndex, namespace: str, uid: str) -> set[int]:
    return {j.first for j in index.jobs(namespace, uid).values()}


def test_a_job_whose_labels_stop_matching_its_name_is_forgotten() -> None:
    index = ShardJobIndex()
    index.apply("ADDED", job("a"))
    relabelled = job("a")
    relabelled["metadata"]["labels"][LABEL_FIRST_SHARD] = "5"
    index.apply("MODIFIED", relabelled)
    assert index.jobs("ns1", "u1") == {}


def test_events_add_update_and_remove_summaries_by_batch() -> None:
    index = ShardJobIndex()
    assert index.apply("ADDED", job("a")) == "u1"
    index.apply("ADDED", job("b", first=3))
    index.apply("MODIFIED", job("a", completedIndexes="0-2"))
    assert {(j.first, len(j.succeeded)) for j in index.jobs("ns1", "u1").values()} == {(0, 3), (3, 0)}
    assert index.replaced is not None  # the Job as the event before showed it
    assert len(index.replaced.succeeded) == 0
    a = naming.job_name("b", "u1", 0, 0)
    found = index.job("ns1", "u1", a)  # one Job, as the last event showed it
    assert found is not None
    assert len(found.succeeded) == 3
    assert index.job("ns2", "u1", a) is None
    index.apply("DELETED", job("a"))
    assert index.job("ns1", "u1", a) is None
    assert firsts(index, "ns1", "u1") == {3}
    index.apply("DELETED", job("b"))
    assert index.jobs("ns1", "u1") == {}
    assert index.by_batch() == {}


def test_a_job_belongs_to_a_batch_only_by_owner_and_namespace() -> None:
    index = ShardJobIndex()
    # Another namespace's Job naming the batch's UID in its ownerReference and labels: not the batch's.
    index.apply("ADDED", job("intruder", uid="u1", namespace="ns2"))
    assert index.jobs("ns1", "u1") == {}
    # Labels of one batch, owned by another: counted for its owner only.
    index.apply("ADDED", job("copied", uid="u1", owner="u2"))
    assert index.jobs("ns1", "u1") == {}
    assert firsts(index, "ns1", "u2") == {9}


def test_a_fresh_list_replaces_one_namespace_only() -> None:
    index = ShardJobIndex()
    index.apply("ADDED", job("a", namespace="ns1"))
    index.apply("ADDED", job("b", uid="u2", namespace="ns2"))
    touched = index.replace("ns1", [job("c", namespace="ns1")])
    assert touched == {"u1"}
    assert firsts(index, "ns1", "u1") == {6}
    assert firsts(index, "ns2", "u2") == {3}


def pod(name: str, job_uid: str = "uid-a", index: int = 1, finished: str = "2026-01-01T00:00:01Z") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns1",
            "labels": {
                LABEL_BATCH_UID: "u1",
                LABEL_FIRST_SHARD: "10",
                LABEL_ATTEMPT: "0",
                LABEL_COMPLETION_INDEX: str(index),
            },
            "ownerReferences": [{"kind": "Job", "name": "a", "uid": job_uid, "controller": True}],
        },
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"state": {"terminated": {"exitCode": 3, "finishedAt": finished}}}],
        },
    }


def test_failed_pods_by_job_latest_per_shard() -> None:
    index = FailedPodIndex()
    assert index.apply("ADDED", pod("p1")) == "u1"
    index.apply("ADDED", pod("p2", finished="2026-01-01T00:00:05Z"))
    index.apply("ADDED", pod("p3", job_uid="uid-other"))
    got = index.failures("ns1", ["uid-a"])
    assert list(got) == [(11, 0, 0)]
    assert got[(11, 0, 0)].finished_at is not None
    assert got[(11, 0, 0)].finished_at.second == 5
    # A pod being deleted still counts (its exit code is still the index's); once gone, it does not.
    deleting = pod("p2", finished="2026-01-01T00:00:05Z")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:06Z"
    index.apply("MODIFIED", deleting)
    assert index.failures("ns1", ["uid-a"])[(11, 0, 0)].finished_at.second == 5  # type: ignore[union-attr]
    index.apply("DELETED", deleting)
    assert index.failures("ns1", ["uid-a"])[(11, 0, 0)].finished_at.second == 1  # type: ignore[union-attr]
    index.replace("ns1", [])
    assert index.failures("ns1", ["uid-a", "uid-other"]) == {}


def test_a_failed_pod_counts_only_in_its_jobs_namespace() -> None:
    """A pod elsewhere with a controller reference to the Job's UID (readable by anyone who can read the
    Job) and a later finish does not stand in for the Job's own failed pod (e.g. to forbid the retry)."""
    index = FailedPodIndex()
    index.apply("ADDED", pod("real"))
    forged = pod("forged", finished="2026-01-01T00:00:05Z")
    forged["metadata"]["namespace"] = "attacker"
    forged["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = "jobbatch.io/skip-retry: gotcha"
    index.apply("ADDED", forged)
    got = index.failures("ns1", ["uid-a"])
    assert got[(11, 0, 0)].finished_at is not None
    assert got[(11, 0, 0)].finished_at.second == 1
    assert got[(11, 0, 0)].message == ""
    index.replace("attacker", [])  # a relist of one namespace leaves the others' pods alone
    assert list(index.failures("ns1", ["uid-a"])) == [(11, 0, 0)]


async def test_a_shard_job_event_tells_its_batch_what_it_changed() -> None:
    """The handler hands the batch's reconciler the Job before and after the event."""
    import types

    from jobbatch import handlers

    seen: list[tuple[str, Any, Any]] = []
    reconciler = types.SimpleNamespace(job_changed=lambda kind, job, before: seen.append((kind, job, before)))
    index = ShardJobIndex()
    runtime = types.SimpleNamespace(
        reconcilers={"u1": reconciler}, watch=types.SimpleNamespace(jobs=index), spawn=lambda coro: None
    )
    on_event = handlers.on_shard_job_event(runtime)  # type: ignore[arg-type]
    for kind, body in (("ADDED", job("a", active=3)), ("MODIFIED", job("a", completedIndexes="0", active=2))):
        on_event(kind, index.apply(kind, body) or "", body)
    assert [(k, j.active, b and b.active) for k, j, b in seen] == [("ADDED", 3, None), ("MODIFIED", 2, 3)]
