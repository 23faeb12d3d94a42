"""kopf registrations: one daemon per JobBatch and wake-ups on its watch events; shard Job events;
one loop per CronJobBatch, started and woken by its events and its batches'.

Only daemon and event handlers are used: kopf then never writes its
last-handled-configuration annotation (a large inline payload list would overflow
it, nolar/kopf#1087) and the reconcile decision stays level-triggered. Shard Jobs
are watched by ``jobbatch.jobwatch``, not by kopf (see there why).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from jobbatch import api, metrics
from jobbatch.cronreconciler import CronReconciler
from jobbatch.reconciler import BatchReconciler, release_orphan
from jobbatch.state import Runtime

logger = logging.getLogger(__name__)


def on_failed_pod_event(runtime: Runtime) -> Callable[[str, str, dict[str, Any]], None]:
    """A worker pod failed (or a failed one went): wake its batch, which reads the exit code."""

    def on_event(kind: str, uid: str, body: dict[str, Any]) -> None:
        reconciler = runtime.reconcilers.get(uid)
        if reconciler is not None:
            reconciler.wake.set()

    return on_event


def on_shard_job_event(runtime: Runtime) -> Callable[[str, str, dict[str, Any]], None]:
    """What a shard Job's watch event does: wake its batch, and release it if the batch is gone."""

    def on_event(kind: str, uid: str, body: dict[str, Any]) -> None:
        reconciler = runtime.reconcilers.get(uid)
        meta = body.get("metadata") or {}
        if reconciler is not None:
            jobs = runtime.watch.jobs
            job = jobs.job(str(meta.get("namespace", "")), uid, str(meta.get("name", "")))
            reconciler.job_changed(kind, job, jobs.replaced)
        elif uid:
            # A batch with no reconciler (deleted, say) whose pods stop: their slots free with no pass to
            # report it, so the batches waiting for slots look again.
            runtime.dispatcher.wake_waiting()
        if (
            kind != "DELETED"
            and meta.get("deletionTimestamp")
            and api.SHARD_FINALIZER in (meta.get("finalizers") or [])
        ):
            runtime.spawn(release_orphan(runtime.kube, body))

    return on_event


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def batch_changed(
    uid: str, name: str, namespace: str | None, type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    runtime: Runtime = memo["runtime"]
    reconciler = runtime.reconcilers.get(uid)
    if reconciler is not None:
        reconciler.batch_changed(None if type == "DELETED" else body.get("metadata", {}).get("resourceVersion"))
    if type == "DELETED":
        runtime.finished.discard(uid)
        metrics.BATCHES.gone(uid)
    elif namespace:
        metrics.BATCHES.seen(uid, namespace, (body.get("status") or {}).get("phase") or "Pending")
        if uid in runtime.finished and uid not in runtime.serving and spec_changed(body):
            # kopf runs a daemon once per object and process: a finished batch's spec changed (a rerun,
            # a TTL set afterwards), so a reconciler of its own takes over (ended by close()).
            runtime.finished.discard(uid)
            runtime.spawn(reconcile(runtime, name, namespace, uid, NeverStopped()))
    if runtime.access is not None and namespace:
        # A new batch holds kopf's finalizer: hold the RoleBinding; the last one gone: let it go.
        runtime.access.wake(namespace, gone=type == "DELETED")
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == api.CRON_KIND and (cron := runtime.crons.get(ref.get("uid", ""))) is not None:
            # One of its runs changed phase or went: its history, Forbid, lastSuccessfulTime.
            phase = (body.get("status") or {}).get("phase") or "Pending"
            cron.batch_changed(
                uid, phase, deleted=type == "DELETED" or bool(body.get("metadata", {}).get("deletionTimestamp"))
            )


@kopf.on.event(api.GROUP, api.VERSION, api.CRON_PLURAL)
async def cron_changed(uid: str, name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A CronJobBatch's loop runs as a task of its own, not a kopf daemon: a daemon needs a finalizer,
    and a deleted CronJobBatch has nothing to clean up (the garbage collector deletes its batches)."""
    runtime: Runtime = memo["runtime"]
    reconciler = runtime.crons.get(uid)
    if reconciler is not None:
        reconciler.changed()
    elif namespace:
        runtime.crons[uid] = reconciler = CronReconciler(runtime.kube, namespace, name, uid)
        runtime.spawn(_run_cron(runtime, reconciler))


async def _run_cron(runtime: Runtime, reconciler: CronReconciler) -> None:
    try:
        await reconciler.run()
    finally:
        runtime.crons.pop(reconciler.uid, None)


def spec_changed(body: Mapping[str, Any]) -> bool:
    """The spec has a generation the status has not acted on, and the batch is not being deleted."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    return not meta.get("deletionTimestamp") and meta.get("generation") != status.get("observedGeneration")


class NeverStopped:
    """The ``stopped`` of a reconciler kopf did not start: it runs until it ends or is cancelled."""

    def __bool__(self) -> bool:
        return False

    async def wait(self) -> None:
        await asyncio.Event().wait()


@kopf.daemon(api.GROUP, api.VERSION, api.PLURAL, cancellation_timeout=30)
async def run_batch(
    name: str,
    namespace: str | None,
    uid: str,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Reconcile one batch until it is finished and cleaned up, or deleted."""
    assert namespace is not None  # JobBatch is namespaced
    await reconcile(memo["runtime"], name, namespace, uid, stopped)


async def reconcile(runtime: Runtime, name: str, namespace: str, uid: str, stopped: Any) -> None:
    """One batch's reconciler, from kopf's daemon or revived by a spec change; one per batch at a time."""
    if uid in runtime.serving:
        return
    runtime.serving.add(uid)
    try:
        if not await _until_listed(runtime, namespace, stopped):
            return
        shard_jobs = runtime.watch.jobs  # complete for this namespace now
        reconciler = BatchReconciler(
            kube=runtime.kube,
            dispatcher=runtime.dispatcher,
            namespace=namespace,
            name=name,
            uid=uid,
            jobs=lambda: shard_jobs.jobs(namespace, uid),
            failures=lambda uids: runtime.watch.failed_pods.failures(namespace, uids),
            all_jobs=shard_jobs.by_batch,  # every batch's Jobs: what the cluster-wide cap counts
            sandbox=runtime.sandbox,
            indexer=runtime.indexer,
        )
        runtime.reconcilers[uid] = reconciler
        try:
            await reconciler.run(stopped)
        finally:
            runtime.reconcilers.pop(uid, None)
            runtime.dispatcher.forget(uid)
            metrics.forget_batch(namespace, name, uid)
        if reconciler.finished:
            runtime.finished.add(uid)
            logger.info("%s/%s: finished; idle until its spec changes", namespace, name)
    finally:
        runtime.serving.discard(uid)


async def _until_listed(runtime: Runtime, namespace: str, stopped: kopf.DaemonStopped) -> bool:
    """Wait until the namespace's Jobs and failed pods are all known; False if stopped first."""
    listed = asyncio.ensure_future(runtime.watch.listed(namespace))
    stopping = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait([listed, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in (listed, stopping):
            waiter.cancel()
    return listed.done() and not listed.cancelled()
