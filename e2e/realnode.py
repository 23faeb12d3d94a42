"""A real node for the local control plane: a kubelet with containerd, runc and CNI.

Beside the kwok nodes, whose pods are simulated, this node runs pods as real containers:
real processes that read their mounted payloads, exit with real codes and get SIGTERM when
deleted. It is what ``python -m e2e.cluster up --real-nodes 1`` adds (docs/testing.md).

Everything it needs is built or installed here (../shared/PLATFORM.md says why each
setting is what it is on these VMs):

- the kubelet, kube-proxy and crictl from the Go module proxy (``e2e/tools.py``);
- containerd 1.6, runc and the CNI plugins from Debian, started per cluster with their
  own root, state and socket under the cluster's state folder;
- the images from ``e2e/images.py`` (pause, operator, workers), imported into
  containerd at start, so pods use them without a registry.

Pods reach the API server as on any cluster: through the ``kubernetes`` Service, which
kube-proxy (iptables mode) routes to the API server on the VM's address.

The node is labelled ``jobbatch.io/node=real`` and not tainted; the kwok nodes beside it
are (``e2e.cluster.KWOK_TAINT``), so pods that ask for nothing, the examples as written and
the operator's chart, run here, and simulated-pod tests ask for kwok nodes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2e import images, tools

NODE_NAME = "real-node-0"
NODE_LABEL = {"jobbatch.io/node": "real"}
# Pods on the real node get addresses here (a bridge inside this VM, per the network rule).
POD_SUBNET = "10.88.0.0/16"
BRIDGE = "jbr0"
DEBIAN_PACKAGES = {
    "containerd": "containerd",
    "runc": "runc",
    "ctr": "containerd",
    "iptables-restore": "iptables",  # kube-proxy's rules
    "conntrack": "conntrack",  # kube-proxy clears stale UDP flows with it
}
CNI_BIN_DIR = Path("/usr/lib/cni")
CGROUP_ROOT = Path("/sys/fs/cgroup")

# Chains the node's components (kubelet, kube-proxy: KUBE-*) and this module (JOBBATCH-*) add to the
# host's iptables; `down` removes them and every jump into them, for IPv4 and IPv6.
OWNED_CHAIN_PREFIXES = ("KUBE-", "JOBBATCH-")
IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle", "raw")
API_GUARD_CHAIN = "JOBBATCH-APISERVER"

# What a pod needs to run there for sure (not on a kwok node of another cluster's setup).
POD_PLACEMENT: dict[str, Any] = {"nodeSelector": NODE_LABEL}


def node_ip() -> str:
    """The VM's own address (the first global IPv4 one), which pods and the API server reach."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            return fields[fields.index("inet") + 1].split("/")[0]
    raise RuntimeError("this machine has no global IPv4 address for the real node")


def api_server_guard(port: int) -> dict[str, list[list[str]]]:
    """iptables commands (per binary) letting only loopback and the pods reach the API server's port.

    With a real node the API server listens on every address, so its pods can reach it at the VM's;
    this keeps everything else off it (IPv6 has no pods here: loopback only).
    """
    commands: dict[str, list[list[str]]] = {}
    for binary in _iptables_binaries():
        allowed = [["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED"], ["-i", "lo"]]
        if binary == "iptables":
            allowed.append(["-i", BRIDGE, "-s", POD_SUBNET])  # the pods, from their bridge only
        commands[binary] = [
            ["-N", API_GUARD_CHAIN],
            *(["-A", API_GUARD_CHAIN, *match, "-j", "RETURN"] for match in allowed),
            ["-A", API_GUARD_CHAIN, "-j", "DROP"],
            ["-I", "INPUT", "-p", "tcp", "--dport", str(port), "-j", API_GUARD_CHAIN],
        ]
    return commands


def _iptables_binaries() -> tuple[str, ...]:
    """Both families, or IPv4 alone on a host without IPv6 (no ip6tables tables to touch)."""
    return IPTABLES if Path("/proc/net/if_inet6").exists() else IPTABLES[:1]


def rule_cleanup(rules: str) -> list[list[str]]:
    """The commands that remove the owned chains of one table, given its ``iptables -S`` output.

    Jumps into an owned chain from any other chain go first, then the owned chains are flushed
    (their own jumps between each other with them) and deleted.
    """
    owned, jumps = [], []
    for line in rules.splitlines():
        try:
            parts = shlex.split(line)
        except ValueError:  # quoting this parser cannot read: not a rule of ours
            continue
        if len(parts) < 2:
            continue
        if parts[0] == "-N" and parts[1].startswith(OWNED_CHAIN_PREFIXES):
            owned.append(parts[1])
        elif parts[0] == "-A" and not parts[1].startswith(OWNED_CHAIN_PREFIXES):
            targets = [parts[i + 1] for i, p in enumerate(parts[:-1]) if p in ("-j", "-g", "--jump", "--goto")]
            if any(t.startswith(OWNED_CHAIN_PREFIXES) for t in targets):
                jumps.append(["-D", *parts[1:]])
    return [*jumps, *(["-F", c] for c in owned), *(["-X", c] for c in owned)]


