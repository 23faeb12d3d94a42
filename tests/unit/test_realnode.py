"""The real node's generated configuration keeps to what these VMs need (no node is started here)."""

from __future__ import annotations

import json
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest

from e2e import cluster, images, realnode, tools


def node(tmp_path: Path) -> realnode.RealNode:
    return realnode.RealNode(tmp_path / "clusters" / "unit", tmp_path / "logs", tmp_path / "kubeconfig")


def test_the_kubelet_runs_on_cgroup_v1_without_privileges_it_lacks(tmp_path: Path) -> None:
    config = node(tmp_path)._kubelet_config(port=10250, healthz_port=10248, address="192.0.2.2")
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["failCgroupV1"] is False
    assert config["oomScoreAdj"] == 0  # no CAP_SYS_RESOURCE
    assert config["enforceNodeAllocatable"] == []
    assert config["evictionHard"] == {}  # a test node never evicts
    assert config["imageGCHighThresholdPercent"] == 100  # images cannot be pulled back
    assert config["cgroupRoot"] == "/jobbatch-unit"  # one per cluster
    assert config["containerRuntimeEndpoint"] == f"unix://{tmp_path}/clusters/unit/realnode/containerd.sock"


def test_pods_that_ask_for_nothing_land_on_the_real_node(tmp_path: Path) -> None:
    """The examples as written and the chart run on the real node; simulated pods ask for kwok."""
    config = node(tmp_path)._kubelet_config(port=1, healthz_port=2, address="192.0.2.2")
    assert "registerWithTaints" not in config
    assert realnode.POD_PLACEMENT == {"nodeSelector": realnode.NODE_LABEL}
    kwok = cluster._node_manifest(0, cluster.Settings(real_nodes=1))
    assert kwok["spec"]["taints"] == [cluster.KWOK_TAINT]
    assert "spec" not in cluster._node_manifest(0, cluster.Settings(real_nodes=0))  # nothing to keep apart
    (toleration,) = cluster.SIMULATED_PLACEMENT["tolerations"]
    assert (toleration["key"], toleration["effect"]) == (cluster.KWOK_TAINT["key"], cluster.KWOK_TAINT["effect"])
    assert cluster.SIMULATED_PLACEMENT["nodeSelector"].items() <= kwok["metadata"]["labels"].items()


def test_kube_proxy_routes_services_without_retuning_the_host(tmp_path: Path) -> None:
    rn = node(tmp_path)
    config = rn._kube_proxy_config(metrics_port=1, healthz_port=2)
    assert config["mode"] == "iptables"
    assert config["hostnameOverride"] == realnode.NODE_NAME
    assert config["clusterCIDR"] == realnode.POD_SUBNET
    assert config["clientConnection"]["kubeconfig"] == str(rn.kubeconfig)
    assert config["iptables"]["masqueradeAll"] is True  # replies return through this host's conntrack
    assert config["iptables"]["localhostNodePorts"] is False  # no route_localnet sysctl
    assert config["conntrack"]["maxPerCore"] == 0  # the host's conntrack table is left as it is
    assert config["metricsBindAddress"].startswith("127.0.0.1:")
    assert config["healthzBindAddress"].startswith("127.0.0.1:")


def test_pods_reach_the_api_server_at_the_vms_address_only_with_a_real_node() -> None:
    assert cluster.LocalCluster._apiserver_address_flags("") == [
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        "--endpoint-reconciler-type=none",
    ]
    flags = cluster.LocalCluster._apiserver_address_flags("192.0.2.2")
    assert "--advertise-address=192.0.2.2" in flags  # the `kubernetes` Service's endpoint
    assert not any(f.startswith("--endpoint-reconciler-type") for f in flags)


def test_containerd_uses_the_local_pause_image_and_cannot_lower_oom_scores(tmp_path: Path) -> None:
    rn = node(tmp_path)
    config = tomllib.loads(rn._containerd_config())
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == images.PAUSE_IMAGE
    assert cri["restrict_oom_score_adj"] is True
    assert cri["cni"]["bin_dir"] == str(realnode.CNI_BIN_DIR)
    assert cri["cni"]["conf_dir"] == str(rn.dir / "cni")
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    # Its own root, state and socket, under the cluster's state folder (removed by `down`).
    assert (config["root"], config["state"], config["grpc"]["address"]) == (
        str(rn.dir / "containerd-root"),
        str(rn.dir / "containerd-state"),
        str(rn.socket),
    )


