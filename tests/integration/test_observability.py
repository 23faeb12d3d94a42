"""The alerts pass promtool, and a real operator exposes what the dashboard and the alerts query."""

from __future__ import annotations

import asyncio
import subprocess
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from e2e import tools
from e2e.cluster import free_port
from tests.integration.conftest import OperatorFactory
from tests.integration.harness import Batches, template
from tests.unit.test_observability import METRIC, dashboard_queries, rule_queries
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "jobbatch-operator" / "files" / "prometheus-rules.yaml"


def promtool(*args: str, cwd: Path = ROOT) -> str:
    binary = tools.ensure(["prometheus"]) / "promtool"
    done = subprocess.run([str(binary), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_alerting_rules_are_valid_and_fire_when_they_should() -> None:
    assert "SUCCESS: 5 rules found" in promtool("check", "rules", str(RULES))
    assert "SUCCESS" in promtool("test", "rules", "rules_test.yaml", cwd=ROOT / "tests" / "prometheus")


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def total(series: dict[tuple[tuple[str, str], ...], float] | None, **labels: str) -> float:
    return sum(v for k, v in (series or {}).items() if set(labels.items()) <= set(k))


async def test_a_run_shows_up_in_the_metrics_the_dashboard_reads(
    namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    port = free_port()
    await operator(metrics_port=port)
    flaky = template(exit_code="1", fail_shards="1", fail_attempts="0")
    retry = {"limit": 2, "backoff": {"initialSeconds": 0, "jitter": 0}}
    await batches.create("flaky", {"template": flaky, "payloads": {"count": 3}, "retry": retry})
    broken = template(exit_code="3", fail_shards="0")
    await batches.create(
        "broken", {"template": broken, "payloads": {"count": 2}, "retry": {"nonRetryableExitCodes": [3]}}
    )
    await batches.wait_for("flaky", "Complete")
    await batches.wait_for("broken", "Failed")

    def settled(seen: dict[str, dict[tuple[tuple[str, str], ...], float]]) -> bool:
        phases = seen.get("jobbatch_batches")
        return (
            total(phases, namespace=namespace, phase="Succeeded") == 1
            and total(phases, namespace=namespace, phase="Failed") == 1
            and total(seen.get("jobbatch_batch_duration_seconds_count"), namespace=namespace) == 2
        )

    def settled_scrape() -> dict[str, dict[tuple[tuple[str, str], ...], float]] | None:
        seen = scrape(port)
        return seen if settled(seen) else None

    seen = await eventually(lambda: asyncio.to_thread(settled_scrape), what="both batches' outcomes in /metrics")
    durations = seen["jobbatch_batch_duration_seconds_count"]
    assert total(durations, namespace=namespace, outcome="Succeeded") == 1
    assert total(durations, namespace=namespace, outcome="Failed") == 1
    failures = seen["jobbatch_shard_attempt_failures_total"]
    assert total(failures, namespace=namespace, exit_code="1") == 1  # retried once
    assert total(failures, namespace=namespace, exit_code="3") == 1  # failed for good
    assert total(seen["jobbatch_shard_retries_total"], namespace=namespace) == 1
    assert total(seen["jobbatch_leader"]) == 1
    assert total(seen["jobbatch_build_info"]) == 1
    # Every series the dashboard and the alerts query is there (histograms and counters by their samples).
    queried = {name for query in dashboard_queries() + rule_queries() for name in METRIC.findall(query)}
    # Both batches are done; and no BatchQueue exists here (test_queues.py reads jobbatch_queue_shards).
    series_only_while_there = {"jobbatch_shards_waiting", "jobbatch_shards", "jobbatch_queue_shards"}
    assert queried - series_only_while_there <= set(seen), sorted(queried - set(seen))

    # A running batch with shards not started yet: waiting shards by priority class, and its shards.
    await batches.create("slow", {"template": template(duration="1h"), "payloads": {"count": 3}, "parallelism": 1})

    def waiting_scrape() -> dict[str, dict[tuple[tuple[str, str], ...], float]] | None:
        seen = scrape(port)
        waiting = total(seen.get("jobbatch_shards_waiting"), namespace=namespace, priority_class="")
        running = total(seen.get("jobbatch_shards"), namespace=namespace, batch="slow", state="running")
        return seen if (waiting, running) == (2, 1) else None

    seen = await eventually(lambda: asyncio.to_thread(waiting_scrape), what="slow's 2 waiting shards in /metrics")
    assert total(seen["jobbatch_shards"], namespace=namespace, batch="slow", state="pending") == 2
