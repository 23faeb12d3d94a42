"""A hostile or broken batch never stalls other tenants, and every failure is visible (issue #10)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from hypothesis import Phase, given, settings
from kubernetes_asyncio import client

from e2e import tools
from e2e.operator_process import OperatorProcess, healthy
from jobbatch import api as jb
from jobbatch import naming
from tests import fuzz
from tests.integration.conftest import OperatorFactory
from tests.integration.harness import MERGE_PATCH, Batches, PodRecorder, template
from tests.waiting import eventually

# Backtracks exponentially on a near-miss such as "aaa…a!": hours of one C call holding the GIL.
RUNAWAY_SCHEMA = {"type": "string", "pattern": "^(a+)+$"}


def condition(body: dict[str, Any], ctype: str) -> dict[str, Any]:
    conditions = (body.get("status") or {}).get("conditions") or []
    return next(c for c in conditions if c["type"] == ctype)


def stamp(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_a_runaway_payload_schema_stalls_no_other_batch(
    api: client.ApiClient, namespace: str, other_namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    proc = await operator("--namespace", other_namespace, "--payload-validation-timeout", "60")
    await batches.create(
        "runaway", {"template": template(), "payloads": {"items": ["a" * 40 + "!"]}, "payloadSchema": RUNAWAY_SCHEMA}
    )
    tenant = Batches(api, other_namespace)
    try:
        await tenant.create("plain", {"template": template(), "payloads": {"count": 5}, "parallelism": 5})
        plain = await tenant.wait_for("plain", "Complete")
        assert await asyncio.to_thread(healthy, proc.url)  # the event loop answered all along

        rejected = await batches.wait_for("runaway", "Accepted", "False", timeout=120)
        accepted = condition(rejected, "Accepted")
        assert accepted["reason"] == "PayloadValidationTimeout"
        assert "took longer than 60s" in accepted["message"]
        # The other tenant's batch finished while the runaway one was still being checked.
        assert stamp(plain["status"]["completionTime"]) < stamp(accepted["lastTransitionTime"])
        assert await batches.jobs() == []  # nothing half-started
        reasons = [e["reason"] for e in await batches.events("runaway")]
        assert "PayloadValidationTimeout" in reasons
    finally:
        await tenant.delete("plain")
        await eventually(lambda: _gone(tenant), what="the other tenant's batch deleted")


async def _gone(batches: Batches) -> bool:
    return not await batches.all()


async def test_a_pod_template_the_api_server_refuses_is_caught_at_acceptance(
    batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    bad_name = template()
    bad_name["spec"]["containers"][0]["name"] = "Bad_Name"
    await batches.create("badname", {"template": bad_name, "payloads": {"count": 1}})
    # A volume named like the operator's own payload volume: the Job would list it twice.
    clash = template()
    clash["spec"]["volumes"] = [{"name": "jobbatch-payloads", "emptyDir": {}}]
    await batches.create("clash", {"template": clash, "payloads": {"items": [1]}})
    for name, says in (("badname", "Bad_Name"), ("clash", "jobbatch-payloads")):
        rejected = await batches.wait_for(name, "Accepted", "False")
        accepted = condition(rejected, "Accepted")
        assert accepted["reason"] == "InvalidPodTemplate"
        assert "HTTP 422" in accepted["message"]
        assert says in accepted["message"]
        assert rejected["status"]["phase"] == "Pending"
        events = [e for e in await batches.events(name) if e["reason"] == "InvalidPodTemplate"]
        assert events
        assert events[0]["type"] == "Warning"
    assert await batches.jobs() == []  # nothing half-started


async def refused_job_creates(api: client.ApiClient) -> int:
    """Job creates the API server has refused with 403, from its own metrics."""
    resp = await api.call_api("/metrics", "GET", _preload_content=False)
    text = (await resp.read()).decode()
    total = 0
    for line in text.splitlines():
        counter = line.startswith("apiserver_request_total{") and 'resource="jobs"' in line
        if counter and 'verb="POST"' in line and 'code="403"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


async def test_refused_creates_back_off_are_reported_and_recover(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    core = client.CoreV1Api(api)
    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="no-jobs"), spec=client.V1ResourceQuotaSpec(hard={"count/jobs.batch": "0"})
    )
    await core.create_namespaced_resource_quota(namespace, quota)
    await eventually(lambda: _quota_enforced(core, namespace), what="the quota controller to compute the quota's usage")
    await operator()
    refused_before = await refused_job_creates(api)
    await batches.create("quota", {"template": template(), "payloads": {"count": 3}, "parallelism": 3})

    body = await eventually(
        lambda: _stalled_saying(batches, "quota", "3 refusals in a row"), what="Stalled after three refused creates"
    )
    stalled = condition(body, "Stalled")
    assert stalled["reason"] == "FailedCreate"
    assert "exceeded quota" in stalled["message"]
    shards = body["status"]["shards"]
    assert shards["running"] == 0
    assert shards["pending"] == 3
    # Backoff, not a hot loop: the third try comes about 6 s after the first, and only these reached
    # the API server (the acceptance's dry run is the fourth; a try in flight may be the fifth).
    assert await refused_job_creates(api) - refused_before <= 5
    events = [e for e in await batches.events("quota") if e["reason"] == "FailedCreate"]
    assert len(events) == 1
    assert events[0]["type"] == "Warning"
    assert "exceeded quota" in events[0]["message"]

    await core.delete_namespaced_resource_quota("no-jobs", namespace)
    done = await batches.wait_for("quota", "Complete", timeout=120)
    assert condition(done, "Stalled")["status"] == "False"


async def test_a_job_name_taken_by_someone_else_stalls_the_batch_until_freed(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    """Shard Job names are predictable: a tenant's Job under one is a refused create said out loud
    (Stalled, an Event), never taken for the batch's own or retried silently forever."""
    await operator()
    created = await batches.create(
        "squatted", {"template": template(), "payloads": {"count": 3}, "parallelism": 3, "suspend": True}
    )
    await batches.wait_for("squatted", "Suspended")
    taken = naming.job_name("squatted", created["metadata"]["uid"], 0, 0)
    jobs = client.BatchV1Api(api)
    squatter: Any = {  # the client takes a plain manifest as well as a V1Job
        "metadata": {"name": taken},
        "spec": {"suspend": True, "template": {"spec": {**template()["spec"], "restartPolicy": "Never"}}},
    }
    await jobs.create_namespaced_job(namespace, squatter)
    await batches.patch_spec("squatted", {"suspend": False})

    body = await eventually(
        lambda: _stalled_saying(batches, "squatted", "is not this batch's"), what="Stalled: the Job name is taken"
    )
    assert condition(body, "Stalled")["reason"] == "FailedCreate"
    assert body["status"]["shards"]["pending"] == 3
    events = [e for e in await batches.events("squatted") if e["reason"] == "FailedCreate"]
    assert len(events) == 1
    assert taken in events[0]["message"]
    await jobs.delete_namespaced_job(taken, namespace, propagation_policy="Background")
    done = await batches.wait_for("squatted", "Complete", timeout=120)
    assert condition(done, "Stalled")["status"] == "False"


