"""The reconcile decision, as a pure function: (batch, observed shard Jobs, pod failures, now) -> Plan.

Nothing here talks to Kubernetes or reads a clock; ``jobbatch.reconciler`` gathers the inputs and
applies the plan. Every pass recomputes everything from the recorded status and the observed Jobs
(level-triggered), so a restarted operator, given the same inputs, makes the same decision.

The shape of a running batch (docs/design.md):
- First attempts run in *chunk* Jobs: Indexed Jobs over contiguous shard ranges of
  ``chunk_size(parallelism)`` shards, created in shard order. The Job controller starts their pods.
- A failed shard is retried by the operator, with the batch's own backoff, in a *retry* Job of its
  own (an Indexed Job of one shard, attempt n).
- ``parallelism`` is shared out as the Jobs' own ``spec.parallelism``: a Job holds
  ``ShardJob.slots`` slots, and slots a draining Job frees go to suspended Jobs being resumed, due
  retries, Jobs still short of slots, then new chunks, in that order. A Job's parallelism is only
  lowered when the batch holds more slots than ``parallelism`` (the Job controller then stops its
  newest pods, which use no retry and run again later).

Invariants the plan keeps:
- A shard's outcome is written to ``status`` (``succeededShards``/``failedShards``) before the Job
  that ran it may disappear: a Job's finalizer is released only when every shard it ran is recorded
  in the *persisted* status or has a newer attempt observed in another Job.
- The latest attempt of every unfinished shard stays observable, so attempt numbers (and so Job
  names) are never reused.
- The slots the batch's Jobs hold never add up to more than ``parallelism`` by the plan's doing.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from jobbatch import isolation, naming
from jobbatch.api import (
    MAX_ATTEMPT,
    MAX_RETRY_LIMIT,
    SKIP_RETRY_PREFIX,
    TERMINAL_PHASES,
    Condition,
    ItemFailure,
    JobBatchSpec,
    JobBatchStatus,
    RerunStatus,
    ResultsStatus,
    ShardCounts,
    ShardFailure,
)
from jobbatch.backoff import retry_delay
from jobbatch.observed import PodFailure, ShardJob
from jobbatch.ranges import IndexRanges
from jobbatch.results import MAX_ERRORS, MAX_MISSING_RANGES, Collected, shards_per_page

# A shard Job's results are collected when it finishes, and while it runs this long after its last
# collection (or its start): each collection lists all its succeeded pods so far, so collecting more
# often costs the API server more than it saves (measured: a collection at every quarter of a chunk
# made a 2,000-shard batch take twice as long on the 2-core machine).
RESULTS_COLLECT_SECONDS = 30.0
RESULTS_SECONDS_PER_SHARD = 0.01  # ... and at least this per shard of the Job: 100 s for 10,000
# How often an unaccepted batch re-checks what it waits for (a ConfigMap, a PriorityClass).
ACCEPTANCE_RECHECK_SECONDS = 10.0
# How often a finished batch re-checks that its Jobs' last pods are gone (before it lets the Jobs go,
# and before a rerun starts); their Jobs' watch events wake it sooner.
STOPPING_RECHECK_SECONDS = 5.0
# Ranges of status.failedItems kept (retry.isolate): the status stays bounded.
MAX_FAILED_ITEM_RANGES = 500
# Events about individual shards posted per pass, so a mass failure cannot flood the API.
MAX_SHARD_EVENTS_PER_PASS = 5
MAX_RECORDED_FAILURES = 10
# Characters of one recorded failure's message (it quotes the worker's termination message): ten of
# them stay a small part of the status.
MAX_FAILURE_MESSAGE = 1024
# Chunk Jobs hold CHUNK_FACTOR x parallelism shards, within [MIN_CHUNK, MAX_CHUNK] (docs/design.md):
# big enough that Jobs cost little per shard, small enough that chunks keep draining (which frees
# the slots retries run in) and that a chunk's finished pods and Job status stay small.
CHUNK_FACTOR = 2
MIN_CHUNK = 20
MAX_CHUNK = 10_000


def chunk_size(parallelism: int) -> int:
    return min(MAX_CHUNK, max(MIN_CHUNK, CHUNK_FACTOR * parallelism))


def shard_count(item_count: int, shard_size: int) -> int:
    return math.ceil(item_count / shard_size)


def item_range(shard: int, shard_size: int, item_count: int) -> tuple[int, int]:
    """Half-open item range [start, end) of a shard."""
    start = shard * shard_size
    return start, min(start + shard_size, item_count)


# -- inputs -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Acceptance:
    """Outcome of the checks only the operator can make (payloads, schema, PriorityClass)."""

    ok: bool
    reason: str
    message: str
    item_count: int = 0
    payload_digest: str | None = None  # of the snapshot, for items/configMap sources


@dataclasses.dataclass(frozen=True)
class FailedCreate:
    """The batch's Job creates are refused (a quota, a webhook, a terminating namespace).

    One per batch, not per Job: ``failures`` counts refusals in a row, whichever Job each was for,
    so the backoff grows until a create succeeds. The next create may go at ``retry_at``.
    """

    job: str  # the Job the latest refused create was for
    failures: int
    retry_at: datetime.datetime
    message: str


@dataclasses.dataclass(frozen=True)
class Batch:
    """The planner's view of one JobBatch."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: JobBatchSpec
    status: JobBatchStatus


# -- actions: each names the Job it acts on ------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CreateJob:
    name: str
    first: int
    count: int
    attempt: int
    parallelism: int
    retry: bool = False  # a failed shard's next attempt (not a chunk of first attempts, or of a rerun)
    # For a retry: why the attempt before failed (metrics count each failed attempt once).
    cause: str = dataclasses.field(default="", compare=False)
    cause_exit_code: int | None = dataclasses.field(default=None, compare=False)
    node: int = 0  # a piece of shard ``first``'s items (retry.isolate; jobbatch.isolation)


@dataclasses.dataclass(frozen=True)
class ScaleJob:
    """Set ``spec.parallelism`` from ``current`` (as observed; the write is conditional on it) to ``to``."""

    name: str
    current: int
    to: int


@dataclasses.dataclass(frozen=True)
class ResumeJob:
    name: str
    parallelism: int


@dataclasses.dataclass(frozen=True)
class SuspendJob:
    name: str


@dataclasses.dataclass(frozen=True)
class ReleaseJob:
    """Remove the shard finalizer (``finalizers`` as observed).

    ``collect_pods``: the Job is kept for inspection; first delete its succeeded pods, so a kept chunk
    holds only the pods of its failed attempts.
    """

    name: str
    finalizers: tuple[str, ...]
    collect_pods: bool = False


@dataclasses.dataclass(frozen=True)
class DeleteJob:
    name: str


@dataclasses.dataclass(frozen=True)
class CollectPods:
    """Delete a Job's succeeded pods and mark it so (annotation ``jobbatch.io/pods-collected``)."""

    name: str


@dataclasses.dataclass(frozen=True)
class CollectResults:
    """Store the results of ``shards`` (succeeded, not recorded yet) from the pods of Job ``name``."""

    name: str
    uid: str
    shards: IndexRanges


@dataclasses.dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    # Posted only once the status recording the transition is written (False: tied to an action).
    on_status: bool = True


