"""Every example manifest runs as written to completion, its workers real containers on the real node.

The kwok nodes beside the real node are tainted (e2e.cluster.KWOK_TAINT) and the examples ask for
no node, so their pods run the example-worker image that `make images` builds, for real.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client

from e2e import tools
from e2e.cluster import SIMULATED_PLACEMENT
from tests.integration.conftest import OperatorFactory
from tests.integration.harness import Batches, PodRecorder
from tests.integration.test_kubectl_plugin import kubectl_jobbatch
from tests.waiting import eventually

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# Examples that need more than the cluster (an S3 server, a database) run in a test of their own.
OWN_TESTS = {
    "06-import": Path(__file__).parent / "test_pipeline.py",
    "07-cron": Path(__file__).parent / "test_cronjobbatch.py",
}
assert all(test.exists() for test in OWN_TESTS.values())
CASES = sorted(p for p in EXAMPLES.iterdir() if p.is_dir() and p.name[:2].isdigit() and p.name not in OWN_TESTS)
CLUSTER_SCOPED = {"PriorityClass", "BatchQueue"}  # made by an example, deleted after it
# Examples whose bad items a worker rejects (retry.isolate names them): the items, and their shards' number.
BAD_ITEMS = {"10-poison-items": ("7,31", 2)}
FILES = {case: sorted(case.glob("*.yaml")) for case in CASES}
DOCS = {case: [d for f in FILES[case] for d in yaml.safe_load_all(f.read_text()) if d] for case in CASES}


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    cmd = [str(tools.bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, input=stdin).stdout


def simulated(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The example's manifests with its JobBatches' pods sent to the kwok nodes (as `make demo` runs them)."""
    out = copy.deepcopy(docs)
    for doc in out:
        if doc["kind"] == "JobBatch":
            pod = doc["spec"]["template"].setdefault("spec", {})
            pod.update(copy.deepcopy(SIMULATED_PLACEMENT))
    return out


@pytest.mark.parametrize("placement", ["real", "simulated"])
@pytest.mark.parametrize("example", CASES, ids=[p.name for p in CASES])
async def test_example_completes(
    example: Path,
    placement: str,
    api: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    batches: Batches,
    operator: OperatorFactory,
    real_node: str,
) -> None:
    """As written, the workers are real containers on the real node; with the kwok placement added, the
    `sim.jobbatch.io/*` annotations play out (02's retries among them)."""
    names = [d["metadata"]["name"] for d in DOCS[example] if d["kind"] == "JobBatch"]
    assert names, f"{example} has no JobBatch"
    cluster_scoped = [(d["kind"], d["metadata"]["name"]) for d in DOCS[example] if d["kind"] in CLUSTER_SCOPED]
    await operator("--max-running-shards", "10")  # the priorities and queues examples compete for this cap
    try:
        async with PodRecorder(api, namespace) as pods:
            if placement == "real":
                for path in FILES[example]:
                    kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(path))
            else:
                manifests = yaml.safe_dump_all(simulated(DOCS[example]))
                kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=manifests)
            totals = {}
            for name in names:
                done = await batches.wait_for(name, "Complete", timeout=180)
                status = done["status"]
                # 10: the bad items are named, each alone; their shards are the only failed ones.
                bad_items, bad_shards = BAD_ITEMS.get(example.name, ("", 0))
                assert status.get("failedItems", "") == bad_items, status
                assert status["shards"]["failed"] == bad_shards
                totals[name] = status["shards"]["total"]
                if "results" in done["spec"]:  # every shard's result kept: the SDK's, or the simulated one
                    assert done["status"]["results"]["stored"] == totals[name], done["status"]["results"]

            # Every pod's end is seen, not only those that ended before the last batch did.
            async def all_ended() -> bool:
                return set(pods.exit_codes) == set(pods.creations)

            await eventually(all_ended, what="every worker pod's exit")
        for name, total in totals.items():
            assert set(pods.attempts(name)) == set(range(total))
        nodes = set(pods.nodes.values())
        if placement == "real":
            assert nodes == {real_node}
            if example.name in BAD_ITEMS:  # the pod that ran a bad item alone, its worker's own words
                bad = BAD_ITEMS[example.name][0].split(",")[-1]
                shown = await kubectl_jobbatch(kubeconfig, "logs", names[0], "--item", bad, "-n", namespace)
                assert shown.returncode == 0, shown.stderr
                assert f"items {bad}-{bad})" in shown.stdout.splitlines()[0]
                assert "bad item" in shown.stdout
            # Real processes, each exiting 0 (10: the pods that held a bad item exit 2, the example worker's
            # code for bad input).
            codes = {c for cs in pods.exit_codes.values() for c in cs}
            assert codes == ({0, 2} if example.name in BAD_ITEMS else {0})
        else:
            assert real_node not in nodes
            if example.name == "02-retries":
                assert "ShardRetrying" in [e["reason"] for e in await batches.events("retries")]
        out = kubectl(kubeconfig, "get", "jobbatches", "-n", namespace)
        assert out.split("\n")[0].split() == ["NAME", "PHASE", "DONE", "RUNNING", "FAILED", "PRIORITY", "AGE"]
    finally:
        for kind, name in cluster_scoped:
            kubectl(kubeconfig, "delete", kind.lower(), name, "--ignore-not-found")
