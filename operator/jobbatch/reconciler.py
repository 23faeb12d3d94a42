"""One JobBatch's reconcile loop: gather inputs, ask the planner, apply the plan.

The loop is woken by watch events (the batch, its Jobs, its failed pods) and by the planner's
requeue time. It plans from the batch as last persisted: the response of its own status write,
or a fresh GET once a batch watch event says the object changed (watch caches may lag behind our
own writes, so a watched body is never planned from); the echo of its own write (the very
resourceVersion it holds) changes nothing and is not read again. Jobs come from the shard Job index
(``jobbatch.jobwatch``), overlaid with ``Expectations`` for this process's own writes whose events
have not arrived yet -- without them a lagging watch would let a pass grant a slot twice.

Order of effects in a pass: write the status (at most about once a second), then start the Job
calls -- create, scale, resume, suspend, and release-then-delete of Jobs whose outcome the status
*read at the start of the pass* already records -- then post Events. The Job calls run in the
background (``JobCalls``, one per Job at a time), so a pass takes one status write, not a round of
API calls. A failed call wakes the loop, whose next pass backs off.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import dataclasses
import datetime
import functools
import json
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Literal

from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from jobbatch import manifests, metrics, naming, objectstore, payloads
from jobbatch.api import KIND, SHARD_FINALIZER, TERMINAL_PHASES, Backoff, Condition, JobBatchSpec, JobBatchStatus
from jobbatch.backoff import retry_delay
from jobbatch.dispatch import Dispatcher, Observed, observed_from
from jobbatch.expectations import Expectations, JobCalls
from jobbatch.kube import Conflict, Kube, error_message
from jobbatch.observed import PODS_COLLECTED, PodFailure, ShardJob, controller_of
from jobbatch.planner import (
    Acceptance,
    Batch,
    CollectResults,
    CreateJob,
    FailedCreate,
    Plan,
    ReleaseJob,
    plan,
    set_condition,
)
from jobbatch.results import Collected, ResultStore, shards_per_page
from jobbatch.sandbox import Sandbox, SandboxError

logger = logging.getLogger(__name__)

MIN_STATUS_INTERVAL = 1.0  # seconds between status writes of one batch
MAX_BODY_AGE = 10.0  # re-read the batch at least this often, even if no watch event said it changed
RESYNC_INTERVAL = 60.0  # a pass at least this often, even without events
COALESCE_DELAY = 0.02  # let a burst of watch events land before re-reading
PRIORITY_CACHE_SECONDS = 30.0
# Acceptance verdicts the payloads alone decide: for an immutable source they never change. Not the
# sandbox's limits (time, memory: the machine's and the operator's flags decide those too), nor
# InvalidPayloadSchema, which an operator bug may also give.
FINAL_VERDICTS = frozenset({"InvalidPayload", "PayloadSchemaViolation", "TooManyItemsToValidate", "PayloadTooLarge"})
SNAPSHOT_CHECK_SECONDS = 30.0  # how often a running batch checks that its payload snapshot still exists
TEMPLATE_CHECK_SECONDS = 30.0  # how often an unaccepted batch's pod template is dry-run again
API_CONCURRENCY = 32  # API calls in flight per batch
ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
# A refused Job create is tried again after 2 s, 4 s, 8 s, ... up to 5 minutes (the Job controller's
# own pod-create backoff is 10 s to 6 min).
CREATE_BACKOFF = Backoff(initial_seconds=2, multiplier=2, max_seconds=300, jitter=0.1)


class BatchGone(Exception):
    """The batch is deleted (or replaced): the loop ends."""


class BatchFinished(BatchGone):
    """The batch is finished and cleaned up: the loop ends until its spec changes."""


class ActionsFailed(Exception):
    """Some of a pass's API calls failed (the others took effect); retried with backoff."""


# HEADs of object-storage sources, which a tenant's endpoint may answer slowly: a pool of their own,
# so they never take the threads the rest of the operator (the sandboxes) uses.
_HEADS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="objectstore-head")


def _indexing_failed(exc: SandboxError) -> str:
    return (
        f"indexing the object {exc.message}; with payloadSchema, simplify it or drop it and let workers check "
        "their own records; without, the object has too many records for --payload-indexing-timeout"
    )


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def record_may_unblock(written: JobBatchStatus, before: Mapping[str, Any], observed: Iterable[ShardJob]) -> bool:
    """Whether a pass from a status just written may do what the pass that wrote it could not.

    The planner waits for a persisted record before it releases a Job (every shard it ran recorded
    first), before it releases everything and ends once the batch has ended, and before it launches
    after an acceptance or a rerun (those two ask for a pass at once themselves, ``Plan.wake_in(0)``).
    A write that moves a running batch's progress on while none of its Jobs has ended or is going
    unblocks none of these: a pass after it found nothing to do, and that was most writes.
    """
    phase = written.phase
    if phase in TERMINAL_PHASES or phase != before.get("phase"):
        return True
    return any(job.has_finalizer and (job.finished or job.deleting) for job in observed)


class NameTaken(Exception):
    """A shard Job's name is taken by a Job that is not the batch's."""


def server_error(exc: BaseException) -> bool:
    """A 5xx (or no status): the call may have taken effect."""
    return isinstance(exc, ApiException) and not 400 <= (exc.status or 0) < 500


