"""The Helm chart: lint, server-side schema validation, install, and the operator running on its RBAC."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio import client

from e2e import tools
from e2e.operator_process import OperatorProcess
from tests.integration.harness import Batches, template
from tests.waiting import eventually

CHART = Path(__file__).resolve().parents[2] / "charts" / "jobbatch-operator"
KUBE_VERSION = tools.KUBERNETES_VERSION.removeprefix("v")


def run(*cmd: str, kubeconfig: Path, stdin: str | None = None) -> str:
    binary = str(tools.bin_dir() / cmd[0])
    flag = f"--kubeconfig={kubeconfig}"
    result = subprocess.run([binary, flag, *cmd[1:]], input=stdin, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
async def release_namespace(api: client.ApiClient) -> AsyncIterator[str]:
    """Where the chart goes, enforcing the `restricted` Pod Security Standard."""
    name = f"jobbatch-system-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    labels = {"pod-security.kubernetes.io/enforce": "restricted"}
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    try:
        yield name
    finally:
        await core.delete_namespace(name)


def test_chart_lints_and_renders_valid_objects(kubeconfig: Path, crd: None) -> None:
    run("helm", "lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION, kubeconfig=kubeconfig)
    for values in ([], ["--set", "operator.watchNamespaces={default}", "--set", "priorityClasses.create=true"]):
        rendered = run(
            "helm", "template", "check", str(CHART), "--namespace", "default", "--kube-version", KUBE_VERSION,
            *values, kubeconfig=kubeconfig,
        )  # fmt: skip
        # The real API server validates every object against its schemas (and admission) without storing it.
        run("kubectl", "apply", "--dry-run=server", "-f", "-", kubeconfig=kubeconfig, stdin=rendered)


async def test_chart_installs_and_its_rbac_runs_a_batch(
    api: client.ApiClient, kubeconfig: Path, namespace: str, release_namespace: str, batches: Batches, tmp_path: Path
) -> None:
    release = "jb"
    fullname = f"{release}-jobbatch-operator"
    run(
        "helm", "install", release, str(CHART), "--namespace", release_namespace,
        "--set", f"operator.watchNamespaces={{{namespace}}}", "--set", "replicaCount=1", "--wait", "--timeout", "90s",
        kubeconfig=kubeconfig,
    )  # fmt: skip
    try:
        # The Deployment's pod was admitted under `restricted` (kwok runs it as a simulated pod).
        deployment = await client.AppsV1Api(api).read_namespaced_deployment(fullname, release_namespace)
        assert deployment.status.available_replicas == 1
        container = deployment.spec.template.spec.containers[0]
        assert container.security_context.read_only_root_filesystem
        assert "--leader-elect" in container.args
        assert "--payload-validation-timeout=20" in container.args
        assert f"--namespace={namespace}" in container.args
        assert f"--access-binding={fullname}-application" in container.args
        rbac = client.RbacAuthorizationV1Api(api)
        bindings = await rbac.list_namespaced_role_binding(namespace)
        assert [b.metadata.name for b in bindings.items] == [f"{fullname}-application"]
        await _namespace_users_get_the_rights_they_expect(rbac, kubeconfig, namespace)

        # Run the operator beside it with the chart's ServiceAccount token: a rule missing from the
        # chart's RBAC makes this batch fail.
        token = run(
            "kubectl", "create", "token", fullname, "-n", release_namespace, "--duration=1h", kubeconfig=kubeconfig
        )
        admin = yaml.safe_load(await asyncio.to_thread(kubeconfig.read_text))
        cluster = admin["clusters"][0]["cluster"]
        sa_config = tmp_path / "sa-kubeconfig"
        sa_config_text = json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "sa", "user": {"token": token.strip()}}],
            "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
        })  # fmt: skip
        await asyncio.to_thread(sa_config.write_text, sa_config_text)
        operator = OperatorProcess(
            args=[
                "--namespace", namespace, "--leader-elect", "--leader-election-namespace", release_namespace,
                "--leader-election-lease", fullname, "--lease-duration", "5",
                "--access-binding", f"{fullname}-application",
            ],
            env={**os.environ, "KUBECONFIG": str(sa_config)},
            log=tmp_path / "operator-sa.log",
        )  # fmt: skip
        await operator.start()
        scheduling = client.SchedulingV1Api(api)
        pc = f"{namespace}-queue"
        await scheduling.create_priority_class(client.V1PriorityClass(metadata=client.V1ObjectMeta(name=pc), value=5))
        try:
            await client.CoreV1Api(api).create_namespaced_config_map(
                namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="in"), data={"k": "1\n2\n3\n"})
            )
            await batches.create(
                "rbac",
                {
                    "template": template(duration="1s"), "payloads": {"configMap": {"name": "in", "key": "k"}},
                    "priorityClassName": pc, "ttlSecondsAfterFinished": 1,
                    "retry": {"limit": 1, "backoff": {"initialSeconds": 0}},
                },
            )  # fmt: skip
            await batches.wait_for("rbac", "Complete")
            reasons = [e["reason"] for e in await batches.events("rbac")]
            assert "Completed" in reasons
            await eventually(lambda: _gone(batches), what="the batch deleted after its TTL, by the chart's RBAC")
            # Held while the batch was there, let go once nothing is: `helm uninstall` leaves nothing behind.
            await eventually(
                lambda: _binding_free(rbac, namespace, f"{fullname}-application"), what="the RoleBinding let go"
            )
            lease = await client.CoordinationV1Api(api).read_namespaced_lease(fullname, release_namespace)
            assert lease.spec.holder_identity
            log = await asyncio.to_thread(operator.log.read_text)
            assert "Forbidden" not in log, log[-3000:]
            assert "403" not in log, log[-3000:]
        finally:
            await operator.stop()
            await scheduling.delete_priority_class(pc)
    finally:
        await asyncio.to_thread(
            run, "helm", "uninstall", release, "--namespace", release_namespace, "--wait", kubeconfig=kubeconfig
        )


async def _binding_free(rbac: client.RbacAuthorizationV1Api, namespace: str, name: str) -> bool:
    body = await rbac.read_namespaced_role_binding(name, namespace)
    return not body.metadata.finalizers


async def _gone(batches: Batches) -> bool:
    return not await batches.all() and not await batches.jobs()


async def _namespace_users_get_the_rights_they_expect(
    rbac: client.RbacAuthorizationV1Api, kubeconfig: Path, namespace: str
) -> None:
    """The chart's aggregated ClusterRoles: `edit` may run batches in its namespace, `view` only read them."""
    for user, role in (("editor", "edit"), ("viewer", "view")):
        binding = client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=f"{user}-{role}"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role),
            subjects=[client.RbacV1Subject(api_group="rbac.authorization.k8s.io", kind="User", name=user)],
        )
        await rbac.create_namespaced_role_binding(namespace, binding)

    def can(user: str, verb: str) -> bool:
        binary = str(tools.bin_dir() / "kubectl")
        args = [binary, f"--kubeconfig={kubeconfig}", "auth", "can-i", verb, "jobbatches.jobbatch.io"]
        result = subprocess.run([*args, "-n", namespace, f"--as={user}"], capture_output=True, text=True, timeout=30)
        return result.stdout.strip() == "yes"

    async def aggregated() -> bool:  # the controller-manager aggregates the rules into the built-in roles
        return await asyncio.to_thread(can, "editor", "create") and await asyncio.to_thread(can, "viewer", "list")

    await eventually(aggregated, what="JobBatch rights aggregated into the edit and view ClusterRoles")
    assert await asyncio.to_thread(can, "editor", "delete")
    assert not await asyncio.to_thread(can, "viewer", "create")
    assert not await asyncio.to_thread(can, "viewer", "delete")
