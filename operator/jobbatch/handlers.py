"""kopf registrations: the Job index, wake-ups on watch events, and one daemon per JobBatch.

Only daemon, index and event handlers are used: kopf then never writes its
last-handled-configuration annotation (a large inline payload list would overflow
it, nolar/kopf#1087) and the reconcile decision stays level-triggered.
"""

from __future__ import annotations

from typing import Any

import kopf

from jobbatch import api, metrics
from jobbatch.observed import ShardJob, batch_uid_of, summarize
from jobbatch.reconciler import BatchReconciler, release_orphan
from jobbatch.state import Runtime


@kopf.index("batch", "v1", "jobs", labels={api.LABEL_BATCH_UID: kopf.PRESENT})
async def shard_jobs(body: kopf.Body, **_: Any) -> dict[str, ShardJob]:
    """Shard Jobs by batch UID, as compact summaries (async: kopf runs sync handlers in a thread pool)."""
    uid, job = batch_uid_of(body), summarize(body)
    return {uid: job} if uid and job else {}


@kopf.on.event("batch", "v1", "jobs", labels={api.LABEL_BATCH_UID: kopf.PRESENT})
async def shard_job_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo["runtime"]
    uid = batch_uid_of(body)
    reconciler = runtime.reconcilers.get(uid or "")
    if reconciler is not None:
        reconciler.wake.set()
    if body.meta.get("deletionTimestamp") and api.SHARD_FINALIZER in (body.meta.get("finalizers") or []):
        await release_orphan(runtime.kube, dict(body))


@kopf.on.event(api.GROUP, api.VERSION, api.PLURAL)
async def batch_changed(uid: str, memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime = memo["runtime"]
    reconciler = runtime.reconcilers.get(uid)
    if reconciler is not None:
        reconciler.batch_changed()


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
    runtime: Runtime = memo["runtime"]
    shard_jobs: kopf.Index[str, ShardJob] = kwargs["shard_jobs"]  # the index above, by its name
    reconciler = BatchReconciler(
        kube=runtime.kube,
        dispatcher=runtime.dispatcher,
        namespace=namespace,
        name=name,
        uid=uid,
        jobs=lambda: list(shard_jobs.get(uid, ())),
        all_jobs=lambda: shard_jobs,  # every batch's Jobs: what the cluster-wide cap counts
    )
    runtime.reconcilers[uid] = reconciler
    try:
        await reconciler.run(stopped)
    finally:
        runtime.reconcilers.pop(uid, None)
        runtime.dispatcher.forget(uid)
        metrics.forget_batch(namespace, name)
