"""The benchmark's measurements and report, on recorded data (no cluster)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from bench import dashboard, measure, report


def _sample(verb: str, resource: str, value: int, *, group: str = "", sub: str = "", code: str = "200") -> str:
    labels = (
        f'code="{code}",component="apiserver",dry_run="",group="{group}",resource="{resource}",'
        f'scope="resource",subresource="{sub}",verb="{verb}",version="v1"'
    )
    return f"apiserver_request_total{{{labels}}} {value}"


METRICS_BEFORE = "\n".join(
    [
        "# HELP apiserver_request_total Counter of apiserver requests",
        _sample("POST", "jobs", 10, group="batch", code="201"),
        _sample("PATCH", "pods", 4, sub="status"),
        _sample("LIST", "pods", 7),
        'apiserver_request_total{code="200",group="",resource="",subresource="/healthz",verb="GET"} 1',
    ]
)
METRICS_AFTER = "\n".join(
    [
        _sample("POST", "jobs", 30, group="batch", code="201"),
        _sample("POST", "jobs", 2, group="batch", code="409"),
        _sample("PUT", "jobs", 60, group="batch", sub="status"),
        _sample("PATCH", "jobbatches", 3, group="jobbatch.io", sub="status"),
        _sample("PATCH", "pods", 4, sub="status"),
        _sample("LIST", "pods", 99),
    ]
)


def test_writes_are_counted_by_verb_and_resource_over_all_codes() -> None:
    writes = measure.writes_between(measure.request_totals(METRICS_BEFORE), measure.request_totals(METRICS_AFTER))
    # Reads (LIST), unchanged counters and non-resource URLs are left out; codes are summed.
    assert writes == {"PUT jobs.batch/status": 60, "POST jobs.batch": 22, "PATCH jobbatches.jobbatch.io/status": 3}


def test_operator_writes_exclude_what_the_job_controller_writes() -> None:
    writes = {"PUT jobs.batch/status": 60, "POST jobs.batch": 22, "PATCH jobbatches.jobbatch.io/status": 3}
    assert measure.operator_writes(writes) == 25


def test_percentile_is_nearest_rank() -> None:
    data = [float(i) for i in range(1, 101)]
    assert measure.percentile(data, 50) == 50.0
    assert measure.percentile(data, 99) == 99.0
    assert measure.percentile([3.0], 99) == 3.0
    assert measure.percentile([], 50) is None


def test_slot_latency_pairs_finishes_with_the_next_starts_while_work_remains() -> None:
    slots = measure.SlotLatency(total=4)
    slots.start(0.0, "j")
    slots.start(0.0, "j")  # the ramp-up: no slot was freed, no sample
    slots.finish(1.0, "j")
    slots.finish(1.5, "j")
    slots.start(1.2, "j")  # refills the slot freed at 1.0
    slots.start(2.0, "j")  # refills the slot freed at 1.5
    slots.finish(3.0, "j")  # every worker started: nothing to refill
    assert slots.samples == pytest.approx([0.2, 0.5])
    assert slots.summary()["samples"] == 2


def test_slot_latency_tells_refills_inside_a_job_from_hand_overs_to_another() -> None:
    slots = measure.SlotLatency(total=300)
    slots.start(0.0, "chunk-0")
    for i in range(198):  # the chunk refills its own slot 198 times, 0.1 s each
        slots.finish(i + 1.0, "chunk-0")
        slots.start(i + 1.1, "chunk-0")
    slots.finish(300.0, "chunk-0")
    slots.start(301.0, "chunk-1")  # the last freed slot goes to the next chunk, 1 s later
    summary = slots.summary()
    assert (summary["inside_samples"], summary["hand_over_samples"], summary["unknown_samples"]) == (198, 1, 0)
    assert summary["inside_p99"] == pytest.approx(0.1)
    assert summary["hand_over_p99"] == pytest.approx(1.0)
    assert summary["p99"] == pytest.approx(0.1)  # nearest rank 198 of 199
    # The slowest 1 % is what lies at or above the p99: an inside refill and the hand-over.
    assert summary["slowest_hand_over_share"] == 0.5


def test_a_start_takes_its_own_jobs_freed_slot_before_an_older_one_of_another_job() -> None:
    slots = measure.SlotLatency(total=10)
    slots.start(0.0, "old")
    slots.start(0.0, "new")
    slots.finish(1.0, "old")  # a draining chunk's slot, waiting for the operator to hand it over
    slots.finish(2.0, "new")
    slots.start(2.1, "new")  # the new chunk refills its own slot
    slots.start(5.0, "new")  # ... and later gets the old chunk's slot
    assert slots.samples == pytest.approx([1.1, 3.0])  # the headline pairing: first in, first out
    assert [p for _, p in slots.by_path] == ["inside", "hand-over"]
    assert [t for t, _ in slots.by_path] == pytest.approx([0.1, 4.0])


def test_a_pod_whose_job_is_unknown_is_neither_inside_nor_a_hand_over() -> None:
    slots = measure.SlotLatency(total=10)
    slots.start(0.0, None)
    slots.finish(1.0, None)
    slots.start(1.5, None)
    slots.finish(2.0, "j")
    slots.start(2.5, None)
    assert [p for _, p in slots.by_path] == ["unknown", "unknown"]
    assert slots.summary()["slowest_hand_over_share"] == 0.0


def _job(name: str, parallelism: int, ended: int = 0) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"parallelism": parallelism}, "status": {"succeeded": ended}}


def _job_pod(uid: str, job: str, phase: str) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "labels": {"batch.kubernetes.io/job-name": job}}, "status": {"phase": phase}}


def test_a_hand_over_is_split_into_the_jobs_count_the_raise_and_the_create() -> None:
    t = measure.Timeline(total=3, t0=100.0)
    t.on_job(100.0, "ADDED", _job("c0", 1))  # created with a slot: a raise
    t.on_job(100.0, "ADDED", _job("c1", 0))  # created without: not one
    t.on_pod(100.1, "ADDED", _job_pod("p0", "c0", "Pending"))
    t.on_pod(101.0, "MODIFIED", _job_pod("p0", "c0", "Succeeded"))  # frees a slot at 1.0
    t.on_job(101.1, "MODIFIED", _job("c0", 1))  # an event that does not count it yet
    t.on_job(101.3, "MODIFIED", _job("c0", 1, ended=1))  # the Job controller counts it: 0.3 s
    t.on_job(101.5, "MODIFIED", _job("c1", 1))  # the operator raises the next chunk: 0.2 s
    t.on_pod(101.9, "ADDED", _job_pod("p1", "c1", "Pending"))  # its pod: 0.4 s
    assert t.jobs["c0"].raises == [0.0]
    assert t.jobs["c1"].raises == [1.5]
    summary = t.slot_summary()
    assert summary["hand_over_rounds"] == 1
    assert summary["hand_over_status_p50"] == pytest.approx(0.3)
    assert summary["hand_over_raise_p50"] == pytest.approx(0.2)
    assert summary["hand_over_create_p50"] == pytest.approx(0.4)
    assert summary["slowest_hand_over_raise"] == pytest.approx(0.2)


def test_a_hand_overs_steps_when_events_come_early_late_or_not_at_all() -> None:
    jobs = {
        "c0": measure.JobHistory(events=[(2.0, 1), (5.0, 2)]),
        "c1": measure.JobHistory(raises=[0.5, 6.1, 6.3]),
    }
    rounds = measure.hand_over_rounds(
        [
            (1.0, "c0", 1, 3.0, "c1"),  # counted at 2.0; headroom an earlier raise left: no raise step
            (4.0, "c0", 2, 4.5, "c1"),  # started before its Job counted the pod: all of it is status
            (6.0, "c0", 2, 6.5, "c1"),  # counted (5.0) before the pod watch showed it end; the last raise
        ],
        jobs,
    )
    assert rounds["hand_over_rounds"] == 3
    # (status, raise, create): (1.0, 0, 1.0), (0.5, 0, 0), (0, 0.3, 0.2)
    assert (rounds["hand_over_status_p50"], rounds["hand_over_status_p99"]) == pytest.approx((0.5, 1.0))
    assert rounds["hand_over_raise_p99"] == pytest.approx(0.3)
    assert (rounds["hand_over_create_p50"], rounds["hand_over_create_p99"]) == pytest.approx((0.2, 1.0))
    # The slowest 1 % of three is the slowest one (at or above the nearest-rank p99): its steps.
    assert rounds["slowest_hand_over_status"] == pytest.approx(1.0)
    assert rounds["slowest_hand_over_raise"] == pytest.approx(0.0)
    assert rounds["slowest_hand_over_create"] == pytest.approx(1.0)
    assert measure.hand_over_rounds([], jobs)["hand_over_status_p50"] is None


def test_a_pods_job_is_its_label_else_its_controlling_owner() -> None:
    pods: list[dict[str, Any]] = [
        {"metadata": {"labels": {"batch.kubernetes.io/job-name": "a"}}},
        {"metadata": {"ownerReferences": [{"kind": "Job", "name": "b", "controller": True}]}},
        {"metadata": {}},
    ]
    assert [measure._job_of(p) for p in pods] == ["a", "b", None]


def _pod(uid: str, phase: str) -> dict[str, Any]:
    return {"metadata": {"uid": uid}, "status": {"phase": phase}}


def test_timeline_counts_running_and_succeeded_pods_once_each() -> None:
    t = measure.Timeline(total=2, t0=100.0)
    t.on_pod(100.5, "ADDED", _pod("a", "Pending"))
    t.on_pod(101.0, "MODIFIED", _pod("a", "Running"))
    t.on_pod(102.0, "MODIFIED", _pod("a", "Succeeded"))
    t.on_pod(102.1, "MODIFIED", _pod("a", "Succeeded"))  # a repeated phase changes nothing
    t.on_pod(102.5, "ADDED", _pod("b", "Pending"))
    t.on_pod(103.0, "DELETED", _pod("a", "Succeeded"))  # deleting a finished pod: one fewer held
    t.on_pod(103.1, "DELETED", _pod("a", "Succeeded"))  # nothing more
    assert t.first_pod == 0.5
    assert t.series == [(1.0, 1, 0, 0), (2.0, 0, 1, 1), (3.0, 0, 1, 0)]
    assert t.pod_slots.samples == pytest.approx([0.5])
    assert (t.pods_seen, t.pods_ended, t.held_peak) == (2, 1, 1)


def test_finished_pods_held_is_the_peak_of_terminal_pods_not_yet_deleted() -> None:
    t = measure.Timeline(total=4)
    for uid in "abc":
        t.on_pod(0.0, "ADDED", _pod(uid, "Pending"))
    t.on_pod(1.0, "MODIFIED", _pod("a", "Succeeded"))
    t.on_pod(1.1, "MODIFIED", _pod("b", "Failed"))  # a failed attempt's pod is held as well
    t.on_pod(1.2, "DELETED", _pod("a", "Succeeded"))
    t.on_pod(1.3, "ADDED", _pod("d", "Pending"))
    t.on_pod(1.4, "MODIFIED", _pod("d", "Succeeded"))
    assert t.held_peak == 2  # a and b, then b and d
    # A pod deleted before it ended frees its slot, but no finished object is left behind.
    t.on_pod(2.0, "DELETED", _pod("c", "Running"))
    assert t.pods_ended == 4
    assert t.held_peak == 2
    assert t.series[-1] == (2.0, 0, 2, 2)


def test_finished_pods_held_is_every_pod_when_none_is_deleted() -> None:
    # What B does: the Indexed Job keeps all its finished pods until it is deleted.
    t = measure.Timeline(total=3)
    for i, uid in enumerate("abc"):
        t.on_pod(float(i), "ADDED", _pod(uid, "Pending"))
        t.on_pod(i + 0.5, "MODIFIED", _pod(uid, "Succeeded"))
    assert t.held_peak == t.pods_ended == 3


def test_timeline_takes_the_first_terminal_condition_of_the_subject() -> None:
    t = measure.Timeline(total=1, t0=10.0)
    t.on_subject(11.0, {"status": {"conditions": [{"type": "Running", "status": "True"}]}})
    assert _end(t) == (None, None)
    t.on_subject(12.0, {"status": {"conditions": [{"type": "Complete", "status": "True"}]}})
    t.on_subject(13.0, {"status": {"conditions": [{"type": "Complete", "status": "True"}]}})
    assert _end(t) == (2.0, "Complete")


def _end(t: measure.Timeline) -> tuple[float | None, str | None]:
    return t.completed, t.outcome


def _result(system: str, run: int, wall: float, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "plane": "raised",
        "system": system,
        "run": run,
        "shards": 10000,
        "parallelism": 1000,
        "duration": 0.0,
        "wall_seconds": wall,
        "first_pod_seconds": 0.1,
        "pod_slot_latency": {"p50": 0.1, "p99": 0.3, "samples": 10},
        "writes": {"POST pods": 10000, "POST jobs.batch": 10000 if system == "A" else 1},
        "teardown_writes": {"DELETE pods": 10},
        "object_bytes_in_etcd": 4000,
        "cpu_seconds": {"kube-apiserver": 10.0},
        "finished_pods_held_peak": 4000 if system == "A" else 10000,
        "series": [(0.5, 1, 0, 0), (1.0, 0, 1, 1)],
    }
    if system == "A":
        base.update(
            operator_cpu_seconds=30.0,
            operator_peak_rss_bytes=150 * report.MiB,
            operator_metrics={"jobbatch_status_writes_total": 40.0},
        )
    return {**base, **extra}


def test_summary_gives_medians_and_ratios_pair_by_pair() -> None:
    results = [
        _result("A", 1, 110.0),
        _result("B", 1, 100.0),
        _result("A", 2, 130.0),
        _result("B", 2, 100.0),
        _result("A", 3, 120.0),
        _result("B", 3, 80.0),
    ]
    (row,) = report.summarize(results)
    assert row["A"]["wall_seconds"] == 120.0
    assert row["B"]["wall_seconds"] == 100.0
    assert row["ratio"] == pytest.approx(1.2)
    assert row["pair_ratios"] == pytest.approx([1.1, 1.3, 1.5])
    assert row["A"]["cpu_per_1000"] == pytest.approx(3.0)
    assert row["A"]["operator_writes_per_shard"] == pytest.approx(1.0)
    assert row["writes_by_resource"]["B"] == {"POST pods": 1.0, "POST jobs.batch": 0.0001}
    assert (row["A"]["finished_pods_held"], row["B"]["finished_pods_held"]) == (4000, 10000)


def test_writes_per_shard_are_given_for_the_run_and_with_the_teardown() -> None:
    # B leaves its finished pods to the teardown; A deletes its own during the run.
    a = _result("A", 1, 100.0, shards=100, writes={"POST pods": 100, "DELETE pods": 100}, teardown_writes={})
    b = _result("B", 1, 100.0, shards=100, writes={"POST pods": 100}, teardown_writes={"DELETE pods": 100})
    (row,) = report.summarize([a, b])
    assert (row["A"]["writes_per_shard"], row["B"]["writes_per_shard"]) == (2.0, 1.0)
    assert (row["A"]["all_writes_per_shard"], row["B"]["all_writes_per_shard"]) == (2.0, 2.0)
    assert row["figures"]["writes_ratio"] == pytest.approx(2.0)
    assert row["figures"]["all_writes_ratio"] == pytest.approx(1.0)


def test_slot_refill_is_compared_as_a_p99_minus_b_p99() -> None:
    a = _result("A", 1, 100.0, pod_slot_latency={"p50": 0.2, "p99": 0.9, "samples": 9000})
    b = _result("B", 1, 100.0, pod_slot_latency={"p50": 0.1, "p99": 0.6, "samples": 9000})
    (row,) = report.summarize([a, b])
    assert row["figures"]["refill_p99_diff"] == pytest.approx(0.3)
    (target,) = [t for t in report.evaluate_targets([row]) if t["target"].startswith("slot refill p99")]
    assert target["measured"] == pytest.approx(0.3)
    assert target["met"] is False  # over B's p99 + 0.2 s


def _targets(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["target"]: t for t in report.evaluate_targets(rows)}


WALL_RAISED = "wall time A/B at N=10,000, P=1,000, raised plane"
WALL_DEFAULT = "wall time A/B at N=10,000, P=1,000, default plane"


def test_targets_name_the_worst_case_and_say_what_was_not_measured() -> None:
    rows = report.summarize([_result("A", 1, 120.0), _result("B", 1, 100.0)])
    targets = _targets(rows)
    assert [t.label for t in report.TARGETS] == list(targets)
    ratio = targets[WALL_RAISED]
    assert ratio["measured"] == pytest.approx(1.2)
    assert ratio["met"] is False
    assert ratio["case"] == "raised N=10000 P=1000 D=0s"
    assert ratio["spread"] is None  # one run: no spread
    assert targets[WALL_DEFAULT]["met"] is None  # only the raised plane ran
    assert targets["wall time A/B at N=1,000, P=100, D=5 s"]["met"] is None
    # Writes of A and B are the same here (10,000 pods, 10 deleted), A's Jobs aside.
    writes = targets["all API writes per shard, A vs B (with teardown), raised and default planes"]
    assert writes["measured"] == pytest.approx(20010 / 10011)
    assert writes["met"] is False
    assert targets["operator CPU per 1,000 shards (CPU-s)"]["met"] is False  # 3.0
    assert targets["slot refill p99 (A), A's p99 - B's p99 (s)"]["met"] is True  # equal
    for label in (
        "N=100,000, P=1,000: operator peak RSS (MiB)",
        "N=100,000, P=1,000: JobBatch object in etcd (KiB)",
        "N=100,000, P=1,000: finished pods held at once (A)",
    ):
        assert targets[label]["measured"] is None  # no 100k run
        assert targets[label]["met"] is None


def test_targets_worst_case_over_durations_and_the_spread_pair_by_pair() -> None:
    results = [
        _result("A", 1, 105.0),
        _result("B", 1, 100.0),
        _result("A", 2, 115.0),
        _result("B", 2, 100.0),
        _result("A", 1, 108.0, duration=5.0),
        _result("B", 1, 100.0, duration=5.0),
    ]
    ratio = _targets(report.summarize(results))[WALL_RAISED]
    assert ratio["measured"] == pytest.approx(1.1)  # D=0: median 110 s over 100 s; D=5: 1.08
    assert ratio["met"] is True
    assert ratio["case"] == "raised N=10000 P=1000 D=0s"
    assert ratio["spread"] == pytest.approx([1.05, 1.15])


def test_the_100k_case_reports_memory_object_size_and_finished_pods_held() -> None:
    big = {"shards": 100_000, "parallelism": 1_000}
    rows = report.summarize([_result("A", 1, 1000.0, **big), _result("B", 1, 900.0, **big)])
    targets = _targets(rows)
    assert targets["N=100,000, P=1,000: operator peak RSS (MiB)"]["measured"] == pytest.approx(150.0)
    assert targets["N=100,000, P=1,000: operator peak RSS (MiB)"]["met"] is True
    assert targets["N=100,000, P=1,000: JobBatch object in etcd (KiB)"]["measured"] == pytest.approx(4000 / 1024)
    held = targets["N=100,000, P=1,000: finished pods held at once (A)"]
    assert held["measured"] == 4000
    assert held["met"] is None  # a figure against a stated bound, no pass or fail
    assert "4,000" in held["limit_text"]


def _data(results: list[dict[str, Any]], runs: int = 2) -> dict[str, Any]:
    return {
        "started": "2026-11-22T00:00:00+00:00",
        "finished": "2026-11-22T01:00:00+00:00",
        "command": "python -m bench.run",
        "machine": {"cpu": "test", "cores": 2, "memory_gib": 24, "kernel": "6", "python": "3.11"},
        "versions": {"jobbatch": "0"},
        "runs": runs,
        "planes": [
            {"name": "raised", "settings": {"kcm_api_qps": 200, "kcm_api_burst": 400, "concurrent_job_syncs": 50}}
        ],
        "results": results,
    }


def test_a_failed_run_is_reported_not_averaged(tmp_path: Path) -> None:
    results = [_result("A", 1, 120.0), _result("B", 1, 100.0), _result("A", 2, 0.0, error="not finished after 9s")]
    report.write(_data(results), tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| N=10,000 P=1,000 D=0s | 120.0 s | 100.0 s | 1.20 |" in text
    assert "not finished after 9s" in text
    assert "| N=10,000 P=1,000 D=0s | 100 ms | 300 ms | 10 | 100 ms | 300 ms | 10 | 0 ms |" in text
    assert "| wall time A/B at N=10,000, P=1,000, default plane | ≤ 1.10 | n/a |  |  | not measured |" in text
    assert "dispatch" not in text
    # Figures older reports lack read n/a: refills by path, and the teardown's CPU; their planes ran
    # the scheduler at its defaults.
    assert "| raised | 200 | 400 | 50 | 50 | 100 |" in text
    assert "| N=10,000 P=1,000 D=0s | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |" in text
    assert "| N=10,000 P=1,000 D=0s | B | n/a | 10.0 | n/a | n/a | n/a | n/a | n/a | n/a |" in text
    assert (tmp_path / "plots" / "raised-n10000-p1000-d0.png").stat().st_size > 1000
    assert (tmp_path / "report.json").exists()


def test_the_report_shows_refills_by_path_and_the_teardowns_cpu() -> None:
    slots = {
        "p50": 0.1, "p99": 0.3, "samples": 100, "inside_samples": 75, "inside_p50": 0.1, "inside_p99": 0.2,
        "hand_over_samples": 25, "hand_over_p50": 0.4, "hand_over_p99": 0.9, "slowest_hand_over_share": 1.0,
    }  # fmt: skip
    a = _result("A", 1, 120.0, pod_slot_latency=slots, teardown_cpu_seconds={"etcd": 1.0, "operator": 0.5})
    b = _result("B", 1, 100.0, teardown_cpu_seconds={"etcd": 2.0, "kube-apiserver": 6.0})
    rows = report.summarize([a, b])
    text = report.render_markdown(_data([a, b]), rows, report.evaluate_targets(rows))
    assert "| N=10,000 P=1,000 D=0s | 75 | 100 ms | 200 ms | 25 | 400 ms | 900 ms | 25 % | 100 % |" in text
    assert text.count("| N=10,000 P=1,000 D=0s | A | 30.0 |") == 1
    assert "| n/a | n/a | 1.5 |" in text  # A's teardown: etcd and the operator
    assert "| n/a | n/a | 8.0 |" in text  # B's
    assert "| N=10,000 P=1,000 D=0s | n/a | n/a / n/a |" in text  # hand-overs' steps: not measured here


def test_the_report_splits_the_hand_overs_into_their_steps() -> None:
    slots = {
        "p50": 0.1, "p99": 0.3, "samples": 100, "hand_over_rounds": 25,
        "hand_over_status_p50": 0.3, "hand_over_status_p99": 0.6, "hand_over_raise_p50": 0.2,
        "hand_over_raise_p99": 0.5, "hand_over_create_p50": 0.1, "hand_over_create_p99": 0.4,
        "slowest_hand_over_status": 0.6, "slowest_hand_over_raise": 0.1, "slowest_hand_over_create": 0.7,
    }  # fmt: skip
    results = [_result("A", 1, 120.0, pod_slot_latency=slots), _result("B", 1, 100.0)]
    rows = report.summarize(results)
    text = report.render_markdown(_data(results), rows, report.evaluate_targets(rows))
    assert (
        "| N=10,000 P=1,000 D=0s | 25 | 300 ms / 600 ms | 200 ms / 500 ms | 100 ms / 400 ms "
        "| 600 ms | 100 ms | 700 ms |"
    ) in text


def test_the_report_says_when_hand_overs_paired_stale_slots() -> None:
    """Pods created far slower than slots free (the default plane): the pairing by path then pairs a
    start with a slot freed minutes before, above every refill's p99, which is no wait."""
    slots = {"p50": 1.5, "p99": 52.0, "samples": 100, "hand_over_samples": 26, "hand_over_p50": 293.0}
    results = [_result("A", 1, 120.0, pod_slot_latency=slots), _result("B", 1, 100.0)]
    rows = report.summarize(results)
    text = report.render_markdown(_data(results), rows, report.evaluate_targets(rows))
    assert "Where the hand-overs' p50 is above the p99 of all refills (N=10,000 P=1,000 D=0s)" in text
    fresh = {**slots, "hand_over_p50": 0.4}
    results = [_result("A", 1, 120.0, pod_slot_latency=fresh), _result("B", 1, 100.0)]
    rows = report.summarize(results)
    assert "no refill's wait" not in report.render_markdown(_data(results), rows, report.evaluate_targets(rows))


