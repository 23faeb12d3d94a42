"""The shard Job index: what watch events and fresh lists do to it (the watch itself runs in integration)."""

from __future__ import annotations

from typing import Any

from jobbatch.api import LABEL_ATTEMPT, LABEL_BATCH_UID, LABEL_SHARD, SHARD_FINALIZER
from jobbatch.jobwatch import ShardJobIndex


def job(name: str, uid: str = "u1", namespace: str = "ns1", shard: int = 0, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {LABEL_BATCH_UID: uid, LABEL_SHARD: str(shard), LABEL_ATTEMPT: "0"},
            "finalizers": [SHARD_FINALIZER],
        },
        "spec": {},
        "status": status,
    }


def test_events_add_update_and_remove_summaries_by_batch() -> None:
    index = ShardJobIndex()
    assert index.apply("ADDED", job("a")) == "u1"
    index.apply("ADDED", job("b", shard=1))
    done = job("a", conditions=[{"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}])
    index.apply("MODIFIED", done)
    assert {(j.name, j.state) for j in index.jobs("u1")} == {("a", "succeeded"), ("b", "active")}
    index.apply("DELETED", done)
    assert [j.name for j in index.jobs("u1")] == ["b"]
    index.apply("DELETED", job("b", shard=1))
    assert index.jobs("u1") == []
    assert dict(index.by_batch()) == {}  # no empty entries left behind


def test_jobs_that_are_not_shard_jobs_are_ignored() -> None:
    index = ShardJobIndex()
    other = {"metadata": {"name": "x", "namespace": "ns1", "labels": {"app": "y"}}, "spec": {}, "status": {}}
    assert index.apply("ADDED", other) is None
    assert dict(index.by_batch()) == {}


def test_a_fresh_list_replaces_its_namespace_only() -> None:
    index = ShardJobIndex()
    index.apply("ADDED", job("a", uid="u1", namespace="ns1"))
    index.apply("ADDED", job("gone", uid="u3", namespace="ns1"))
    index.apply("ADDED", job("c", uid="u2", namespace="ns2"))
    touched = index.replace("ns1", [job("a", uid="u1", namespace="ns1"), job("d", uid="u1", namespace="ns1", shard=2)])
    # Batches whose Jobs vanished while the watch was down are touched too: their reconcilers must look.
    assert touched == {"u1", "u3"}
    assert sorted(j.name for j in index.jobs("u1")) == ["a", "d"]
    assert index.jobs("u3") == []
    assert [j.name for j in index.jobs("u2")] == ["c"]  # another namespace's watch owns it
    assert index.replace(None, []) == {"u1", "u2"}
    assert dict(index.by_batch()) == {}
