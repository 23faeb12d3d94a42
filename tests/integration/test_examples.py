"""Every example manifest runs as written to completion, its workers real containers on the real node.

The kwok nodes beside the real node are tainted (e2e.cluster.KWOK_TAINT) and the examples ask for
no node, so their pods run the example-worker image that `make images` builds, for real.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio import client

from e2e import tools
from tests.integration.conftest import OperatorFactory
from tests.integration.harness import Batches, PodRecorder

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# Examples that need more than the cluster (an S3 server, a database) run in a test of their own.
OWN_TESTS = {"06-import": Path(__file__).parent / "test_pipeline.py"}
assert all(test.exists() for test in OWN_TESTS.values())
CASES = sorted(p for p in EXAMPLES.iterdir() if p.is_dir() and p.name[:2].isdigit() and p.name not in OWN_TESTS)
FILES = {case: sorted(case.glob("*.yaml")) for case in CASES}
DOCS = {case: [d for f in FILES[case] for d in yaml.safe_load_all(f.read_text()) if d] for case in CASES}


def kubectl(kubeconfig: Path, *args: str) -> str:
    cmd = [str(tools.bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("example", CASES, ids=[p.name for p in CASES])
async def test_example_completes(
    example: Path,
    api: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    batches: Batches,
    operator: OperatorFactory,
    real_node: str,
) -> None:
    names = [d["metadata"]["name"] for d in DOCS[example] if d["kind"] == "JobBatch"]
    assert names, f"{example} has no JobBatch"
    cluster_scoped = [d["metadata"]["name"] for d in DOCS[example] if d["kind"] == "PriorityClass"]
    await operator("--max-running-shards", "10")  # the priorities example competes for this cap
    try:
        async with PodRecorder(api, namespace) as pods:
            for path in FILES[example]:
                kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(path))
            for name in names:
                done = await batches.wait_for(name, "Complete", timeout=180)
                assert done["status"]["shards"]["failed"] == 0
        assert set(pods.nodes.values()) == {real_node}
        assert all(codes == [0] for codes in pods.exit_codes.values())  # real processes, each exiting 0
        out = kubectl(kubeconfig, "get", "jobbatches", "-n", namespace)
        assert out.split("\n")[0].split() == ["NAME", "PHASE", "DONE", "RUNNING", "FAILED", "PRIORITY", "AGE"]
    finally:
        for name in cluster_scoped:
            kubectl(kubeconfig, "delete", "priorityclass", name, "--ignore-not-found")