def test_pods_get_addresses_on_a_bridge_inside_the_vm(tmp_path: Path) -> None:
    conf = node(tmp_path)._cni_config()
    bridge = conf["plugins"][0]
    assert bridge["type"] == "bridge"
    assert bridge["ipMasq"] is False  # pods reach this VM only
    assert bridge["ipam"]["ranges"] == [[{"subnet": realnode.POD_SUBNET}]]
    assert realnode.POD_SUBNET.startswith("10.")


def test_the_real_node_tools_are_pinned_like_the_control_plane() -> None:
    by_key = {t.key: t for t in tools.TOOLS}
    kubelet, kubernetes = by_key["kubelet"], by_key["kubernetes"]
    assert kubelet.version == kubernetes.version
    assert kubelet.wrapper_replaces == kubernetes.wrapper_replaces
    assert kubelet.ldflags_x == kubernetes.ldflags_x
    proxy = by_key["kube-proxy"]
    assert (proxy.version, proxy.wrapper_replaces, proxy.ldflags_x) == (
        kubernetes.version,
        kubernetes.wrapper_replaces,
        kubernetes.ldflags_x,
    )
    pause = by_key["pause"]
    assert pause.source is not None
    assert (pause.source / "main.go").is_file()
    assert "module jobbatch.local/pause" in (pause.source / "go.mod").read_text()
    assert "crictl" in by_key["cri-tools"].packages