def test_reports_of_several_harness_runs_merge_into_one() -> None:
    small = _data([_result("A", 1, 10.0, shards=1000), _result("B", 1, 5.0, shards=1000)], runs=3)
    big = _data([_result("A", 1, 120.0), _result("B", 1, 100.0)], runs=1)
    big["machine"] = {**big["machine"], "cpu": "other"}
    merged = report.merge([small, big])
    assert merged["machine"]["cpu"] == "test and other"  # never one machine's name for another's runs
    assert len(merged["results"]) == 4
    assert [p["name"] for p in merged["planes"]] == ["raised"]
    assert merged["runs"] == "1/3"
    assert {row["shards"] for row in report.summarize(merged["results"])} == {1000, 10000}


def test_results_without_finished_pods_held_still_report(tmp_path: Path) -> None:
    # Reports made before it was measured (three-column series, dispatch latency) merge and render.
    old = []
    for system in ("A", "B"):
        r = _result(system, 1, 100.0, series=[(0.5, 1, 0), (1.0, 0, 1)], dispatch_latency={"p50": 0.1})
        del r["finished_pods_held_peak"]
        old.append(r)
    report.write(report.merge([_data(old, runs=1)]), tmp_path)
    (row,) = json.loads((tmp_path / "report.json").read_text())["summary"]
    assert row["A"]["finished_pods_held"] is None
    text = (tmp_path / "report.md").read_text()
    assert "| 150 MiB | 1.00 | 40 | n/a | n/a | 4000 B | 4000 B |" in text  # held A and B: n/a


