"""The pinned toolchain description is self-consistent (no build happens here)."""

from __future__ import annotations

from pathlib import Path

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


def test_kwok_stages_cover_nodes_and_pods() -> None:
    stages = list(yaml.safe_load_all(cluster.STAGES_FILE.read_text()))
    names = {s["metadata"]["name"] for s in stages if s}
    assert {"node-initialize", "pod-ready", "pod-succeed", "pod-fail", "pod-delete"} <= names
    by_name = {s["metadata"]["name"]: s for s in stages if s}
    succeed = by_name["pod-succeed"]["spec"]["selector"]["matchExpressions"][-1]
    fail = by_name["pod-fail"]["spec"]["selector"]["matchExpressions"][-1]
    # The two outcome stages must split pods by one and the same expression.
    assert succeed["key"] == fail["key"]
    assert (succeed["values"], fail["values"]) == (["false"], ["true"])


def test_node_manifest_carries_capacity() -> None:
    node = cluster._node_manifest(2, cluster.Settings(pods_per_node=700))
    assert node["metadata"]["name"] == "kwok-node-2"
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert node["status"]["capacity"]["pods"] == "700"
