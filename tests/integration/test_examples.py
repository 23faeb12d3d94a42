"""Every example manifest runs to completion on the local control plane."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from e2e import tools
from tests.integration.conftest import OperatorFactory
from tests.integration.harness import Batches

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
    example: Path, kubeconfig: Path, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    names = [d["metadata"]["name"] for d in DOCS[example] if d["kind"] == "JobBatch"]
    assert names, f"{example} has no JobBatch"
    cluster_scoped = [d["metadata"]["name"] for d in DOCS[example] if d["kind"] == "PriorityClass"]
    await operator("--max-running-shards", "10")  # the priorities example competes for this cap
    try:
        for path in FILES[example]:
            kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(path))
        for name in names:
            done = await batches.wait_for(name, "Complete", timeout=180)
            assert done["status"]["shards"]["failed"] == 0
        out = kubectl(kubeconfig, "get", "jobbatches", "-n", namespace)
        assert out.split("\n")[0].split() == ["NAME", "PHASE", "DONE", "RUNNING", "FAILED", "PRIORITY", "AGE"]
    finally:
        for name in cluster_scoped:
            kubectl(kubeconfig, "delete", "priorityclass", name, "--ignore-not-found")