class BatchReconciler:
    def __init__(
        self,
        *,
        kube: Kube,
        dispatcher: Dispatcher,
        namespace: str,
        name: str,
        uid: str,
        jobs: Callable[[], Mapping[str, ShardJob]],
        failures: Callable[[Iterable[str]], Mapping[tuple[int, int, int], PodFailure]] = lambda uids: {},
        all_jobs: Callable[[], Mapping[tuple[str, str], Iterable[ShardJob]]] | None = None,
        sandbox: Sandbox | None = None,
        indexer: Sandbox | None = None,
        clock: Callable[[], datetime.datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube, self.dispatcher = kube, dispatcher
        self.namespace, self.name, self.uid = namespace, name, uid
        self._jobs, self._failures, self._all_jobs = jobs, failures, all_jobs
        self._clock, self._monotonic = clock, monotonic
        self.sandbox = sandbox  # None: validate on this thread (unit tests only)
        self.indexer = indexer  # for object-storage sources; None: index on a thread (unit tests only)
        # (inputs, schema checked, index) of the last object indexed, and (inputs, schema checked, why)
        # of the last refusal, keyed by the Secret's and the object's versions (_indexed_object).
        self._indexed: tuple[str, bool, payloads.Items] | None = None
        self._index_refused: tuple[str, bool, payloads.PayloadError | SandboxError] | None = None
        self._verdict: tuple[str | None, Acceptance] | None = None  # (inputs, verdict) of the last check
        # (when, of which probe Job, why refused) of the last dry run
        self._template_verdict: tuple[float, str, str | None] | None = None
        # Set while the API server refuses this batch's Job creates; cleared by a create that succeeds
        # (or a pass with nothing to create). While set, a pass sends at most one create.
        self.failed_create: FailedCreate | None = None
        self._creating = 0  # creates in flight: their outcome is not known yet
        self._snapshot_checked = float("-inf")
        self._snapshot_lost: str | None = None  # why the snapshot is gone for good, once found so
        self._snapshot_verified = ""  # UID of the snapshot last found to hold exactly the accepted items
        self.wake = asyncio.Event()
        self.finished = False  # the loop ended with nothing left to do (not: the batch is gone)
        self._body: dict[str, Any] | None = None  # the batch as last persisted (GET or our own write)
        self._body_read = float("-inf")
        self._body_stale = True
        self._limit = asyncio.Semaphore(API_CONCURRENCY)
        metrics.touch_namespace(namespace)  # counters at 0 from the start: rates and alerts see them
        self.calls = JobCalls(self.wake)
        self.expected = Expectations(monotonic)
        self._last_status_write = float("-inf")
        self._wrote_status = False  # by the pass that runs (or last ran)
        self._progress_wake: asyncio.TimerHandle | None = None  # set by job_changed, cleared by a pass
        self._passing = False  # a pass runs (between its awaits, watch events still come in)
        # spec.results: what this process stored of each Job's results (by Job UID), and the writer.
        self._collected: dict[str, Collected] = {}
        self._result_store: ResultStore | None = None
        # Job UID -> (failures in a row, monotonic time of the next try, why) of collections that fail.
        self._collect_failed: dict[str, tuple[int, float, str]] = {}
        self._priority: tuple[float, int] = (float("-inf"), 0)

    # -- the loop -----------------------------------------------------------------------------
    async def run(self, stopped: Any) -> None:
        """Reconcile until the batch is gone, finished and cleaned up, or ``stopped`` is set."""
        while True:
            try:
                await self._loop(stopped)
                if self.finished:
                    await self.calls.drain()  # the last passes' calls complete, not cut short
            finally:
                # Calls are idempotent: whatever is cut short here, the next pass (or operator) redoes.
                await self.calls.cancel_all()
            # No await from here to the caller's bookkeeping: a later event finds the batch finished
            # (handlers.batch_changed revives it), an earlier one marked it stale.
            if self.finished and (self._body_stale or self.calls.take_failures()):
                self.finished = False  # changed, or a call failed, while ending: look again
                continue
            return

    def job_changed(self, kind: str, job: ShardJob | None, before: ShardJob | None = None) -> None:
        """A watch event of one of the batch's Jobs (``before``: that Job as the previous event showed it).

        Plan again at once, or with the next status write when the event can only change the progress
        to report: the Job refills its own slots (``ShardJob.refills_itself``), holds no fewer slots
        than before and has no new failed index. A status write goes at most every MIN_STATUS_INTERVAL,
        so such an event wakes the loop when the next write may go, and events until then share that
        pass; a running chunk's Job changes with nearly every pod that ends, and most passes were
        these. Anything else wakes it at once: a Job that frees slots (it drains, shrinks, or has
        fewer indexes left than its parallelism; the slots go to another Job or, under a cluster-wide
        cap, back to the dispatcher), one with a new failed index (its retry, the batch's failure),
        one that ends, appears or goes.
        """
        progress = (
            kind == "MODIFIED"
            and job is not None
            and before is not None
            and job.refills_itself
            and job.slots >= before.slots
            and job.failed == before.failed
        )
        if not progress:
            self.wake.set()
            return
        if self._progress_wake is not None:
            return  # a wake is already due; the pass reads every Job as it is then
        # During a pass its status write may be under way: the next one goes a full interval later.
        since = self._monotonic() if self._passing else self._last_status_write
        delay = since + MIN_STATUS_INTERVAL - self._monotonic()
        self._progress_wake = asyncio.get_running_loop().call_later(max(0.0, delay), self.wake.set)

    def batch_changed(self, resource_version: str | None = None) -> None:
        """A watch event for the batch: re-read it before the next pass plans.

        Not when the event shows the very version this loop holds (the echo of its own status write):
        the object is what the last pass wrote, so a GET and a pass would only find that out again.
        In a long batch that echo came once a second, with a GET and a pass each.
        """
        held = (self._body or {}).get("metadata", {}).get("resourceVersion")
        if resource_version is not None and resource_version == held and not self._body_stale:
            return
        self._body_stale = True
        self.wake.set()

    async def _loop(self, stopped: Any) -> None:
        errors = 0
        while not stopped:
            self.wake.clear()
            try:
                started = time.monotonic()
                self._passing = True
                try:
                    requeue = await self.reconcile_once()
                finally:
                    self._passing = False
                metrics.reconcile_duration.observe(time.monotonic() - started)
                errors = 0
            except BatchFinished:
                if not self._body_stale:
                    self.finished = True
                    return
                requeue = 0.0  # the batch changed since this pass read it: look again before ending
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
                if self._wrote_status:
                    requeue = 0.0  # it wrote the status first (writes go at most once a second): act on it now
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
        self._wrote_status = False
        if self._progress_wake is not None:  # this pass reads what the events it waits for showed
            self._progress_wake.cancel()
            self._progress_wake = None
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
            acceptance = await self._accept(spec, accepted)
        elif spec.payloads.count is None and status.phase not in TERMINAL_PHASES:
            await self._check_snapshot(body, spec, status)
        observed = self.observed()
        failures = self._failures([j.uid for j in observed if j.uid])
        budget, queue_held = await self._budget(meta, spec, status, observed)
        live = {j.uid for j in observed}
        self._collected = {uid: done for uid, done in self._collected.items() if uid in live}  # released: recorded
        self._collect_failed = {uid: f for uid, f in self._collect_failed.items() if uid in live}
        stall = None
        if self._collect_failed:
            count, _, why = max(self._collect_failed.values())
            stall = f"storing shard results failed {count} times in a row, retrying with backoff: {why}"
        decision = plan(
            batch, observed, self._clock(),
            failures=failures, acceptance=acceptance, launch_budget=budget, failed_create=self.failed_create,
            snapshot_lost=self._snapshot_lost, queue_held=queue_held, collected=self._collected,
            results_stall=stall,
        )  # fmt: skip
        if self.failed_create is not None and not decision.creates_wanted and not self._creating:
            self.failed_create = None  # nothing left to create (a retry no longer due, the batch done)
        try:
            requeue = await self._apply(decision, body, spec, observed)
        finally:
            # A batch held by a missing queue is no demand: it must not win that queue a share.
            demand = 0 if queue_held is not None else decision.unmet_demand
            # Slots are free once the pods are gone, not once the plan stops them (suspension, a
            # lowered parallelism): what the Jobs hold counts until the watch shows it released.
            # Shards whose results are being stored count as running but hold no slot.
            held = max(decision.status.shards.running - decision.storing, sum(j.slots for j in observed))
            self.dispatcher.report(self.uid, held, demand)
        metrics.record_shards(self.namespace, self.name, decision.status.shards.model_dump())
        if decision.status.phase == "Running" and spec.parallelism > 0:  # accepted, its PriorityClass found
            waiting = (self.namespace, spec.priority_class_name or "", decision.status.shards.pending)
            metrics.BATCHES.waiting[self.uid] = waiting
        else:
            metrics.BATCHES.waiting.pop(self.uid, None)
        finished = status.phase in TERMINAL_PHASES and not decision.status_changed
        if finished and not decision.job_calls and decision.requeue_after is None:
            # Nothing left to do unless its spec changes (a rerun, a TTL): handlers.batch_changed
            # starts a reconciler again then.
            raise BatchFinished
        return requeue

    async def _persisted_batch(self) -> dict[str, Any] | None:
        now = self._monotonic()
        if self._body is None or self._body_stale or now - self._body_read > MAX_BODY_AGE:
            self._body_stale = False  # before the GET: an event during it marks it stale again
            self._body = await self.kube.get_batch(self.namespace, self.name)
            self._body_read = self._monotonic()
        return self._body

    async def _budget(
        self, meta: Mapping[str, Any], spec: JobBatchSpec, status: JobBatchStatus, observed: list[ShardJob]
    ) -> tuple[int | None, tuple[str, str] | None]:
        """Shards this pass may start (None: no limit) from the dispatcher; and why its queue holds it, if so."""
        created = datetime.datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00"))
        priority = await self._priority_value(spec) if self.dispatcher.active else 0
        self.dispatcher.register(
            self.uid, priority, created, self.wake, queue=spec.queue_name, namespace=self.namespace
        )
        held = self.dispatcher.holds(spec.queue_name, self.namespace)
        if held is not None:
            return 0, held
        if not self.dispatcher.active:
            return None, None
        running = observed_from(self._all_jobs() if self._all_jobs is not None else {})
        running[self.uid] = Observed(self.namespace, spec.queue_name, sum(j.slots for j in observed))
        idle = (
            spec.suspend
            or status.phase in TERMINAL_PHASES
            or self._snapshot_lost is not None
            or (spec.start_after is not None and self._clock() < spec.start_after)
        )  # it starts nothing this pass: it must hold no grant while the pass's calls run
        wanted = 0 if idle else max(0, spec.parallelism - running[self.uid].running)
        return self.dispatcher.budget(self.uid, wanted, running), None

    async def _release_all(self) -> None:
        jobs = [j for j in self._jobs().values() if j.has_finalizer]
        await asyncio.gather(*(self.kube.release_job(self.namespace, j.name, j.finalizers) for j in jobs))

    def observed(self) -> list[ShardJob]:
        """The batch's Jobs as the watch shows them, with this process's unconfirmed writes applied."""
        return list(self.expected.overlay(self._jobs()).values())

    async def _accept(self, spec: JobBatchSpec, recorded: Condition | None = None) -> Acceptance:
        """The checks only the operator can make; on success the payload snapshot exists.

        The user's schema runs over the user's items in the sandbox (``jobbatch.sandbox``). A verdict
        on inputs that have not changed since (the ConfigMap's resourceVersion) is not recomputed: a
        hostile schema costs its time limit once per operator process, not every recheck. For inline
        items and ``count`` (immutable, like the schema) a ``recorded`` verdict the items alone decide
        is final, so not even a new leader pays for it again.
        """
        ref = spec.payloads.config_map
        # Only inline items and `count` are decided by the spec alone; a ConfigMap or an object can be fixed.
        immutable_input = ref is None and spec.payloads.object_store is None
        if (
            immutable_input
            and recorded is not None
            and recorded.status == "False"
            and recorded.reason in FINAL_VERDICTS
        ):
            return Acceptance(False, recorded.reason, recorded.message)  # nothing can make it acceptable
        if spec.priority_class_name and await self.kube.get_priority_value(spec.priority_class_name) is None:
            return Acceptance(
                False, "PriorityClassNotFound", f'PriorityClass "{spec.priority_class_name}" does not exist'
            )
        refused = await self._refused_template(spec)
        if refused is not None:
            return Acceptance(False, "InvalidPodTemplate", refused)
        if spec.payloads.object_store is not None:
            return await self._accept_object(spec)
        data = None
        inputs: str | None = None  # what the verdict depends on besides the (immutable) spec
        snapshot = await self._own_snapshot() if ref is not None else None
        if ref is not None and snapshot is not None:
            # Accepted before, but the verdict was not persisted (a 409, a crash): the snapshot is what
            # the pods will read, and the source may have changed since. Checked again all the same:
            # anyone who may create ConfigMaps here can have made it, owner reference included.
            data, inputs = {ref.key: snapshot}, f"snapshot {payloads.digest(snapshot)}"
        elif ref is not None:
            source = await self.kube.get_configmap(self.namespace, ref.name)
            if source is None:
                return Acceptance(
                    False, "ConfigMapNotFound", f'ConfigMap "{ref.name}" not found in namespace "{self.namespace}"'
                )
            data = dict(source.get("data") or {})
            inputs = str(source.get("metadata", {}).get("resourceVersion"))
        if self._verdict is not None and self._verdict[0] == inputs:
            return self._verdict[1]
        try:
            items = await self._prepare(spec, data)
        except payloads.PayloadError as exc:
            self._verdict = (inputs, Acceptance(False, exc.reason, exc.message))
            return self._verdict[1]
        except SandboxError as exc:
            verdict = Acceptance(
                False,
                f"PayloadValidation{exc.reason}",
                f"checking the payloads against payloadSchema {exc.message}; simplify the schema (patterns "
                "that backtrack, deep nesting) or drop it and let workers check their own items",
            )
            if exc.reason != "Crashed":  # a crash may be the machine's, not the input's: try again later
                self._verdict = (inputs, verdict)
            return verdict
        except Exception as exc:  # a bug the input found: the batch is refused, never retried in a loop
            logger.exception("%s/%s: checking the payloads failed", self.namespace, self.name)
            why = f"checking the payloads against payloadSchema failed ({type(exc).__name__})"
            self._verdict = (inputs, Acceptance(False, "InvalidPayloadSchema", why))
            return self._verdict[1]
        if items.snapshot is not None and snapshot is None:
            taken = await self._create_snapshot(items.snapshot)
            if taken is not None:
                return Acceptance(False, "PayloadSnapshotConflict", taken)
        return Acceptance(True, "Accepted", "", item_count=items.count, payload_digest=items.digest)

    async def _accept_object(self, spec: JobBatchSpec) -> Acceptance:
        """Index an object-storage source (in the indexing sandbox) and snapshot the index."""
        try:
            items = await self._indexed_object(spec, check_schema=True)
        except payloads.PayloadError as exc:
            return Acceptance(False, exc.reason, exc.message)
        except SandboxError as exc:
            return Acceptance(False, f"PayloadIndexing{exc.reason}", _indexing_failed(exc))
        assert items.snapshot is not None
        taken = await self._create_snapshot(items.snapshot, manifests.INDEX_KEY)
        if taken is not None:
            return Acceptance(False, "PayloadSnapshotConflict", taken)
        return Acceptance(True, "Accepted", "", item_count=items.count, payload_digest=items.digest)

    async def _indexed_object(self, spec: JobBatchSpec, *, check_schema: bool) -> payloads.Items:
        """The index of the object's current version; PayloadError or SandboxError if there is none.

        What it depends on is the Secret (its resourceVersion) and the object's version (ETag and
        size, from a HEAD): with both unchanged neither a success nor a verdict on the data is
        recomputed, so a bad object costs one full read, not one per pass (a success found without the
        schema serves only passes that need none). Unreachable storage, a replaced object mid-read and
        a crashed child are not verdicts: the next pass tries again.
        """
        src = spec.payloads.object_store
        assert src is not None
        credentials, secret_version = await self._object_credentials(src.credentials_secret.name)
        store = objectstore.ObjectStore(src.endpoint, credentials, src.region, refuse_local=True)
        try:
            loop = asyncio.get_running_loop()
            info = await loop.run_in_executor(_HEADS, store.head, src.bucket, src.key)
        except objectstore.ObjectStoreError as exc:
            raise payloads.object_error(exc, src.credentials_secret.name) from None
        inputs = f"secret {secret_version} object {info.etag} {info.size}"
        if self._indexed is not None and self._indexed[0] == inputs and (self._indexed[1] or not check_schema):
            return self._indexed[2]
        if self._index_refused is not None and self._index_refused[:2] == (inputs, check_schema):
            raise self._index_refused[2]
        try:
            items = await self._index_object(
                spec if check_schema else spec.model_copy(update={"payload_schema": None}), credentials
            )
        except (payloads.PayloadError, SandboxError) as exc:
            transient = exc.reason in payloads.TRANSIENT_REASONS or exc.reason == "Crashed"
            if not transient:
                self._index_refused = (inputs, check_schema, exc)
            raise
        except Exception as exc:  # a bug the input found: refused, never retried in a loop
            logger.exception("%s/%s: indexing the object failed", self.namespace, self.name)
            error = payloads.PayloadError("InvalidPayload", f"indexing the object failed ({type(exc).__name__})")
            self._index_refused = (inputs, check_schema, error)
            raise error from None
        self._indexed = (inputs, check_schema, items)
        return items

    async def _object_credentials(self, secret: str) -> tuple[objectstore.Credentials, str]:
        """The credentials in ``secret`` and its resourceVersion; PayloadError if there are none."""
        body = await self.kube.get_secret(self.namespace, secret)
        if body is None:
            raise payloads.PayloadError(
                "SecretNotFound", f'Secret "{secret}" not found in namespace "{self.namespace}"'
            )
        data = body.get("data") or {}
        values: dict[str, str] = {}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            try:
                # `echo ... | base64` leaves a line break: not part of any credential.
                value = base64.b64decode(data[key]).decode().strip() if key in data else ""
            except (ValueError, UnicodeDecodeError):
                value = "\n"  # refused below
            if any(ord(c) < 32 or ord(c) == 127 for c in value):
                raise payloads.PayloadError(
                    "InvalidCredentialsSecret", f'Secret "{secret}" key {key} is not base64 of printable text'
                )
            values[key] = value
        missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not values[k]]
        if missing:
            raise payloads.PayloadError(
                "InvalidCredentialsSecret", f'Secret "{secret}" has no key {" or ".join(missing)}'
            )
        credentials = objectstore.Credentials(
            values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"], values["AWS_SESSION_TOKEN"] or None
        )
        return credentials, str(body.get("metadata", {}).get("resourceVersion"))

    async def _index_object(self, spec: JobBatchSpec, credentials: objectstore.Credentials) -> payloads.Items:
        # In a sandbox of its own: the bytes are the user's, their size is unknown, and reading them takes
        # network time a killable child spends instead of the event loop, without holding the slots
        # that schema checks of ConfigMap and inline payloads use.
        if self.indexer is None:
            return await asyncio.to_thread(payloads.index_object, spec, credentials)
        return await self.indexer.run(payloads.index_object, spec, credentials, tenant=self.namespace)

    async def _prepare(self, spec: JobBatchSpec, data: dict[str, str] | None) -> payloads.Items:
        # Without a schema nothing the user wrote is evaluated (parsing JSON is bounded by the 1 MiB
        # ConfigMap): no sandbox slot is taken, so hostile schemas cannot queue plain batches behind them.
        if self.sandbox is None or spec.payload_schema is None:
            return payloads.prepare(spec, data)
        return await self.sandbox.run(payloads.prepare, spec, data, tenant=self.namespace)

    async def _check_snapshot(self, body: dict[str, Any], spec: JobBatchSpec, status: JobBatchStatus) -> None:
        """Re-create the payload snapshot if it was deleted (its pods would wait for it forever).

        Only from a source that still holds exactly the items accepted (``status.payloadDigest``);
        otherwise the batch is Stalled with reason PayloadSnapshotLost.
        """
        now = self._monotonic()
        if now - self._snapshot_checked < SNAPSHOT_CHECK_SECONDS:
            return
        self._snapshot_checked = now
        name = naming.payload_configmap_name(self.name, self.uid)
        # Immutable: once its items were checked, the same object (UID) holds the same items, so only
        # its metadata is read again (not up to 1 MiB every SNAPSHOT_CHECK_SECONDS).
        meta = ((await self.kube.get_configmap_metadata(self.namespace, name)) or {}).get("metadata") or {}
        if self._snapshot_verified and meta.get("uid") == self._snapshot_verified:
            self._snapshot_lost = None
            return
        key = manifests.snapshot_key(spec.payloads)
        if await self._own_snapshot(status.payload_digest, key) is not None:
            self._snapshot_lost = None
            return
        data = None
        ref = spec.payloads.config_map
        if ref is not None:
            source = await self.kube.get_configmap(self.namespace, ref.name)
            data = dict((source or {}).get("data") or {})
        items: payloads.Items | None = None
        try:
            # Only re-encoded, not validated: a source holding exactly the accepted items passed the
            # schema once already (and this takes no sandbox slot, but an object's index does).
            if spec.payloads.object_store is not None:
                items = await self._indexed_object(spec, check_schema=False)
            else:
                items = payloads.prepare(spec.model_copy(update={"payload_schema": None}), data)
        except SandboxError as exc:
            if exc.reason == "Crashed":
                return  # not the input's doing: the next check tries again
            why = f"its object could not be indexed again: {_indexing_failed(exc)}"
        except payloads.PayloadError as exc:
            if exc.reason in payloads.TRANSIENT_REASONS:
                return  # storage unreachable for now: the next check tries again
            why = exc.message
        except Exception as exc:  # noqa: BLE001 -- e.g. JSON nested too deeply: never a pass failing in a loop
            why = f"its source cannot be read again ({type(exc).__name__})"
        else:
            recorded = status.payload_digest
            if recorded:
                same = items.digest == recorded
            else:  # accepted by an operator that recorded no digest: only inline items are certain
                same = spec.payloads.items is not None and items.count == status.item_count
            why = "" if same else "the source no longer holds exactly the items the batch accepted"
        if items is None or why:
            self._snapshot_lost = (
                f'the payload snapshot ConfigMap "{name}" was deleted and cannot be re-created: {why}; '
                "its shards cannot start (delete and re-create the batch)"
            )
            return
        assert items.snapshot is not None
        taken = await self._create_snapshot(items.snapshot, key)
        if taken is not None:
            self._snapshot_lost = f"{taken}; its shards cannot start as they should"
            return
        self._snapshot_lost = None
        logger.warning("%s/%s: payload snapshot %s was deleted; re-created it", self.namespace, self.name, name)
        message = f'the payload snapshot ConfigMap "{name}" was deleted; re-created it from the source'
        await self.kube.post_event(body, "Warning", "PayloadSnapshotRecreated", message)

    async def _create_snapshot(self, snapshot: str, key: str = manifests.PAYLOAD_KEY) -> str | None:
        """Create the payload snapshot; None once it holds ``snapshot``, else why the name is taken.

        A ConfigMap of that name may already exist: this batch's own from an earlier pass (fine), or
        one someone made to have the batch's pods read other items (refused, never swallowed).
        """
        cm = manifests.payload_configmap(self.name, self.namespace, self.uid, snapshot, key)
        if await self.kube.create_configmap(self.namespace, cm):
            return None
        if await self._own_snapshot(payloads.digest(snapshot), key) is not None:
            return None
        name = cm["metadata"]["name"]
        return (
            f'ConfigMap "{name}", the name of this batch\'s payload snapshot, already exists and does not hold '
            "exactly the batch's items, made by this batch; delete it (the operator re-creates it)"
        )

    async def _refused_template(self, spec: JobBatchSpec) -> str | None:
        """Why the API server would refuse this batch's shard Jobs (a dry-run create of one), or None.

        Only refusals of the object itself count (400, 422, an admission webhook's denial): a quota
        or a terminating namespace refuses every object alike, and the create path reports those. Only
        the cluster (a webhook) or a changed field of the probe Job can change the answer, so the same
        probe is asked at most every TEMPLATE_CHECK_SECONDS however often events wake an unaccepted batch.
        """
        now = self._monotonic()
        # The probe holds every field the Job depends on (priorityClassName, shardTimeoutSeconds, retry
        # are mutable): a changed one is asked about at once.
        key = json.dumps(self._probe(spec), sort_keys=True)
        if self._template_verdict is not None:
            at, was, refused = self._template_verdict
            if was == key and now - at < TEMPLATE_CHECK_SECONDS:
                return refused
        refused = await self._dry_run(json.loads(key))
        self._template_verdict = (now, key, refused)
        return refused

    def _probe(self, spec: JobBatchSpec) -> dict[str, Any]:
        return manifests.shard_job(
            name=self.name, namespace=self.namespace, uid=self.uid, spec=spec, item_count=1,
            first_shard=0, count=1, attempt=0, parallelism=1,
        )  # fmt: skip

    async def _dry_run(self, probe: dict[str, Any]) -> str | None:
        try:
            await self.kube.create_job(self.namespace, probe, dry_run=True)
        except ApiException as exc:
            message = error_message(exc)
            if exc.status in (400, 422) or (exc.status == 403 and "admission webhook" in message):
                return f"the API server refuses the shard Jobs this template makes: {message}"
        return None

    async def _own_snapshot(self, digest: str | None = None, key: str = manifests.PAYLOAD_KEY) -> str | None:
        """The payload snapshot of this batch, if there is one: immutable, controlled by the batch, and
        (given ``digest``) holding exactly the items accepted."""
        body = await self.kube.get_configmap(self.namespace, naming.payload_configmap_name(self.name, self.uid))
        if body is None or not body.get("immutable"):
            return None
        owner = controller_of(body, KIND)
        if owner is None or owner[1] != self.uid:
            return None
        snapshot = str((body.get("data") or {}).get(key, ""))
        if digest is not None:
            if payloads.digest(snapshot) != digest:
                return None
            self._snapshot_verified = str(body["metadata"].get("uid") or "")
        return snapshot

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
        generation = int(meta.get("generation", 1))
        for ctype in ("Accepted", "Stalled"):  # Stalled: GitOps tools see it as failed, not progressing
            value: Literal["True", "False"] = "True" if ctype == "Stalled" else "False"
            new.conditions = set_condition(
                new.conditions, ctype, value, "InvalidSpec", message, self._clock(), generation
            )
        if new.dump() != status.dump():
            await self.kube.patch_batch_status(
                self.namespace, self.name, new.dump(), meta["resourceVersion"], body.get("status") or {}
            )
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

        by_name = {job.name: job for job in observed}
        item_count = decision.status.item_count or 0
        digest = decision.status.payload_digest
        for create in decision.create:
            created = ShardJob(
                create.name, create.first, create.count, create.attempt, create.parallelism, confirmed=False,
                node=create.node,
            )  # fmt: skip
            self._start(create.name, functools.partial(self._create, create, spec, item_count, digest), created=created)
        for scale in decision.scale:
            self._start(
                scale.name, functools.partial(self._scale, scale.name, scale.current, scale.to), parallelism=scale.to
            )
        for resume in decision.resume:
            call = functools.partial(self._resume, resume.name, resume.parallelism)
            self._start(resume.name, call, suspended=False, parallelism=resume.parallelism)
        for suspend in decision.suspend:
            self._start(suspend.name, functools.partial(self.kube.suspend_job, ns, suspend.name), suspended=True)
        releases = {r.name: r for r in decision.release}
        deletes = {d.name for d in decision.delete}
        for job_name in sorted(set(releases) | deletes):
            job = by_name[job_name]
            expect: dict[str, Any] = {}
            if job_name in releases:
                expect["finalizers"] = tuple(f for f in job.finalizers if f != SHARD_FINALIZER)
            if job_name in deletes:
                expect["deleting"] = True
            release, delete = releases.get(job_name), job_name in deletes
            self._start(job_name, functools.partial(self._clean_up, release, delete, job_name), **expect)
        for collect in decision.collect:
            self._start(collect.name, functools.partial(self._collect, collect.name), pods_collected=True)
        for wanted in decision.results:
            # Not a write to the Job: it runs beside the Job's own calls (a raise must not wait for a list).
            key = f"results/{wanted.name}"
            since = self._collected.get(wanted.uid)
            if since is not None and since.shards.intersection(wanted.shards):
                continue  # a collection ended while this pass ran: the next pass plans from it
            failed = self._collect_failed.get(wanted.uid)
            if failed is not None and self._monotonic() < failed[1]:
                requeue = min(requeue if requeue is not None else RESYNC_INTERVAL, failed[1] - self._monotonic())
                continue
            if not self.calls.busy(key):
                self.calls.start(key, self._collect_results(wanted, spec, decision))
        # The status write goes after the calls are started, not before: every action of a plan stands
        # on what was persisted before this pass (the planner acts only on recorded outcomes and, where
        # a step must be persisted first, plans nothing else until it is), so none waits for this write.
        # A hand-over's raise no longer waits for the write's round trip.
        written = False
        if decision.status_changed:
            wait = MIN_STATUS_INTERVAL - (self._monotonic() - self._last_status_write)
            if wait > 0:
                # A pass asked for at once (to persist, then act) can do nothing before the write may go.
                requeue = wait if not requeue else min(requeue, wait)
            else:
                meta = body["metadata"]
                self._body = await self.kube.patch_batch_status(
                    ns, self.name, decision.status.dump(), meta["resourceVersion"], body.get("status") or {}
                )
                self._body_read = self._last_status_write = self._monotonic()
                metrics.status_writes.labels(ns).inc()
                written = True
                self._count_outcomes(decision, body)
                if record_may_unblock(decision.status, body.get("status") or {}, observed):
                    # Plan again from the written body now, rather than wait for the write's echo.
                    requeue = 0.0
                self._wrote_status = True

        for event in decision.events:
            # Transition events are re-derived from the persisted status until it is written.
            if written or not event.on_status:
                await self.kube.post_event(body, event.type, event.reason, event.message)
        if failures := self.calls.take_failures():  # calls started by earlier passes; retried above
            for exc in failures:
                logger.warning("%s/%s: %s: %s", ns, self.name, type(exc).__name__, exc)
            raise ActionsFailed(f"{len(failures)} API calls failed; the next pass retries them")
        if decision.delete_batch:
            logger.info("%s/%s: ttlSecondsAfterFinished passed; deleting the batch", ns, self.name)
            await self.kube.delete_batch(ns, self.name, self.uid)
            raise BatchGone
        return requeue

    def _start(
        self,
        job_name: str,
        call: Callable[[], Coroutine[Any, Any, Any]],
        *,
        created: ShardJob | None = None,
        **expect: Any,
    ) -> None:
        """Start one Job's call in the background unless one is in flight; expect its effect from now on."""
        if self.calls.busy(job_name):
            self.calls.again(job_name)  # the pass after that call plans it again
            return
        self.expected.expect(job_name, created=created, **expect)

        async def tracked() -> None:
            try:
                async with self._limit:
                    done = await call()
            except BaseException as exc:
                if isinstance(exc, ApiException) and not server_error(exc):
                    self.expected.forget(job_name)  # refused: the Job is what the watch says
                else:
                    # A timeout, a lost connection, a 5xx, cancellation: it may have taken effect.
                    self.expected.settled(job_name)
                raise
            if done is False:
                self.expected.forget(job_name)
            else:
                self.expected.settled(job_name)

        self.calls.start(job_name, tracked())

    async def _create(self, create: CreateJob, spec: JobBatchSpec, item_count: int, digest: str | None) -> bool | None:
        """Create one shard Job: True if made, False if not (a refusal is recorded), None if unknown.

        Unknown: a timeout or a 5xx, and the Job's read that would tell failed too. The Job then stays
        expected (until the watch shows it, or the expectation's TTL) so that no other create covers its
        shards meanwhile.
        """
        manifest = manifests.shard_job(
            name=self.name, namespace=self.namespace, uid=self.uid, spec=spec, item_count=item_count,
            first_shard=create.first, count=create.count, attempt=create.attempt, parallelism=create.parallelism,
            payload_digest=digest, node=create.node,
        )  # fmt: skip
        self._creating += 1
        try:
            try:
                made = await self.kube.create_job(self.namespace, manifest)
            except (ApiException, TimeoutError, OSError) as exc:
                if isinstance(exc, ApiException) and not server_error(exc):
                    return self._refused(create, exc)  # 422, a quota's or webhook's 403, a terminating namespace
                # A timeout or a 5xx (an unreachable webhook says 500): did it land? The read tells.
                landed = await self._landed(create.name)
                if not landed:
                    self._refused(create, exc)
                    return landed
                made = True
            if not made:
                try:
                    await self._check_name_is_ours(create.name)
                except NameTaken as exc:
                    return self._refused(create, exc)
                except (ApiException, TimeoutError, OSError) as exc:
                    # Unknown whose: as before the check, the watch says whether the batch owns it.
                    logger.warning("%s/%s: reading job %s: %s", self.namespace, self.name, create.name, exc)
                    return False
        finally:
            self._creating -= 1
        self.failed_create = None
        if made:
            metrics.launches.labels(self.namespace).inc(create.parallelism)
            metrics.attempts.labels(self.namespace).inc(create.count)
            if create.retry:
                metrics.retries.labels(self.namespace).inc()
                metrics.attempt_failed(self.namespace, create.cause, create.cause_exit_code)
        # AlreadyExists, and the Job is this batch's: a previous process made it, perhaps of another
        # shape. Nothing is assumed about it: the watch says what it is.
        return made

    def _refused(self, create: CreateJob, exc: BaseException) -> bool:
        """Record a refused create: the planner backs off and says so (condition Stalled, an Event)."""
        refused = self.failed_create
        self.wake.set()
        if refused is not None and self._clock() < refused.retry_at:
            # Sent before the backoff began (one pass's creates fail together): one refusal.
            self.failed_create = dataclasses.replace(refused, job=create.name, message=error_message(exc))
            return False
        failures = (refused.failures if refused else 0) + 1
        delay = retry_delay(CREATE_BACKOFF, self.uid, 0, failures - 1)
        retry_at = self._clock() + datetime.timedelta(seconds=delay)
        self.failed_create = FailedCreate(create.name, failures, retry_at, error_message(exc))
        logger.warning(
            "%s/%s: creating job %s failed (%d times; next try in %.0fs): %s",
            self.namespace, self.name, create.name, failures, delay, error_message(exc),
        )  # fmt: skip
        return False

    async def _landed(self, job_name: str) -> bool | None:
        """After a create whose answer was lost: whether this batch's Job of that name exists (None: unknown)."""
        try:
            ref = await self._job_controller(job_name)
        except (ApiException, TimeoutError, OSError):
            return None
        return ref is not None and self._is_ours(ref)

    async def _check_name_is_ours(self, job_name: str) -> None:
        """After AlreadyExists: NameTaken unless the Job of that name is this batch's (or gone again).

        Job names are predictable; a Job someone else made under one would otherwise be re-created,
        refused, forever, with nothing said, while the shards it stands for never run.
        """
        ref = await self._job_controller(job_name)
        if ref is None or self._is_ours(ref):
            return
        whose = f"{ref.get('kind')} {ref.get('name')}" if ref else "nothing"
        raise NameTaken(
            f"a Job named {job_name} already exists and is not this batch's (controlled by {whose}): "
            "delete it to let the batch go on"
        )

    async def _job_controller(self, job_name: str) -> dict[str, Any] | None:
        """The controller reference of the Job of that name ({} if it has none); None if there is no Job."""
        found = await self.kube.get_job_metadata(self.namespace, job_name)
        if found is None:
            return None
        refs = [o for o in (found.get("metadata") or {}).get("ownerReferences") or [] if o.get("controller")]
        return dict(refs[0]) if refs else {}

    def _is_ours(self, ref: Mapping[str, Any]) -> bool:
        return ref.get("kind") == KIND and ref.get("uid") == self.uid

    def _count_outcomes(self, decision: Plan, body: dict[str, Any]) -> None:
        """Metrics of what a written status records: permanent failures, and the batch's end."""
        for reason, exit_code in decision.final_failures:
            metrics.attempt_failed(self.namespace, reason, exit_code)
        status = decision.status
        was = (body.get("status") or {}).get("phase")
        if status.phase in TERMINAL_PHASES and was not in TERMINAL_PHASES and status.completion_time is not None:
            began = status.began()
            if began is not None:
                seconds = (status.completion_time - began).total_seconds()
                metrics.batch_duration.labels(self.namespace, status.phase).observe(max(0.0, seconds))

    async def _scale(self, job_name: str, current: int, to: int) -> bool:
        done = await self.kube.scale_job(self.namespace, job_name, current, to)
        if done and to > current:
            metrics.launches.labels(self.namespace).inc(to - current)
        return done

    async def _collect(self, job_name: str) -> None:
        await self.kube.delete_succeeded_pods(self.namespace, job_name)
        await self.kube.annotate_job(self.namespace, job_name, {PODS_COLLECTED: "true"})

    async def _collect_results(self, wanted: CollectResults, spec: JobBatchSpec, decision: Plan) -> None:
        """Store the results of a Job's succeeded shards; the next pass records them."""
        assert spec.results is not None
        results = decision.status.results
        if self._result_store is None:  # spec.results is immutable: one writer for the batch's life
            self._result_store = ResultStore(
                self.kube,
                namespace=self.namespace,
                batch_uid=self.uid,
                prefix=results.config_map_prefix if results else naming.results_configmap_prefix(self.name, self.uid),
                per_page=results.shards_per_page if results else shards_per_page(spec.results.max_bytes),
                max_bytes=spec.results.max_bytes,
                labels=manifests.results_labels(self.name, self.uid),
                owner=manifests.owner_reference(self.name, self.uid),
            )
        started = self._monotonic()
        try:
            done = await self._result_store.collect(wanted.name, wanted.uid, wanted.shards, self._clock())
        except Exception as exc:  # noqa: BLE001  # kept apart from the batch's other calls: said in Stalled
            count = self._collect_failed.get(wanted.uid, (0, 0.0, ""))[0] + 1
            delay = retry_delay(CREATE_BACKOFF, self.uid, 1, count - 1)
            self._collect_failed[wanted.uid] = (
                count,
                self._monotonic() + delay,
                f"job {wanted.name}: {error_message(exc)}",
            )
            logger.warning("%s/%s: storing results of job %s failed (%d in a row; next try in %.0fs): %s",
                           self.namespace, self.name, wanted.name, count, delay, error_message(exc))  # fmt: skip
            self.wake.set()
            return
        self._collect_failed.pop(wanted.uid, None)
        logger.info(
            "%s/%s: stored %d results of job %s (%d missing) in %.2fs", self.namespace, self.name,
            len(done.shards) - len(done.missing), wanted.name, len(done.missing), self._monotonic() - started,
        )  # fmt: skip
        previous = self._collected.get(wanted.uid)
        self._collected[wanted.uid] = previous.merge(done) if previous is not None else done
        metrics.results_collected.labels(self.namespace, "stored").inc(len(done.shards) - len(done.missing))
        metrics.results_collected.labels(self.namespace, "missing").inc(len(done.missing))
        self.wake.set()

    async def _resume(self, job_name: str, parallelism: int) -> None:
        await self.kube.resume_job(self.namespace, job_name, parallelism)
        metrics.launches.labels(self.namespace).inc(parallelism)

    async def _clean_up(self, release: ReleaseJob | None, delete: bool, job_name: str) -> None:
        # Release before delete: a deleting Job still holding our finalizer looks orphaned.
        if release is not None:
            if release.collect_pods:
                await self.kube.delete_succeeded_pods(self.namespace, job_name)
            await self.kube.release_job(self.namespace, job_name, release.finalizers or (SHARD_FINALIZER,))
        if delete:
            await self.kube.delete_job(self.namespace, job_name)


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
