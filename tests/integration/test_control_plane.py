"""The local control plane is real: the built-in Job controller runs Jobs on kwok nodes."""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client

from e2e import tools
from e2e.cluster import SIMULATED_PLACEMENT
from tests.waiting import eventually


# Manifests are plain dicts (kubernetes_asyncio accepts them); typed Any for its model-typed signatures.
def _job(name: str, *, completions: int, parallelism: int, annotations: dict[str, str], **spec: Any) -> Any:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completions": completions,
            "parallelism": parallelism,
            "completionMode": "Indexed",
            **spec,
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {
                    **SIMULATED_PLACEMENT,
                    "restartPolicy": "Never",
                    "containers": [{"name": "worker", "image": "busybox"}],
                },
            },
        },
    }


async def _condition(batch: client.BatchV1Api, ns: str, name: str, ctype: str) -> Any:
    job = await batch.read_namespaced_job_status(name, ns)
    for cond in job.status.conditions or []:
        if cond.type == ctype and cond.status == "True":
            return cond
    return None


async def test_indexed_job_completes(api: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api)
    body = _job("indexed", completions=20, parallelism=5, annotations={"sim.jobbatch.io/duration": "200ms"})
    await batch.create_namespaced_job(namespace, body)

    await eventually(lambda: _condition(batch, namespace, "indexed", "Complete"), what="Job indexed Complete")

    job = await batch.read_namespaced_job_status("indexed", namespace)
    assert job.status.succeeded == 20
    assert job.status.completed_indexes == "0-19"
    assert not job.status.failed


async def test_pod_failure_policy_fails_job(api: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api)
    body = _job(
        "fails",
        completions=2,
        parallelism=2,
        annotations={"sim.jobbatch.io/exit-code": "3"},
        backoffLimit=6,
        podFailurePolicy={
            "rules": [
                {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [3]}},
            ]
        },
    )
    await batch.create_namespaced_job(namespace, body)

    cond = await eventually(lambda: _condition(batch, namespace, "fails", "Failed"), what="Job fails Failed")

    assert cond.reason == "PodFailurePolicy"
    assert "exit code 3" in cond.message


async def test_server_reports_the_pinned_version(api: client.ApiClient) -> None:
    info = await client.VersionApi(api).get_code()
    assert info.git_version == tools.KUBERNETES_VERSION  # helm's kubeVersion checks depend on it
