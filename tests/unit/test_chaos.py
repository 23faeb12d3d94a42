"""The chaos tier's judgement: the truth that worker pods give, against what the batch recorded."""

from __future__ import annotations

from e2e.chaos import PodRecord, extra_attempts, judge, truth


def pods(*records: tuple[int, int, int | None]) -> dict[str, PodRecord]:
    return {f"uid-{i}": PodRecord(shard, attempt, code) for i, (shard, attempt, code) in enumerate(records)}


def test_truth_from_pods() -> None:
    seen = truth(pods((0, 0, 0), (1, 0, 7), (1, 1, 0), (2, 0, 7), (2, 1, 7), (3, 0, 0), (3, 0, 0)), 5, retry_limit=1)
    assert str(seen.succeeded) == "0-1,3"
    assert str(seen.failed) == "2"  # both its attempts (the limit) failed
    assert seen.run_twice == [(3, 0)]
    assert seen.attempts == {0: [0], 1: [0, 1], 2: [0, 1], 3: [0]}


def test_judge_counts_lost_shards_and_a_wrong_status() -> None:
    seen = truth(pods((0, 0, 0), (1, 0, 0), (2, 0, None)), 4, retry_limit=1)
    right = judge({"succeededShards": "0-1", "phase": "Succeeded"}, seen, 4)
    assert right["shards_lost"] == 2  # shard 2 never ended, shard 3 never ran
    assert right["status_equals_truth"]
    wrong = judge({"succeededShards": "0-3"}, seen, 4)
    assert wrong["shards_lost"] == 4  # and two recorded as succeeded without a pod that did
    assert not wrong["status_equals_truth"]


def test_extra_attempts_beyond_the_injected_failures() -> None:
    assert extra_attempts({0: [0], 1: [0, 1, 2], 2: [0, 1]}, failing={1}) == 1
