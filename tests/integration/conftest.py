"""Integration tier: a real control plane (ours, or the one an explicit KUBECONFIG names)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from e2e import tools
from e2e.cluster import LocalCluster, Settings, wait_until
from e2e.operator_process import OperatorProcess
from jobbatch.api import CRON_PLURAL, GROUP, VERSION
from tests.integration.harness import CRDS, Batches
from tests.waiting import eventually

_CLUSTER: LocalCluster | None = None
_OPERATOR_LOGS: list[Path] = []

# The test plane lifts the controller-manager's client limits (Kubernetes defaults: 20 qps,
# burst 30, 5 Job workers) so the 2,000-shard test measures the operator, not throttling, and
# has one real node (containerd + kubelet) for test_real_pods.py beside the kwok nodes.
TEST_CLUSTER = Settings(name="pytest", kcm_api_qps=200, kcm_api_burst=400, concurrent_job_syncs=50, real_nodes=1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.k8s)


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[Path]:
    """Path of the kubeconfig the tests use; starts the local control plane if none is given."""
    global _CLUSTER
    tools.ensure()  # kubectl and helm for the tests, even against a given cluster
    explicit = os.environ.get("KUBECONFIG")
    if explicit:
        yield Path(explicit)
        return
    _CLUSTER = LocalCluster(TEST_CLUSTER)
    try:
        _CLUSTER.up()
        yield _CLUSTER.kubeconfig
    finally:
        _CLUSTER.down()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    if report.failed:  # type: ignore[attr-defined]
        for log in _OPERATOR_LOGS:
            if log.exists():
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-150:])
                report.sections.append((f"operator log {log.name} (tail)", tail))  # type: ignore[attr-defined]
        if _CLUSTER is not None:
            report.sections.append(("control plane logs (tail)", _CLUSTER.log_tails()))  # type: ignore[attr-defined]
    return report


@pytest.fixture
async def api(kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api_client:
        yield api_client


@pytest.fixture
async def namespace(api: client.ApiClient) -> AsyncIterator[str]:
    """A fresh namespace per test, deleted afterwards (its contents go with it)."""
    async with _fresh_namespace(api, f"test-{uuid.uuid4().hex[:8]}") as name:
        yield name


@pytest.fixture
async def other_namespace(api: client.ApiClient, namespace: str) -> AsyncIterator[str]:
    """A second fresh namespace (another tenant), deleted afterwards."""
    async with _fresh_namespace(api, f"{namespace}-b") as name:
        yield name


@contextlib.asynccontextmanager
async def _fresh_namespace(api: client.ApiClient, name: str) -> AsyncIterator[str]:
    core = client.CoreV1Api(api)
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        await core.delete_namespace(name)


@pytest.fixture(scope="session")
def crd(kubeconfig: Path) -> None:
    """The CRDs, installed once and served."""
    kubectl = [str(tools.bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}"]
    subprocess.run([*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(CRDS)], check=True)
    wait_until(
        lambda: (
            subprocess.run(
                [*kubectl, "get", "jobbatches,cronjobbatches,batchqueues", "-A"], capture_output=True
            ).returncode
            == 0
        ),
        timeout=60,
        what="the jobbatches, cronjobbatches and batchqueues resources to be served",
    )


@pytest.fixture
def batches(api: client.ApiClient, namespace: str, crd: None) -> Batches:
    return Batches(api, namespace)


OperatorFactory = Callable[..., Awaitable[OperatorProcess]]


@pytest.fixture
async def operator(
    kubeconfig: Path, namespace: str, crd: None, tmp_path: Path, api: client.ApiClient
) -> AsyncIterator[OperatorFactory]:
    """Start `jobbatch run` processes watching the test's namespace; all are stopped at the end."""
    started: list[OperatorProcess] = []
    api_client = api

    async def start(*args: str, metrics_port: int = 0) -> OperatorProcess:
        log = tmp_path / f"operator-{len(started)}.log"
        _OPERATOR_LOGS.append(log)
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        proc = OperatorProcess(args=["--namespace", namespace, *args], env=env, log=log, metrics_port=metrics_port)
        started.append(proc)
        await proc.start()
        return proc

    yield start
    # Delete the test's batches while an operator still runs, so every finalizer (kopf's on the
    # batch, ours on shard Jobs) is released and the namespace can go: uninstall hygiene, tested.
    live = [p for p in started if p.proc is not None and p.proc.returncode is None]
    if live:
        # CronJobBatches first: one left would start another run at its next minute.
        custom = client.CustomObjectsApi(api_client)
        await custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, CRON_PLURAL)
        batches = Batches(api_client, namespace)
        for body in await batches.all():
            try:
                await batches.delete(body["metadata"]["name"])
            except ApiException as exc:
                if exc.status != 404:  # 404: the garbage collector was first (a cron's run)
                    raise
        await eventually(lambda: _all_gone(batches), what=f"every JobBatch and shard Job in {namespace} deleted")
    for proc in started:
        await proc.stop()
    _OPERATOR_LOGS.clear()


async def _all_gone(batches: Batches) -> bool:
    return not await batches.all() and not await batches.jobs()


@pytest.fixture
async def real_node(api: client.ApiClient) -> str:
    """The name of the cluster's real node; fails (never skips) when the cluster has none Ready."""
    nodes = await client.CoreV1Api(api).list_node(label_selector="jobbatch.io/node=real")
    ready = [
        n.metadata.name
        for n in nodes.items
        if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
    ]
    assert ready, "the cluster has no Ready real node: start it with `python -m e2e.cluster up --real-nodes 1`"
    return str(ready[0])
