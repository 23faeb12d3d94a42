"""The shard Jobs this operator knows of: a list+watch of labelled Jobs, kept as ShardJob summaries.

kopf runs the JobBatch daemons; Jobs are watched here. A shard Job sees about eight
events in its life, and kopf's per-event machinery (a deep-copied diff base, cause
detection, handler dispatch) was most of the operator's CPU in the benchmark
(docs/performance.md). This watch decodes each event once and keeps only what the
planner reads.

Like kopf's indexes, the index is complete before any batch is reconciled: ``start``
returns once every watched namespace has been listed. A daemon planning from an
empty index would see no attempts and start shards over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jobbatch.kube import Gone, Kube
from jobbatch.observed import ShardJob, batch_uid_of, summarize

logger = logging.getLogger(__name__)

RELIST_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

# Called with (event type, batch UID, Job body) for every event of a shard Job.
OnEvent = Callable[[str, str, dict[str, Any]], None]


class ShardJobIndex:
    """ShardJob summaries by batch UID (then by Job name)."""

    def __init__(self) -> None:
        self._by_batch: dict[str, dict[str, ShardJob]] = {}
        self._namespace: dict[str, str] = {}  # batch UID -> namespace (a batch's Jobs share it)

    def jobs(self, uid: str) -> list[ShardJob]:
        return list(self._by_batch.get(uid, {}).values())

    def by_batch(self) -> Mapping[str, Iterable[ShardJob]]:
        return {uid: jobs.values() for uid, jobs in self._by_batch.items()}

    def apply(self, kind: str, body: Mapping[str, Any]) -> str | None:
        """Take one watch event in; returns the UID of the batch it concerns (None: not a shard Job)."""
        uid, job = batch_uid_of(body), summarize(body)
        if uid is None or job is None:
            return None
        if kind == "DELETED":
            jobs = self._by_batch.get(uid, {})
            jobs.pop(job.name, None)
            if not jobs:
                self._by_batch.pop(uid, None)
                self._namespace.pop(uid, None)
        else:
            self._by_batch.setdefault(uid, {})[job.name] = job
            self._namespace[uid] = body.get("metadata", {}).get("namespace", "")
        return uid

    def replace(self, namespace: str | None, bodies: Iterable[Mapping[str, Any]]) -> set[str]:
        """A fresh list of one namespace (None: all): forget what it no longer holds. Returns UIDs touched."""
        gone = {uid for uid, ns in self._namespace.items() if namespace is None or ns == namespace}
        for uid in gone:
            self._by_batch.pop(uid, None)
            self._namespace.pop(uid, None)
        touched = set(gone)
        for body in bodies:
            added = self.apply("ADDED", body)
            if added is not None:
                touched.add(added)
        return touched


class ShardJobWatch:
    """Keeps a ShardJobIndex current: one list+watch loop per namespace (or one for the cluster)."""

    def __init__(self, kube: Kube, namespaces: tuple[str, ...]) -> None:
        self.kube = kube
        self.on_event: OnEvent = lambda kind, uid, body: None
        self.index = ShardJobIndex()
        self._scopes: tuple[str | None, ...] = namespaces or (None,)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, on_event: OnEvent) -> None:
        """Start watching, calling ``on_event`` for each event; returns once every scope has been listed."""
        self.on_event = on_event
        listed = [asyncio.Event() for _ in self._scopes]
        self._tasks = [
            asyncio.create_task(self._run(scope, ev)) for scope, ev in zip(self._scopes, listed, strict=True)
        ]
        await asyncio.gather(*(ev.wait() for ev in listed))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, namespace: str | None, listed: asyncio.Event) -> None:
        scope = namespace or "all namespaces"
        failures = 0
        while True:
            try:
                items, version = await self.kube.list_shard_jobs(namespace)
                for batch in self.index.replace(namespace, items):
                    self.on_event("LISTED", batch, {})
                listed.set()
                failures = 0
                while True:  # resume after each server-side timeout, from the last version seen
                    async for kind, body in self.kube.watch_shard_jobs(namespace, version):
                        version = body.get("metadata", {}).get("resourceVersion") or version
                        if kind == "BOOKMARK":
                            continue
                        touched = self.index.apply(kind, body)
                        if touched is not None:
                            self.on_event(kind, touched, body)
            except asyncio.CancelledError:
                raise
            except Gone as exc:
                logger.info("shard job watch in %s: %s; listing again", scope, exc)
            except Exception:
                delay = RELIST_BACKOFF[min(failures, len(RELIST_BACKOFF) - 1)]
                failures += 1
                logger.exception("shard job watch in %s failed; listing again in %.1fs", scope, delay)
                await asyncio.sleep(delay)
