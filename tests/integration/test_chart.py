"""The Helm chart: lint, server-side schema validation, and `helm install` running the operator as real pods."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio import client

from e2e import tools
from jobbatch.crd import PRINTER_COLUMNS
from tests.integration import jsonschemas
from tests.integration.harness import Batches, host_dir, real_template
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "jobbatch-operator"
KUBE_VERSION = tools.KUBERNETES_VERSION.removeprefix("v")
# The chart version before this one and the last commit that had it: `helm upgrade` from it is tested.
PREVIOUS_CHART = ("0.1.0", "744767ca7cfa3a82b9d7e328a543bc49da961be4")
CRD_NAMES = ("jobbatches.jobbatch.io", "cronjobbatches.jobbatch.io", "batchqueues.jobbatch.io")


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


def test_chart_lints_and_renders_valid_objects(kubeconfig: Path, crd: None, tmp_path: Path) -> None:
    run("helm", "lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION, kubeconfig=kubeconfig)
    schemas = tmp_path / "schemas"
    openapi = json.loads(run("kubectl", "get", "--raw", "/openapi/v2", kubeconfig=kubeconfig))
    assert jsonschemas.write(openapi, schemas) > 100
    everything = [
        "--set", "operator.watchNamespaces={default}", "--set", "priorityClasses.create=true",
        "--set", "image.registry=registry.example.com/team", "--set", f"image.digest=sha256:{'a' * 64}",
        "--set", "priorityClassName=system-cluster-critical", "--set", "extraArgs={--log-level=DEBUG}",
        "--set", "env[0].name=HTTPS_PROXY", "--set", "env[0].value=http://proxy:3128",
        "--set", "envFrom[0].configMapRef.name=operator-extra",
        "--set", "topologySpreadConstraints[0].maxSkew=1",
        "--set", "topologySpreadConstraints[0].topologyKey=kubernetes.io/hostname",
        "--set", "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
        "--set", "podAnnotations.example\\.com/team=batch",
    ]  # fmt: skip
    no_crds = ["--set", "crds.install=false"]
    kinds_without = {d["kind"] for d in yaml.safe_load_all(run(
        "helm", "template", "check", str(CHART), "--namespace", "default", "--kube-version", KUBE_VERSION,
        *no_crds, kubeconfig=kubeconfig,
    )) if d}  # fmt: skip
    assert "CustomResourceDefinition" not in kinds_without
    assert "Deployment" in kinds_without
    for values in ([], everything):
        rendered = run(
            "helm", "template", "check", str(CHART), "--namespace", "default", "--kube-version", KUBE_VERSION,
            *values, kubeconfig=kubeconfig,
        )  # fmt: skip
        # kubeconform, strict: no field the schemas do not name, no duplicate key.
        _kubeconform(rendered, schemas)
        # The real API server validates every object against its schemas (and admission) without storing it.
        run("kubectl", "apply", "--dry-run=server", "-f", "-", kubeconfig=kubeconfig, stdin=rendered)
    objects = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered) if d}
    # The schemas bite: a misspelt field of the operator's container is refused.
    typo = json.loads(json.dumps(objects[("Deployment", "check-jobbatch-operator")]))
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(AssertionError, match="imagePullPolcy"):
        _kubeconform(yaml.safe_dump(typo), schemas)
    pod = objects[("Deployment", "check-jobbatch-operator")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"registry.example.com/team/jobbatch-operator@sha256:{'a' * 64}"
    assert container["args"][-1] == "--log-level=DEBUG"  # after the chart's own: it wins
    assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in container["env"]
    assert container["envFrom"] == [{"configMapRef": {"name": "operator-extra"}}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    annotations = objects[("Deployment", "check-jobbatch-operator")]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["example.com/team"] == "batch"
    crds = {name for kind, name in objects if kind == "CustomResourceDefinition"}
    assert crds == {"jobbatches.jobbatch.io", "cronjobbatches.jobbatch.io", "batchqueues.jobbatch.io"}
    pdb = objects[("PodDisruptionBudget", "check-jobbatch-operator")]["spec"]
    assert pdb["maxUnavailable"] == 1


def test_the_chart_ships_the_dashboard_and_the_alerts_as_they_are_tested(kubeconfig: Path) -> None:
    """The PrometheusRule holds the rules file promtool checks, the ConfigMap the dashboard JSON (for Grafana)."""
    rendered = run(
        "helm", "template", "check", str(CHART), "--namespace", "monitoring", "--kube-version", KUBE_VERSION,
        "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.dashboard.enabled=true",
        "--set", "metrics.dashboard.namespace=grafana", "--set", "metrics.serviceMonitor.enabled=true",
        kubeconfig=kubeconfig,
    )  # fmt: skip
    objects = {d["kind"]: d for d in yaml.safe_load_all(rendered) if d}
    # The metrics' `namespace` label is the batches': the scrape keeps it, or every alert names ours.
    assert objects["ServiceMonitor"]["spec"]["endpoints"][0]["honorLabels"] is True
    files = CHART / "files"
    rule = objects["PrometheusRule"]
    assert rule["spec"] == yaml.safe_load((files / "prometheus-rules.yaml").read_text())
    dashboard = objects["ConfigMap"]
    assert dashboard["metadata"]["namespace"] == "grafana"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["jobbatch-operator.json"]) == json.loads((files / "dashboard.json").read_text())
    # Alerts on metrics nothing can scrape would page for ever: refused.
    unscrapable = subprocess.run(
        [str(tools.bin_dir() / "helm"), "template", "check", str(CHART), "--kube-version", KUBE_VERSION,
         "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.bindAddress=127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert unscrapable.returncode != 0
    assert "JobBatchOperatorNoLeader would always fire" in unscrapable.stderr
    # Off by default: a cluster without the prometheus-operator's CRDs installs the chart as it is.
    default = run("helm", "template", "check", str(CHART), "--kube-version", KUBE_VERSION, kubeconfig=kubeconfig)
    assert "PrometheusRule" not in default
    assert "grafana_dashboard" not in default


async def test_the_chart_runs_the_operator_as_real_pods(
    api: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    release_namespace: str,
    batches: Batches,
    real_node: str,
    tmp_path: Path,
) -> None:
    """`helm install` of the previous chart version, then `helm upgrade` to this one, as a user does it:
    two replicas of the image built here, on the real node, reaching the API server through the
    `kubernetes` Service with the chart's ServiceAccount. A rule missing from the chart's RBAC fails the
    batches; a replica that cannot lead, probe or serve metrics fails the rest."""
    release = "jb"
    fullname = f"{release}-jobbatch-operator"
    core = client.CoreV1Api(api)
    values = ["--set", f"operator.watchNamespaces={{{namespace}}}", "--set", "operator.leaseDurationSeconds=5"]
    run(
        "helm", "install", release, str(_previous_chart(tmp_path / "previous")), "--namespace", release_namespace,
        *values, "--wait", "--timeout", "100s", kubeconfig=kubeconfig,  # within run()'s own 120 s
    )  # fmt: skip
    # The image is this version's, which also runs CronJobBatches; 0.1.0's image did not, and its RBAC has
    # no rules for them. Those rules are added by hand so the 0.1.0 release runs this image; the upgrade
    # must then bring them in the chart (checked below: `kubectl auth can-i`, no denial in the log).
    newer = [
        {"apiGroups": ["jobbatch.io"], "resources": ["cronjobbatches"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["jobbatch.io"], "resources": ["cronjobbatches/status"], "verbs": ["get", "patch"]},
        {"apiGroups": ["jobbatch.io"], "resources": ["jobbatches"], "verbs": ["create"]},
    ]
    patch = json.dumps([{"op": "add", "path": "/rules/-", "value": rule} for rule in newer])
    run("kubectl", "patch", "clusterrole", f"{fullname}-application", "--type=json", "-p", patch, kubeconfig=kubeconfig)
    try:
        deployment = await client.AppsV1Api(api).read_namespaced_deployment(fullname, release_namespace)
        assert deployment.status.ready_replicas == 2  # both passed their readiness probes
        container = deployment.spec.template.spec.containers[0]
        assert container.security_context.read_only_root_filesystem  # admitted under `restricted`
        assert f"--namespace={namespace}" in container.args
        assert f"--access-binding={fullname}-application" in container.args
        pods = await _operator_pods(core, release_namespace, release)
        assert {p.spec.node_name for p in pods} == {real_node}
        rbac = client.RbacAuthorizationV1Api(api)
        bindings = await rbac.list_namespaced_role_binding(namespace)
        assert [b.metadata.name for b in bindings.items] == [f"{fullname}-application"]

        leases = client.CoordinationV1Api(api)
        leader = await eventually(lambda: _leader(leases, core, release_namespace, fullname), what="a leader pod")

        # Every replica serves metrics; exec into the leader to read its own.
        async def leads_by_its_metrics() -> bool:  # the gauge turns 1 once the leader has started up
            metrics = await asyncio.to_thread(
                run, "kubectl", "exec", "-n", release_namespace, leader, "--", "python", "-c",
                "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8080/metrics').read().decode())",
                kubeconfig=kubeconfig,
            )  # fmt: skip
            return "jobbatch_leader 1.0" in metrics

        await eventually(leads_by_its_metrics, what="jobbatch_leader 1.0 in the leader's own metrics")
        # The metrics Service answers from a pod (kube-proxy routes it): the chart's own test.
        out = run("helm", "test", release, "--namespace", release_namespace, "--timeout", "90s", kubeconfig=kubeconfig)
        assert "Phase:          Succeeded" in out, out

        pc = f"{namespace}-queue"
        scheduling = client.SchedulingV1Api(api)
        await scheduling.create_priority_class(client.V1PriorityClass(metadata=client.V1ObjectMeta(name=pc), value=5))
        try:
            out_dir = host_dir(tmp_path / "out")
            spec = {
                "template": real_template(env={"WORKER_OUTPUT_DIR": "/out"}, mounts={"/out": out_dir}),
                "payloads": {"configMap": {"name": "in", "key": "k"}},
                "shardSize": 2, "priorityClassName": pc, "ttlSecondsAfterFinished": 1,
                "retry": {"limit": 1, "backoff": {"initialSeconds": 0}},
            }  # fmt: skip
            data = {"k": "".join(f'{{"url": "https://example.com/{i}"}}\n' for i in range(4))}
            await core.create_namespaced_config_map(
                namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="in"), data=data)
            )
            await batches.create("first", spec)
            await batches.wait_for("first", "Complete")
            assert "Completed" in [e["reason"] for e in await batches.events("first")]
            await eventually(lambda: _gone(batches), what="the batch deleted after its TTL, by the chart's RBAC")
            # No denial check here: kopf was refused CronJobBatches until the rules above were added, and
            # 0.1.0's RBAC has no BatchQueues (batches of the default queue run without them).

            # The upgrade, as docs/operations.md tells it: 0.1.0 installed the JobBatch CRD from crds/,
            # so it is marked as the release's first. (The CronJobBatch and BatchQueue CRDs, new in 0.2.0, are
            # marked too only because the test session applied them before; on a 0.1.0 cluster the upgrade
            # creates them.)
            owner = [f"meta.helm.sh/release-name={release}", f"meta.helm.sh/release-namespace={release_namespace}"]
            # The CRD as an older version left it (a printer column fewer): the upgrade must bring it back.
            drop_priority = '[{"op": "remove", "path": "/spec/versions/0/additionalPrinterColumns/4"}]'
            run("kubectl", "patch", "crd", CRD_NAMES[0], "--type=json", "-p", drop_priority, kubeconfig=kubeconfig)
            for crd_name in CRD_NAMES:
                label = "app.kubernetes.io/managed-by=Helm"
                run("kubectl", "label", "crd", crd_name, label, "--overwrite", kubeconfig=kubeconfig)
                run("kubectl", "annotate", "crd", crd_name, *owner, "--overwrite", kubeconfig=kubeconfig)
            run(
                "helm", "upgrade", release, str(CHART), "--namespace", release_namespace, *values,
                "--wait", "--timeout", "100s", kubeconfig=kubeconfig,
            )  # fmt: skip
            chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
            for crd_name in CRD_NAMES:
                crd = await client.ApiextensionsV1Api(api).read_custom_resource_definition(crd_name)
                assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
                assert crd.metadata.labels["helm.sh/chart"] == f"jobbatch-operator-{chart['version']}"
            crd = await client.ApiextensionsV1Api(api).read_custom_resource_definition(CRD_NAMES[0])
            columns = [c.name for c in crd.spec.versions[0].additional_printer_columns]
            assert columns == [c["name"] for c in PRINTER_COLUMNS]  # "Priority" back: the CRD was upgraded
            upgraded = await client.AppsV1Api(api).read_namespaced_deployment(fullname, release_namespace)
            assert upgraded.metadata.labels["helm.sh/chart"] == f"jobbatch-operator-{chart['version']}"
            # The pod template did not change, so the pods stay; the ClusterRole is the chart's own again.
            role = await rbac.read_cluster_role(f"{fullname}-application")
            assert {"cronjobbatches"} in [set(r.resources) for r in role.rules]
            leader = await eventually(lambda: _leader(leases, core, release_namespace, fullname), what="a leader")
            await _namespace_users_get_the_rights_they_expect(rbac, kubeconfig, namespace)

            # The leader's pod goes; the standby takes the Lease and runs the next batch.
            await core.delete_namespaced_pod(leader, release_namespace)
            successor = await eventually(
                lambda: _leader(leases, core, release_namespace, fullname, not_=leader), what="a new leader pod"
            )
            await batches.create("second", spec)
            await batches.wait_for("second", "Complete")
            written = sorted(p.name for p in out_dir.iterdir())
            assert written == [f"{b}-{s}-0.txt" for b in ("first", "second") for s in (0, 1)]

            for pod in await _operator_pods(core, release_namespace, release):  # no crash, no failed liveness probe
                assert [c.restart_count for c in pod.status.container_statuses] == [0], pod.metadata.name
            log = run("kubectl", "logs", "-n", release_namespace, successor, kubeconfig=kubeconfig)
            assert "leads (Lease" in log
            _no_denials(log)
        finally:
            await scheduling.delete_priority_class(pc)
        # Held while the batches were there, let go once nothing is: `helm uninstall` leaves nothing behind.
        await eventually(lambda: _gone(batches), what="the second batch deleted after its TTL")
        await eventually(
            lambda: _binding_free(rbac, namespace, f"{fullname}-application"), what="the RoleBinding let go"
        )
    finally:
        await asyncio.to_thread(
            run, "helm", "uninstall", release, "--namespace", release_namespace, "--wait", kubeconfig=kubeconfig
        )
    # `helm.sh/resource-policy: keep`: uninstalling never takes the CRDs, and every JobBatch, with them.
    for crd_name in CRD_NAMES:
        crd = await client.ApiextensionsV1Api(api).read_custom_resource_definition(crd_name)
        assert crd.metadata.deletion_timestamp is None


def _previous_chart(into: Path) -> Path:
    """The previous chart version, from git history (a clone holds it; no chart repository exists yet)."""
    version, commit = PREVIOUS_CHART
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "charts/jobbatch-operator"], capture_output=True, timeout=60
    )
    assert archive.returncode == 0, f"chart {version} needs commit {commit} in the clone: {archive.stderr!r}"
    into.mkdir()
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True, timeout=60)
    chart = into / "charts" / "jobbatch-operator"
    assert yaml.safe_load((chart / "Chart.yaml").read_text())["version"] == version
    return chart


def _kubeconform(rendered: str, schemas: Path) -> None:
    kubeconform = str(tools.bin_dir() / "kubeconform")
    location = f"{schemas}/{jsonschemas.LOCATION}"
    args = [kubeconform, "-strict", "-summary", "-output", "json", "-schema-location", location, "-"]
    result = subprocess.run(args, input=rendered, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)["summary"]
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered) if d}
    assert summary["valid"] == len([d for d in yaml.safe_load_all(rendered) if d]) > len(kinds) > 5, summary
    assert summary["skipped"] == summary["invalid"] == summary["errors"] == 0, summary


def _no_denials(log: str) -> None:
    assert "Forbidden" not in log, log[-3000:]
    assert " 403" not in log, log[-3000:]


async def _operator_pods(core: client.CoreV1Api, namespace: str, release: str) -> list[client.V1Pod]:
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/name=jobbatch-operator"
    pods = await core.list_namespaced_pod(namespace, label_selector=selector)
    return [p for p in pods.items if not p.metadata.deletion_timestamp]


async def _leader(
    leases: client.CoordinationV1Api, core: client.CoreV1Api, namespace: str, lease: str, not_: str = ""
) -> str | None:
    """The running pod whose process holds the Lease (identities start with the pod's name)."""
    try:
        holder = (await leases.read_namespaced_lease(lease, namespace)).spec.holder_identity or ""
    except client.ApiException as exc:
        if exc.status == 404:  # not taken yet
            return None
        raise
    for pod in await _operator_pods(core, namespace, lease.removesuffix("-jobbatch-operator")):
        if pod.metadata.name != not_ and holder.startswith(f"{pod.metadata.name}-"):
            return str(pod.metadata.name)
    return None


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

    def can(user: str, verb: str, *subresource: str, resource: str = "jobbatches.jobbatch.io") -> bool:
        binary = str(tools.bin_dir() / "kubectl")
        args = [binary, f"--kubeconfig={kubeconfig}", "auth", "can-i", verb, resource, *subresource]
        result = subprocess.run([*args, "-n", namespace, f"--as={user}"], capture_output=True, text=True, timeout=30)
        return result.stdout.strip() == "yes"

    async def aggregated() -> bool:  # the controller-manager aggregates the rules into the built-in roles
        return await asyncio.to_thread(can, "editor", "create") and await asyncio.to_thread(can, "viewer", "list")

    await eventually(aggregated, what="JobBatch rights aggregated into the edit and view ClusterRoles")
    assert await asyncio.to_thread(can, "editor", "delete")
    assert not await asyncio.to_thread(can, "viewer", "create")
    assert not await asyncio.to_thread(can, "viewer", "delete")
    assert await asyncio.to_thread(can, "editor", "patch", "--subresource=scale")  # kubectl scale
    assert not await asyncio.to_thread(can, "viewer", "patch", "--subresource=scale")
    cron = "cronjobbatches.jobbatch.io"
    assert await asyncio.to_thread(functools.partial(can, "editor", "create", resource=cron))
    assert await asyncio.to_thread(functools.partial(can, "viewer", "list", resource=cron))
    assert not await asyncio.to_thread(functools.partial(can, "viewer", "create", resource=cron))
