"""The README's first command: a local control plane, the operator, and an example JobBatch run to completion.

    python -m e2e.demo [--keep] [--example examples/01-minimal/jobbatch.yaml]

With ``--keep`` the cluster stays up afterwards (``python -m e2e.cluster down --name demo`` stops it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from e2e.cluster import LocalCluster, Settings, wait_until
from e2e.operator_process import healthy

LIVENESS = "http://127.0.0.1:18081/healthz"
ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "crds"  # JobBatch and CronJobBatch
EXAMPLE = ROOT / "examples" / "01-minimal" / "jobbatch.yaml"


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the cluster running at the end")
    parser.add_argument("--example", type=Path, default=EXAMPLE, help="JobBatch manifest to run")
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
    ok = False
    try:
        print(cluster.kubectl("get", "nodes", "-o", "wide").stdout)
        _say("installing the CRDs: kubectl apply -f crds/")
        cluster.kubectl("apply", "--server-side", "-f", str(CRDS))
        wait_until(
            lambda: cluster.kubectl("get", "jobbatches,cronjobbatches", check=False).returncode == 0,
            timeout=60,
            what="the CRDs",
        )
        _say("starting the operator: jobbatch run")
        operator = subprocess.Popen(
            [sys.executable, "-m", "jobbatch.cli", "run", "--liveness-endpoint", LIVENESS, "--metrics-port", "0"],
            env=env,
        )
        wait_until(lambda: healthy(LIVENESS), timeout=60, what=f"operator liveness at {LIVENESS}")
        _say(f"operator is live ({LIVENESS} answers 200)")
        _say(f"kubectl apply -f {args.example.relative_to(ROOT) if args.example.is_absolute() else args.example}")
        print(cluster.kubectl("apply", "-f", str(args.example)).stdout, end="")
        name = json.loads(cluster.kubectl("create", "--dry-run=client", "-o", "json", "-f", str(args.example)).stdout)[
            "metadata"
        ]["name"]
        _say("kubectl get jobbatches (until it finishes)")
        finished = _follow(cluster, name)
        _say(f"kubectl describe jobbatch {name} (events)")
        describe = cluster.kubectl("describe", "jobbatch", name).stdout
        print(describe[describe.find("Events:") :])
        ok = finished == "Succeeded"
        _say(f"JobBatch {name} {finished}")
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
    return 0 if ok and operator is not None and operator.returncode == 0 else 1


def _follow(cluster: LocalCluster, name: str, timeout: float = 300) -> str:
    """Print the batch's row whenever it changes, until it finishes; return the final phase."""
    deadline = time.monotonic() + timeout
    shown = None
    while time.monotonic() < deadline:
        row = cluster.kubectl("get", "jobbatch", name, "--no-headers", check=False).stdout.strip()
        without_age = row.rsplit(maxsplit=1)[0] if row else ""
        if without_age != shown:
            if shown is None:
                print(cluster.kubectl("get", "jobbatches").stdout.splitlines()[0])
            print(row, flush=True)
            shown = without_age
        phase = row.split()[1] if len(row.split()) > 1 else ""
        if phase in ("Succeeded", "Failed"):
            return phase
        time.sleep(0.5)
    raise TimeoutError(f"jobbatch {name} did not finish in {timeout:.0f}s")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
