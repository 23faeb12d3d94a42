"""Integration tier: a real control plane (ours, or the one an explicit KUBECONFIG names)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config

from e2e import tools
from e2e.cluster import LocalCluster, Settings

_CLUSTER: LocalCluster | None = None


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
    _CLUSTER = LocalCluster(Settings(name="pytest"))
    try:
        _CLUSTER.up()
        yield _CLUSTER.kubeconfig
    finally:
        _CLUSTER.down()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    if report.failed and _CLUSTER is not None:  # type: ignore[attr-defined]
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
    name = f"test-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        await core.delete_namespace(name)
