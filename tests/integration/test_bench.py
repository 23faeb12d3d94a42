"""A small run of the benchmark harness, so it cannot rot (the full run: `make bench`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from e2e.cluster import LocalCluster, Settings, kubeconfig_path
from tests.integration.conftest import TEST_CLUSTER


def _plane() -> list[str]:
    """The session's own control plane, or the running local one an explicit KUBECONFIG names.

    Against any other KUBECONFIG the harness starts (and stops) a plane of its own, as
    `make bench` does: it needs a local plane's processes, certificates and etcd.
    """
    explicit = os.environ.get("KUBECONFIG")
    if not explicit:
        return ["--cluster", TEST_CLUSTER.name]
    name = Path(explicit).resolve().parent.name
    if Path(explicit).resolve() == kubeconfig_path(name).resolve() and LocalCluster(Settings(name=name)).is_up():
        return ["--cluster", name]
    return ["--planes", "raised"]


def test_benchmark_harness_smoke_run(kubeconfig: Path, tmp_path: Path) -> None:
    plane = _plane()
    args = ["--shards", "200", "--parallelism", "50", "--durations", "0", "--runs", "1", "--no-warmup"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", *plane, *args, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    data = json.loads((tmp_path / "report.json").read_text())
    by_system = {r["system"]: r for r in data["results"]}
    assert set(by_system) == {"A", "B"}
    for result in by_system.values():
        assert "error" not in result
        assert result["outcome"] == "Complete"
        assert 0 < result["first_pod_seconds"] < result["wall_seconds"]
        assert result["writes"]["POST pods"] >= 200  # every worker pod, counted by the API server
        assert result["pod_slot_latency"]["samples"] > 0
        assert 0 <= result["pod_slot_latency"]["p50"] <= result["pod_slot_latency"]["p99"]
        assert result["object_bytes_in_etcd"] > 0
        assert result["cpu_seconds"]["kube-apiserver"] > 0
        assert "dispatch_latency" not in result
    a, b = by_system["A"], by_system["B"]
    # B's Indexed Job keeps every finished pod until the teardown deletes it: exactly N at once.
    assert b["finished_pods_held_peak"] == 200
    # ... and the teardown deletes the Job, whose pods the garbage collector then deletes one by one.
    assert b["teardown_writes"]["DELETE pods"] >= 200
    # A's chunk Jobs (2 x P = 100 shards each) run 200 pods that never fail here: at least one and
    # at most N finished at once. (Below N only by timing at this size: the bound is two chunks.)
    assert 1 <= a["finished_pods_held_peak"] <= 200
    # Request counts are the API server's, from every client: only lower bounds hold while other
    # tests share the plane.
    assert a["writes"]["POST jobs.batch"] >= 2  # two chunk Jobs
    assert a["operator_cpu_seconds"] > 0
    assert a["operator_peak_rss_bytes"] > 10 * 2**20
    (row,) = data["summary"]
    assert row["ratio"] == a["wall_seconds"] / b["wall_seconds"]
    for system in ("A", "B"):
        agg = row[system]
        assert agg["all_writes_per_shard"] > agg["writes_per_shard"] > 0  # the teardown writes too
        assert agg["finished_pods_held"] == by_system[system]["finished_pods_held_peak"]
    figures = row["figures"]
    assert figures["all_writes_ratio"] == pytest.approx(
        row["A"]["all_writes_per_shard"] / row["B"]["all_writes_per_shard"]
    )
    assert figures["refill_p99_diff"] == pytest.approx(row["A"]["pod_slot_p99"] - row["B"]["pod_slot_p99"])
    targets = {t["target"]: t for t in data["targets"]}
    assert targets["operator CPU per 1,000 shards (CPU-s)"]["measured"] == pytest.approx(row["A"]["cpu_per_1000"])
    assert targets["wall time A/B at N=1,000, P=100, D=5 s"]["met"] is None  # not this case
    report = (tmp_path / "report.md").read_text()
    assert "## Targets" in report
    assert "| N=200 P=50 D=0s |" in report
    assert "not measured" in report
    assert (tmp_path / "plots" / f"{data['planes'][0]['name']}-n200-p50-d0.png").stat().st_size > 1000