async def _stalled_saying(batches: Batches, name: str, text: str) -> dict[str, Any] | None:
    """The batch once its Stalled condition is True with ``text`` in its message, else None."""
    body = await batches.get(name)
    conds = {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}
    stalled = conds.get("Stalled")
    return body if stalled and stalled["status"] == "True" and text in stalled["message"] else None


async def _refusals(batches: Batches, name: str) -> int:
    """Refused creates in a row, as the batch's Stalled condition counts them (0 if not Stalled)."""
    stalled = (await batches.condition(name, "Stalled")) or {}
    stalled = condition(stalled, "Stalled") if stalled else {}
    if stalled.get("status") != "True":
        return 0
    found = re.search(r"\((\d+) refusals in a row\)", stalled.get("message", ""))
    return int(found.group(1)) if found else 0


async def test_a_refused_retry_keeps_the_failed_attempt_across_a_restart(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    """Scenario 3: a failed attempt is superseded only by a retry Job that exists. Its retry's create is
    refused (a quota) and the operator is SIGKILLed meanwhile: the shard still runs attempt 1 next, once,
    never attempt 0 again, and never two pods at once."""
    core = client.CoreV1Api(api)
    quota = client.V1ResourceQuota(  # room for the chunk Job, none for a retry
        metadata=client.V1ObjectMeta(name="no-jobs"), spec=client.V1ResourceQuotaSpec(hard={"count/jobs.batch": "1"})
    )
    await core.create_namespaced_resource_quota(namespace, quota)
    await eventually(lambda: _quota_enforced(core, namespace), what="the quota controller to compute the quota's usage")
    first = await operator()
    spec = {
        "template": template(fail_shards="1", fail_attempts="0", exit_code="3"),
        "payloads": {"count": 2},
        "retry": {"limit": 2, "backoff": {"initialSeconds": 0, "jitter": 0}},
    }
    async with PodRecorder(api, namespace) as pods:
        await batches.create("refused", spec)
        await eventually(lambda: _refusals(batches, "refused"), what="the retry's create refused")
        body = await batches.get("refused")
        assert condition(body, "Stalled")["reason"] == "FailedCreate"
        assert "exceeded quota" in condition(body, "Stalled")["message"]
        assert (body["status"]["succeededShards"], body["status"]["failedShards"]) == ("0", "")
        (chunk,) = await batches.jobs()  # the failed attempt's Job, kept: it is all that says attempt 0 ran
        assert jb.SHARD_FINALIZER in chunk.metadata.finalizers

        async def refused_twice() -> int:
            return n if (n := await _refusals(batches, "refused")) >= 2 else 0

        seen = await eventually(refused_twice, what="two refusals in a row")
        await first.kill()
        await operator()

        async def counting_again() -> bool:  # a new process counts its refusals from 1
            return 0 < await _refusals(batches, "refused") < seen

        await eventually(counting_again, what="the new operator's retry create refused too")
        await core.delete_namespaced_resource_quota("no-jobs", namespace)
        done = await batches.wait_for("refused", "Complete")
    assert done["status"]["succeededShards"] == "0-1"
    assert pods.pods("refused") == {(0, 0): 1, (1, 0): 1, (1, 1): 1}
    assert max(pods.max_running.values()) <= 2


async def _quota_enforced(core: client.CoreV1Api, namespace: str) -> bool:
    quota = await core.read_namespaced_resource_quota("no-jobs", namespace)
    return bool(quota.status and quota.status.hard)


async def test_the_longest_batch_name_still_gets_its_events(batches: Batches, operator: OperatorFactory) -> None:
    await operator()
    name = "n" * 252 + "x"  # the longest name the API server allows
    await batches.create(name, {"template": template(), "payloads": {"count": 1}})
    await batches.wait_for(name, "Complete")
    reasons = [e["reason"] for e in await batches.events(name)]
    assert "Started" in reasons
    assert "Completed" in reasons


async def _jobs_of(batches: Batches, name: str) -> list[Any]:
    return [j for j in await batches.jobs() if j.metadata.labels.get(jb.LABEL_BATCH) == name]


async def test_jobs_left_deleting_while_the_operator_was_down_are_released_on_start(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    first = await operator()
    await batches.create("down", {"template": template(duration="1h"), "payloads": {"count": 2}})
    await batches.wait_status("down", lambda s: s.get("shards", {}).get("running") == 2, "2 running")
    await first.kill()
    # The batch goes while no operator runs (its finalizers removed by hand, as a user stuck on them
    # would): the garbage collector deletes its Jobs, which wait on the operator's finalizer.
    await batches.custom.patch_namespaced_custom_object(
        jb.GROUP, jb.VERSION, namespace, jb.PLURAL, "down", {"metadata": {"finalizers": None}},
        **MERGE_PATCH,
    )  # fmt: skip
    await batches.delete("down")

    async def deleting() -> bool:
        jobs = await _jobs_of(batches, "down")
        return bool(jobs) and all(j.metadata.deletion_timestamp for j in jobs)

    await eventually(deleting, what="the garbage collector to mark the Jobs deleted")
    await operator()  # no event will ever come for these Jobs again: the initial list must do
    await eventually(lambda: _no_jobs_of(batches, "down"), what="the Jobs released and gone")


async def test_a_job_orphaned_then_deleted_is_released(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    await batches.create("orphaning", {"template": template(duration="1h"), "payloads": {"count": 2}})
    await batches.wait_status("orphaning", lambda s: s.get("shards", {}).get("running") == 2, "2 running")
    await batches.custom.delete_namespaced_custom_object(
        jb.GROUP, jb.VERSION, namespace, jb.PLURAL, "orphaning",
        body=client.V1DeleteOptions(propagation_policy="Orphan"),
    )  # fmt: skip

    async def orphaned() -> list[Any] | None:
        jobs = await _jobs_of(batches, "orphaning")
        return jobs if jobs and not any(j.metadata.owner_references for j in jobs) else None

    jobs = await eventually(orphaned, what="the Jobs orphaned (ownerReferences removed)")
    background = client.V1DeleteOptions(propagation_policy="Background")
    for job in jobs:
        await batches.batch.delete_namespaced_job(job.metadata.name, namespace, body=background)
    await eventually(lambda: _no_jobs_of(batches, "orphaning"), what="the orphaned Jobs released and gone")


async def _no_jobs_of(batches: Batches, name: str) -> bool:
    return not await _jobs_of(batches, name)


async def test_cleanup_frees_what_an_uninstalled_operator_held(
    api: client.ApiClient, kubeconfig: Path, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    running = await operator()
    await batches.create("left", {"template": template(duration="1h"), "payloads": {"count": 2}})
    await batches.wait_status("left", lambda s: s.get("shards", {}).get("running") == 2, "2 running")
    await running.stop()  # the operator is uninstalled with the batch still running

    async def cleanup(*flags: str, exit_code: int = 0) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jobbatch.cli", "cleanup", "-n", namespace, *flags,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)}, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        assert proc.returncode == exit_code, out.decode()
        return out.decode()

    listed = await cleanup()
    assert "1 shard Jobs, 1 JobBatches and 0 RoleBindings found" in listed
    (job,) = await _jobs_of(batches, "left")
    assert jb.SHARD_FINALIZER in job.metadata.finalizers  # only listed
    # An operator that still holds its Lease (another replica, say) is not raced.
    leases = client.CoordinationV1Api(api)
    now = datetime.datetime.now(datetime.UTC)
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="other-jobbatch-operator"),
        spec=client.V1LeaseSpec(holder_identity="replica-1", lease_duration_seconds=60, renew_time=now),
    )
    await leases.create_namespaced_lease(namespace, lease)
    refused = await cleanup("--yes", exit_code=1)
    assert f"an operator still runs: Lease {namespace}/other-jobbatch-operator (held by replica-1)" in refused
    (job,) = await _jobs_of(batches, "left")
    assert jb.SHARD_FINALIZER in job.metadata.finalizers
    await leases.delete_namespaced_lease("other-jobbatch-operator", namespace)
    assert "1 shard Jobs, 1 JobBatches and 0 RoleBindings released" in await cleanup("--yes")
    (job,) = await _jobs_of(batches, "left")
    assert jb.SHARD_FINALIZER not in (job.metadata.finalizers or [])
    # With no operator at all, the batch and everything it owns can now be deleted.
    await batches.delete("left")
    await eventually(lambda: _gone(batches), what="the batch deleted without an operator")
    await eventually(lambda: _no_jobs_of(batches, "left"), what="its Jobs deleted without an operator")


CHART = Path(__file__).resolve().parents[2] / "charts" / "jobbatch-operator"


def _kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    cmd = [str(tools.bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=True, timeout=60).stdout


def _chart_rbac_for(kubeconfig: Path, namespace: str, workdir: Path, watched: str | None = None) -> tuple[Path, str]:
    """The chart's ServiceAccount and RBAC, installed in ``namespace``, for ``watched`` (default: the same)
    alone, applied; (its kubeconfig, the manifests)."""
    release = f"jb{namespace[-6:]}"
    rendered = subprocess.run(
        [str(tools.bin_dir() / "helm"), f"--kubeconfig={kubeconfig}", "template", release, str(CHART),
         "--namespace", namespace, "--kube-version", tools.KUBERNETES_VERSION.removeprefix("v"),
         "--set", f"operator.watchNamespaces={{{watched or namespace}}}",
         "--set", "rbac.aggregateToDefaultRoles=false",
         "--show-only", "templates/rbac.yaml", "--show-only", "templates/serviceaccount.yaml"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    _kubectl(kubeconfig, "apply", "-f", "-", stdin=rendered)
    token = _kubectl(kubeconfig, "create", "token", f"{release}-jobbatch-operator", "-n", namespace).strip()
    cluster = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]
    sa_config = workdir / "sa-kubeconfig"
    sa_config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
    }))  # fmt: skip
    return sa_config, rendered


async def test_a_namespace_it_may_not_list_holds_back_no_other(
    api: client.ApiClient, kubeconfig: Path, namespace: str, other_namespace: str, batches: Batches, tmp_path: Path
) -> None:
    """Watching two namespaces, allowed into only one (a RoleBinding removed, say): the other still runs."""
    sa_config, rendered = await asyncio.to_thread(_chart_rbac_for, kubeconfig, namespace, tmp_path)
    try:
        proc = OperatorProcess(
            args=["--namespace", other_namespace, "--namespace", namespace],
            env={**os.environ, "KUBECONFIG": str(sa_config)}, log=tmp_path / "operator-sa.log",
        )  # fmt: skip
        await proc.start()  # live, though one of its namespaces cannot be listed
        try:
            await batches.create("allowed", {"template": template(), "payloads": {"count": 2}})
            await batches.wait_for("allowed", "Complete")
            log = await asyncio.to_thread(proc.log.read_text)
            assert "403" in log or "Forbidden" in log  # the other namespace's list is refused, and retried
            await batches.delete("allowed")
            await eventually(lambda: _gone(batches), what="the batch deleted")
        finally:
            await proc.stop()
    finally:
        await asyncio.to_thread(_kubectl, kubeconfig, "delete", "--ignore-not-found", "-f", "-", stdin=rendered)


async def test_a_payload_snapshot_deleted_by_hand_comes_back(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    created = await batches.create(
        "snap", {"template": template(duration="1h"), "payloads": {"items": [{"n": 1}, {"n": 2}]}}
    )
    await batches.wait_status("snap", lambda s: s.get("shards", {}).get("running") == 2, "2 running")
    core = client.CoreV1Api(api)
    name = naming.payload_configmap_name("snap", created["metadata"]["uid"])
    before = await core.read_namespaced_config_map(name, namespace)
    await core.delete_namespaced_config_map(name, namespace)

    async def recreated() -> Any:
        try:
            cm = await core.read_namespaced_config_map(name, namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return cm if cm.metadata.uid != before.metadata.uid else None

    again = await eventually(recreated, what="the payload snapshot re-created")
    assert again.data == before.data
    assert again.immutable
    reasons = [e["reason"] for e in await batches.events("snap")]
    assert "PayloadSnapshotRecreated" in reasons


async def test_a_replaced_payload_snapshot_holds_the_batch_until_it_is_right_again(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    """Someone swaps the snapshot for a ConfigMap of their own (the batch's owner reference copied): no
    pod starts on it, no retry is used, and the batch goes on once the swap is undone."""
    await operator()
    core = client.CoreV1Api(api)
    items = [{"n": i} for i in range(4)]
    spec = {"template": template(duration="1h"), "payloads": {"items": items}, "parallelism": 2}
    async with PodRecorder(api, namespace) as pods:
        created = await batches.create("swapped", spec)
        await batches.wait_status("swapped", lambda s: s.get("shards", {}).get("running") == 2, "2 running")
        name = naming.payload_configmap_name("swapped", created["metadata"]["uid"])
        own = await core.read_namespaced_config_map(name, namespace)
        await core.delete_namespaced_config_map(name, namespace)
        forged = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name, owner_references=own.metadata.owner_references),
            data={"payloads.jsonl": '{"n": 666}\n' * 4}, immutable=True,
        )  # fmt: skip
        await core.create_namespaced_config_map(namespace, forged)

        async def held() -> bool:
            body = await batches.get("swapped")
            conds = {c["type"]: c for c in body["status"].get("conditions") or []}
            jobs = await batches.jobs()
            return (
                conds["Stalled"]["reason"] == "PayloadSnapshotLost"
                and conds["Running"]["status"] == "False"
                and all(j.spec.suspend for j in jobs)
                and pods.total_running() == 0
            )

        await eventually(held, what="the batch held: Stalled, its Jobs suspended, no pod running")
        started = sum(pods.creations.values())
        await core.delete_namespaced_config_map(name, namespace)  # undone: the operator makes its own again
        await batches.wait_status("swapped", lambda s: s.get("shards", {}).get("running") == 2, "running again")
        again = await core.read_namespaced_config_map(name, namespace)
        assert again.data == own.data
        assert sum(pods.creations.values()) > started
    body = await batches.get("swapped")
    assert body["status"]["shards"]["retrying"] == 0
    assert body["status"].get("failures", []) == []
    assert all(set(a) == {0} for a in pods.attempts("swapped").values())  # the hold used no retry


def _fuzzed_specs(count: int) -> list[dict[str, Any]]:
    """``count`` specs from the strategy, the same on every run."""
    found: list[dict[str, Any]] = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None, phases=[Phase.generate])
    @given(fuzz.batch_specs)
    def collect(spec: dict[str, Any]) -> None:
        found.append(spec)

    collect()
    return found


async def test_fuzzed_batches_are_refused_or_judged_and_the_operator_stays_up(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    proc = await operator("--payload-validation-timeout", "5")
    await client.CoreV1Api(api).create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="fuzz"), data={"k": '1\n{"A": 2}\n'})
    )
    refused, created = 0, []
    for i, spec in enumerate(_fuzzed_specs(40)):
        status = await _create_status(batches, f"fuzz-{i}", spec)
        assert status in (201, 422), (status, spec)  # invalid input is the API server's to refuse, with 422
        if status == 422:
            refused += 1
        else:
            created.append(f"fuzz-{i}")

    async def judged(name: str) -> dict[str, Any] | None:
        conditions = {c["type"]: c for c in ((await batches.get(name)).get("status") or {}).get("conditions") or []}
        return conditions.get("Accepted")

    verdicts = {}
    for name in created:
        accepted = await eventually(lambda name=name: judged(name), what=f"{name} accepted or not")  # type: ignore[misc]
        assert len(accepted["message"]) <= 1024
        verdicts[name] = (accepted["status"], accepted["reason"])
    assert proc.proc is not None
    assert proc.proc.returncode is None
    assert await asyncio.to_thread(healthy, proc.url)
    # The strategy reaches every outcome: refused by the API server, accepted, and not accepted.
    outcomes = {status for status, _ in verdicts.values()}
    assert refused, verdicts
    assert outcomes == {"True", "False"}, verdicts


