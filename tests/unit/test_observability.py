"""The metrics, the dashboard and the alerts agree: every series a panel or a rule queries exists.

(`promtool check rules` / `promtool test rules`, and the metrics of a real run, are in
tests/integration/test_observability.py.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

from jobbatch import metrics

FILES = Path(__file__).resolve().parents[2] / "charts" / "jobbatch-operator" / "files"
DASHBOARD: dict[str, Any] = json.loads((FILES / "dashboard.json").read_text())
RULES: dict[str, Any] = yaml.safe_load((FILES / "prometheus-rules.yaml").read_text())
METRIC = re.compile(r"\bjobbatch_[a-z_]+")


def exposed_series() -> set[str]:
    """Every series name the operator's registry can expose, whether or not it has samples yet."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
    return names


def dashboard_queries() -> list[str]:
    queries = [t["expr"] for panel in DASHBOARD["panels"] for t in panel["targets"]]
    queries += [v["definition"] for v in DASHBOARD["templating"]["list"] if "definition" in v]
    return queries


def rule_queries() -> list[str]:
    return [rule["expr"] for group in RULES["groups"] for rule in group["rules"]]


def test_every_series_the_dashboard_and_the_alerts_query_exists() -> None:
    exposed = exposed_series()
    queried = {name for query in dashboard_queries() + rule_queries() for name in METRIC.findall(query)}
    assert queried, "no jobbatch_ series found in the queries"
    assert queried <= exposed, sorted(queried - exposed)
    # And every metric the operator has is on the dashboard (a metric nobody looks at is dead weight).
    ours = {name for name in exposed if name.startswith("jobbatch_") and not name.endswith(("_sum", "_count"))}
    assert ours - queried <= {"jobbatch_build_info"}, sorted(ours - queried)


def test_the_dashboard_is_a_grid_of_panels_over_one_datasource_variable() -> None:
    panels = DASHBOARD["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        cell = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & cell, f"panel {panel['title']!r} overlaps another"
        cells |= cell
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    assert {v["name"] for v in DASHBOARD["templating"]["list"]} == {"datasource", "namespace"}


def test_every_alert_says_what_to_do_in_the_docs() -> None:
    operations = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    for group in RULES["groups"]:
        for rule in group["rules"]:
            anchor = rule["annotations"]["runbook"].split("#")[1]
            assert f"### {rule['alert']}" in operations
            assert anchor == rule["alert"].lower()
            assert rule["labels"]["severity"] in ("warning", "critical")


def test_batches_count_by_phase_and_waiting_shards_by_priority_class() -> None:
    batches = metrics.Batches()
    batches.seen("u1", "a", "Running")
    batches.seen("u2", "a", "Running")
    batches.seen("u3", "b", "Failed")
    batches.seen("u2", "a", "Succeeded")  # the same batch, later
    batches.seen("u4", "b", "Bogus")  # not a phase: counted as Pending, never a new label value
    batches.waiting.update({"u1": ("a", "high", 3), "u5": ("a", "high", 2), "u6": ("b", "", 7)})
    batches.gone("u5")
    families = {f.name: {tuple(s.labels.values()): s.value for s in f.samples} for f in batches.collect()}
    phases = {k: v for k, v in families["jobbatch_batches"].items() if v}
    assert phases == {("a", "Running"): 1, ("a", "Succeeded"): 1, ("b", "Failed"): 1, ("b", "Pending"): 1}
    assert families["jobbatch_batches"][("a", "Suspended")] == 0  # every phase, so charts drop to 0
    assert len(families["jobbatch_batches"]) == 2 * 5
    assert families["jobbatch_shards_waiting"] == {("a", "high"): 3, ("b", ""): 7}


def test_failure_reasons_are_a_fixed_set_of_label_values() -> None:
    before = REGISTRY.get_sample_value(
        "jobbatch_shard_attempt_failures_total", {"namespace": "t", "reason": "Other", "exit_code": "none"}
    )
    metrics.attempt_failed("t", "SomethingAWorkerMadeUp", None)
    after = REGISTRY.get_sample_value(
        "jobbatch_shard_attempt_failures_total", {"namespace": "t", "reason": "Other", "exit_code": "none"}
    )
    assert (after or 0) - (before or 0) == 1
