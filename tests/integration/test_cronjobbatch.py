"""CronJobBatch against the local cluster: runs on schedule, missed runs, no run made twice, refusals."""

from __future__ import annotations

import asyncio
import datetime
import functools
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from e2e import tools
from jobbatch import api, cron, cronplan, cronreconciler
from tests.integration.conftest import OperatorFactory
from tests.integration.harness import MERGE_PATCH, Batches, template
from tests.waiting import eventually

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "07-cron" / "cronjobbatch.yaml"
YEARLY = "0 0 1 1 *"  # due times far from now: no minute turning mid-test moves them


class Crons:
    """CronJobBatch calls for one namespace."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.ns = namespace

    async def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": api.API_VERSION, "kind": api.CRON_KIND, "metadata": {"name": name}, "spec": spec}
        return dict(
            await self.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, self.ns, api.CRON_PLURAL, body)
        )

    async def get(self, name: str) -> dict[str, Any]:
        args = (api.GROUP, api.VERSION, self.ns, api.CRON_PLURAL, name)
        return dict(await self.custom.get_namespaced_custom_object(*args))

    async def patch(self, name: str, body: dict[str, Any], *, status: bool = False) -> None:
        args = (api.GROUP, api.VERSION, self.ns, api.CRON_PLURAL, name, body)
        if status:
            await self.custom.patch_namespaced_custom_object_status(*args, **MERGE_PATCH)
        else:
            await self.custom.patch_namespaced_custom_object(*args, **MERGE_PATCH)

    async def status(self, name: str) -> dict[str, Any]:
        return dict((await self.get(name)).get("status") or {})

    async def condition(self, name: str) -> dict[str, Any]:
        conditions = (await self.status(name)).get("conditions") or []
        return next((c for c in conditions if c["type"] == cronplan.CONDITION_SCHEDULED), {})

    async def events(self, name: str) -> list[tuple[str, str, str]]:
        found = await self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}")
        return [(e.type, e.reason, e.message) for e in found.items if e.involved_object.kind == api.CRON_KIND]


@pytest.fixture
def crons(api: client.ApiClient, namespace: str, crd: None) -> Crons:
    return Crons(api, namespace)


def owned_by(batch: dict[str, Any], cron_body: dict[str, Any]) -> bool:
    refs = batch["metadata"].get("ownerReferences") or []
    return any(r["uid"] == cron_body["metadata"]["uid"] and r.get("controller") for r in refs)


def simulated_template(**annotations: str) -> dict[str, Any]:
    return {"spec": {"template": template(**annotations), "payloads": {"count": 2}}}


async def test_the_example_runs_each_minute_on_the_real_node_and_its_runs_go_with_it(
    kubeconfig: Path, namespace: str, batches: Batches, crons: Crons, operator: OperatorFactory, real_node: str
) -> None:
    """examples/07-cron as written: the next minute's run is a JobBatch of real workers, named by its
    scheduled minute, owned by the CronJobBatch and recorded in its status; deleting the CronJobBatch
    deletes its runs (the garbage collector follows the ownerReference)."""
    await operator()
    kubectl = [str(tools.bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}", "-n", namespace]

    def run(*args: str) -> str:
        return subprocess.run([*kubectl, *args], check=True, capture_output=True, text=True, timeout=60).stdout

    await asyncio.to_thread(run, "apply", "-f", str(EXAMPLE))
    example = yaml.safe_load(EXAMPLE.read_text())
    name = example["metadata"]["name"]
    body = await crons.get(name)

    async def first_run() -> dict[str, Any] | None:
        return next((b for b in await batches.all() if owned_by(b, body)), None)

    batch = await eventually(first_run, what="the first scheduled run", timeout=150)  # the minute must turn
    scheduled = datetime.datetime.fromisoformat(batch["metadata"]["annotations"][api.ANNOTATION_SCHEDULED_TIME])
    assert scheduled.second == 0
    assert batch["metadata"]["name"] == cronplan.batch_name(name, scheduled)
    assert batch["metadata"]["labels"]["app.kubernetes.io/part-of"] == "minutely-report"
    assert batch["spec"]["payloads"] == example["spec"]["jobBatchTemplate"]["spec"]["payloads"]
    done = await batches.wait_for(batch["metadata"]["name"], "Complete", timeout=120)
    assert done["status"]["shards"]["succeeded"] == 3

    async def recorded() -> dict[str, Any] | None:
        status = await crons.status(name)
        return status if status.get("lastSuccessfulTime") and status.get("lastScheduleTime") else None

    status = await eventually(recorded, what="the run's success recorded on the CronJobBatch")
    assert datetime.datetime.fromisoformat(status["lastScheduleTime"]) >= scheduled
    created = [e for e in await crons.events(name) if e[1] == "Created"]
    assert f"created JobBatch {batch['metadata']['name']}" in [m.split(" for ")[0] for _, _, m in created]
    columns = await asyncio.to_thread(run, "get", "cjb")
    assert columns.split("\n")[0].split() == [
        "NAME",
        "SCHEDULE",
        "TIMEZONE",
        "SUSPEND",
        "ACTIVE",
        "LAST",
        "SCHEDULE",
        "AGE",
    ]

    await asyncio.to_thread(run, "delete", "cjb", name, "--wait=false")

    async def runs_gone() -> bool:
        return not [b for b in await batches.all() if owned_by(b, body)]

    await eventually(runs_gone, what="the CronJobBatch's runs deleted with it")


async def test_a_missed_run_starts_once_and_a_run_created_before_a_lost_status_write_is_not_created_again(
    batches: Batches, crons: Crons, operator: OperatorFactory
) -> None:
    """After an outage only the latest missed run starts (as CronJob does). A restart between creating
    a run and recording it is replayed exactly: the run already exists under its deterministic name, so
    the operator records it and creates nothing."""
    since = datetime.datetime(2024, 6, 1, tzinfo=datetime.UTC)
    due, missed = cron.parse(YEARLY).latest(since, datetime.datetime.now(datetime.UTC), datetime.UTC)
    assert due is not None
    assert missed >= 2  # 2025-01-01, 2026-01-01, ...
    spec = {"schedule": YEARLY, "suspend": True, "jobBatchTemplate": simulated_template(duration="1s")}
    late = await crons.create("late", {**spec, "successfulBatchesHistoryLimit": 0})
    replayed = await crons.create("replayed", spec)  # keeps 3 succeeded runs: the replayed one stays
    squatted = await crons.create("squatted", spec)
    await operator()
    for name in ("late", "replayed", "squatted"):  # seen by the operator, suspended
        await eventually(functools.partial(_reason, crons, name, "Suspended"), what=f"{name} Suspended")
        await crons.patch(name, {"status": {"lastScheduleTime": since.isoformat()}}, status=True)

    # The run "replayed" would create, exactly as a pass that died before its status write made it.
    run_name = cronplan.batch_name("replayed", due)
    run_body = cronreconciler.batch_body(replayed, cronplan.CreateBatch(run_name, due))
    made = await batches.custom.create_namespaced_custom_object(
        api.GROUP, api.VERSION, batches.ns, api.PLURAL, run_body
    )
    # And a JobBatch someone else made under the name of "squatted"'s run: not adopted, not replaced.
    squat_name = cronplan.batch_name("squatted", due)
    squat = await batches.create(squat_name, simulated_template(duration="1s")["spec"])

    for name in ("late", "replayed", "squatted"):
        await crons.patch(name, {"spec": {"suspend": False}})

    # "late": its latest missed run starts, once, and (history limit 0) is deleted once it succeeded.
    late_run = cronplan.batch_name("late", due)

    async def late_recorded() -> dict[str, Any] | None:
        status = await crons.status("late")
        done = status.get("lastSuccessfulTime") and not await batches.exists(late_run)
        return status if done else None

    status = await eventually(late_recorded, what="late's run recorded, then deleted (history limit 0)")
    assert datetime.datetime.fromisoformat(status["lastScheduleTime"]) == due
    created = [m for _, reason, m in await crons.events("late") if reason == "Created"]
    assert created == [f"created JobBatch {late_run} for {due.isoformat()} ({missed - 1} earlier runs missed)"]
    assert [b["metadata"]["name"] for b in await batches.all() if owned_by(b, late)] == []

    # "replayed": recorded, not created again: the batch is the one made above, and the only run.
    async def replayed_recorded() -> dict[str, Any] | None:
        status = await crons.status("replayed")
        return status if status.get("lastScheduleTime") else None

    status = await eventually(replayed_recorded, what="replayed's existing run recorded")
    assert datetime.datetime.fromisoformat(status["lastScheduleTime"]) == due
    runs = [b for b in await batches.all() if owned_by(b, replayed)]
    assert [(b["metadata"]["name"], b["metadata"]["uid"]) for b in runs] == [(run_name, made["metadata"]["uid"])]
    assert [r for _, r, _ in await crons.events("replayed") if r == "Created"] == []

    async def squat_refused() -> list[tuple[str, str, str]] | None:
        taken = [e for e in await crons.events("squatted") if e[1] == "RunNameTaken"]
        return taken or None

    ((kind, _, message),) = await eventually(squat_refused, what="squatted's Warning: its run's name is taken")
    assert kind == "Warning"
    assert squat_name in message
    assert (await batches.get(squat_name))["metadata"]["uid"] == squat["metadata"]["uid"]  # left alone
    assert not (await batches.get(squat_name))["metadata"].get("ownerReferences")
    assert [b for b in await batches.all() if owned_by(b, squatted)] == []


async def test_bad_schedules_and_names_are_refused_with_a_reason(crons: Crons, operator: OperatorFactory) -> None:
    spec = {"schedule": "61 * * * *", "jobBatchTemplate": simulated_template()}
    await crons.create("bad", spec)
    await operator()
    condition = await eventually(lambda: _reason(crons, "bad", "InvalidSchedule"), what="InvalidSchedule")
    assert condition["status"] == "False"
    assert condition["message"] == "minute: 61 is outside 0-59"
    assert ("Warning", "InvalidSchedule", "minute: 61 is outside 0-59") in await crons.events("bad")
    await crons.patch("bad", {"spec": {"schedule": "@daily", "timeZone": "Mars/Olympus"}})
    condition = await eventually(lambda: _reason(crons, "bad", "InvalidTimeZone"), what="InvalidTimeZone")
    assert condition["message"] == "unknown time zone 'Mars/Olympus'"
    await crons.patch("bad", {"spec": {"timeZone": "Asia/Tokyo"}})
    await eventually(lambda: _reason(crons, "bad", "Scheduling"), what="Scheduled=True once fixed")

    # What the schema can tell, the API server refuses before the operator sees it.
    for name, bad in (("x" * (api.MAX_CRON_NAME + 1), {}), ("policy", {"concurrencyPolicy": "Sometimes"})):
        with pytest.raises(ApiException) as refused:
            await crons.create(name, {**spec, **bad})
        assert refused.value.status == 422


async def _reason(crons: Crons, name: str, reason: str) -> dict[str, Any] | None:
    condition = await crons.condition(name)
    return condition if condition.get("reason") == reason else None


async def test_replace_stops_the_running_run_and_forbid_waits_for_it(
    batches: Batches, crons: Crons, operator: OperatorFactory
) -> None:
    """Two every-minute CronJobBatches whose runs outlast a minute: at the next minute Replace starts the
    new run and deletes the old one; Forbid says it waits, and starts the waiting run once the running
    one is gone (within startingDeadlineSeconds)."""
    spec = {
        "schedule": "* * * * *", "startingDeadlineSeconds": 50,
        "jobBatchTemplate": simulated_template(duration="600s"),
    }  # fmt: skip
    replace = await crons.create("replace", {**spec, "concurrencyPolicy": "Replace"})
    forbid = await crons.create("forbid", {**spec, "concurrencyPolicy": "Forbid"})
    await operator()

    async def runs(cron_body: dict[str, Any], count: int) -> list[dict[str, Any]] | None:
        owned = sorted((b for b in await batches.all() if owned_by(b, cron_body)), key=lambda b: b["metadata"]["name"])
        return owned if len(owned) >= count else None

    (first,) = await eventually(functools.partial(runs, replace, 1), what="replace's first run", timeout=150)
    (held,) = await eventually(functools.partial(runs, forbid, 1), what="forbid's first run", timeout=150)

    # The next minute: Replace's second run, and its first deleted.
    async def replaced() -> list[dict[str, Any]] | None:
        owned = await runs(replace, 1)
        names = [b["metadata"]["name"] for b in owned or [] if not b["metadata"].get("deletionTimestamp")]
        return owned if first["metadata"]["name"] not in names and len(names) == 1 else None

    await eventually(replaced, what="replace's next run, its first one deleted", timeout=150)
    reasons = [r for _, r, _ in await crons.events("replace")]
    assert reasons.count("Created") == 2
    assert "Replaced" in reasons

    # Forbid: the same minute's run waits (a condition and an Event) while the first one runs...
    waiting = await eventually(lambda: _reason(crons, "forbid", "Waiting"), what="forbid waiting", timeout=150)
    assert held["metadata"]["name"] in waiting["message"]
    assert [b["metadata"]["name"] for b in await runs(forbid, 1) or []] == [held["metadata"]["name"]]
    # ...and starts once it is gone.
    await batches.delete(held["metadata"]["name"])

    async def started() -> list[dict[str, Any]] | None:
        owned = await runs(forbid, 1)
        return [b for b in owned or [] if b["metadata"]["name"] != held["metadata"]["name"]] or None

    (second,) = await eventually(started, what="forbid's waiting run started", timeout=60)
    scheduled = second["metadata"]["annotations"][api.ANNOTATION_SCHEDULED_TIME]
    assert f"run of {scheduled} waits" in waiting["message"]