async def _create_status(batches: Batches, name: str, spec: dict[str, Any]) -> int:
    try:
        await batches.create(name, spec)
    except client.ApiException as exc:
        return int(exc.status or 0)
    return 201


async def _running_worker(api: client.ApiClient, namespace: str, not_these: set[str]) -> Any:
    pods = (await client.CoreV1Api(api).list_namespaced_pod(namespace)).items
    return next(
        (
            p
            for p in pods
            if p.status.phase == "Running" and not p.metadata.deletion_timestamp and p.metadata.uid not in not_these
        ),
        None,
    )


async def test_an_attempt_evicted_past_its_disruption_limit_fails_instead_of_running_forever(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    """Scenario 5: an evicted pod is started again without using a retry, but only
    retry.disruptionLimit times; then the attempt fails and says why (before: a new pod every time)."""
    await operator()
    core = client.CoreV1Api(api)
    spec = {"template": template(duration="1h"), "payloads": {"count": 1}, "retry": {"limit": 0, "disruptionLimit": 1}}
    evicted: set[str] = set()
    async with PodRecorder(api, namespace) as pods:
        await batches.create("evicted", spec)
        for n in (1, 2):
            pod = await eventually(lambda: _running_worker(api, namespace, evicted), what=f"worker pod {n} Running")
            assert pod.metadata.labels[jb.LABEL_ATTEMPT] == "0"  # the same attempt, started again
            evicted.add(pod.metadata.uid)
            eviction = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=namespace))
            await core.create_namespaced_pod_eviction(pod.metadata.name, namespace, eviction)
        body = await batches.wait_for("evicted", "Failed")
    (failure,) = body["status"]["failures"]
    assert (failure["shard"], failure["attempt"], failure["reason"]) == (0, 0, "RetriesExhausted")
    assert "Disrupted more often than retry.disruptionLimit allows" in failure["message"]
    assert "EvictionByEvictionAPI" in failure["message"]
    assert pods.pods("evicted") == {(0, 0): 2}  # one attempt, started once more, never a third time


