"""One CronJobBatch's loop: read it and the JobBatches it owns, ask ``cronplan``, apply the plan, then
sleep until the next schedule time, a change of the CronJobBatch or of one of its batches, or a minute.

A pass reads everything fresh from the API server (a GET and a labelled LIST; a batch counts as the
cron's only if its controller ownerReference names the cron's UID, never by label alone), so a
restarted or newly elected operator carries on from what the API server holds. Order of effects:
the create (and its Event at once; AlreadyExists is "done before" if the batch is the cron's own),
then deletes, each after its Event (so Replace never stops a run for one that cannot start), the
status write guarded by the resourceVersion read, then the other Events. A status write that
conflicts re-plans at once. A create the API server refuses (a quota, a webhook, a bad label) is
Scheduled=False, reason FailedCreate, with a Warning Event, and is tried again at the next wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from jobbatch import api, cronplan, naming
from jobbatch.kube import Conflict, Kube, error_message

logger = logging.getLogger(__name__)

POLL_SECONDS = 60.0  # a pass at least this often, even with no event and nothing due
ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def owned_batches(items: list[dict[str, Any]], cron_uid: str) -> list[cronplan.OwnedBatch]:
    """The listed batches the cron controls (by ownerReference UID), as the plan sees them."""
    owned = []
    for item in items:
        meta, status = item.get("metadata") or {}, item.get("status") or {}
        refs = meta.get("ownerReferences") or []
        if not any(r.get("uid") == cron_uid and r.get("controller") for r in refs):
            continue
        scheduled = (meta.get("annotations") or {}).get(api.ANNOTATION_SCHEDULED_TIME)
        completed = status.get("completionTime")
        owned.append(
            cronplan.OwnedBatch(
                name=meta["name"],
                scheduled=_time(scheduled),
                phase=status.get("phase") or "Pending",
                completed=_time(completed),
                deleting=bool(meta.get("deletionTimestamp")),
            )
        )
    return owned


def batch_body(cron: dict[str, Any], create: cronplan.CreateBatch) -> dict[str, Any]:
    """The JobBatch of one run: the template's spec as the user wrote it, owned by the cron."""
    meta = cron["metadata"]
    template = cron["spec"]["jobBatchTemplate"]
    template_meta = template.get("metadata") or {}
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {
            "name": create.name,
            "namespace": meta["namespace"],
            "labels": {**(template_meta.get("labels") or {}), api.LABEL_CRON: naming.label_value(meta["name"])},
            "annotations": {
                **(template_meta.get("annotations") or {}),
                api.ANNOTATION_SCHEDULED_TIME: create.scheduled.isoformat(),
            },
            "ownerReferences": [
                {
                    "apiVersion": api.API_VERSION,
                    "kind": api.CRON_KIND,
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": template["spec"],
    }


class CronReconciler:
    def __init__(
        self, kube: Kube, namespace: str, name: str, uid: str, *, now: Callable[[], datetime.datetime] = _now
    ) -> None:
        self.kube, self.namespace, self.name, self.uid = kube, namespace, name, uid
        self._now = now
        self._changed = asyncio.Event()
        self._gone = False  # the cron is deleted (or being deleted): the loop ends
        self._phases: dict[str, str] = {}  # its batches' phases as last seen: what a wake-up is worth

    def batch_changed(self, uid: str, phase: str, deleted: bool) -> None:
        """A batch it owns changed: look again only if its phase did or it went (not on every progress
        write of a running batch, each of which would cost a LIST)."""
        if deleted:
            self._phases.pop(uid, None)
        elif self._phases.get(uid) == phase:
            return
        else:
            self._phases[uid] = phase
        self._changed.set()

    def changed(self) -> None:
        """The CronJobBatch itself changed: look again now."""
        self._changed.set()

    async def run(self) -> None:
        """Until the cron is gone (or being deleted)."""
        failures = 0
        while True:
            self._changed.clear()
            try:
                wake_at = await self.reconcile()
            except Conflict:
                continue  # it changed while we planned: plan again from what it is now
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  # any failure: back off, look again
                delay = ERROR_BACKOFF[min(failures, len(ERROR_BACKOFF) - 1)]
                failures += 1
                logger.warning("%s/%s: %s; again in %.0fs", self.namespace, self.name, error_message(exc), delay)
                wake_at = self._now() + datetime.timedelta(seconds=delay)
            else:
                if self._gone:
                    return
                failures = 0
            timeout = POLL_SECONDS
            if wake_at is not None:
                timeout = min(timeout, max((wake_at - self._now()).total_seconds(), 0.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=timeout)

    async def reconcile(self) -> datetime.datetime | None:
        """One pass; the time to look again (None: only on change)."""
        body = await self.kube.get_cron(self.namespace, self.name)
        meta = (body or {}).get("metadata") or {}
        if body is None or meta.get("uid") != self.uid or meta.get("deletionTimestamp"):
            self._gone = True  # the garbage collector deletes its batches
            return None
        old_status = body.get("status") or {}
        status = api.CronJobBatchStatus.model_validate(old_status)
        try:
            spec = api.CronJobBatchSpec.model_validate(body["spec"])
        except ValidationError as exc:
            await self._refuse(body, status, old_status, exc)
            return None
        items = await self.kube.list_cron_batches(self.namespace, self.name)
        now = self._now()
        decision = cronplan.plan(
            name=self.name,
            spec=spec,
            status=status,
            generation=meta.get("generation"),
            created=_time(meta.get("creationTimestamp")) or now,
            owned=owned_batches(items, self.uid),
            now=now,
        )
        if decision.create is not None:
            decision = await self._create(body, decision, status, now)
        uids = {i["metadata"]["name"]: i["metadata"]["uid"] for i in items}
        for delete in decision.deletes:
            logger.info("%s/%s: deleting JobBatch %s (%s)", self.namespace, self.name, delete.name, delete.why)
            if delete.event is not None:
                event = delete.event
                await self.kube.post_event(body, event.type, event.reason, event.message, kind=api.CRON_KIND)
            await self.kube.delete_batch(self.namespace, delete.name, uids[delete.name])
        if decision.waiting:
            logger.info("%s/%s: %s", self.namespace, self.name, decision.waiting)
        new_status = decision.status.dump()
        if new_status != status.dump():  # the plan works on a copy: `status` is still as read
            await self.kube.patch_cron_status(
                self.namespace, self.name, new_status, meta["resourceVersion"], old_status
            )
        for event in decision.events:
            await self.kube.post_event(body, event.type, event.reason, event.message, kind=api.CRON_KIND)
        return decision.wake_at

    async def _create(
        self, body: dict[str, Any], decision: cronplan.CronPlan, status: api.CronJobBatchStatus, now: datetime.datetime
    ) -> cronplan.CronPlan:
        """Create the due run; the plan to go on with (refused: nothing recorded, nothing replaced)."""
        assert decision.create is not None
        run = decision.create
        try:
            created = await self.kube.create_batch(self.namespace, batch_body(body, run))
        except ApiException as exc:
            if exc.status == 429 or exc.status >= 500:
                raise  # the API server is busy or failing (Kube already retried): back off and look again
            message = f"creating JobBatch {run.name} was refused: {error_message(exc)}"
            return cronplan.refused(status, body["metadata"].get("generation"), "FailedCreate", message, now)
        announced = [e for e in decision.events if e.reason == "Created"]
        decision.events = [e for e in decision.events if e.reason != "Created"]
        if created:
            for event in announced:  # now, not after the status write: a conflict there would lose it
                await self.kube.post_event(body, event.type, event.reason, event.message, kind=api.CRON_KIND)
            return decision
        existing = await self.kube.get_batch(self.namespace, run.name)
        if existing is not None and not owned_batches([existing], self.uid):
            # Someone else's JobBatch holds the run's name: this run cannot happen (it counts as missed).
            message = (
                f"JobBatch {run.name} exists and is not this CronJobBatch's: the run of {run.scheduled} is skipped"
            )
            decision.events.append(cronplan.Event("Warning", "RunNameTaken", message))
            decision.status.active = [n for n in decision.status.active if n != run.name]
            decision.status.active_count -= 1
        return decision

    async def _refuse(
        self,
        body: dict[str, Any],
        status: api.CronJobBatchStatus,
        old_status: dict[str, Any],
        exc: ValidationError,
    ) -> None:
        """A template the API server took but no JobBatch could be made from: a condition and an Event."""
        message = f"jobBatchTemplate is not a valid JobBatch: {error_message(exc)}"
        meta = body["metadata"]
        decision = cronplan.refused(status, meta.get("generation"), "InvalidTemplate", message, self._now())
        if decision.status.dump() != status.dump():
            await self.kube.patch_cron_status(
                self.namespace, self.name, decision.status.dump(), meta["resourceVersion"], old_status
            )
        for event in decision.events:
            await self.kube.post_event(body, event.type, event.reason, event.message, kind=api.CRON_KIND)


def _time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