@dataclasses.dataclass
class Plan:
    status: JobBatchStatus
    status_changed: bool = False
    create: list[CreateJob] = dataclasses.field(default_factory=list)
    scale: list[ScaleJob] = dataclasses.field(default_factory=list)
    resume: list[ResumeJob] = dataclasses.field(default_factory=list)
    suspend: list[SuspendJob] = dataclasses.field(default_factory=list)
    release: list[ReleaseJob] = dataclasses.field(default_factory=list)
    delete: list[DeleteJob] = dataclasses.field(default_factory=list)
    collect: list[CollectPods] = dataclasses.field(default_factory=list)
    results: list[CollectResults] = dataclasses.field(default_factory=list)
    events: list[Event] = dataclasses.field(default_factory=list)
    requeue_after: float | None = None
    delete_batch: bool = False
    # Slots the batch could use now but the cluster-wide cap holds back (for priority dispatch).
    unmet_demand: int = 0
    # The pass had a Job it would create (False: a remembered refused create no longer matters).
    creates_wanted: bool = False
    # Succeeded shards whose results are not stored yet: counted as running, but holding no slot.
    storing: int = 0
    # (reason, exit code) of the attempts this pass's status records as permanent failures.
    final_failures: list[tuple[str, int | None]] = dataclasses.field(default_factory=list)

    def wake_in(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    @property
    def job_calls(self) -> int:
        calls: tuple[list[Any], ...] = (
            self.create, self.scale, self.resume, self.suspend, self.release, self.delete, self.collect, self.results
        )  # fmt: skip
        return sum(len(c) for c in calls)


# -- what the observed Jobs say -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FailedAttempt:
    shard: int
    attempt: int
    exit_code: int | None
    reason: str
    message: str
    failed_at: datetime.datetime | None
    disrupted: bool = False  # its pod was disrupted once more than retry.disruptionLimit allows


@dataclasses.dataclass
class Survey:
    """The observed Jobs sorted into what each shard's latest attempt did."""

    total: int
    recorded_succeeded: IndexRanges  # as persisted
    recorded_failed: IndexRanges
    newest: dict[int, int]  # shard -> newest attempt, for shards with a retry Job (attempt > 0)
    newest_confirmed: dict[int, int]  # the same, counting only Jobs the watch has shown
    succeeded: IndexRanges  # observed to have succeeded, not recorded yet (with results: stored too)
    failed_attempts: list[FailedAttempt]  # latest attempts that failed, shards not recorded yet
    covered: IndexRanges  # shards some Job runs or ran
    undecided: int = 0  # failed attempts whose pod (exit code) is not seen yet
    look_again: datetime.datetime | None = None
    # Observed to have succeeded, not recorded yet, whether or not their results are stored.
    unrecorded: IndexRanges = dataclasses.field(default_factory=IndexRanges)
    # Jobs with such shards whose results are not stored yet, and those shards (spec.results only).
    uncollected: list[tuple[ShardJob, IndexRanges]] = dataclasses.field(default_factory=list)
    # Shards being run in pieces (retry.isolate), not recorded yet: their piece Jobs.
    pieces: dict[int, list[ShardJob]] = dataclasses.field(default_factory=dict)

    @property
    def recorded(self) -> IndexRanges:
        return self.recorded_succeeded.union(self.recorded_failed)

    def superseded(self, job: ShardJob, shard: int) -> bool:
        """A newer attempt of the shard exists (in a Job the watch has shown: a create may yet fail)."""
        return self.newest_confirmed.get(shard, 0) > job.attempt


# How long a failed index waits for its pod to show up in the failed-pod watch (which lags the Job
# watch) before it is decided without an exit code.
POD_GRACE_SECONDS = 10.0


def survey(
    status: JobBatchStatus,
    jobs: Sequence[ShardJob],
    failures: Mapping[tuple[int, int, int], PodFailure],
    total: int,
    now: datetime.datetime,
    first_attempt: int = 0,
    collected: Mapping[str, Collected] | None = None,
) -> Survey:
    """Sort observed Jobs into outcomes of each shard's latest attempt.

    ``first_attempt``: a rerun's first attempt. Every shard not recorded then is the rerun's, so the
    Jobs of earlier attempts (kept for their logs) say nothing about any shard still to finish.
    ``collected``: with ``spec.results``, what is stored of each Job's results (by Job UID); a success
    is recorded only once its result is decided, so the Job (and its pods) stay until then.
    """
    jobs = [j for j in jobs if j.attempt >= first_attempt]
    pieces = [j for j in jobs if j.node]  # their outcomes are their shard's isolation's (``isolate``)
    whole = [j for j in jobs if not j.node]
    recorded_succeeded = IndexRanges.parse(status.succeeded_shards)
    recorded_failed = IndexRanges.parse(status.failed_shards)
    recorded = recorded_succeeded.union(recorded_failed)
    newest: dict[int, int] = {}
    confirmed: dict[int, int] = {}
    for job in jobs:
        if job.attempt > first_attempt:  # a retry Job (a chunk of first attempts supersedes nothing)
            for shard in job.shards:
                newest[shard] = max(newest.get(shard, 0), job.attempt)
                if job.confirmed:
                    confirmed[shard] = max(confirmed.get(shard, 0), job.attempt)
    covered = IndexRanges((j.first, j.last) for j in jobs if j.count)
    succeeded = IndexRanges(interval for j in whole for interval in j.succeeded.intervals)
    outside = IndexRanges([(total, 2**62)])
    recordable = succeeded
    uncollected: list[tuple[ShardJob, IndexRanges]] = []
    if collected is not None:
        recordable = IndexRanges()
        for job in whole:
            done = collected[job.uid].shards if job.uid in collected else IndexRanges()
            recordable = recordable.union(job.succeeded.intersection(done))
            waiting = job.succeeded.difference(recorded).difference(done).difference(outside)
            if waiting:
                uncollected.append((job, waiting))
    seen = Survey(total, recorded_succeeded, recorded_failed, newest, confirmed, IndexRanges(), [], covered)
    grace = datetime.timedelta(seconds=POD_GRACE_SECONDS)
    for job in pieces:
        if job.first not in recorded and job.first < total and newest.get(job.first, 0) == job.attempt:
            seen.pieces.setdefault(job.first, []).append(job)
    for job in whole:
        lost = job.shards.difference(job.succeeded).difference(job.failed) if job.lost else IndexRanges()
        for shard in (*job.failed, *lost):
            if shard in recorded or shard >= total or newest.get(shard, 0) > job.attempt:
                continue
            pod = failures.get((shard, job.attempt, 0))
            if shard not in job.failed:
                why = "the shard Job was deleted before it finished"
                seen.failed_attempts.append(FailedAttempt(shard, job.attempt, None, "Deleted", why, job.deleted_at))
            elif pod is not None:
                seen.failed_attempts.append(
                    FailedAttempt(
                        shard, job.attempt, pod.exit_code, pod.reason, pod.message, pod.finished_at, pod.disrupted
                    )
                )
            elif job.finished_at is not None and now >= job.finished_at + grace:
                # The pod is gone (deleted, garbage-collected): decided without its exit code.
                seen.failed_attempts.append(FailedAttempt(shard, job.attempt, None, "Failed", "", job.finished_at))
            else:
                seen.undecided += 1
                if job.finished_at is not None:
                    at = job.finished_at + grace
                    seen.look_again = at if seen.look_again is None else min(seen.look_again, at)
    seen.unrecorded = succeeded.difference(recorded).difference(outside) if total else IndexRanges()
    seen.succeeded = recordable.difference(recorded).difference(outside) if total else IndexRanges()
    seen.uncollected = uncollected
    seen.failed_attempts = [f for f in seen.failed_attempts if f.shard not in seen.unrecorded]
    return seen


# -- shard fates ------------------------------------------------------------------------------------
@dataclasses.dataclass
class ShardFates:
    new_failures: list[ShardFailure]
    due: list[FailedAttempt]  # retries whose backoff has passed
    waiting: int  # retries still in backoff
    next_due: datetime.datetime | None
    final: list[FailedAttempt] = dataclasses.field(default_factory=list)  # the attempts of new_failures
    # Failed for good, but retry.isolate runs their items in pieces instead (``_Pass.isolate``); with
    # the failure recorded if the batch ends before a piece exists.
    split: list[tuple[FailedAttempt, ShardFailure]] = dataclasses.field(default_factory=list)


def permanent_failure(
    failed: FailedAttempt, non_retryable: Sequence[int], limit: int, first_attempt: int = 0
) -> ShardFailure | None:
    """The permanent failure a failed attempt causes, or None if the shard may retry.

    A disrupted attempt's exit code is the worker's answer to SIGTERM, not its verdict on the data:
    it never counts as non-retryable. Retries are counted from ``first_attempt`` (a rerun's).
    """
    code = f" (exit code {failed.exit_code})" if failed.exit_code is not None else ""
    said = f": {failed.message}" if failed.message else ""  # the worker's termination message, bounded
    if failed.disrupted:
        said = f" more often than retry.disruptionLimit allows{said}"
    # One line, as the SDK writes it: a log tail (FallbackToLogsOnError) that happens to start so is not.
    asked = failed.message.startswith(SKIP_RETRY_PREFIX) and "\n" not in failed.message.strip()
    if asked and not failed.disrupted:
        reason = "SkipRetry"
        why = failed.message.removeprefix(SKIP_RETRY_PREFIX).strip()
        message = f"attempt {failed.attempt} failed{code} and asked for no retry" + (f": {why}" if why else "")
    elif failed.exit_code is not None and failed.exit_code in non_retryable and not failed.disrupted:
        reason = "NonRetryableExitCode"
        message = f"attempt {failed.attempt} exited with non-retryable code {failed.exit_code}{said}"
    elif failed.attempt - first_attempt >= limit:
        reason = "RetriesExhausted"
        since = f", counted from the rerun's attempt {first_attempt}" if first_attempt else ""
        message = (
            f"attempt {failed.attempt} failed{code}, no retries left (limit {limit}{since}): {failed.reason}{said}"
        )
    else:
        return None
    if len(message) > MAX_FAILURE_MESSAGE:
        message = message[: MAX_FAILURE_MESSAGE - 3] + "..."
    return ShardFailure(
        shard=failed.shard, attempt=failed.attempt, exit_code=failed.exit_code, reason=reason, message=message
    )


def first_attempt(status: JobBatchStatus) -> int:
    """Where the current round of attempts starts: 0, or the latest rerun's first attempt."""
    return status.rerun.first_attempt if status.rerun is not None else 0


def decide_shards(batch: Batch, failed_attempts: Iterable[FailedAttempt], now: datetime.datetime) -> ShardFates:
    """Each failed latest attempt: a permanent failure, a retry that is due, or one still backing off.

    A rerun gives its shards a fresh retry budget and backoff: both count from its first attempt.
    """
    retry = batch.spec.retry
    base = first_attempt(batch.status)
    fates = ShardFates([], [], 0, None)
    items = batch.status.item_count or 0
    # A finished batch starts nothing: a failure seen after its end is recorded as it is.
    may_split = retry.isolate and batch.status.phase not in TERMINAL_PHASES
    for failed in sorted(failed_attempts, key=lambda f: (f.shard, f.attempt)):
        failure = permanent_failure(failed, retry.non_retryable_exit_codes, retry.limit, base)
        if failure is not None and may_split and failed.attempt < MAX_ATTEMPT:
            lo, hi = item_range(failed.shard, batch.spec.shard_size, items)
            if hi - lo > 1:
                fates.split.append((failed, failure))
                continue
        if failure is not None:
            fates.new_failures.append(failure)
            fates.final.append(failed)
            continue
        n = failed.attempt - base
        delay = datetime.timedelta(seconds=retry_delay(retry.backoff, batch.uid, failed.shard, n))
        due = (failed.failed_at or now) + delay
        if due <= now:
            fates.due.append(failed)
        else:
            fates.waiting += 1
            fates.next_due = due if fates.next_due is None else min(fates.next_due, due)
    return fates


# -- conditions -------------------------------------------------------------------------------------
def set_condition(
    conditions: list[Condition],
    ctype: str,
    status: Literal["True", "False"],
    reason: str,
    message: str,
    now: datetime.datetime,
    generation: int,
) -> list[Condition]:
    """Conditions with ``ctype`` set; lastTransitionTime moves only when the status flips."""
    out = []
    found = False
    for cond in conditions:
        if cond.type == ctype:
            found = True
            moved = cond.status != status
            cond = Condition(
                type=ctype,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=now if moved else cond.last_transition_time,
                observed_generation=generation,
            )
        out.append(cond)
    if not found:
        out.append(
            Condition(
                type=ctype,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=now,
                observed_generation=generation,
            )
        )
    return out


def _shards(shards: IndexRanges, what: str) -> str:
    return f"{len(shards)} {what} shard{'' if len(shards) == 1 else 's'}"


def _brief(shards: IndexRanges, most: int = 10) -> str:
    """Index ranges for a message: the first ``most`` ranges, then how many more shards."""
    intervals = shards.intervals
    if len(intervals) <= most:
        return str(shards)
    head = IndexRanges(intervals[:most])
    return f"{head},... ({len(shards) - len(head)} more)"


def _items(items: IndexRanges) -> str:
    return f"{len(items)} item{'' if len(items) == 1 else 's'}"


def _describe_failures(failures: Iterable[ShardFailure]) -> str:
    parts = []
    for f in failures:
        code = f", exit code {f.exit_code}" if f.exit_code is not None else ""
        parts.append(f"shard {f.shard} ({f.reason}{code})")
    return "; ".join(parts)


def _working_copy(status: JobBatchStatus) -> JobBatchStatus:
    """The status a pass changes, sharing what it only replaces with the batch's own.

    A deep copy of the whole status costs about 0.1 ms a pass, run on every Job status update
    (docs/performance.md). The pass replaces fields (conditions, failures, shards, rerun) rather than
    change them in place; the two it changes in place, ``item_failures`` (appended to) and
    ``results``, are copied. ``tests/unit/conftest.py`` checks, in every unit test, that no pass
    changes the batch it was given.
    """
    results = status.results.model_copy() if status.results is not None else None
    return status.model_copy(update={"item_failures": list(status.item_failures), "results": results})


# -- the steps of a pass ----------------------------------------------------------------------------
class _Pass:
    """The state one planning pass builds up, step by step."""

    def __init__(self, batch: Batch, now: datetime.datetime, failed_create: FailedCreate | None = None) -> None:
        self.batch, self.spec, self.old, self.now = batch, batch.spec, batch.status, now
        self.failed_create = failed_create
        self._probed = False  # while creates fail, one create per pass probes whether they work again
        self._stall: tuple[str, str] | None = None  # (reason, message) of a Stalled=True found on the way
        self.gen = batch.generation
        self.base = first_attempt(batch.status)  # the first attempt of the current round (a rerun's)
        self.status = _working_copy(batch.status)
        self.status.observed_generation = batch.generation
        self.out = Plan(status=self.status)
        # The shards recorded once this pass's status is written (set by ``record``).
        self.succeeded = self.failed = IndexRanges()
        # retry.isolate (set by ``isolate``): pieces to run, as (shard, attempt, node, why its parent
        # was split), and the state of each shard being isolated.
        self.pieces_wanted: list[tuple[int, int, int, tuple[str, int | None]]] = []
        self.isolations: dict[int, isolation.Isolation] = {}
        # Shards whose isolation this pass starts, with the failure that started it (and its attempt).
        self.splits: dict[int, tuple[FailedAttempt, ShardFailure]] = {}
        self.stopped: set[int] = set()  # isolations recorded as they stand, the batch having ended
        self.shard_events = 0  # Events about single shards this pass (at most MAX_SHARD_EVENTS_PER_PASS)
        self.pieces_deferred = 0  # wanted pieces this pass does not create (no slot, creates backing off)

    def condition(self, ctype: str, value: Literal["True", "False"], reason: str, message: str) -> None:
        self.status.conditions = set_condition(
            self.status.conditions, ctype, value, reason, message, self.now, self.gen
        )

    def finish(self) -> Plan:
        shards = self.status.shards
        self.status.progress = f"{shards.succeeded + shards.failed}/{shards.total}"
        self._summarize_health()
        self.out.status_changed = self.status.dump() != self.old.dump()
        return self.out

    def _summarize_health(self) -> None:
        """The kstatus conditions GitOps tools read (Flux, Argo CD, kpt, cli-utils): Ready, Reconciling, Stalled.

        Stalled: the batch cannot make progress on its own -- it failed, is not accepted, or the API
        server refuses its Jobs. Reconciling: it is being worked on. Ready: it succeeded.
        """
        status = self.status
        phase = status.phase
        accepted, failed = status.condition("Accepted"), status.condition("Failed")
        stall = self._stall
        if phase == "Failed" and failed is not None:
            stall = (failed.reason, failed.message)
        elif accepted is not None and accepted.status == "False":
            stall = (accepted.reason, accepted.message)
        if stall is not None:
            self.condition("Stalled", "True", *stall)
        else:
            self.condition("Stalled", "False", phase, "")
        busy = stall is None and phase in ("Pending", "Running")
        self.condition("Reconciling", "True" if busy else "False", phase, f"{status.progress} shards finished")
        if phase == "Succeeded":
            complete = status.condition("Complete")
            self.condition("Ready", "True", "Completed", complete.message if complete else "")
        else:
            self.condition("Ready", "False", phase, f"{status.progress} shards finished")

    # 1. accept ----------------------------------------------------------------------------------
    def accept(self, acceptance: Acceptance | None) -> bool:
        """True once acceptance is persisted; until then records the verdict and plans nothing else."""
        accepted = self.old.condition("Accepted")
        if accepted is not None and accepted.status == "True":
            return True
        if acceptance is None:
            raise ValueError("an unaccepted batch needs an Acceptance to plan")
        if not acceptance.ok:
            self.condition("Accepted", "False", acceptance.reason, acceptance.message)
            self.status.phase = "Pending"
            if accepted is None or accepted.reason != acceptance.reason or accepted.message != acceptance.message:
                self.out.events.append(Event("Warning", acceptance.reason, acceptance.message))
            self.out.wake_in(ACCEPTANCE_RECHECK_SECONDS)
            return False
        total = shard_count(acceptance.item_count, self.spec.shard_size)
        if self.spec.rerun is not None:
            # A manifest applied again with the rerun it carried: that rerun was for an earlier batch.
            self.status.rerun = RerunStatus(id=self.spec.rerun.id)
        self.status.item_count = acceptance.item_count
        self.status.payload_digest = acceptance.payload_digest
        self._results_status()
        self.status.shards = ShardCounts(total=total, pending=total)
        self.condition(
            "Accepted", "True", "Accepted",
            f"{acceptance.item_count} items in {total} shards of up to {self.spec.shard_size}",
        )  # fmt: skip
        # Launch only once acceptance (and so the item count) is persisted: a later pass must
        # never re-accept from a source that may have changed meanwhile.
        self.out.wake_in(0)
        return False

    # 1b. rerun ------------------------------------------------------------------------------------
    def rerun(self, jobs: Sequence[ShardJob], total: int, seen: Survey) -> bool:
        """Start the rerun ``spec.rerun`` asks for, if it is new and the batch has finished.

        Returns True when this pass starts it: it only records the rerun, and launches nothing until
        that is persisted (as with acceptance), so a later pass never starts a rerun twice. The rerun
        runs the chosen failed shards and every shard the batch never finished (it failed before
        they ran), all from one first attempt above every attempt so far: Job names are never reused.
        """
        want, done, old = self.spec.rerun, self.old.rerun, self.old
        waiting = old.condition("Rerunning")
        if want is None or (done is not None and done.id == want.id):
            if waiting is not None and waiting.reason == "WaitingForBatchToFinish":
                self.condition("Rerunning", "False", "Withdrawn", "spec.rerun no longer asks for a rerun")
            return False
        # Finished, every pod gone (no shard may run twice at once), every success recorded (none
        # may run again).
        finished = old.phase in TERMINAL_PHASES
        stopping = any(not j.finished or j.active or j.terminating for j in jobs)
        if not finished or stopping or seen.unrecorded:
            message = f"rerun {want.id} starts once the batch has finished"
            if waiting is None or waiting.message != message:
                self.out.events.append(Event("Normal", "RerunWaiting", message))
            self.condition("Rerunning", "False", "WaitingForBatchToFinish", message)
            if finished:
                self.out.wake_in(STOPPING_RECHECK_SECONDS)  # the reconciler must not end meanwhile
            return False
        succeeded = IndexRanges.parse(old.succeeded_shards)
        failed = IndexRanges.parse(old.failed_shards)
        try:
            named = None if want.shards is None else IndexRanges.parse(want.shards)
        except ValueError:  # "9-3": the pattern cannot say lo <= hi
            self._refuse_rerun("InvalidShards", f"rerun {want.id}: shards {str(want.shards)[:100]!r} are not ranges")
            return False
        chosen = failed if named is None else failed.difference(failed.difference(named))
        everything = IndexRanges([(0, total - 1)]) if total else IndexRanges()
        unfinished = everything.difference(succeeded).difference(failed)
        shards = chosen.union(unfinished)
        start = self._attempt_ceiling(jobs) + 1
        staying = failed.difference(chosen)
        refusal = None
        if not shards:
            refusal = ("NothingToRerun", f"rerun {want.id}: none of the shards it names failed" if want.shards
                       else f"rerun {want.id}: no shard failed")  # fmt: skip
        elif len(staying) > self.spec.max_failed_shards:
            refusal = (
                "WouldFailAgain",
                f"rerun {want.id}: {len(staying)} failed shards it leaves alone are more than maxFailedShards "
                f"({self.spec.max_failed_shards}); the batch would fail again at once",
            )
        elif start + self.spec.retry.limit > MAX_ATTEMPT:
            refusal = (
                "AttemptsExhausted",
                f"rerun {want.id}: its attempts ({start} to {start + self.spec.retry.limit}) would pass "
                f"{MAX_ATTEMPT}, the most Job names have room for; create a new JobBatch",
            )
        if refusal is not None:
            self._refuse_rerun(*refusal)
            return False
        self.status.rerun = RerunStatus(
            id=want.id,
            shards=len(shards),
            first_attempt=start,
            start_time=self.now,
            count=(done.count if done is not None else 0) + 1,
        )
        self.status.highest_attempt = start - 1
        self.succeeded, self.failed = succeeded, staying
        self.status.failed_shards = str(staying)
        self.status.failures = [f for f in self.status.failures if f.shard not in chosen]
        self._forget_failed_items(chosen)
        self.status.phase = "Running"
        self.status.completion_time = None
        parts = [f"{_shards(chosen, 'failed')} ({_brief(chosen)})"] if chosen else []
        if unfinished:
            parts.append(f"{_shards(unfinished, 'unfinished')} ({_brief(unfinished)})")
        message = f"rerun {want.id}: running {' and '.join(parts)} again, from attempt {start}"
        self.condition("Rerunning", "True", "Rerunning", message)
        for ctype in ("Complete", "Failed"):
            if self.status.condition(ctype) is not None:
                self.condition(ctype, "False", "Rerun", message)
        self.condition("Running", "True", "Rerun", message)
        self.out.events.append(Event("Normal", "Rerun", message))
        self.out.wake_in(0)
        return True

    def _forget_failed_items(self, shards: IndexRanges) -> None:
        """A rerun runs these shards whole again: their failed items (retry.isolate) are no longer known."""
        status = self.status
        if not status.failed_item_count:
            return
        size, items = self.spec.shard_size, status.item_count or 0
        theirs = IndexRanges((lo * size, min((hi + 1) * size, items) - 1) for lo, hi in shards.intervals)
        listed = IndexRanges.parse(status.failed_items)
        kept = listed.difference(theirs)
        # Items past the listed ranges are not known one by one: the count drops by what the list shows.
        status.failed_item_count = max(len(kept), status.failed_item_count - (len(listed) - len(kept)))
        status.failed_items = str(kept)
        status.item_failures = [f for f in status.item_failures if f.shard not in shards]

    def _refuse_rerun(self, reason: str, message: str) -> None:
        """Record the rerun as answered (so it is refused once), with nothing run."""
        want, done = self.spec.rerun, self.old.rerun
        assert want is not None
        self.status.rerun = RerunStatus(
            id=want.id,
            first_attempt=self.base,  # unchanged: no attempt of this rerun exists
            start_time=done.start_time if done is not None else None,
            count=done.count if done is not None else 0,
        )
        self.condition("Rerunning", "False", reason, message)
        self.out.events.append(Event("Warning", reason, message))

    def _attempt_ceiling(self, jobs: Sequence[ShardJob]) -> int:
        """The highest attempt any Job of the batch has had, as far as it can be known.

        Released Jobs are gone, but a Job is released only after a status that counted it was
        persisted. A batch started before ``highestAttempt`` was recorded may have had any attempt up
        to the largest retry limit.
        """
        recorded = self.old.highest_attempt
        if recorded is None:
            recorded = MAX_RETRY_LIMIT if self.old.start_time is not None else -1
        return max([recorded, self.base - 1, *(j.attempt for j in jobs)])

    def note_attempts(self, jobs: Sequence[ShardJob]) -> None:
        """Keep ``highestAttempt`` at or above every Job observed or about to be created."""
        ceiling = max([self._attempt_ceiling(jobs), *(c.attempt for c in self.out.create)])
        if ceiling >= 0:
            self.status.highest_attempt = max(ceiling, self.status.highest_attempt or 0)

    def _results_status(self) -> ResultsStatus | None:
        """``status.results`` of a batch with ``spec.results`` (made on first need: where the pages are)."""
        if self.spec.results is None:
            return None
        if self.status.results is None:
            self.status.results = ResultsStatus(
                config_map_prefix=naming.results_configmap_prefix(self.batch.name, self.batch.uid),
                shards_per_page=shards_per_page(self.spec.results.max_bytes),
            )
        return self.status.results

    # 1c. isolate poison items -------------------------------------------------------------------
    def isolate(self, seen: Survey, fates: ShardFates, failures: Mapping[tuple[int, int, int], PodFailure]) -> None:
        """Where each shard run in pieces stands; shards failed for good start their pieces (retry.isolate)."""
        items = self.status.item_count or 0
        grace = datetime.timedelta(seconds=POD_GRACE_SECONDS)
        for shard, jobs in seen.pieces.items():
            state = isolation.assess(
                shard, item_range(shard, self.spec.shard_size, items), jobs, failures, self.now, grace
            )
            self.isolations[shard] = state
            if state.look_again is not None:
                self.out.wake_in((state.look_again - self.now).total_seconds())
        for failed, failure in fates.split:
            if failed.shard in self.isolations:  # its pieces exist already (a stale whole-shard failure)
                continue
            state = isolation.Isolation(failed.shard, failed.attempt + 1, wanted=list(isolation.halves(isolation.ROOT)))
            state.causes[isolation.ROOT] = (failed.reason, failed.exit_code)
            self.isolations[failed.shard] = state
            self.splits[failed.shard] = (failed, failure)
        for shard, state in sorted(self.isolations.items()):
            if not state.finished:
                self.pieces_wanted += [
                    (shard, state.attempt, node, state.causes.get(node // 2, ("Failed", None))) for node in state.wanted
                ]

    @property
    def tainted(self) -> IndexRanges:
        """Shards being isolated that already have a failed item: failed, whatever their other pieces do."""
        return IndexRanges.of(
            s for s, st in self.isolations.items() if st.failed and not st.finished and s not in self.stopped
        )

    def _shard_event(self, event: Event) -> None:
        """An Event about one shard, unless this pass has posted enough of them (a mass failure)."""
        if self.shard_events < MAX_SHARD_EVENTS_PER_PASS:
            self.shard_events += 1
            self.out.events.append(event)

    def _record_isolated(self, states: Iterable[isolation.Isolation]) -> tuple[IndexRanges, IndexRanges]:
        """Record shards whose isolation ended (or must end): returns (shards all of whose items succeeded, failed).

        A shard with a failed piece is failed (maxFailedShards counts shards); its failed items go to
        status.failedItems and the first pieces' messages to status.itemFailures.
        """
        ok, bad = [], []
        status = self.status
        listed = IndexRanges.parse(status.failed_items)
        for state in states:
            if not state.failed:
                ok.append(state.shard)
                self._shard_event(
                    Event("Normal", "ItemsSucceeded", f"shard {state.shard}: every item succeeded when run apart")
                )
                continue
            bad.append(state.shard)
            found = state.failed_items
            listed = listed.union(found)
            status.failed_item_count += len(found)
            for piece in state.failed:
                if len(status.item_failures) >= MAX_RECORDED_FAILURES:
                    break
                status.item_failures.append(
                    ItemFailure(
                        items=str(IndexRanges([(piece.items[0], piece.items[1] - 1)])),
                        shard=state.shard,
                        attempt=state.attempt,
                        exit_code=piece.exit_code,
                        reason=piece.reason,
                        message=piece.message[:MAX_FAILURE_MESSAGE],
                    )
                )
            first = state.failed[0]
            code = f", exit code {first.exit_code}" if first.exit_code is not None else ""
            said = f": {first.message}" if first.message else ""
            message = (
                f"{_items(found)} failed when run apart ({_brief(found)}); the others succeeded. "
                f"First: items {first.items[0]}-{first.items[1] - 1} ({first.reason}{code}){said}"
            )
            if state.systemic:
                message = (
                    f"every eighth of its items failed the same way when run apart, so the failure is taken to be "
                    f"the worker's or its environment's, not its items' (a worker must read only "
                    f"JOBBATCH_ITEM_START to JOBBATCH_ITEM_END when they are set); the eighths were not split "
                    f"further. First: items {first.items[0]}-{first.items[1] - 1} ({first.reason}{code}){said}"
                )
            failure = ShardFailure(
                shard=state.shard,
                attempt=state.attempt,
                exit_code=first.exit_code,
                reason="NotItemSpecific" if state.systemic else "ItemsFailed",
                message=message[:MAX_FAILURE_MESSAGE],
            )
            self.status.failures = [*self.status.failures, failure][-MAX_RECORDED_FAILURES:]
            # Each piece failed for good is a failed attempt (a split one was counted when its halves started).
            self.out.final_failures += [(piece.reason, piece.exit_code) for piece in state.failed]
            self._shard_event(Event("Warning", "ItemsFailed", f"shard {state.shard}: {message}"))
        status.failed_items = str(IndexRanges(listed.intervals[:MAX_FAILED_ITEM_RANGES]))
        return IndexRanges.of(ok), IndexRanges.of(bad)

    # 2. record shard outcomes ---------------------------------------------------------------------
    def record(self, seen: Survey, fates: ShardFates, collected: Mapping[str, Collected] | None = None) -> None:
        self._record_results(seen.succeeded, collected or {})
        self.out.final_failures = [(f.reason, f.exit_code) for f in fates.final]
        ok, bad = self._record_isolated(s for s in self.isolations.values() if s.finished)
        self.succeeded = seen.recorded_succeeded.union(seen.succeeded).union(ok)
        self.failed = seen.recorded_failed.union(f.shard for f in fates.new_failures).union(bad)
        self.status.succeeded_shards = str(self.succeeded)
        self.status.failed_shards = str(self.failed)
        if fates.new_failures:
            self.status.failures = (self.status.failures + fates.new_failures)[-MAX_RECORDED_FAILURES:]
            for f in fates.new_failures[:MAX_SHARD_EVENTS_PER_PASS]:
                self.out.events.append(
                    Event("Warning", "ShardFailed", f"shard {f.shard} failed permanently: {f.message}")
                )
        if fates.next_due is not None:
            self.out.wake_in((fates.next_due - self.now).total_seconds())
        if seen.look_again is not None:
            self.out.wake_in((seen.look_again - self.now).total_seconds())
        fates.waiting += seen.undecided  # counted as retrying until decided

    def _record_results(self, newly: IndexRanges, collected: Mapping[str, Collected]) -> None:
        """Count the results of the successes this pass records: stored, or missing (and why)."""
        results = self._results_status()
        if results is None or not newly:
            return
        missing = IndexRanges()
        errors = list(results.errors)
        for done in collected.values():
            missing = missing.union(done.missing.intersection(newly))
            errors += [e for e in done.errors if e.shard in newly]
        listed = IndexRanges.parse(results.missing_shards).union(missing)
        results.missing_shards = str(IndexRanges(listed.intervals[:MAX_MISSING_RANGES]))
        results.missing += len(missing)
        results.stored += len(newly) - len(missing)
        results.errors = errors[-MAX_ERRORS:]

    # 2b. collect results --------------------------------------------------------------------------
    def collect_results(self, seen: Survey, collected: Mapping[str, Collected]) -> None:
        """Ask for the results of Jobs whose successes wait for them (see RESULTS_COLLECT_SECONDS)."""
        at_once = self.old.phase in TERMINAL_PHASES or self.status.phase in TERMINAL_PHASES or self.spec.suspend
        for job, shards in seen.uncollected:
            if not job.confirmed or not job.uid:
                continue
            last = collected[job.uid].at if job.uid in collected else job.started_at
            # A big Job is listed less often: each list reads all its succeeded pods so far.
            every = max(RESULTS_COLLECT_SECONDS, job.count * RESULTS_SECONDS_PER_SHARD)
            due = None if last is None else last + datetime.timedelta(seconds=every)
            if at_once or job.finished or job.deleting or (due is not None and self.now >= due):
                self.out.results.append(CollectResults(job.name, job.uid, shards))
            elif due is not None:
                self.out.wake_in((due - self.now).total_seconds())

    # 3. the batch's fate --------------------------------------------------------------------------
    def decide_batch(self, total: int) -> None:
        if self.old.phase in TERMINAL_PHASES:
            return
        succeeded, failed = self.succeeded, self.failed
        # A shard still run in pieces fails the batch as soon as one of its items failed (it is failed
        # whatever its other pieces do), but it finishes only once they have run.
        doomed = failed.union(self.tainted)
        limit = self.spec.max_failed_shards
        deadline = self.spec.active_deadline_seconds
        rerun = self.status.rerun
        after = f" (after rerun {rerun.id})" if rerun is not None and rerun.shards else ""
        if len(succeeded) + len(failed) >= total and len(failed) <= limit:
            msg = f"{len(succeeded)} of {total} shards succeeded"
            if failed:
                msg += f", {len(failed)} failed (tolerated: maxFailedShards {limit})"
            msg += after
            self.terminate("Succeeded", "Completed", msg)
            self.out.events.append(Event("Normal", "Completed", msg))
        elif len(doomed) > limit:
            self.stop_isolations()  # their failures first, for the message
            msg = (
                f"{len(self.failed)} shards failed permanently (maxFailedShards {limit}){after}: "
                + _describe_failures(self.status.failures)
            )
            self.terminate("Failed", "ShardsFailed", msg)
            self.out.events.append(Event("Warning", "Failed", msg))
        elif (
            deadline is not None
            and (began := self.status.began()) is not None
            and self.now >= began + datetime.timedelta(seconds=deadline)
        ):
            msg = f"the batch ran past its activeDeadlineSeconds ({deadline}s){after}"
            self.terminate("Failed", "DeadlineExceeded", msg)
            self.out.events.append(Event("Warning", "Failed", msg))

    def stop_isolations(self) -> None:
        """Shards still run in pieces stop with the batch: one with a failed piece is recorded failed, with
        the bad items found so far and the pieces that would have been split failed whole (its pieces
        are kept until that is persisted); one whose pieces this
        pass would have started is recorded with the failure that started it; the others stay
        unfinished, as any shard a finished batch did not finish."""
        tainted = [
            dataclasses.replace(s, failed=sorted([*s.failed, *s.splitting], key=lambda p: p.items))
            for s in self.isolations.values()
            if (s.failed or s.splitting) and not s.finished and s.shard not in self.stopped
        ]
        if tainted:
            _, bad = self._record_isolated(tainted)
            self.failed = self.failed.union(bad)
        unstarted = [self.splits[s] for s in sorted(self.splits) if s not in self.stopped]
        for failed, failure in unstarted:
            self.failed = self.failed.union([failed.shard])
            self.status.failures = [*self.status.failures, failure][-MAX_RECORDED_FAILURES:]
            self.out.final_failures.append((failed.reason, failed.exit_code))
            self._shard_event(
                Event("Warning", "ShardFailed", f"shard {failure.shard} failed permanently: {failure.message}")
            )
        self.stopped.update(s.shard for s in tainted)
        self.stopped.update(failed.shard for failed, _ in unstarted)
        self.status.failed_shards = str(self.failed)

    def terminate(self, phase: Literal["Succeeded", "Failed"], reason: str, message: str) -> None:
        self.stop_isolations()
        self.status.phase = phase
        self.status.completion_time = self.now
        self.condition("Complete" if phase == "Succeeded" else "Failed", "True", reason, message)
        self.condition("Running", "False", reason, message)
        rerunning = self.status.condition("Rerunning")
        if rerunning is not None and rerunning.status == "True":
            self.condition("Rerunning", "False", phase, message)

    # 4. clean up: only for outcomes already persisted ---------------------------------------------
    def clean_up(self, jobs: Sequence[ShardJob], seen: Survey) -> list[ShardJob]:
        """Release (and delete) the Jobs that no longer matter; returns the ones that still do."""
        was_terminal = self.old.phase in TERMINAL_PHASES
        recorded = seen.recorded
        holding_failures = sorted(
            (j for j in jobs if j.failed or j.lost),
            key=lambda j: (j.finished_at or self.now, j.first, j.attempt),
            reverse=True,
        )
        keep = {j.name for j in holding_failures[: self.spec.failed_jobs_history_limit]}
        # Jobs that ran their shards without a failure, kept whole (pods and logs) on request.
        successful = sorted(
            (j for j in jobs if j.finished and j.succeeded and not j.failed and not j.lost and not j.pods_collected),
            key=lambda j: (j.finished_at or self.now, j.first, j.attempt),
            reverse=True,
        )
        keep_whole = {j.name for j in successful[: self.spec.successful_jobs_history_limit]}
        live = []
        for job in jobs:
            if job.attempt < self.base:
                # Before the rerun: every shard it ran is recorded or the rerun's to run again.
                done = True
            elif was_terminal:
                # Its pods are stopped first (suspended, then gone: a rerun must not start beside
                # them), and a success seen after the terminal write is recorded first.
                quiet = not job.active and not job.terminating and (job.finished or job.suspended or job.deleting)
                if job.node:  # a piece: kept while its shard's outcome is being recorded
                    state = self.isolations.get(job.first)
                    ending = state is not None and (state.finished or job.first in self.stopped)
                    # A failed piece whose pod is not seen yet: decided (and recorded) in a later pass.
                    ending = ending or (state is not None and bool(job.failed) and state.busy > 0)
                    done = quiet and (job.first in seen.recorded or not ending)
                else:
                    done = quiet and not job.succeeded.difference(seen.recorded_succeeded)
            else:
                done = self._done_with(job, seen, recorded)
            if not done:
                live.append(job)
                if self._worth_collecting(job, seen):
                    self.out.collect.append(CollectPods(job.name))
                continue
            unneeded = job.finished and job.name not in keep and job.name not in keep_whole
            delete = (unneeded or not job.finished or job.lost) and not job.deleting
            if job.has_finalizer:
                collect = not delete and not job.deleting and bool(job.succeeded) and job.name not in keep_whole
                self.out.release.append(ReleaseJob(job.name, job.finalizers, collect_pods=collect))
            if delete:
                self.out.delete.append(DeleteJob(job.name))
        return live

    @staticmethod
    def _worth_collecting(job: ShardJob, seen: Survey) -> bool:
        """A finished Job kept only for a shard waiting out its retry backoff, or a piece of a shard being
        isolated that succeeded: its succeeded pods can go.

        (Their outcomes are in its status; the Job itself stays until the retry exists, or all the
        shard's pieces have run.)
        """
        return (
            job.finished
            and job.confirmed
            and not job.pods_collected
            and not job.deleting
            and bool(job.succeeded)
            and (job.node > 0 or not job.succeeded.difference(seen.recorded_succeeded))
        )

    @staticmethod
    def _done_with(job: ShardJob, seen: Survey, recorded: IndexRanges) -> bool:
        """Every shard this Job ran is recorded, superseded by a newer attempt, or outside the batch."""
        outside = IndexRanges([(seen.total, 2**62)])
        rest = job.shards.difference(recorded).difference(outside)
        if len(rest) > len(seen.newest_confirmed):
            return False
        return all(seen.superseded(job, shard) for shard in rest)

    # 5. dispatch ------------------------------------------------------------------------------------
    def dispatch(
        self, live: list[ShardJob], seen: Survey, fates: ShardFates, launch_budget: int | None, hold: bool = False
    ) -> tuple[int, int]:
        """Stop, shrink or share out slots; returns (slots held after the plan, retries left waiting).

        ``hold``: the payload snapshot is gone or replaced, so no pod may start (a new one would read
        someone else's items): the batch's Jobs are suspended, as by ``spec.suspend`` (no retry is
        used), until the snapshot is right again.
        """
        spec, status = self.spec, self.status
        total = seen.total
        running = [j for j in live if not j.finished and not j.deleting]
        held = sum(j.slots for j in live)
        if status.phase in TERMINAL_PHASES:
            # Stop what still runs; the Jobs are released once the terminal status is persisted and
            # their pods are gone (the reconciler must not end before).
            self.out.suspend += [SuspendJob(j.name) for j in running if not j.suspended]
            if live and self.old.phase in TERMINAL_PHASES:
                self.out.wake_in(STOPPING_RECHECK_SECONDS)
            self._wake_for_ttl()
            return 0, 0
        if spec.suspend:
            stopping = [j for j in running if not j.suspended]
            self.out.suspend += [SuspendJob(j.name) for j in stopping]
            if status.phase != "Suspended":
                self.out.events.append(Event("Normal", "Suspended", f"suspended; stopping {len(stopping)} shard Jobs"))
            status.phase = "Suspended"
            self.condition("Suspended", "True", "Suspended", "spec.suspend is true")
            self.condition("Running", "False", "Suspended", "spec.suspend is true")
            return 0, fates.waiting + len(fates.due)
        if hold:
            self._hold_back(running, "PayloadSnapshotLost", "no shard starts until the payload snapshot holds the "
                            "accepted items again; running ones were stopped (no retry used)")  # fmt: skip
            return 0, fates.waiting + len(fates.due)
        if spec.start_after is not None and self.now < spec.start_after:
            self.out.wake_in((spec.start_after - self.now).total_seconds())
            if not running and status.start_time is None:
                if self.old.condition("Suspended") is not None:
                    self.condition("Suspended", "False", "Resumed", "spec.suspend is false")
                status.phase = "Pending"
                return held, fates.waiting + len(fates.due)
            # Moved into the future once running: nothing may start before it, and a running Job's
            # controller would start its next indexes, so its Jobs stop as on suspend (no retry used).
            self._hold_back(running, "StartAfter", f"spec.startAfter is {spec.start_after.isoformat()}: no shard "
                            "starts before then; running ones were stopped (no retry used)")  # fmt: skip
            return 0, fates.waiting + len(fates.due)

        free = spec.parallelism - held
        if free < 0:
            self._shrink(running, sum(j.slots for j in live if j.suspended or j.deleting))
            granted = 0
            retries_left = fates.waiting + len(fates.due)
        else:
            budget = free if launch_budget is None else min(free, max(0, launch_budget))
            granted, retries_left, ready = self._share_out(running, seen, fates, budget, total, launch_budget)
            self.out.unmet_demand = max(0, min(free, ready) - budget)
        self._mark_running(held + granted, len(self.out.create) > 0 or bool(live))
        return held + granted, retries_left

    def _hold_back(self, running: list[ShardJob], reason: str, message: str) -> None:
        """No pod may start: stop the running Jobs as suspension does (no retry used) and say why."""
        self.out.suspend += [SuspendJob(j.name) for j in running if not j.suspended]
        self.status.phase = "Running" if self.status.start_time is not None else "Pending"
        self.condition("Running", "False", reason, message)
        if self.old.condition("Suspended") is not None:
            self.condition("Suspended", "False", "Resumed", "spec.suspend is false")

    def _shrink(self, running: list[ShardJob], others: int) -> None:
        """Lower the newest Jobs' parallelism until the slots parallelism controls fit in ``parallelism``.

        Two steps. *Stop*: pods beyond the ceiling are stopped, newest Jobs first (retry Jobs last).
        Pods already stopping cannot be stopped again, so they are not part of that excess (counting
        them would stop pods within the ceiling). *Freeze*: while pods stopping (these, or those of
        Jobs suspended or being deleted: ``others``) keep the batch above the ceiling, no Job keeps
        room to start a pod beyond those it runs. The Job controller counts only a Job's own stopping
        pods against its parallelism, so without this a Job could start pods beside another Job's
        stopping ones. A frozen Job (parallelism = its running pods, which stops none) can still
        replace a running pod of its own that ends: the batch's pod count never grows while it is
        above the ceiling and falls to it as the stopping pods end; the next passes give room back.
        """
        controlled = [j for j in running if not j.suspended]
        newest_first = sorted(controlled, key=lambda j: (j.attempt == self.base, j.first), reverse=True)
        to = {j.name: j.parallelism for j in controlled}
        excess = others + sum(min(j.parallelism, j.unfinished) for j in controlled) - self.spec.parallelism
        for job in newest_first:
            if excess <= 0:
                break
            using = min(job.parallelism, job.unfinished)
            lowered = max(0, using - excess)
            if lowered < job.parallelism and using > lowered:
                to[job.name] = lowered
                excess -= using - lowered
        # Pods stopping, now or by the step above, each still hold a slot.
        stopping = others + sum(j.terminating + max(0, j.active - to[j.name]) for j in controlled)
        over = stopping + sum(min(to[j.name], j.unfinished) for j in controlled) - self.spec.parallelism
        for job in newest_first:
            if over <= 0:
                break
            running_on = min(job.active, to[job.name])
            own = job.terminating + max(0, job.active - to[job.name])
            # Its own stopping pods hold its creates back (the Job controller counts them) unless other
            # Jobs' stopping pods may outlast them.
            room = min(to[job.name], job.unfinished) - running_on - (own if stopping == own else 0)
            if room > 0:
                to[job.name] = min(to[job.name], job.unfinished) - min(room, over)
                over -= min(room, over)
        self.out.scale += [
            ScaleJob(j.name, j.parallelism, to[j.name]) for j in newest_first if to[j.name] < j.parallelism
        ]

    def _share_out(
        self, running: list[ShardJob], seen: Survey, fates: ShardFates, budget: int, total: int, capped: int | None
    ) -> tuple[int, int, int]:
        """Give free slots to: suspended Jobs, due retries, Jobs short of slots, new chunks.

        Returns (slots granted, retries left waiting, slots the ready work could use).
        """
        granted = ready = 0
        name, uid = self.batch.name, self.batch.uid
        # Suspended Jobs (the batch was suspended, or a cap let them sit) are resumed first.
        for job in sorted((j for j in running if j.suspended), key=lambda j: (j.attempt, j.first)):
            want = job.unfinished
            ready += want
            give = min(want, budget - granted)
            if give > 0:
                self.out.resume.append(ResumeJob(job.name, give))
                granted += give
        retry_events = 0
        retries_left = fates.waiting
        for failed in fates.due:
            if not self._may_create():
                retries_left += 1  # not demand the cap should hold slots for: it could not use them
                continue
            ready += 1
            if granted >= budget:
                retries_left += 1
                continue
            attempt = failed.attempt + 1
            job_name = naming.job_name(name, uid, failed.shard, attempt)
            self.out.create.append(
                CreateJob(job_name, failed.shard, 1, attempt, 1, True, failed.reason, failed.exit_code)
            )
            self._probed = self.failed_create is not None
            granted += 1
            if retry_events < MAX_SHARD_EVENTS_PER_PASS:
                retry_events += 1
                why = failed.reason if failed.disrupted or failed.exit_code is None else f"exit code {failed.exit_code}"
                self.out.events.append(
                    Event(
                        "Normal",
                        "ShardRetrying",
                        f"retrying shard {failed.shard}: attempt {attempt}{self._of_limit(attempt)} "
                        f"after attempt {failed.attempt} failed ({why})",
                        on_status=False,
                    )
                )
        # Pieces of shards being isolated (retry.isolate): one slot each, as a retry.
        for shard, attempt, node, (cause, code) in self.pieces_wanted:
            if not self._may_create():
                retries_left += 1
                self.pieces_deferred += 1
                continue
            ready += 1
            if granted >= budget:
                retries_left += 1
                self.pieces_deferred += 1
                continue
            job_name = naming.piece_job_name(name, uid, shard, attempt, node)
            # The lower half counts its parent's failure (as a retry does), once per split.
            split = node % 2 == 0
            self.out.create.append(CreateJob(job_name, shard, 1, attempt, 1, split, cause, code, node=node))
            if node == 2 * isolation.ROOT:
                lo, hi = item_range(shard, self.spec.shard_size, self.status.item_count or 0)
                why = f"exit code {code}" if code is not None else cause
                self._shard_event(
                    Event(
                        "Normal",
                        "IsolatingItems",
                        f"shard {shard} failed for good ({why}); running its items {lo}-{hi - 1} in halves to "
                        "find the bad ones",
                        on_status=False,
                    )
                )
            self._probed = self.failed_create is not None
            granted += 1
        # Jobs with indexes still to start and fewer slots than that: retry Jobs, then chunks in order.
        for job in sorted((j for j in running if not j.suspended), key=lambda j: (j.attempt == self.base, j.first)):
            short = job.unfinished - max(job.parallelism, job.active + job.terminating)
            if short <= 0:
                continue
            ready += short
            give = min(short, budget - granted)
            if give > 0:
                self.out.scale.append(ScaleJob(job.name, job.parallelism, job.parallelism + give))
                granted += give
        # New chunks over the lowest shards no Job has covered yet. Under a cluster-wide cap a chunk
        # holds only the shards it is granted slots for: a Job refills its own slots as its pods
        # finish, and under a cap every freed slot must go back to the dispatcher, which may owe it
        # to a batch of higher priority.
        started = seen.covered.union(seen.recorded)
        size = chunk_size(self.spec.parallelism)
        for lo, hi in started.gaps(0, total):
            while lo <= hi:
                if not self._may_create():
                    return granted, retries_left, ready
                left = budget - granted
                if left <= 0:  # the rest is demand this pass cannot meet
                    ready += len(IndexRanges([(lo, total - 1)]).difference(started))
                    return granted, retries_left, ready
                count = min(size if capped is None else min(size, left), hi - lo + 1)
                ready += count
                give = min(count, left)
                base = self.base  # first attempts, or the rerun's
                self.out.create.append(CreateJob(naming.job_name(name, uid, lo, base), lo, count, base, give))
                self._probed = self.failed_create is not None
                granted += give
                lo += count
        return granted, retries_left, ready

    def _of_limit(self, attempt: int) -> str:
        """ " of 4" (attempts the retry limit allows); in a rerun " (retry 1 of 3 in rerun X)"."""
        limit = self.spec.retry.limit
        if not self.base or self.status.rerun is None:
            return f" of {limit + 1}"
        return f" (retry {attempt - self.base} of {limit} in rerun {self.status.rerun.id})"

    def _may_create(self) -> bool:
        """Whether this pass may send one more Job create.

        While creates fail, the batch backs off (the backoff of its most recent failure) and then
        probes with one create per pass: never a hot loop of refused calls that starves other
        batches of the operator's API rate.
        """
        self.out.creates_wanted = True
        if self.failed_create is None:
            return True
        due = self.failed_create.retry_at
        if self.now < due:
            self.out.wake_in((due - self.now).total_seconds())
            return False
        return not self._probed

    def report_failed_creates(self) -> None:
        """``Stalled=True, reason=FailedCreate`` and a ``FailedCreate`` Event while the API server refuses our Jobs."""
        old = self.old.condition("Stalled")
        refused = self.failed_create
        if refused is not None and self.out.creates_wanted:
            why = (
                f"creating Job {refused.job} failed ({refused.failures} refusals in a row), retrying with "
                f"backoff: {refused.message}"
            )
            self._stall = ("FailedCreate", why)
            if old is None or old.status != "True" or not old.message.endswith(refused.message):
                self.out.events.append(
                    Event("Warning", "FailedCreate", f"creating Job {refused.job}: {refused.message}")
                )

    def report_stall(self, reason: str, message: str) -> None:
        """``Stalled=True`` for a reason the planner cannot fix; a Warning Event when it first says so."""
        old = self.old.condition("Stalled")
        self._stall = (reason, message)
        if old is None or old.status != "True" or old.reason != reason:
            self.out.events.append(Event("Warning", reason, message))

    def _mark_running(self, slots: int, started: bool) -> None:
        status, old = self.status, self.old
        if status.start_time is None and started:
            status.start_time = self.now
            self.out.events.append(
                Event(
                    "Normal",
                    "Started",
                    f"launching {status.shards.total} shards, parallelism {self.spec.parallelism}",
                )
            )
        if status.phase == "Suspended":
            self.out.events.append(Event("Normal", "Resumed", "spec.suspend is false; launching again"))
        if status.start_time is not None:
            status.phase = "Running"
            self.condition("Running", "True", "Running", f"{slots} shards running")
        else:
            status.phase = "Pending"
        if old.condition("Suspended") is not None:
            self.condition("Suspended", "False", "Resumed", "spec.suspend is false")
        deadline, began = self.spec.active_deadline_seconds, self.status.began()
        if deadline is not None and began is not None:
            ends = began + datetime.timedelta(seconds=deadline)
            self.out.wake_in((ends - self.now).total_seconds())

    def _wake_for_ttl(self) -> None:
        status, ttl = self.status, self.spec.ttl_seconds_after_finished
        was_terminal = self.old.phase in TERMINAL_PHASES
        if status.completion_time is not None and ttl is not None:
            expires = status.completion_time + datetime.timedelta(seconds=ttl)
            if self.now >= expires and was_terminal:  # only once the outcome is persisted
                self.out.delete_batch = True
            else:
                self.out.wake_in((expires - self.now).total_seconds())
        if not was_terminal:
            self.out.wake_in(0)  # persist, then release in the next pass

    # 6. counts ------------------------------------------------------------------------------------
    def count_pieces_as_shards(self, live: Sequence[ShardJob], running: int, retrying: int) -> tuple[int, int]:
        """(running, retrying) with each shard run in pieces counted once, not once per piece: running if
        a piece of it holds a slot, else retrying (its pieces wait for slots, or for their pods' verdict)."""
        pieces = [j for j in live if j.node]
        creates = [c for c in self.out.create if c.node]
        # Pieces this pass gives slots again (resumed, or raised from 0): dispatch counted those grants.
        grants = {r.name: r.parallelism for r in self.out.resume}
        grants |= {x.name: x.to - x.current for x in self.out.scale if x.to > x.current}
        regranted = [j for j in pieces if grants.get(j.name, 0) > 0 and not j.slots]
        held = sum(j.slots for j in pieces) + len(creates) + sum(grants[j.name] for j in regranted)
        isolating = {s for s, st in self.isolations.items() if not st.finished and s not in self.stopped}
        busy = {j.first for j in pieces if j.slots} | {c.first for c in creates} | {j.first for j in regranted}
        active = busy & isolating
        running += len(active) - held
        retrying += len(isolating - active) - self.pieces_deferred
        return max(0, running), max(0, retrying)

    def count(self, total: int, running: int, retrying: int) -> None:
        succeeded, failed = len(self.succeeded), len(self.failed)
        terminal = self.status.phase in TERMINAL_PHASES
        running = 0 if terminal else running
        retrying = 0 if terminal else retrying
        self.status.shards = ShardCounts(
            total=total,
            running=running,
            retrying=retrying,
            succeeded=succeeded,
            failed=failed,
            pending=max(0, total - succeeded - failed - running - retrying),
        )


def plan(
    batch: Batch,
    observed: Sequence[ShardJob],
    now: datetime.datetime,
    *,
    failures: Mapping[tuple[int, int, int], PodFailure] | None = None,
    acceptance: Acceptance | None = None,
    launch_budget: int | None = None,
    failed_create: FailedCreate | None = None,
    snapshot_lost: str | None = None,
    queue_held: tuple[str, str] | None = None,
    collected: Mapping[str, Collected] | None = None,
    results_stall: str | None = None,
) -> Plan:
    """Decide everything one reconcile pass does.

    ``failures`` holds the failed worker pods by (shard, attempt); ``launch_budget`` caps the slots
    this pass may grant (the cluster-wide cap); ``failed_create`` says the API server refuses
    the batch's Job creates, until one succeeds; ``snapshot_lost`` says why the payload snapshot
    is gone for good (its pods cannot start); ``queue_held`` says (reason, message) why the batch's queue holds it
    (the reconciler gives it no budget then); ``collected`` says, by Job UID, what this process stored
    of the Jobs' results (read only with ``spec.results``); ``results_stall`` says why results cannot be
    stored (collections keep failing: their shards wait, Stalled says so).
    """
    step = _Pass(batch, now, failed_create)
    if not step.accept(acceptance):
        return step.finish()
    assert batch.status.item_count is not None
    total = shard_count(batch.status.item_count, batch.spec.shard_size)
    results = (collected or {}) if batch.spec.results is not None else None
    seen = survey(batch.status, observed, failures or {}, total, now, step.base, results)
    if step.rerun(observed, total, seen):
        step.count(total, 0, 0)
        return step.finish()
    fates = decide_shards(batch, seen.failed_attempts, now)
    step.isolate(seen, fates, failures or {})
    step.record(seen, fates, results)
    step.decide_batch(total)
    if batch.status.phase in TERMINAL_PHASES:
        step.stop_isolations()  # a bad item found after the end is still recorded
    step.collect_results(seen, results or {})
    live = step.clean_up(observed, seen)
    running, retrying = step.dispatch(live, seen, fates, launch_budget, hold=snapshot_lost is not None)
    running, retrying = step.count_pieces_as_shards(live, running, retrying)
    if step.status.phase not in TERMINAL_PHASES and not batch.spec.suspend:
        step.report_failed_creates()
        if snapshot_lost is not None:
            step.report_stall("PayloadSnapshotLost", snapshot_lost)
        elif queue_held is not None:
            step.report_stall(*queue_held)
    if results_stall is not None and step._stall is None:
        step.report_stall("ResultsNotStored", results_stall)
    step.note_attempts(observed)
    storing = len(seen.unrecorded) - len(seen.succeeded)  # succeeded, their results not stored yet
    step.out.storing = storing
    if step.status.results is not None:
        step.status.results.pending = storing
    step.count(total, running + storing, retrying)
    return step.finish()