async def _namespace_gone(core: client.CoreV1Api, name: str) -> bool:
    try:
        await core.read_namespace(name)
    except client.ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def _access_binding(rendered: str) -> str:
    """The name of the chart's RoleBinding in the watched namespace, and the Deployment's flag for it."""
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"].endswith("-application")]
    return str(binding["metadata"]["name"])


async def test_a_deleted_namespace_never_waits_on_the_operators_finalizers(
    api: client.ApiClient, kubeconfig: Path, namespace: str, crd: None, tmp_path: Path
) -> None:
    """Scenario 6: installed per namespace, the operator's rights there come from a RoleBinding that
    the namespace's deletion removes too; it is held until the operator has released everything there
    (before: the namespace could stay Terminating on jobbatch.io finalizers)."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    watched = f"{namespace}-gone"
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=watched)))
    # The operator lives in `namespace` (like jobbatch-system), and watches `watched` only.
    sa_config, rendered = await asyncio.to_thread(_chart_rbac_for, kubeconfig, namespace, tmp_path, watched)
    binding = _access_binding(rendered)
    deploy = await asyncio.to_thread(_render_deployment, kubeconfig, namespace, watched)
    assert f"--access-binding={binding}" in deploy  # what the chart's operator is told
    proc = OperatorProcess(
        args=["--namespace", watched, "--access-binding", binding],
        env={**os.environ, "KUBECONFIG": str(sa_config)}, log=tmp_path / "operator-sa.log",
    )  # fmt: skip
    try:
        await proc.start()

        async def held() -> bool:
            body = await rbac.read_namespaced_role_binding(binding, watched)
            return jb.ACCESS_FINALIZER in (body.metadata.finalizers or [])

        batches = Batches(api, watched)
        spec = {"template": template(duration="1h"), "payloads": {"count": 3}, "parallelism": 3}
        await batches.create("doomed", spec)
        await batches.wait_status("doomed", lambda s: s.get("shards", {}).get("running") == 3, "3 running")
        await eventually(held, what="the operator's RoleBinding held by its finalizer")
        await core.delete_namespace(watched)
        await eventually(lambda: _namespace_gone(core, watched), what=f"namespace {watched} deleted")
        # The namespace controller's order is not luck here: the operator let go of its binding last.
        assert f"rolebinding {watched}/{binding} released" in await asyncio.to_thread(proc.log.read_text)
    finally:
        await proc.stop()
        if not await _namespace_gone(core, watched):  # a failed run: leave no namespace stuck behind
            env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
            cmd = [sys.executable, "-m", "jobbatch.cli", "cleanup", "-n", watched, "--yes"]
            await asyncio.to_thread(subprocess.run, cmd, env=env, check=False, timeout=60)
        await asyncio.to_thread(_kubectl, kubeconfig, "delete", "--ignore-not-found", "-f", "-", stdin=rendered)


def _render_deployment(kubeconfig: Path, namespace: str, watched: str) -> str:
    return subprocess.run(
        [str(tools.bin_dir() / "helm"), f"--kubeconfig={kubeconfig}", "template", f"jb{namespace[-6:]}", str(CHART),
         "--namespace", namespace, "--kube-version", tools.KUBERNETES_VERSION.removeprefix("v"),
         "--set", f"operator.watchNamespaces={{{watched}}}", "--show-only", "templates/deployment.yaml"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
