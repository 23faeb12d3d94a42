"""One JobBatch's reconcile loop: gather inputs, ask the planner, apply the plan.

The loop is woken by watch events (the batch, its Jobs) and by the planner's
requeue time. It plans from the batch as last persisted: the response of its own
status write, or a fresh GET once a batch watch event says the object changed (watch
caches may lag behind our own writes, so a watched body is never planned from).
Jobs come from the shard Job index (``jobbatch.jobwatch``), plus in-memory *expectations* for Jobs this process
is creating, resuming or suspending but whose events have not arrived yet -- without
them a lagging watch would let a pass launch past ``parallelism``.

Order of effects in a pass: write the status (at most about once a second), then
start the Job calls -- create/resume/suspend, and release-then-delete of Jobs whose
outcome the status *read at the start of the pass* already records -- then post
Events. The Job calls run as background tasks, one per Job at a time, so a pass
takes one status write, not a round of API calls, and the next pass can refill a
slot the moment a Job finishes. A failed call wakes the loop, whose next pass backs off.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Literal

from pydantic import ValidationError

from jobbatch import manifests, metrics, naming, payloads
from jobbatch.api import SHARD_FINALIZER, TERMINAL_PHASES, JobBatchSpec, JobBatchStatus
from jobbatch.dispatch import Dispatcher
from jobbatch.kube import Conflict, Kube
from jobbatch.observed import ShardJob
from jobbatch.planner import Acceptance, Batch, Launch, Plan, plan, set_condition

logger = logging.getLogger(__name__)

MIN_STATUS_INTERVAL = 1.0  # seconds between status writes of one batch
MAX_BODY_AGE = 10.0  # re-read the batch at least this often, even if no watch event said it changed
RESYNC_INTERVAL = 60.0  # a pass at least this often, even without events
COALESCE_DELAY = 0.02  # let a burst of watch events land before re-reading
EXPECTATION_TTL = 60.0  # forget an expectation the watch never confirmed
PRIORITY_CACHE_SECONDS = 30.0
API_CONCURRENCY = 32  # API calls in flight per batch pass
ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)


class BatchGone(Exception):
    """The batch is deleted (or replaced): the loop ends."""


class ActionsFailed(Exception):
    """Some of a pass's API calls failed (the others took effect); retried with backoff."""


