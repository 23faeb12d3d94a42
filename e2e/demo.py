"""The README's first command: a local control plane and the operator, shown working, then stopped.

    python -m e2e.demo [--keep]

With ``--keep`` the cluster stays up afterwards (``python -m e2e.cluster down --name demo`` stops it).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import urllib.request

from e2e.cluster import LocalCluster, Settings, wait_until

LIVENESS = "http://127.0.0.1:18081/healthz"


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def _healthy() -> bool:
    try:
        with urllib.request.urlopen(LIVENESS, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    args = parser.parse_args(argv)

    cluster = LocalCluster(Settings(name="demo"))
    _say("starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)")
    try:
        cluster.up()
    except Exception:
        print(cluster.log_tails(), file=sys.stderr)
        cluster.down()
        raise
    env = cluster.env()
    operator: subprocess.Popen[bytes] | None = None
    try:
        print(cluster.kubectl("get", "nodes", "-o", "wide").stdout)
        _say("starting the operator: jobbatch run")
        operator = subprocess.Popen(
            [sys.executable, "-m", "jobbatch.cli", "run", "--liveness-endpoint", LIVENESS, "--metrics-port", "0"],
            env=env,
        )
        wait_until(_healthy, timeout=60, what=f"operator liveness at {LIVENESS}")
        _say(f"operator is live ({LIVENESS} answers 200)")
    finally:
        if operator is not None:
            _say("stopping the operator")
            operator.send_signal(signal.SIGTERM)
            operator.wait(timeout=30)
        if args.keep:
            _say(f"cluster left running; use it with: export KUBECONFIG={cluster.kubeconfig}")
        else:
            _say("stopping the control plane")
            cluster.down()
    return 0 if operator is not None and operator.returncode == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
