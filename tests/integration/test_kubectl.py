"""What users type: kubectl get / explain / wait on JobBatches."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from e2e import tools
from tests.integration.conftest import OperatorFactory
from tests.integration.harness import Batches, template


async def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(tools.bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}", *args]
    return await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=120)


async def test_get_explain_and_wait(
    kubeconfig: Path, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    await batches.create("ok", {"template": template(duration="1s"), "payloads": {"count": 3}})
    await batches.create(
        "bad", {"template": template(exit_code="4"), "payloads": {"count": 1}, "retry": {"nonRetryableExitCodes": [4]}}
    )

    complete = await kubectl(
        kubeconfig, "wait", "-n", namespace, "--for=condition=Complete", "jobbatch/ok", "--timeout=90s"
    )
    assert complete.returncode == 0, complete.stderr
    failed = await kubectl(kubeconfig, "wait", "-n", namespace, "--for=condition=Failed", "jb/bad", "--timeout=90s")
    assert failed.returncode == 0, failed.stderr

    table = (await kubectl(kubeconfig, "get", "jobbatches", "-n", namespace)).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "DONE", "RUNNING", "FAILED", "PRIORITY", "AGE"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["ok"][1:5] == ["Succeeded", "3/3", "0", "0"]
    assert rows["bad"][1:5] == ["Failed", "1/1", "0", "1"]

    explain = await kubectl(kubeconfig, "explain", "jobbatch.spec.retry.backoff")
    assert explain.returncode == 0, explain.stderr
    assert "initialSeconds" in explain.stdout
    assert "Delay before the first retry" in explain.stdout


async def test_kubectl_scale_sets_parallelism(kubeconfig: Path, namespace: str, batches: Batches) -> None:
    """The /scale subresource: `kubectl scale` (and autoscalers) steer spec.parallelism."""
    await batches.create("scaled", {"template": template(duration="1h"), "payloads": {"count": 50}, "parallelism": 5})
    done = await kubectl(kubeconfig, "scale", "-n", namespace, "jobbatch/scaled", "--replicas=12")
    assert done.returncode == 0, done.stderr
    assert (await batches.get("scaled"))["spec"]["parallelism"] == 12
    too_many = await kubectl(kubeconfig, "scale", "-n", namespace, "jb/scaled", "--replicas=100001")
    assert too_many.returncode != 0  # the schema's bound holds through /scale too
    assert "100000" in too_many.stderr
