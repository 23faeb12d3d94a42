"""What the operator knows of its shard Jobs and failed worker pods: list+watch loops feeding two indexes.

kopf runs the JobBatch daemons; Jobs and pods are watched here. kopf's per-event machinery (a
deep-copied diff base, cause detection, handler dispatch) was most of the operator's CPU in the
benchmark (docs/performance.md). These watches decode each event once and keep only what the
planner reads: a ``ShardJob`` per Job, a ``PodFailure`` per failed pod (the exit codes).

Like kopf's indexes, both are complete before any batch is reconciled: a batch's daemon waits
until its namespace has been listed (``ShardWatch.listed``). A daemon planning from an empty index
would see no attempts and start shards over. ``start`` returns once every watched namespace has been
listed or has failed a first time: one namespace that cannot be listed (deleted, its RoleBinding
removed) holds back only its own batches, while its list is retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from jobbatch.api import LABEL_BATCH_UID
from jobbatch.kube import Gone, Kube
from jobbatch.observed import PodFailure, ShardJob, batch_uid_of, summarize, summarize_failed_pod

logger = logging.getLogger(__name__)

RELIST_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

# Called with (event type, batch UID, body) for every event and listed object ("" when no batch
# controls it), and with (LISTED, batch UID, {}) for each batch a fresh list concerns.
OnEvent = Callable[[str, str, dict[str, Any]], None]
BatchKey = tuple[str, str]  # (namespace, batch UID)
_EPOCH = datetime.datetime.min.replace(tzinfo=datetime.UTC)


class Index(Protocol):
    def apply(self, kind: str, body: Mapping[str, Any]) -> str | None: ...
    def replace(self, namespace: str | None, bodies: Iterable[Mapping[str, Any]]) -> set[str]: ...


class ShardJobIndex:
    """ShardJob summaries by (namespace, owning batch UID), then by Job name.

    A Job belongs to a batch only through its controller ownerReference, and only in the batch's
    namespace: anyone may copy a batch's labels (or its UID) onto a Job of their own.
    """

    def __init__(self) -> None:
        self._by_batch: dict[BatchKey, dict[str, ShardJob]] = {}
        self._key_of: dict[tuple[str, str], BatchKey] = {}  # (namespace, Job name) -> where it is kept
        # The Job the last ``apply`` replaced, as it was (None: it was not one of a batch's): what that
        # event changed, for the event's handler (called right after, with nothing in between).
        self.replaced: ShardJob | None = None

    def jobs(self, namespace: str, uid: str) -> dict[str, ShardJob]:
        return dict(self._by_batch.get((namespace, uid), {}))

    def job(self, namespace: str, uid: str, name: str) -> ShardJob | None:
        """One Job of the batch, as the last event showed it (None: not one of its Jobs)."""
        return self._by_batch.get((namespace, uid), {}).get(name)

    def by_batch(self) -> Mapping[BatchKey, Iterable[ShardJob]]:
        return {key: jobs.values() for key, jobs in self._by_batch.items()}

    def apply(self, kind: str, body: Mapping[str, Any]) -> str | None:
        """Take one watch event in; returns the UID of the batch it concerns (None: not a shard Job)."""
        meta = body.get("metadata", {})
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        uid, job = batch_uid_of(body), summarize(body)
        previous = self._key_of.pop((namespace, name), None)
        self.replaced = None
        if previous is not None:  # forget where it was: its owner or labels may have changed
            jobs = self._by_batch.get(previous, {})
            self.replaced = jobs.pop(name, None)
            if not jobs:
                self._by_batch.pop(previous, None)
        if uid is None or job is None:
            return previous[1] if previous else None
        key = (namespace, uid)
        if kind != "DELETED":
            self._by_batch.setdefault(key, {})[name] = job
            self._key_of[namespace, name] = key
        return uid

    def replace(self, namespace: str | None, bodies: Iterable[Mapping[str, Any]]) -> set[str]:
        """A fresh list of one namespace (None: all): forget what it no longer holds. Returns UIDs touched."""
        gone = [key for key in self._by_batch if namespace is None or key[0] == namespace]
        for key in gone:
            del self._by_batch[key]
        for job_key in [k for k in self._key_of if namespace is None or k[0] == namespace]:
            del self._key_of[job_key]
        touched = {uid for _, uid in gone}
        for body in bodies:
            if (added := self.apply("ADDED", body)) is not None:
                touched.add(added)
        return touched


class FailedPodIndex:
    """PodFailure summaries of failed worker pods, by the namespace and UID of the Job that controls them.

    A pod is kept until it is gone, even while it is being deleted: the planner only asks about the
    failed indexes of a Job, and a pod the Job controller stopped (suspension, lower parallelism) never
    fails its index, so keeping it is harmless, while a failed pod deleted early would lose its exit code.
    A pod counts only in its own namespace: a controller reference names a UID, which anyone who can
    read the Job knows, and a pod elsewhere pointing at it is no pod of that Job.
    """

    def __init__(self) -> None:
        self._by_job: dict[tuple[str, str], dict[str, PodFailure]] = {}  # (namespace, Job UID) -> pods

    def failures(self, namespace: str, job_uids: Iterable[str]) -> dict[tuple[int, int, int], PodFailure]:
        """The failed pods of these Jobs of ``namespace`` by (shard, attempt, piece); of several pods of one
        index, the latest."""
        out: dict[tuple[int, int, int], PodFailure] = {}
        for uid in job_uids:
            for pod in self._by_job.get((namespace, uid), {}).values():
                key = (pod.shard, pod.attempt, pod.node)
                have = out.get(key)
                if have is None or (pod.finished_at or _EPOCH) > (have.finished_at or _EPOCH):
                    out[key] = pod
        return out

    def apply(self, kind: str, body: Mapping[str, Any]) -> str | None:
        meta = body.get("metadata", {})
        failure = summarize_failed_pod(body)
        if failure is None:
            return None
        name = str(meta.get("name", ""))
        job = (str(meta.get("namespace", "")), failure.job_uid)
        if kind == "DELETED":
            pods = self._by_job.get(job, {})
            pods.pop(name, None)
            if not pods:
                self._by_job.pop(job, None)
        else:
            self._by_job.setdefault(job, {})[name] = failure
        # Which batch to wake: the label is enough for that (the failure itself is trusted via its Job).
        return str((meta.get("labels") or {}).get(LABEL_BATCH_UID) or "") or None

    def replace(self, namespace: str | None, bodies: Iterable[Mapping[str, Any]]) -> set[str]:
        for job in [k for k in self._by_job if namespace is None or k[0] == namespace]:
            del self._by_job[job]
        touched = set()
        for body in bodies:
            if (added := self.apply("ADDED", body)) is not None:
                touched.add(added)
        return touched


class ListWatch:
    """Keeps one index current: one list+watch loop per namespace (or one for the cluster)."""

    def __init__(self, kube: Kube, kind: str, namespaces: tuple[str, ...], index: Index) -> None:
        self.kube, self.kind, self.index = kube, kind, index
        self.on_event: OnEvent = lambda kind, uid, body: None
        self._scopes: tuple[str | None, ...] = namespaces or (None,)
        self._tasks: list[asyncio.Task[None]] = []
        self.listed = {scope: asyncio.Event() for scope in self._scopes}  # set once a scope's index is whole

    async def start(self, on_event: OnEvent) -> None:
        """Start watching, calling ``on_event`` for each event; returns once every scope was listed or failed once."""
        self.on_event = on_event
        tried = {scope: asyncio.Event() for scope in self._scopes}
        self._tasks = [asyncio.create_task(self._run(scope, tried[scope])) for scope in self._scopes]
        await asyncio.gather(*(ev.wait() for ev in tried.values()))

    def listed_event(self, namespace: str) -> asyncio.Event:
        """Set once the index holds everything of ``namespace``."""
        return self.listed.get(namespace) or self.listed[None]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, namespace: str | None, tried: asyncio.Event) -> None:
        scope = f"{self.kind} watch in {namespace or 'all namespaces'}"
        failures = 0
        while True:
            try:
                try:
                    items, version = await self.kube.list_watched(self.kind, namespace)
                finally:
                    tried.set()
                touched = self.index.replace(namespace, items)
                for body in items:  # an object being deleted may get no further event: act on it now
                    if body.get("metadata", {}).get("deletionTimestamp"):
                        self.on_event("LISTED", self.index.apply("ADDED", body) or "", body)
                for batch in touched:
                    self.on_event("LISTED", batch, {})
                self.listed[namespace].set()
                failures = 0
                while True:  # resume after each server-side timeout, from the last version seen
                    async for kind, body in self.kube.watch(self.kind, namespace, version):
                        version = body.get("metadata", {}).get("resourceVersion") or version
                        if kind == "BOOKMARK":
                            continue
                        # Every event goes out, even of a Job no batch controls (orphaned by
                        # `--cascade=orphan`): it may still hold our finalizer.
                        self.on_event(kind, self.index.apply(kind, body) or "", body)
            except asyncio.CancelledError:
                raise
            except Gone as exc:
                logger.info("%s: %s; listing again", scope, exc)
            except Exception:
                delay = RELIST_BACKOFF[min(failures, len(RELIST_BACKOFF) - 1)]
                failures += 1
                logger.exception("%s failed; listing again in %.1fs", scope, delay)
                await asyncio.sleep(delay)


class ShardWatch:
    """The shard Job and failed-pod watches of one operator process."""

    def __init__(self, kube: Kube, namespaces: tuple[str, ...]) -> None:
        self.jobs = ShardJobIndex()
        self.failed_pods = FailedPodIndex()
        self._watches = [
            ListWatch(kube, "jobs", namespaces, self.jobs),
            ListWatch(kube, "failed-pods", namespaces, self.failed_pods),
        ]

    async def start(self, on_job_event: OnEvent, on_pod_event: OnEvent) -> None:
        await asyncio.gather(self._watches[0].start(on_job_event), self._watches[1].start(on_pod_event))

    async def listed(self, namespace: str) -> None:
        """Return once both indexes hold everything of ``namespace``: what its batches plan from."""
        for watch in self._watches:
            await watch.listed_event(namespace).wait()

    async def stop(self) -> None:
        for watch in self._watches:
            await watch.stop()