def _iptables(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([binary, "-w", *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess([binary, *args], 1, "", str(exc))


def guard_api_server(port: int) -> None:
    sweep_host_rules()  # a guard left by a crashed cluster would keep its old port
    for binary, commands in api_server_guard(port).items():
        for command in commands:
            result = _iptables(binary, *command)
            if result.returncode != 0:
                raise RuntimeError(f"{binary} {shlex.join(command)} failed: {result.stderr.strip()}")


def sweep_host_rules() -> list[str]:
    """Remove every owned chain and jump from the host's tables; returns what failed (for the log)."""
    failures = []
    for binary in _iptables_binaries():
        for table in TABLES:
            listing = _iptables(binary, "-t", table, "-S")
            if listing.returncode != 0:
                continue  # no such table here
            for command in rule_cleanup(listing.stdout):
                result = _iptables(binary, "-t", table, *command)
                if result.returncode != 0:
                    failures.append(f"{binary} -t {table} {shlex.join(command)}: {result.stderr.strip()}")
    return failures


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_packages() -> None:
    """containerd, runc and the CNI plugins from Debian, installed when missing (needs root)."""
    missing = sorted({pkg for cmd, pkg in DEBIAN_PACKAGES.items() if shutil.which(cmd) is None})
    if not (CNI_BIN_DIR / "bridge").exists():
        missing.append("containernetworking-plugins")
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env, stdout=subprocess.DEVNULL)


class RealNode:
    """The files, processes and settings of one real node of a named local cluster."""

    def __init__(self, state: Path, logs: Path, kubeconfig: Path) -> None:
        self.dir = state / "realnode"
        self.client_ca = state / "pki" / "ca.crt"
        self.logs = logs
        self.kubeconfig = kubeconfig
        self.bin = tools.bin_dir()

    @property
    def socket(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.dir / "kubelet"

    @property
    def cgroup_root(self) -> str:
        """The kubelet's cgroup root: its own per cluster, so two clusters never share pods' cgroups."""
        return f"/jobbatch-{self.dir.parent.name}"

    # -- configuration files ------------------------------------------------------------
    def _containerd_config(self) -> str:
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return "\n".join(
            [
                "version = 2",
                f'root = "{self.dir / "containerd-root"}"',
                f'state = "{self.dir / "containerd-state"}"',
                "[grpc]",
                f'  address = "{self.socket}"',
                f"[{cri}]",
                f'  sandbox_image = "{images.PAUSE_IMAGE}"',
                # The VM lacks CAP_SYS_RESOURCE: a negative OOM score would fail every container.
                "  restrict_oom_score_adj = true",
                '  stream_server_address = "127.0.0.1"',
                f"[{cri}.cni]",
                f'  bin_dir = "{CNI_BIN_DIR}"',
                f'  conf_dir = "{self.dir / "cni"}"',
                f"[{cri}.containerd]",
                '  snapshotter = "overlayfs"',
                '  default_runtime_name = "runc"',
                f"[{cri}.containerd.runtimes.runc]",
                '  runtime_type = "io.containerd.runc.v2"',
                f"[{cri}.containerd.runtimes.runc.options]",
                "  SystemdCgroup = false",
                "",
            ]
        )

    def _cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "jobbatch",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,  # pods talk to this VM only (the network rule)
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_SUBNET}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.dir / "cni-ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def _kubelet_config(self, port: int, healthz_port: int, address: str) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # cgroup v1 without systemd, and no CAP_SYS_RESOURCE (../shared/PLATFORM.md).
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "failCgroupV1": False,
            "oomScoreAdj": 0,
            "failSwapOn": False,
            "enforceNodeAllocatable": [],
            # A test node: no evictions and no image garbage collection (no registry to pull back from).
            "evictionHard": {},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            # Only clients with a certificate of the cluster's CA (the API server, for logs and exec) may
            # talk to the kubelet, which listens on the VM's address; any of them may do anything.
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.client_ca)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "address": address,
            "port": port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "maxPods": 50,
            "serializeImagePulls": False,
            "clusterDomain": "cluster.local",
            "resolvConf": "/etc/resolv.conf",
            "nodeStatusReportFrequency": "10s",
            "fileCheckFrequency": "0s",
            "syncFrequency": "10s",
        }

    def _kube_proxy_config(self, metrics_port: int, healthz_port: int) -> dict[str, Any]:
        return {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "clusterCIDR": POD_SUBNET,
            # Every Service connection leaves with the bridge's address, so replies come back through
            # this host's conntrack whether or not bridged traffic passes iptables (br_netfilter).
            "iptables": {"masqueradeAll": True, "localhostNodePorts": False},
            "nodePortAddresses": [POD_SUBNET],  # NodePorts on the bridge's address only, not the VM's
            # Leave the host's conntrack table sizes and timeouts as they are.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "metricsBindAddress": f"127.0.0.1:{metrics_port}",
            "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        }

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, start: Callable[[str, list[str]], None], *, timeout: float = 120) -> None:
        """Start containerd, load the images, start the kubelet; ``start`` runs a named process."""
        ensure_packages()
        archives = images.build_all()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "cni").mkdir(exist_ok=True)
        (self.dir / "cni" / "10-jobbatch.conflist").write_text(json.dumps(self._cni_config(), indent=2))
        (self.dir / "containerd.toml").write_text(self._containerd_config())
        for controller in self._cgroup_controllers():
            (controller / self.cgroup_root.lstrip("/")).mkdir(exist_ok=True)
        start("containerd", [shutil.which("containerd") or "containerd", f"--config={self.dir / 'containerd.toml'}"])
        _wait(lambda: self.crictl("info").returncode == 0, timeout=timeout, what="containerd's CRI to answer")
        for archive in archives:
            self.ctr("images", "import", str(archive), check=True)

        address = node_ip()
        config = self._kubelet_config(_free_port(), _free_port(), address)
        (self.dir / "kubelet.json").write_text(json.dumps(config, indent=2))
        labels = ",".join(f"{k}={v}" for k, v in NODE_LABEL.items())
        start(
            "kubelet",
            [
                str(self.bin / "kubelet"),
                f"--config={self.dir / 'kubelet.json'}",
                f"--kubeconfig={self.kubeconfig}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.dir / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={address}",
                f"--node-labels={labels}",
            ],
        )
        proxy = self._kube_proxy_config(_free_port(), _free_port())
        (self.dir / "kube-proxy.json").write_text(json.dumps(proxy, indent=2))
        start("kube-proxy", [str(self.bin / "kube-proxy"), f"--config={self.dir / 'kube-proxy.json'}"])
        # Ready once the `kubernetes` Service has its rules: a pod started before would find no API server.
        # (Its /healthz answers 200 from the start, before any rule is written.)
        _wait(_kubernetes_service_routed, timeout=timeout, what="kube-proxy's rule for the `kubernetes` Service")

    def ctr(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        command = ["ctr", f"--address={self.socket}", "--namespace=k8s.io", *args]
        return subprocess.run(command, capture_output=True, text=True, check=check)

    def crictl(self, *args: str) -> subprocess.CompletedProcess[str]:
        endpoint = f"unix://{self.socket}"
        return subprocess.run(
            [str(self.bin / "crictl"), f"--runtime-endpoint={endpoint}", f"--image-endpoint={endpoint}", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def clear(self, stop: Callable[[str], None]) -> None:
        """Stop the node and leave nothing of it behind: containers, mounts, network, cgroups.

        The kubelet goes first, so it starts nothing new; then every pod sandbox is stopped and
        removed through the CRI (containers killed, CNI torn down, network namespaces released);
        then containerd; then whatever a crash may have left: shims, mounts, cgroups. The host's
        iptables chains go last, with the API server (``sweep_host_rules``, called by ``down``).
        """
        stop("kubelet")
        stop("kube-proxy")
        if self.socket.exists():
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):  # crictl not built yet, or hung
                self.crictl("rmp", "--all", "--force")
        stop("containerd")
        self._kill_leftover_shims()
        self._unmount_under(self.dir)
        self._remove_cgroups()

    def _kill_leftover_shims(self) -> None:
        needle = str(self.socket).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes()
                if b"containerd-shim" in cmdline and needle in cmdline:
                    os.kill(int(proc.name), signal.SIGKILL)

    @staticmethod
    def _unmount_under(root: Path) -> None:
        prefix = str(root.resolve()) + "/"
        with open("/proc/self/mounts") as mounts:
            points = [line.split()[1].replace("\\040", " ") for line in mounts]
        for point in reversed(points):  # innermost first
            if point.startswith(prefix):
                subprocess.run(["umount", "-l", point], capture_output=True)

    def _cgroup_controllers(self) -> list[Path]:
        return [p for p in CGROUP_ROOT.iterdir() if p.is_dir() and (p / "cgroup.procs").exists()]

    def _remove_cgroups(self) -> None:
        """Remove the (by now empty) cgroup tree under the node's cgroup root, deepest first."""
        for controller in self._cgroup_controllers():
            top = controller / self.cgroup_root.lstrip("/")
            if not top.exists():
                continue
            for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    path.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()


def _kubernetes_service_routed() -> bool:
    services = _iptables("iptables", "-t", "nat", "-S", "KUBE-SERVICES")
    return services.returncode == 0 and "default/kubernetes:https" in services.stdout


def _wait(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)
