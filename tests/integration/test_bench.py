"""A small run of the benchmark harness, so it cannot rot (the full run: `make bench`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import TEST_CLUSTER


def test_benchmark_harness_smoke_run(kubeconfig: Path, tmp_path: Path) -> None:
    # On the session's own control plane when there is one; against an explicit KUBECONFIG
    # the harness starts (and stops) a plane of its own, as `make bench` does.
    plane = ["--planes", "raised"] if os.environ.get("KUBECONFIG") else ["--cluster", TEST_CLUSTER.name]
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
        assert result["object_bytes_in_etcd"] > 0
        assert result["cpu_seconds"]["kube-apiserver"] > 0
    a = by_system["A"]
    assert a["writes"]["POST jobs.batch"] >= 200  # one Job per shard
    assert a["dispatch_latency"]["samples"] > 0
    assert a["operator_cpu_seconds"] > 0
    assert a["operator_peak_rss_bytes"] > 10 * 2**20
    (row,) = data["summary"]
    assert row["ratio"] == a["wall_seconds"] / by_system["B"]["wall_seconds"]
    report = (tmp_path / "report.md").read_text()
    assert "## Targets" in report
    assert "| N=200 P=50 D=0s |" in report
    assert (tmp_path / "plots" / f"{data['planes'][0]['name']}-n200-p50-d0.png").stat().st_size > 1000