@dataclasses.dataclass
class _Expectation:
    shard: int
    attempt: int
    state: Literal["active", "suspended"]
    since: float


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class BatchReconciler:
    def __init__(
        self,
        *,
        kube: Kube,
        dispatcher: Dispatcher,
        namespace: str,
        name: str,
        uid: str,
        jobs: Callable[[], Iterable[ShardJob]],
        all_jobs: Callable[[], Mapping[str, Iterable[ShardJob]]] | None = None,
        clock: Callable[[], datetime.datetime] = utcnow,
    ) -> None:
        self.kube, self.dispatcher = kube, dispatcher
        self.namespace, self.name, self.uid = namespace, name, uid
        self._jobs, self._all_jobs, self._clock = jobs, all_jobs, clock
        self.wake = asyncio.Event()
        self._body: dict[str, Any] | None = None  # the batch as last persisted (GET or our own write)
        self._body_read = float("-inf")
        self._body_stale = True
        self._limit = asyncio.Semaphore(API_CONCURRENCY)
        self._inflight: dict[str, asyncio.Task[None]] = {}  # Job name -> its call in progress
        self._failures: list[BaseException] = []
        self._expected: dict[str, _Expectation] = {}
        # (Job name, "release" | "delete") done, while the watch still shows the Job as it was:
        # not repeated (a repeated release costs a failed patch and a GET).
        self._settled: dict[tuple[str, str], float] = {}
        self._last_status_write = float("-inf")
        self._finishes: collections.deque[float] = collections.deque(maxlen=10_000)
        self._finish_seen: set[str] = set()
        self._priority: tuple[float, int] = (float("-inf"), 0)

    # -- the loop -----------------------------------------------------------------------------
    async def run(self, stopped: Any) -> None:
        """Reconcile until the batch is gone, finished and cleaned up, or ``stopped`` is set."""
        try:
            await self._loop(stopped)
        finally:
            # Calls are idempotent: whatever is cut short here, the next pass (or operator) redoes.
            for task in self._inflight.values():
                task.cancel()
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)

    def batch_changed(self) -> None:
        """A watch event for the batch: re-read it before the next pass plans."""
        self._body_stale = True
        self.wake.set()

    async def _loop(self, stopped: Any) -> None:
        errors = 0
        while not stopped:
            self.wake.clear()
            try:
                started = time.monotonic()
                requeue = await self.reconcile_once()
                metrics.reconcile_duration.observe(time.monotonic() - started)
                errors = 0
            except BatchGone:
                return
            except Conflict as exc:
                logger.debug("%s/%s: %s; re-planning", self.namespace, self.name, exc)
                self._body_stale = True
                requeue = 0.0
            except Exception:
                metrics.reconcile_errors.labels(self.namespace).inc()
                requeue = ERROR_BACKOFF[min(errors, len(ERROR_BACKOFF) - 1)]
                errors += 1
                logger.exception("%s/%s: reconcile failed; retrying in %.0fs", self.namespace, self.name, requeue)
            if requeue is None:
                requeue = RESYNC_INTERVAL
            await self._sleep(min(requeue, RESYNC_INTERVAL), stopped)

    async def _sleep(self, timeout: float, stopped: Any) -> None:
        waiters = [asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(stopped.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        await asyncio.sleep(COALESCE_DELAY)

    # -- one pass -----------------------------------------------------------------------------
    async def reconcile_once(self) -> float | None:
        """One pass; returns seconds until the next one is due (None: only on events)."""
        body = await self._persisted_batch()
        meta = (body or {}).get("metadata", {})
        if body is None or meta.get("uid") != self.uid:
            raise BatchGone
        if meta.get("deletionTimestamp"):
            # Being deleted (foreground deletion waits for the Jobs): nothing is recorded any more.
            await self._release_all()
            raise BatchGone
        status = JobBatchStatus.model_validate(body.get("status") or {})
        try:
            spec = JobBatchSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            await self._reject_spec(body, status, exc)
            return None
        batch = Batch(self.name, self.namespace, self.uid, int(meta.get("generation", 1)), spec, status)
        accepted = status.condition("Accepted")
        acceptance = None
        if accepted is None or accepted.status != "True":
            acceptance = await self._accept(spec)
        observed = self._observed()
        budget = None
        if self.dispatcher.cap:
            created = datetime.datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00"))
            self.dispatcher.register(self.uid, await self._priority_value(spec), created, self.wake)
            running = {uid: sum(1 for j in jobs if j.state == "active") for uid, jobs in self._running_index()}
            running[self.uid] = sum(1 for j in observed if j.state == "active")
            budget = self.dispatcher.budget(self.uid, max(0, spec.parallelism - running[self.uid]), running)
        decision = plan(batch, observed, self._clock(), acceptance=acceptance, launch_budget=budget)
        try:
            requeue = await self._apply(decision, body, spec, observed)
        finally:
            if self.dispatcher.cap:
                self.dispatcher.report(self.uid, decision.status.shards.running, decision.unmet_demand)
        metrics.record_shards(self.namespace, self.name, decision.status.shards.model_dump())
        finished = status.phase in TERMINAL_PHASES and not decision.status_changed
        idle = not (decision.create or decision.release or decision.delete or decision.suspend or decision.resume)
        if finished and idle and decision.requeue_after is None:
            raise BatchGone  # nothing left to do for this batch, ever
        return requeue

    async def _persisted_batch(self) -> dict[str, Any] | None:
        if self._body is None or self._body_stale or time.monotonic() - self._body_read > MAX_BODY_AGE:
            self._body_stale = False  # before the GET: an event during it marks it stale again
            self._body = await self.kube.get_batch(self.namespace, self.name)
            self._body_read = time.monotonic()
        return self._body

    def _running_index(self) -> list[tuple[str, list[ShardJob]]]:
        index = self._all_jobs() if self._all_jobs is not None else {}
        return [(uid, list(jobs)) for uid, jobs in index.items()]

    async def _release_all(self) -> None:
        jobs = [j for j in self._jobs() if j.has_finalizer]
        await asyncio.gather(*(self.kube.release_job(self.namespace, j.name, j.finalizers) for j in jobs))

    def _observed(self) -> list[ShardJob]:
        jobs = {job.name: job for job in self._jobs()}
        now = time.monotonic()
        for name, exp in list(self._expected.items()):
            seen = jobs.get(name)
            confirmed = seen is not None and (seen.state == exp.state or seen.finished)
            if confirmed or now - exp.since > EXPECTATION_TTL:
                del self._expected[name]
            elif seen is None:
                jobs[name] = ShardJob(name=name, shard=exp.shard, attempt=exp.attempt, state=exp.state)
            else:
                jobs[name] = dataclasses.replace(seen, state=exp.state)
        for key, since in list(self._settled.items()):
            if key[0] not in jobs or now - since > EXPECTATION_TTL:
                del self._settled[key]
        # Remember when each attempt was first seen finished: dispatch latency starts there.
        for job in jobs.values():
            if job.finished and job.has_finalizer and job.name not in self._finish_seen:
                self._finish_seen.add(job.name)
                self._finishes.append(now)
        self._finish_seen &= set(jobs)
        return list(jobs.values())

    async def _accept(self, spec: JobBatchSpec) -> Acceptance:
        """The checks only the operator can make; on success the payload snapshot exists."""
        if spec.priority_class_name and await self.kube.get_priority_value(spec.priority_class_name) is None:
            return Acceptance(
                False, "PriorityClassNotFound", f'PriorityClass "{spec.priority_class_name}" does not exist'
            )
        data = None
        ref = spec.payloads.config_map
        if ref is not None:
            data = await self.kube.get_configmap_data(self.namespace, ref.name)
            if data is None:
                return Acceptance(
                    False, "ConfigMapNotFound", f'ConfigMap "{ref.name}" not found in namespace "{self.namespace}"'
                )
        try:
            items = payloads.prepare(spec, data)
        except payloads.PayloadError as exc:
            return Acceptance(False, exc.reason, exc.message)
        if items.jsonl is not None:
            cm = manifests.payload_configmap(self.name, self.namespace, self.uid, items.jsonl)
            await self.kube.create_configmap(self.namespace, cm)
        return Acceptance(True, "Accepted", "", item_count=items.count)

    async def _priority_value(self, spec: JobBatchSpec) -> int:
        expires, value = self._priority
        if time.monotonic() < expires:
            return value
        found = await self.kube.get_priority_value(spec.priority_class_name) if spec.priority_class_name else 0
        self._priority = (time.monotonic() + PRIORITY_CACHE_SECONDS, found or 0)
        return found or 0

    async def _reject_spec(self, body: dict[str, Any], status: JobBatchStatus, exc: ValidationError) -> None:
        """A spec the API server let through but the operator cannot use (e.g. a schema older than ours)."""
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())[:1000]
        meta = body["metadata"]
        new = status.model_copy(deep=True)
        new.conditions = set_condition(
            new.conditions, "Accepted", "False", "InvalidSpec", message, self._clock(), int(meta.get("generation", 1))
        )
        if new.dump() != status.dump():
            await self.kube.patch_batch_status(self.namespace, self.name, new.dump(), meta["resourceVersion"])
            await self.kube.post_event(body, "Warning", "InvalidSpec", message)

    # -- applying a plan ----------------------------------------------------------------------
    async def _apply(
        self,
        decision: Plan,
        body: dict[str, Any],
        spec: JobBatchSpec,
        observed: list[ShardJob],
    ) -> float | None:
        ns = self.namespace
        requeue = decision.requeue_after
        item_count = decision.status.item_count or 0
        limit = self._limit

        written = False
        if decision.status_changed:
            wait = MIN_STATUS_INTERVAL - (time.monotonic() - self._last_status_write)
            if wait > 0:
                requeue = wait if requeue is None else min(requeue, wait)
            else:
                meta = body["metadata"]
                self._body = await self.kube.patch_batch_status(
                    ns, self.name, decision.status.dump(), meta["resourceVersion"]
                )
                self._body_read = self._last_status_write = time.monotonic()
                metrics.status_writes.labels(ns).inc()
                written = True

        async def create(launch: Launch, job_name: str) -> None:
            manifest = manifests.shard_job(
                name=self.name, namespace=ns, uid=self.uid, spec=spec, item_count=item_count,
                shard=launch.shard, attempt=launch.attempt,
            )  # fmt: skip
            try:
                async with limit:
                    made = await self.kube.create_job(ns, manifest)
            except BaseException:
                self._expected.pop(job_name, None)  # it holds no slot: never created
                raise
            if made:
                metrics.launches.labels(ns).inc()
                if launch.attempt:
                    metrics.retries.labels(ns).inc()
                if self._finishes:
                    metrics.dispatch_latency.observe(time.monotonic() - self._finishes.popleft())

        by_name = {job.name: job for job in observed}

        async def set_suspended(job_name: str, suspend: bool) -> None:
            try:
                async with limit:
                    await self.kube.set_job_suspended(ns, job_name, suspend)
            except BaseException:
                self._expected.pop(job_name, None)  # the Job keeps the state the watch reports
                raise

        async def clean_up(job_name: str, release: bool, delete: bool) -> None:
            # Release before delete: a deleting Job still holding our finalizer looks orphaned.
            job = by_name[job_name]
            if release:
                async with limit:
                    await self.kube.release_job(ns, job_name, job.finalizers or (SHARD_FINALIZER,))
                self._settled[job_name, "release"] = time.monotonic()
                if job.finished and job.started_at and job.finished_at:
                    duration = (job.finished_at - job.started_at).total_seconds()
                    metrics.attempt_duration.labels(job.state).observe(max(0.0, duration))
            if delete:
                async with limit:
                    await self.kube.delete_job(ns, job_name)
                self._settled[job_name, "delete"] = time.monotonic()

        # Expectations are set before the calls start, so the next pass counts these Jobs already.
        now = time.monotonic()
        for launch in decision.create:
            job_name = naming.job_name(self.name, self.uid, launch.shard, launch.attempt)
            if job_name not in self._inflight:
                self._expected[job_name] = _Expectation(launch.shard, launch.attempt, "active", now)
                self._spawn(job_name, create(launch, job_name))
        for job_name, suspend in [*((n, False) for n in decision.resume), *((n, True) for n in decision.suspend)]:
            if job_name not in self._inflight:
                job = by_name[job_name]
                state: Literal["active", "suspended"] = "suspended" if suspend else "active"
                self._expected[job_name] = _Expectation(job.shard, job.attempt, state, now)
                self._spawn(job_name, set_suspended(job_name, suspend))
        releases = {n for n in decision.release if (n, "release") not in self._settled}
        deletes = {n for n in decision.delete if (n, "delete") not in self._settled}
        for job_name in sorted(releases | deletes):
            if job_name not in self._inflight:
                self._spawn(job_name, clean_up(job_name, job_name in releases, job_name in deletes))
        for event in decision.events:
            # Transition events are re-derived from the persisted status until it is written.
            if written or not event.on_status:
                await self.kube.post_event(body, event.type, event.reason, event.message)
        if self._failures:  # calls started by earlier passes; their retries are started above
            failures, self._failures = self._failures, []
            for exc in failures:
                logger.warning("%s/%s: %s: %s", ns, self.name, type(exc).__name__, exc)
            raise ActionsFailed(f"{len(failures)} API calls failed; the next pass retries them")
        if decision.delete_batch:
            logger.info("%s/%s: ttlSecondsAfterFinished passed; deleting the batch", ns, self.name)
            await self.kube.delete_batch(ns, self.name, self.uid)
            raise BatchGone
        return requeue

    def _spawn(self, job_name: str, call: Coroutine[Any, Any, None]) -> None:
        """Run one Job's call in the background; at most one per Job at a time."""
        task = asyncio.create_task(call)
        self._inflight[job_name] = task

        def done(task: asyncio.Task[None]) -> None:
            if self._inflight.get(job_name) is task:
                del self._inflight[job_name]
            if not task.cancelled() and task.exception() is not None:
                self._failures.append(task.exception())  # type: ignore[arg-type]
                self.wake.set()

        task.add_done_callback(done)


async def release_orphan(kube: Kube, job: dict[str, Any]) -> None:
    """Release a shard Job whose batch is gone (deleted while its Jobs held the shard finalizer)."""
    meta = job["metadata"]
    owners = [o for o in meta.get("ownerReferences") or [] if o.get("kind") == "JobBatch"]
    if owners:
        batch = await kube.get_batch(meta["namespace"], owners[0]["name"])
        owner_meta = batch["metadata"] if batch is not None else {}
        if owner_meta.get("uid") == owners[0]["uid"] and not owner_meta.get("deletionTimestamp"):
            return  # the batch lives: its own reconciler decides
    logger.info("releasing shard job %s/%s: its JobBatch is gone", meta["namespace"], meta["name"])
    await kube.release_job(meta["namespace"], meta["name"], tuple(meta.get("finalizers") or ()))
