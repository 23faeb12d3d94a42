"""The pinned toolchain description is self-consistent (no build happens here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import cluster, tools


def test_staging_modules_follow_the_kubernetes_version() -> None:
    (k8s,) = [t for t in tools.TOOLS if t.key == "kubernetes"]
    minor_patch = tools.KUBERNETES_VERSION.removeprefix("v1.")
    assert k8s.wrapper_replaces["k8s.io/client-go"] == f"k8s.io/client-go v0.{minor_patch}"
    assert {"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"} <= set(k8s.packages)


def test_every_component_has_a_binary() -> None:
    binaries = {name for tool in tools.TOOLS for name in tool.packages}
    assert set(cluster.COMPONENTS) <= binaries
    assert {"kubectl", "helm"} <= binaries


def test_cache_dir_is_outside_the_repo_and_overridable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("JOBBATCH_CACHE_DIR", raising=False)
    assert Path(__file__).resolve().parents[2] not in tools.cache_dir().resolve().parents
    monkeypatch.setenv("JOBBATCH_CACHE_DIR", str(tmp_path))
    assert tools.bin_dir() == tmp_path / "bin"


POD_STAGES = {"pod-ready", "pod-succeed", "pod-fail", "pod-deadline", "pod-terminate", "pod-delete"}
OUTCOMES = {"pod-succeed": "succeed", "pod-fail": "fail", "pod-deadline": "deadline"}


def _pod_stages() -> dict[str, dict[str, Any]]:
    stages = [s for s in yaml.safe_load_all(cluster.STAGES_FILE.read_text()) if s]
    return {s["metadata"]["name"]: s for s in stages if s["spec"]["resourceRef"]["kind"] == "Pod"}


def _requirements(stage: dict[str, Any]) -> dict[str, tuple[str, frozenset[str]]]:
    return {
        e["key"]: (e["operator"], frozenset(e.get("values", []))) for e in stage["spec"]["selector"]["matchExpressions"]
    }


def _excludes(a: tuple[str, frozenset[str]], b: tuple[str, frozenset[str]]) -> bool:
    """Whether no object can meet both requirements on one jq key (of at most one value, for In/In)."""
    (op_a, va), (op_b, vb) = sorted([a, b])
    return (
        {op_a, op_b} == {"Exists", "DoesNotExist"}
        or (op_a == op_b == "In" and not va & vb)
        or (op_a == "In" and op_b == "NotIn" and va <= vb)
    )


def test_kwok_stages_cover_nodes_and_pods() -> None:
    stages = list(yaml.safe_load_all(cluster.STAGES_FILE.read_text()))
    names = {s["metadata"]["name"] for s in stages if s}
    assert {"node-initialize", "node-heartbeat-with-lease"} | POD_STAGES <= names
    assert set(_pod_stages()) == POD_STAGES


def test_kwok_outcome_stages_share_one_classifier() -> None:
    by_name = _pod_stages()
    last = {name: by_name[name]["spec"]["selector"]["matchExpressions"][-1] for name in OUTCOMES}
    # The outcome stages split pods by one and the same expression, each taking one of its values.
    assert len({e["key"] for e in last.values()}) == 1
    assert {name: (e["operator"], e["values"]) for name, e in last.items()} == {
        name: ("In", [value]) for name, value in OUTCOMES.items()
    }
    # Succeed and fail wait the pod's duration; the deadline stage waits spec.activeDeadlineSeconds.
    delay = {name: by_name[name]["spec"]["delay"]["durationFrom"]["expressionFrom"] for name in OUTCOMES}
    assert delay["pod-succeed"] == delay["pod-fail"] == '.metadata.annotations["sim.jobbatch.io/duration"]'
    assert ".spec.activeDeadlineSeconds" in delay["pod-deadline"]


def test_kwok_pod_stages_exclude_each_other() -> None:
    """Every pod matches at most one Stage, so kwok never picks one at random."""
    reqs = {name: _requirements(stage) for name, stage in _pod_stages().items()}
    names = sorted(reqs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = reqs[a].keys() & reqs[b].keys()
            assert any(_excludes(reqs[a][k], reqs[b][k]) for k in shared), f"{a} and {b} can match one pod"


def test_kwok_deleted_pods_terminate_before_removal() -> None:
    by_name = _pod_stages()
    deleted = {"pod-terminate": ("In", {"Running"}), "pod-delete": ("NotIn", {"Running"})}
    for name, phase in deleted.items():
        reqs = _requirements(by_name[name])
        assert reqs[".metadata.deletionTimestamp"] == ("Exists", frozenset())
        assert reqs[".status.phase"] == (phase[0], frozenset(phase[1]))
    assert by_name["pod-delete"]["spec"]["next"] == {"delete": True}
    assert "statusTemplate" in by_name["pod-terminate"]["spec"]["next"]
    for name in POD_STAGES - set(deleted):
        assert _requirements(by_name[name])[".metadata.deletionTimestamp"] == ("DoesNotExist", frozenset())


def test_node_manifest_carries_capacity() -> None:
    node = cluster._node_manifest(2, cluster.Settings(pods_per_node=700))
    assert node["metadata"]["name"] == "kwok-node-2"
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert node["status"]["capacity"]["pods"] == "700"