def test_a_case_run_for_a_alone_reports_its_own_figures(tmp_path: Path) -> None:
    """`--systems A` at N=100,000: A's memory, object and finished pods; every A/B figure n/a."""
    big = {"shards": 100_000, "parallelism": 1_000}
    report.write(_data([_result("A", 1, 1000.0, **big)], runs=1), tmp_path)
    targets = _targets(report.summarize([_result("A", 1, 1000.0, **big)]))
    assert targets["N=100,000, P=1,000: operator peak RSS (MiB)"]["met"] is True
    text = (tmp_path / "report.md").read_text()
    assert "| N=100,000 P=1,000 D=0s | 1000.0 s | n/a | n/a |" in text


def test_the_dashboard_picture_queries_what_grafana_would_and_draws_every_panel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expr = 'sum(rate(jobbatch_shard_retries_total{namespace=~"$namespace"}[$__rate_interval]))'
    assert dashboard.grafana_expr(expr) == 'sum(rate(jobbatch_shard_retries_total{namespace=~".*"}[8s]))'
    assert (
        dashboard.legend("{{reason}} (exit {{exit_code}})", {"reason": "Error", "exit_code": "1"}) == "Error (exit 1)"
    )
    asked: list[str] = []

    def fake_range(url: str, query: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        asked.append(query)
        return [{"metric": {"state": "running"}, "values": [[start, "1"], [end, "2"]]}]

    monkeypatch.setattr(dashboard, "query_range", fake_range)
    dashboard.draw("http://prometheus", 0.0, 120.0, tmp_path / "d.png")
    board = json.loads(dashboard.DASHBOARD.read_text())
    assert len(asked) == sum(len(p["targets"]) for p in board["panels"])
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


def test_b_can_run_with_the_pod_the_operator_renders_for_a() -> None:
    from bench import run

    case = run.Case(10, 5, 1.0)
    _, native = run.subject("B", case)
    _, like_a = run.subject("B", case, "like-a")
    assert native["spec"]["template"] == run.pod_template(case)
    pod = like_a["spec"]["template"]
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["JOBBATCH_FIRST_SHARD"] == "0"
    assert env["JOBBATCH_ITEM_COUNT"] == "10"
    assert pod["metadata"]["labels"]["jobbatch.io/first-shard"] == "0"
    assert pod["metadata"]["annotations"] == run.pod_template(case)["metadata"]["annotations"]
    # Still B's own Job: one Indexed Job over every shard, none of A's retry machinery.
    assert like_a["spec"]["completions"] == 10
    assert like_a["spec"]["backoffLimit"] == 0
    assert "podFailurePolicy" not in like_a["spec"]
    assert "backoffLimitPerIndex" not in like_a["spec"]


def test_the_report_says_when_b_ran_with_the_pods_of_a() -> None:
    results = [_result("A", 1, 120.0), _result("B", 1, 100.0, b_pods="like-a")]
    rows = report.summarize(results)
    assert "B ran A's pod template" in report.render_markdown(_data(results), rows, report.evaluate_targets(rows))
    results[1]["b_pods"] = "native"
    assert "B ran A's pod" not in report.render_markdown(_data(results), rows, report.evaluate_targets(rows))


def test_b_with_the_pods_of_a_is_a_row_of_its_own_that_no_target_counts() -> None:
    results = [
        _result("A", 1, 120.0),
        _result("B", 1, 100.0),
        _result("B", 1, 90.0, b_pods="like-a"),
        _result("A", 2, 130.0),
        _result("B", 2, 95.0, b_pods="like-a"),
        _result("B", 2, 110.0),
    ]
    native, like_a = report.summarize(results)
    assert (native["b_variant"], like_a["b_variant"]) == ("native", "like-a")
    assert native["B"]["wall_seconds"] == 105.0
    assert like_a["B"]["wall_seconds"] == 92.5
    assert native["A"]["wall_seconds"] == like_a["A"]["wall_seconds"] == 125.0
    assert like_a["pair_ratios"] == [120.0 / 90.0, 130.0 / 95.0]
    targets = report.evaluate_targets([native, like_a])
    wall = next(t for t in targets if "wall" in t["target"] and t["measured"])
    assert wall["measured"] == 125.0 / 105.0  # from the native row only: the like-a row's is worse
    text = report.render_markdown(_data(results), [native, like_a], targets)
    assert "| N=10,000 P=1,000 D=0s (B with A's pod) | 125.0 s | 92.5 s |" in text
    # A's CPU once per case, then each B.
    assert text.count("| N=10,000 P=1,000 D=0s | A |") == 1
    assert "| N=10,000 P=1,000 D=0s (B with A's pod) | B |" in text
    assert "(B with A's pod) | A |" not in text
    assert report._plot_name(like_a) != report._plot_name(native)
    # Only B with A's pod ran: its row counts for A's own figures, never for a comparison with B.
    only = report.summarize([_result("A", 1, 120.0), _result("B", 1, 100.0, b_pods="like-a")])
    assert [r["b_variant"] for r in only] == ["like-a"]
    measured = {t["target"] for t in report.evaluate_targets(only) if t["measured"] is not None}
    assert any("operator CPU" in t for t in measured)
    assert not any("A/B" in t or "A vs B" in t or "refill" in t for t in measured)
    text = report.render_markdown(_data(results), only, report.evaluate_targets(only))
    assert "| N=10,000 P=1,000 D=0s | A |" in text  # A's CPU shown on the only row


def test_a_merged_report_pairs_runs_within_their_invocation() -> None:
    native = _data([_result("A", 1, 100.0), _result("B", 1, 10.0), _result("A", 2, 200.0), _result("B", 2, 20.0)])
    like_a = _data([_result("A", 1, 300.0), _result("B", 1, 30.0, b_pods="like-a")])
    like_a["started"] = "2026-11-23T00:00:00+00:00"
    rows = report.summarize(report.merge([native, like_a])["results"])
    by_variant = {r["b_variant"]: r for r in rows}
    assert by_variant["native"]["pair_ratios"] == [10.0, 10.0]  # 100/10, 200/20; not 300/20
    assert by_variant["like-a"]["pair_ratios"] == [10.0]  # 300/30, its own invocation's A
    assert by_variant["like-a"]["A"]["wall_seconds"] == 300.0


def test_b_with_the_pods_of_a_alternates_with_a_and_b() -> None:
    from bench import run

    both: tuple[run.BPods, ...] = ("native", "like-a")
    assert run.run_order(("A", "B"), both, 1) == [("A", "native"), ("B", "native"), ("B", "like-a")]
    assert run.run_order(("A", "B"), both, 2) == [("B", "like-a"), ("B", "native"), ("A", "native")]
    assert run.run_order(("A",), both, 1) == [("A", "native")]
    assert run.run_order(("A", "B"), ("native",), 2) == [("B", "native"), ("A", "native")]


async def test_b_can_delete_its_succeeded_pods_as_they_pile_up_as_a_does() -> None:
    from bench import run

    class Api:
        def __init__(self) -> None:
            self.deleted: list[str] = []

        async def request(self, method: str, path: str, body: Any = None, **params: str) -> dict[str, Any]:
            assert method == "DELETE"
            self.deleted.append(path.rsplit("/", 1)[1])
            return {}

    api = Api()
    collector = run.FinishedPodCollector(api, "ns", parallelism=2)  # type: ignore[arg-type]
    collector.batch = 4  # a chunk's worth (20 for P=2; fewer here to keep the test short)

    def pod(name: str, phase: str) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": {"phase": phase}}

    for name in ("p0", "p1", "p2"):
        collector.on_pod("MODIFIED", pod(name, "Succeeded"))
    collector.on_pod("MODIFIED", pod("p0", "Succeeded"))  # seen again: counted once
    collector.on_pod("MODIFIED", pod("p9", "Running"))
    collector.on_pod("DELETED", pod("p8", "Succeeded"))
    assert collector.held == ["p0", "p1", "p2"]
    collector.on_pod("MODIFIED", pod("p3", "Succeeded"))  # a chunk's worth held: all of them go
    assert collector.held == []
    await asyncio.gather(*collector._tasks)
    assert sorted(api.deleted) == ["p0", "p1", "p2", "p3"]
    assert collector.deleted == 4
    assert collector.errors == []
    big = run.FinishedPodCollector(api, "ns", parallelism=1000)  # type: ignore[arg-type]
    assert big.batch == 2000  # planner.chunk_size
    await collector.stop()


def test_the_report_says_when_b_deleted_its_pods_during_the_run() -> None:
    results = [_result("A", 1, 120.0), _result("B", 1, 100.0, b_collect=True)]
    rows = report.summarize(results)
    assert "deleted during its run" in report.render_markdown(_data(results), rows, report.evaluate_targets(rows))


def test_a_running_cluster_set_up_as_a_bench_plane_reports_as_that_plane() -> None:
    from bench import run
    from e2e.cluster import Settings

    raised = dataclasses.replace(run.PLANES["raised"], name="dev")
    assert run.plane_of(raised) == "raised"
    assert run.plane_of(dataclasses.replace(raised, nodes=1)) == "dev"  # another plane: its own name
    assert run.plane_of(Settings(name="x", kcm_api_qps=50)) == "x"
    assert run.plane_of(Settings(name="x")) == "default"  # Kubernetes' limits, the bench's node shape


def test_the_uncapped_plane_raises_the_schedulers_limits_as_well() -> None:
    from bench import run

    raised, uncapped = run.PLANES["raised"], run.PLANES["uncapped"]
    assert (raised.scheduler_api_qps, raised.scheduler_api_burst) == (50, 100)  # Kubernetes' defaults
    assert uncapped.scheduler_api_qps > raised.scheduler_api_qps
    assert dataclasses.replace(uncapped, name="", scheduler_api_qps=50, scheduler_api_burst=100) == (
        dataclasses.replace(raised, name="")
    )
