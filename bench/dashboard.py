"""The Grafana dashboard's picture, from a real run: a local cluster, the operator, Prometheus, batches.

    python -m bench.dashboard [--minutes 6] [--out docs/images/dashboard.png]

Starts a local control plane (kwok nodes), the operator with its metrics endpoint and a cluster-wide
cap, and Prometheus (built from the Go module proxy, scraping every 2 s); runs a mix of batches in two
namespaces at two priorities and two BatchQueues -- a clean one, one with retries, one that fails and is
rerun, one keeping results, small ones arriving in their own queue -- then evaluates every panel's
queries of charts/jobbatch-operator/files/dashboard.json over the run with Prometheus's query_range,
exactly as Grafana would (``$namespace`` = all,
``$__rate_interval`` = 4 scrape intervals), and draws the panels in the dashboard's grid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from e2e import tools
from e2e.cluster import SIMULATED_PLACEMENT, LocalCluster, Settings, free_port, wait_until
from e2e.operator_process import OperatorProcess

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "charts" / "jobbatch-operator" / "files" / "dashboard.json"
CRDS = ROOT / "crds"
SCRAPE_SECONDS = 2
NAMESPACES = ("team-a", "team-b")


def batch(name: str, count: int, parallelism: int, priority: str, queue: str = "default", **sim: str) -> dict[str, Any]:
    annotations = {f"sim.jobbatch.io/{k.replace('_', '-')}": v for k, v in sim.items()}
    return {
        "apiVersion": "jobbatch.io/v1alpha1",
        "kind": "JobBatch",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {**SIMULATED_PLACEMENT, "containers": [{"name": "w", "image": "example.invalid/w:1"}]},
            },
            "payloads": {"count": count},
            "parallelism": parallelism,
            "priorityClassName": priority,
            "queueName": queue,
            "retry": {"limit": 2, "backoff": {"initialSeconds": 5, "jitter": 0.2}, "nonRetryableExitCodes": [3]},
            "maxFailedShards": 0,
        },
    }


# The cap shared by two queues, 3:1: the reports queue's small batches keep a quarter of it.
QUEUES = [
    {"apiVersion": "jobbatch.io/v1alpha1", "kind": "BatchQueue", "metadata": {"name": name}, "spec": {"weight": w}}
    for name, w in (("default", 3), ("reports", 1))
]

PRIORITY_CLASSES = [
    {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name},
     "value": value, "preemptionPolicy": "Never"}
    for name, value in (("jobbatch-high", 100000), ("jobbatch-low", 1000))
]  # fmt: skip


def prometheus_config(target: str) -> str:
    return json.dumps(
        {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
            "scrape_configs": [{"job_name": "jobbatch-operator", "static_configs": [{"targets": [target]}]}],
        }
    )


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=60) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return list(body["data"]["result"])


def grafana_expr(expr: str) -> str:
    """The query Grafana sends: variables replaced as for 'All' namespaces at this scrape interval."""
    return expr.replace('namespace=~"$namespace"', 'namespace=~".*"').replace(
        "$__rate_interval", f"{4 * SCRAPE_SECONDS}s"
    )


def legend(template: str, labels: dict[str, str]) -> str:
    out = template
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value or '""')
    return out


def draw(url: str, start: float, end: float, out: Path) -> None:
    board = json.loads(DASHBOARD.read_text())
    panels = board["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) // 8
    fig, axes = plt.subplots(rows, 3, figsize=(18, 4.2 * rows), facecolor="#111217")
    step = max(2.0, (end - start) / 300)
    for panel, ax in zip(panels, axes.flat, strict=False):
        ax.set_facecolor("#181b1f")
        ax.set_title(panel["title"], color="#d8d9da", fontsize=11, loc="left")
        ax.tick_params(colors="#8e8e8e", labelsize=8)
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        ax.grid(color="#2c3235", linewidth=0.5)
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        ax.set_ylabel({"s": "seconds", "ops": "per second"}.get(unit, ""), color="#8e8e8e", fontsize=8)
        drawn = 0
        for target in panel["targets"]:
            for series in query_range(url, grafana_expr(target["expr"]), start, end, step):
                points = [(float(t) - start, float(v)) for t, v in series["values"] if v not in ("NaN", "+Inf")]
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                label = legend(target.get("legendFormat", ""), series["metric"])
                if panel["type"] == "stat":
                    ax.text(0.5, 0.5, f"{ys[-1]:g}", color="#73bf69", fontsize=40, ha="center", va="center",
                            transform=ax.transAxes)  # fmt: skip
                    ax.set_xticks([])
                    ax.set_yticks([])
                else:
                    ax.plot([x / 60 for x in xs], ys, linewidth=1.4, label=label)
                drawn += 1
        if panel["type"] != "stat":
            ax.set_xlabel("minutes into the run", color="#8e8e8e", fontsize=8)
            if drawn:
                ax.legend(fontsize=7, facecolor="#181b1f", edgecolor="#2c3235", labelcolor="#d8d9da", loc="upper left")
            else:
                ax.text(0.5, 0.5, "no data", color="#8e8e8e", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(f"{board['title']} (recorded run, {(end - start) / 60:.0f} min)", color="#d8d9da", fontsize=14)
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # room for the title above the top row
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor())


async def scenario(cluster: LocalCluster, minutes: float) -> None:
    """Batches arriving over the run: steady work, retries, a failure and its rerun, priorities under a cap."""

    def apply(namespace: str, body: dict[str, Any]) -> None:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))

    apply("team-a", batch("nightly-import", 600, 20, "jobbatch-high", duration="4s"))
    # Results kept in ConfigMaps (spec.results): the results panel.
    summaries = batch("summaries", 300, 10, "jobbatch-low", duration="3s", result='{"rows": 1000}')
    summaries["spec"]["results"] = {"maxBytes": 256}
    apply("team-a", summaries)
    apply("team-b", batch("thumbnails", 400, 20, "jobbatch-low", duration="3s", exit_code="1",
                          fail_shards=",".join(str(s) for s in range(0, 400, 9)), fail_attempts="0"))  # fmt: skip
    # Shard 41's first attempt exits 3 (non-retryable): the batch fails; its rerun's attempt succeeds.
    apply("team-b", batch("export", 60, 10, "jobbatch-low", duration="2s", exit_code="3", fail_shards="41",
                          fail_attempts="0"))  # fmt: skip
    started = time.monotonic()
    rerun_done = False
    arrivals = 0
    while time.monotonic() - started < minutes * 60:
        await asyncio.sleep(20)
        arrivals += 1
        apply("team-a", batch(f"report-{arrivals}", 20, 5, "jobbatch-high", queue="reports", duration="2s"))
        phase = cluster.kubectl("get", "jb", "export", "-n", "team-b", "-o", "jsonpath={.status.phase}").stdout
        if phase == "Failed" and not rerun_done:  # as after a fix: `kubectl jobbatch rerun export`
            rerun_done = True
            patch = {"spec": {"rerun": {"id": "after-fix"}}}
            cluster.kubectl("patch", "jb", "export", "-n", "team-b", "--type=merge", "-p", json.dumps(patch))


async def record(minutes: float, out: Path, keep: bool) -> None:
    bins = tools.ensure()
    cluster = LocalCluster(Settings(name="dashboard", nodes=2))
    cluster.up()
    work = Path(tempfile.mkdtemp(prefix="jobbatch-dashboard-"))
    prometheus: subprocess.Popen[bytes] | None = None
    operator: OperatorProcess | None = None
    try:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
        wait_until(
            lambda: cluster.kubectl("get", "jobbatches,cronjobbatches", "-A", check=False).returncode == 0,
            timeout=60,
            what="the CRD",
        )
        for namespace in NAMESPACES:
            cluster.kubectl("create", "namespace", namespace, check=False)
        cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                              "items": PRIORITY_CLASSES + QUEUES}))  # fmt: skip
        metrics_port, prometheus_port = free_port(), free_port()
        (work / "prometheus.yml").write_text(prometheus_config(f"127.0.0.1:{metrics_port}"))
        prometheus = start_prometheus(bins / "prometheus", work, prometheus_port)
        url = f"http://127.0.0.1:{prometheus_port}"
        wait_until(lambda: _ready(url), timeout=60, what="Prometheus ready")
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        flags = ["--max-running-shards", "30"] + [a for n in NAMESPACES for a in ("--namespace", n)]
        operator = OperatorProcess(args=flags, env=env, log=work / "operator.log", metrics_port=metrics_port)
        await operator.start()
        start = time.time()
        await scenario(cluster, minutes)
        await asyncio.sleep(30)  # the tail of the run on the charts, not synchronisation
        end = time.time()
        draw(url, start - 30, end, out)
        print(f"wrote {out} ({(end - start) / 60:.1f} min of metrics; logs in {work})")
    finally:
        if operator is not None:
            await operator.stop()
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        if not keep:
            cluster.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="how long batches keep arriving")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "dashboard.png")
    parser.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    args = parser.parse_args(argv)
    asyncio.run(record(args.minutes, args.out, args.keep))
    return 0


def start_prometheus(binary: Path, work: Path, port: int) -> subprocess.Popen[bytes]:
    with (work / "prometheus.log").open("wb") as log:
        return subprocess.Popen(
            [str(binary), f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