def test_an_image_archive_names_its_layers_by_digest(tmp_path: Path) -> None:
    layers = []
    for name in ("one", "two"):
        root = tmp_path / name
        root.mkdir()
        (root / f"{name}.txt").write_text(name)
        layer = tmp_path / f"{name}.tar"
        with tarfile.open(layer, "w") as t:
            t.add(root / f"{name}.txt", arcname=f"{name}.txt")
        layers.append(layer)
    out = tmp_path / "image.tar"
    images.write_archive(out, "example:1", layers, {"Entrypoint": ["/bin/true"]})

    with tarfile.open(out) as archive:
        (manifest,) = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(archive.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        stored = [archive.extractfile(path).read() for path in manifest["Layers"]]  # type: ignore[union-attr]
    assert manifest["RepoTags"] == ["example:1"]
    assert stored == [layer.read_bytes() for layer in layers]
    digests = [f"sha256:{images._sha256_file(layer)}" for layer in layers]
    assert config["rootfs"] == {"type": "layers", "diff_ids": digests}
    assert [f"{d.removeprefix('sha256:')}/layer.tar" for d in digests] == manifest["Layers"]
    assert (config["os"], config["architecture"], config["config"]) == ("linux", "amd64", {"Entrypoint": ["/bin/true"]})


def test_an_app_image_rebuilds_when_its_sources_change(tmp_path: Path) -> None:
    base = tmp_path / "base-bookworm-x.tar"
    key = images._source_key(images.EXAMPLE_WORKER, base)
    assert key == images._source_key(images.EXAMPLE_WORKER, base)
    assert key != images._source_key(images.OPERATOR, base)
    assert key != images._source_key(images.EXAMPLE_WORKER, tmp_path / "base-bookworm-y.tar")


def test_every_simulated_pod_template_keeps_to_the_kwok_nodes() -> None:
    """Beside a real node, a simulated template without the placement would run there, for real."""
    from hypothesis import given, settings

    from bench.run import Case, pod_template
    from e2e.chaos import batch_spec
    from tests import fuzz
    from tests.integration.harness import template

    def simulated(pod_spec: dict[str, Any]) -> bool:
        return all(pod_spec.get(k) == v for k, v in cluster.SIMULATED_PLACEMENT.items())

    assert simulated(template(duration="1s")["spec"])
    assert simulated(pod_template(Case(shards=1, parallelism=1, duration=0))["spec"])
    assert simulated(batch_spec(10, 2, seed=1)[0]["template"]["spec"])

    @settings(max_examples=50, derandomize=True, database=None)
    @given(fuzz._templates)
    def fuzzed(t: dict[str, Any]) -> None:
        spec = t.get("spec")
        if isinstance(spec, dict) and isinstance(spec.get("containers"), list) and spec["containers"]:
            assert simulated(spec)  # one that could be accepted and run

    fuzzed()


SAMPLE_RULES = """-P INPUT ACCEPT
-P FORWARD ACCEPT
-N KUBE-FIREWALL
-N KUBE-SERVICES
-N JOBBATCH-APISERVER
-N DOCKER-USER
-A INPUT -p tcp -m tcp --dport 6443 -j JOBBATCH-APISERVER
-A INPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A INPUT -j KUBE-FIREWALL
-A FORWARD -j DOCKER-USER
-A KUBE-SERVICES -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -j DROP
-A JOBBATCH-APISERVER -i lo -j RETURN
"""


def test_down_removes_every_owned_chain_and_the_jumps_into_it_and_nothing_else() -> None:
    commands = realnode.rule_cleanup(SAMPLE_RULES)
    assert commands == [
        ["-D", "INPUT", "-p", "tcp", "-m", "tcp", "--dport", "6443", "-j", "JOBBATCH-APISERVER"],
        ["-D", "INPUT", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"],
        ["-D", "INPUT", "-j", "KUBE-FIREWALL"],
        ["-F", "KUBE-FIREWALL"],
        ["-F", "KUBE-SERVICES"],
        ["-F", "JOBBATCH-APISERVER"],
        ["-X", "KUBE-FIREWALL"],
        ["-X", "KUBE-SERVICES"],
        ["-X", "JOBBATCH-APISERVER"],
    ]
    assert realnode.rule_cleanup("-P INPUT ACCEPT\n-N DOCKER-USER\n-A FORWARD -j DOCKER-USER\n") == []


def test_only_loopback_and_the_pods_reach_the_api_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(realnode, "_iptables_binaries", lambda: realnode.IPTABLES)
    guard = realnode.api_server_guard(6443)
    v4, v6 = guard["iptables"], guard["ip6tables"]
    chain = realnode.API_GUARD_CHAIN
    replies = ["-A", chain, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"]
    assert v4 == [
        ["-N", chain],
        replies,
        ["-A", chain, "-i", "lo", "-j", "RETURN"],
        ["-A", chain, "-i", realnode.BRIDGE, "-s", realnode.POD_SUBNET, "-j", "RETURN"],  # not spoofable from eth0
        ["-A", chain, "-j", "DROP"],
        ["-I", "INPUT", "-p", "tcp", "--dport", "6443", "-j", chain],
    ]
    assert ["-A", chain, "-i", "lo", "-j", "RETURN"] in v6
    assert not any(realnode.POD_SUBNET in c for c in v6)  # no IPv6 pods: loopback only
    assert v6[-2:] == [["-A", chain, "-j", "DROP"], ["-I", "INPUT", "-p", "tcp", "--dport", "6443", "-j", chain]]
    assert chain.startswith(realnode.OWNED_CHAIN_PREFIXES)  # so `down` removes it
    # A host without IPv6 has no ip6tables tables to guard.
    monkeypatch.setattr(realnode, "_iptables_binaries", lambda: ("iptables",))
    assert list(realnode.api_server_guard(6443)) == ["iptables"]


def test_a_rule_line_the_parser_cannot_read_is_skipped_not_fatal() -> None:
    rules = "-N KUBE-X\n-A INPUT -i it's -j ACCEPT\n-A INPUT -j KUBE-X\n"
    assert realnode.rule_cleanup(rules) == [["-D", "INPUT", "-j", "KUBE-X"], ["-F", "KUBE-X"], ["-X", "KUBE-X"]]


def test_the_kubelet_answers_only_clients_of_the_clusters_ca(tmp_path: Path) -> None:
    rn = node(tmp_path)
    config = rn._kubelet_config(port=1, healthz_port=2, address="192.0.2.2")
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authentication"]["x509"]["clientCAFile"] == str(tmp_path / "clusters" / "unit" / "pki" / "ca.crt")
    assert rn._kube_proxy_config(metrics_port=1, healthz_port=2)["nodePortAddresses"] == [realnode.POD_SUBNET]
