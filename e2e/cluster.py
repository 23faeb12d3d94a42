"""A real local Kubernetes control plane with kwok-simulated nodes.

etcd, kube-apiserver, kube-controller-manager (the real Job controller and
garbage collector), kube-scheduler and kwok run as plain processes on loopback
with free ports (with a real node, the API server on every address, guarded so that only
loopback and the node's pods reach it). Nothing is mocked: only the kubelet is replaced by kwok, which
moves pods through their lifecycle as ``e2e/kwok/stages.yaml`` says
(conventions in ``docs/testing.md``). With ``--real-nodes 1`` a real kubelet with
containerd joins as well (``e2e/realnode.py``) for pods that must run as real containers.

Usage::

    python -m e2e.cluster up [--name local] [--nodes 3] [--pods-per-node 500] [--real-nodes 1]
    python -m e2e.cluster env     # print `export KUBECONFIG=...; export PATH=...` (kubectl, helm, kubectl-jobbatch)
    python -m e2e.cluster logs    # tail every component's log
    python -m e2e.cluster down    # stop the processes, delete the state (logs are kept)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2e import realnode, tools

STAGES_FILE = Path(__file__).parent / "kwok" / "stages.yaml"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
REAL_NODE_COMPONENTS = ("containerd", "kubelet", "kube-proxy")
# Beside a real node, the kwok nodes carry kwok's own taint, so a pod that asks for nothing (every
# example as written, the operator's chart) lands on the real node and simulated pods ask for kwok.
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
# What a pod needs to be simulated: a kwok node selected and, beside a real node, its taint tolerated.
SIMULATED_PLACEMENT: dict[str, Any] = {
    "nodeSelector": {"type": "kwok"},
    "tolerations": [{"key": KWOK_TAINT["key"], "operator": "Exists", "effect": KWOK_TAINT["effect"]}],
}


@dataclasses.dataclass
class Settings:
    """What a cluster looks like; every field has a CLI flag of the same name."""

    name: str = "local"
    nodes: int = 3
    pods_per_node: int = 500
    node_cpu: str = "64"
    node_memory: str = "256Gi"
    # The controller-manager's client limits and Job sync workers bound how fast
    # the built-in Job controller moves; benchmarks raise them.
    kcm_api_qps: int = 20
    kcm_api_burst: int = 30
    concurrent_job_syncs: int = 5
    # The scheduler's client limits (Kubernetes' defaults): one binding per pod, so at most this many
    # pods start per second, whoever creates them.
    scheduler_api_qps: int = 50
    scheduler_api_burst: int = 100
    # A kubelet with containerd beside the kwok nodes (0 or 1; needs root).
    real_nodes: int = 0


def state_dir(name: str) -> Path:
    return tools.cache_dir() / "clusters" / name


def log_dir(name: str) -> Path:
    """Component logs live apart from the state so they survive ``down``."""
    return tools.cache_dir() / "logs" / name


def kubeconfig_path(name: str) -> Path:
    return state_dir(name) / "kubeconfig"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.5, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail saying what was seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
        except Exception as exc:  # noqa: BLE001 - any failure is "not yet", reported at timeout
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last saw: {last!r}")
        time.sleep(interval)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(pki: Path, *, extra_ips: tuple[str, ...] = ()) -> None:
    """A CA, one serving/admin certificate, and the service-account key pair.

    One ``system:masters`` client certificate serves every component, as kwokctl
    does: the test plane has no node or component identities to keep apart.
    ``extra_ips`` are further addresses the API server is reached at (the VM's, from pods).
    """
    pki.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=jobbatch-local-ca",
        cwd=pki,
    )
    names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"]
    sans = [f"IP:{ip}" for ip in ("127.0.0.1", "10.0.0.1", *extra_ips)] + [f"DNS:{n}" for n in ("localhost", *names)]
    (pki / "admin.ext").write_text(f"subjectAltName={','.join(sans)}\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "admin.key",
        "-out",
        "admin.csr",
        "-subj",
        "/O=system:masters/CN=admin",
        cwd=pki,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "admin.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "admin.crt",
        "-days",
        "3650",
        "-extfile",
        "admin.ext",
        cwd=pki,
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def _write_kubeconfig(path: Path, pki: Path, port: int) -> None:
    # JSON is valid YAML; kubectl and the Python clients read it alike.
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "jobbatch-local",
                "cluster": {"server": f"https://127.0.0.1:{port}", "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")},
            }
        ],
        "contexts": [{"name": "jobbatch-local", "context": {"cluster": "jobbatch-local", "user": "admin"}}],
        "current-context": "jobbatch-local",
    }
    path.write_text(json.dumps(config, indent=2))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _node_manifest(index: int, s: Settings) -> dict[str, Any]:
    resources = {"cpu": s.node_cpu, "memory": s.node_memory, "pods": str(s.pods_per_node)}
    node: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": f"kwok-node-{index}",
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": f"kwok-node-{index}",
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "status": {"allocatable": resources, "capacity": resources},
    }
    if s.real_nodes:
        node["spec"] = {"taints": [KWOK_TAINT]}
    return node


class LocalCluster:
    """Start, inspect and stop one named local control plane."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.state = state_dir(self.settings.name)
        self.logs = log_dir(self.settings.name)
        self.kubeconfig = kubeconfig_path(self.settings.name)
        self.bin = tools.bin_dir()
        # Processes this object started; kept so they can be reaped (pids.json serves other processes).
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- process bookkeeping -------------------------------------------------
    @property
    def _pids_file(self) -> Path:
        return self.state / "pids.json"

    def pids(self) -> dict[str, int]:
        """Process id of each component (the leader of its process group)."""
        try:
            return dict(json.loads(self._pids_file.read_text()))
        except FileNotFoundError:
            return {}

    def _start(self, name: str, args: list[str]) -> None:
        commands = self._commands()
        commands[name] = args
        (self.state / "commands.json").write_text(json.dumps(commands))
        with (self.logs / f"{name}.log").open("ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [str(self.bin / args[0]), *args[1:]],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives `up`; `down` signals the whole group
            )
        self._procs[name] = proc
        pids = self.pids()
        pids[name] = proc.pid
        self._pids_file.write_text(json.dumps(pids))

    def _commands(self) -> dict[str, list[str]]:
        try:
            return dict(json.loads((self.state / "commands.json").read_text()))
        except FileNotFoundError:
            return {}

    # -- faults, for the chaos tier (e2e/chaos.py) -----------------------------
    def stop(self, name: str) -> None:
        """Stop one component (TERM, then KILL after 15 s); a component never started is a no-op."""
        pid = self.pids().get(name)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self._alive(name, pid):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        if name in self._procs:
            self._procs.pop(name).wait()

    def restart(self, name: str, *, timeout: float = 120) -> None:
        """Stop one component (TERM, then KILL) and start it again with the same command line."""
        self.stop(name)
        self._start(name, self._commands()[name])
        if name == "kube-apiserver":
            wait_until(self._api_ready, timeout=timeout, what="kube-apiserver /readyz after a restart")

    def pause(self, name: str) -> None:
        """Freeze one component (SIGSTOP): it holds its sockets and answers nothing."""
        os.killpg(self.pids()[name], signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.killpg(self.pids()[name], signal.SIGCONT)

    def running(self) -> dict[str, bool]:
        out = {}
        for name, pid in self.pids().items():
            try:
                os.kill(pid, 0)
                out[name] = True
            except ProcessLookupError:
                out[name] = False
        return out

    def is_up(self) -> bool:
        states = self.running()
        wanted = COMPONENTS + (REAL_NODE_COMPONENTS if self.settings.real_nodes else ())
        return bool(states) and all(states.get(c) for c in wanted) and self._api_ready()

    def recorded_settings(self) -> Settings | None:
        """The settings the running cluster was started with (None if it never started)."""
        try:
            return Settings(**json.loads((self.state / "settings.json").read_text()))
        except FileNotFoundError:
            return None

    def ports(self) -> dict[str, int]:
        """Loopback ports: ``etcd`` (client) and ``apiserver``."""
        return dict(json.loads((self.state / "ports.json").read_text()))

    # -- lifecycle ------------------------------------------------------------
    def up(self, *, timeout: float = 180) -> Path:
        """Start every component (reusing a healthy cluster of the same name and settings)."""
        if self.is_up() and self.recorded_settings() == self.settings:
            return self.kubeconfig
        self.down()
        s = self.settings
        if s.real_nodes not in (0, 1):
            raise ValueError(f"real_nodes is 0 or 1, not {s.real_nodes}")
        if s.real_nodes and (other := self._other_real_node_cluster()):
            raise RuntimeError(
                f"cluster {other!r} runs a real node: one at a time (they share the bridge and the host's "
                f"iptables); stop it first: python -m e2e.cluster down --name {other}"
            )
        tools.ensure()
        if s.real_nodes:  # before the API server's guard below: that needs iptables, a fresh machine lacks it
            realnode.ensure_packages()
        self.state.mkdir(parents=True)
        if self.logs.exists():
            shutil.rmtree(self.logs)
        self.logs.mkdir(parents=True)
        pki = self.state / "pki"
        # With a real node, pods reach the API server at the VM's address, through the `kubernetes` Service.
        vm_ip = realnode.node_ip() if s.real_nodes else ""
        _make_pki(pki, extra_ips=(vm_ip,) if vm_ip else ())
        etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
        (self.state / "ports.json").write_text(json.dumps({"etcd": etcd_port, "apiserver": api_port}))
        (self.state / "settings.json").write_text(json.dumps(dataclasses.asdict(s)))
        _write_kubeconfig(self.kubeconfig, pki, api_port)
        kc = str(self.kubeconfig)
        if vm_ip:
            realnode.guard_api_server(api_port)  # it listens on every address: only lo and the pods get in

        self._start(
            "etcd",
            [
                "etcd",
                "--name=default",
                f"--data-dir={self.state / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync=true",  # a throwaway test store: durability is not the point
                "--quota-backend-bytes=8589934592",
            ],
        )
        self._start(
            "kube-apiserver",
            [
                "kube-apiserver",
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--secure-port={api_port}",
                *self._apiserver_address_flags(vm_ip),
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'admin.crt'}",
                f"--tls-private-key-file={pki / 'admin.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                # logs/exec reach a kubelet by its address: no DNS has the node names; with the
                # certificate the real node's kubelet asks for (it refuses anonymous clients).
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={pki / 'admin.crt'}",
                f"--kubelet-client-key={pki / 'admin.key'}",
                "--profiling=false",
            ],
        )
        wait_until(self._api_ready, timeout=timeout, what="kube-apiserver /readyz")

        common = [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
        ]
        self._start(
            "kube-controller-manager",
            [
                "kube-controller-manager",
                *common,
                f"--secure-port={free_port()}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--kube-api-qps={s.kcm_api_qps}",
                f"--kube-api-burst={s.kcm_api_burst}",
                f"--concurrent-job-syncs={s.concurrent_job_syncs}",
                "--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle,-route",
            ],
        )
        self._start(
            "kube-scheduler",
            [
                "kube-scheduler",
                *common,
                f"--secure-port={free_port()}",
                f"--kube-api-qps={s.scheduler_api_qps}",
                f"--kube-api-burst={s.scheduler_api_burst}",
            ],
        )
        self._start(
            "kwok",
            [
                "kwok",
                f"--kubeconfig={kc}",
                f"--config={STAGES_FILE}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--server-address=127.0.0.1:{free_port()}",
                "--node-lease-duration-seconds=40",
                "--cidr=10.128.0.0/12",
            ],
        )
        nodes = {"apiVersion": "v1", "kind": "List", "items": [_node_manifest(i, s) for i in range(s.nodes)]}
        self.kubectl("apply", "-f", "-", input=json.dumps(nodes))
        if s.real_nodes:
            realnode.RealNode(self.state, self.logs, self.kubeconfig).start(self._start)
        wait_until(self._nodes_ready, timeout=timeout, what=f"{s.nodes} kwok and {s.real_nodes} real nodes Ready")
        # The controller-manager is working once it has made the default ServiceAccount,
        # which every pod needs before it can be created.
        wait_until(
            lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
            timeout=timeout,
            what="the default ServiceAccount (controller-manager running)",
        )
        return self.kubeconfig

    @staticmethod
    def _apiserver_address_flags(vm_ip: str) -> list[str]:
        """Loopback only, unless pods must reach the API server: then the VM's address backs the
        `kubernetes` Service (its endpoint reconciler publishes it; kube-proxy routes to it)."""
        if not vm_ip:
            # A loopback advertise address cannot back the `kubernetes` Service: publish none.
            return ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none"]
        return ["--bind-address=0.0.0.0", f"--advertise-address={vm_ip}"]

    def _other_real_node_cluster(self) -> str | None:
        """Another local cluster whose real node still runs, if any."""
        for other in sorted(self.state.parent.glob("*/pids.json")):
            if other.parent == self.state:
                continue
            with contextlib.suppress(OSError, ValueError):
                pids = json.loads(other.read_text())
                for name in REAL_NODE_COMPONENTS:
                    if name in pids and _process_alive(int(pids[name])):
                        return other.parent.name
        return None

    def down(self) -> None:
        """Stop every component (TERM, then KILL) and delete the state folder."""
        real_node = bool((settings := self.recorded_settings()) and settings.real_nodes)
        if "containerd" in self.pids():  # the real node first: its pods hold mounts under the state
            realnode.RealNode(self.state, self.logs, self.kubeconfig).clear(self.stop)
        pids = self.pids()
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, pid in pids.items():
            while time.monotonic() < deadline and self._alive(name, pid):
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for proc in self._procs.values():
            proc.wait()
        self._procs.clear()
        if real_node:  # kube-proxy's and the kubelet's chains, and the API server's guard
            for failure in realnode.sweep_host_rules():
                print(f"could not remove an iptables rule: {failure}", file=sys.stderr)
        if self.state.exists():
            shutil.rmtree(self.state)

    def _alive(self, name: str, pid: int) -> bool:
        proc = self._procs.get(name)
        if proc is not None:  # our own child: poll() also reaps it
            return proc.poll() is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    # -- inspection -----------------------------------------------------------
    def env(self) -> dict[str, str]:
        """Environment for child processes: this cluster's kubeconfig, the tools on PATH."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
        )

    def _api_ready(self) -> bool:
        try:
            ports = self.ports()
        except FileNotFoundError:
            return False
        pki = self.state / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        url = f"https://127.0.0.1:{ports['apiserver']}/readyz"
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _nodes_ready(self) -> bool:
        out = self.kubectl("get", "nodes", "-o", "json").stdout
        ready = [
            n
            for n in json.loads(out)["items"]
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
        ]
        return len(ready) >= self.settings.nodes + self.settings.real_nodes

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of every component's log, for failure reports."""
        parts = []
        for comp in COMPONENTS + REAL_NODE_COMPONENTS:
            path = self.logs / f"{comp}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"===== {comp} ({path}) =====\n" + "\n".join(tail))
        return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "env", "logs", "status"])
    defaults = Settings()
    for field in dataclasses.fields(Settings):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=type(getattr(defaults, field.name)), default=getattr(defaults, field.name))
    args = parser.parse_args(argv)
    settings = Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})
    cluster = LocalCluster(settings)
    if args.command == "up":
        try:
            cluster.up()
        except Exception:
            print(cluster.log_tails(), file=sys.stderr)
            raise
        print(f'cluster {settings.name!r} is up; use it with:\n  eval "$(python -m e2e.cluster env)"')
    elif args.command == "down":
        cluster.down()
        print(f"cluster {settings.name!r} is down; logs kept in {cluster.logs}")
    elif args.command == "env":
        # The cluster's kubectl and helm, and this environment's scripts (jobbatch, kubectl-jobbatch).
        scripts = Path(sys.executable).parent
        print(f"export KUBECONFIG={cluster.kubeconfig}\nexport PATH={cluster.bin}:{scripts}:$PATH")
    elif args.command == "logs":
        print(cluster.log_tails())
    else:
        print(json.dumps({"up": cluster.is_up(), "processes": cluster.running()}, indent=2))
        return 0 if cluster.is_up() else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
