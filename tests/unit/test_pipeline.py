"""The import pipeline's pod deletions: counted only when they cost the shard an attempt."""

from __future__ import annotations

from e2e.pipeline import PodDeletions, WorkerPod, _newest_running, fault_points
from jobbatch.ranges import IndexRanges

RUNNING: list[WorkerPod] = [((3, 0), "b-3-0", "2026-12-02T10:00:02Z"), ((4, 0), "b-4-0", "2026-12-02T10:00:05Z")]


def test_the_newest_running_pod_is_chosen() -> None:
    assert _newest_running([*RUNNING, ((5, 0), "b-5-0", None)]) == ((4, 0), "b-4-0")
    assert _newest_running([((5, 0), "b-5-0", None)]) is None


def test_a_deletion_counts_once_its_shard_is_seen_retried() -> None:
    chaos = PodDeletions(due=[2])
    assert not chaos.want(1)
    assert chaos.want(2)
    chaos.deleted("b-4-0", (4, 0))
    assert not chaos.want(9)  # one at a time: its outcome is not known yet
    chaos.observe(RUNNING, IndexRanges.parse("0-2"))
    assert chaos.pending == ("b-4-0", (4, 0))  # still running: no verdict
    assert chaos.confirmed == []
    chaos.observe([((4, 1), "b-4-1", None)], IndexRanges.parse("0-2"))
    assert chaos.confirmed == ["b-4-0"]
    assert chaos.late == []
    assert not chaos.want(9)  # all done


def test_a_deletion_that_came_after_the_work_is_set_aside_and_another_pod_deleted() -> None:
    """The API said running, but the worker had exited 0: the shard succeeds with no retry."""
    chaos = PodDeletions(due=[2, 5])
    chaos.deleted("b-4-0", (4, 0))
    chaos.observe([((3, 0), "b-3-0", None)], IndexRanges.parse("0-2,4"))
    assert chaos.late == ["b-4-0"]
    assert chaos.confirmed == []
    assert chaos.pending is None
    assert chaos.want(3)  # a replacement now, before the next planned one
    chaos.deleted("b-3-0", (3, 0))
    assert chaos.due == [5]
    chaos.observe([((3, 1), "b-3-1", "2026-12-02T10:00:09Z")], IndexRanges.parse("0-2,4"))
    assert chaos.confirmed == ["b-3-0"]


def test_fault_points_spread_deletions_before_kills() -> None:
    delete_at, kill_at = fault_points(10, 1, 1)
    assert delete_at == [2]
    assert kill_at == [7]
