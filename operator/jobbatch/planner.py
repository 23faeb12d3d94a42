"""The reconcile decision, as a pure function: (batch, observed shard Jobs, now) -> Plan.

Nothing here talks to Kubernetes or reads a clock; ``jobbatch.reconciler`` gathers
the inputs and applies the plan. Every pass recomputes everything from the recorded
status and the observed Jobs (level-triggered), so a restarted operator, given the
same inputs, makes the same decision.

Invariants the plan keeps:
- A shard's outcome is written to ``status`` (``succeededShards``/``failedShards``)
  before its Job may disappear: the shard finalizer is only released for outcomes
  already in the *persisted* status, or for attempts superseded by an observed newer one.
- The latest attempt of every unfinished shard stays observable, so attempt numbers
  (and so Job names) are never reused.
- At most ``parallelism`` attempts run at once (unfinished, not suspended Jobs).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Iterable, Sequence
from typing import Literal

from jobbatch.api import TERMINAL_PHASES, Condition, JobBatchSpec, JobBatchStatus, ShardCounts, ShardFailure
from jobbatch.backoff import retry_delay
from jobbatch.observed import ShardJob
from jobbatch.ranges import IndexRanges

# How often an unaccepted batch re-checks what it waits for (a ConfigMap, a PriorityClass).
ACCEPTANCE_RECHECK_SECONDS = 10.0
# Events about individual shards posted per pass, so a mass failure cannot flood the API.
MAX_SHARD_EVENTS_PER_PASS = 5
MAX_RECORDED_FAILURES = 10


@dataclasses.dataclass(frozen=True)
class Acceptance:
    """Outcome of the checks only the operator can make (payloads, schema, PriorityClass)."""

    ok: bool
    reason: str
    message: str
    item_count: int = 0


@dataclasses.dataclass(frozen=True)
class Batch:
    """The planner's view of one JobBatch."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: JobBatchSpec
    status: JobBatchStatus


@dataclasses.dataclass(frozen=True)
class Launch:
    shard: int
    attempt: int


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
    create: list[Launch] = dataclasses.field(default_factory=list)
    suspend: list[str] = dataclasses.field(default_factory=list)
    resume: list[str] = dataclasses.field(default_factory=list)
    release: list[str] = dataclasses.field(default_factory=list)
    delete: list[str] = dataclasses.field(default_factory=list)
    events: list[Event] = dataclasses.field(default_factory=list)
    requeue_after: float | None = None
    delete_batch: bool = False
    # Shards ready to launch but held back by the cluster-wide cap (for priority dispatch).
    unmet_demand: int = 0

    def wake_in(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


def shard_count(item_count: int, shard_size: int) -> int:
    return math.ceil(item_count / shard_size)


def item_range(shard: int, shard_size: int, item_count: int) -> tuple[int, int]:
    """Half-open item range [start, end) of a shard."""
    start = shard * shard_size
    return start, min(start + shard_size, item_count)


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


def _failure_of(job: ShardJob, non_retryable: Sequence[int], limit: int) -> ShardFailure | None:
    """The permanent failure a failed attempt causes, or None if the shard may retry."""
    if job.exit_code is not None and job.exit_code in non_retryable:
        reason, message = (
            "NonRetryableExitCode",
            f"attempt {job.attempt} exited with non-retryable code {job.exit_code}",
        )
    elif job.attempt >= limit:
        code = f" (exit code {job.exit_code})" if job.exit_code is not None else ""
        reason = "RetriesExhausted"
        message = f"attempt {job.attempt} failed{code}: {job.reason}; no retries left (limit {limit})"
    else:
        return None
    return ShardFailure(shard=job.shard, attempt=job.attempt, exit_code=job.exit_code, reason=reason, message=message)


def _describe_failures(failures: Iterable[ShardFailure]) -> str:
    parts = []
    for f in failures:
        code = f", exit code {f.exit_code}" if f.exit_code is not None else ""
        parts.append(f"shard {f.shard} ({f.reason}{code})")
    return "; ".join(parts)


def plan(
    batch: Batch,
    observed: Sequence[ShardJob],
    now: datetime.datetime,
    *,
    acceptance: Acceptance | None = None,
    launch_budget: int | None = None,
) -> Plan:
    """Decide everything one reconcile pass does. ``launch_budget`` caps launches (cluster-wide cap)."""
    spec, old = batch.spec, batch.status
    status = old.model_copy(deep=True)
    status.observed_generation = batch.generation
    out = Plan(status=status)
    gen = batch.generation

    def finish(result: Plan) -> Plan:
        shards = result.status.shards
        result.status.progress = f"{shards.succeeded + shards.failed}/{shards.total}"
        result.status_changed = result.status.dump() != old.dump()
        return result

    # -- acceptance: checks only the operator can make, once ---------------------------------
    accepted = old.condition("Accepted")
    item_count = old.item_count
    if accepted is None or accepted.status != "True":
        if acceptance is None:
            raise ValueError("an unaccepted batch needs an Acceptance to plan")
        if not acceptance.ok:
            status.conditions = set_condition(
                status.conditions, "Accepted", "False", acceptance.reason, acceptance.message, now, gen
            )
            status.phase = "Pending"
            if accepted is None or accepted.reason != acceptance.reason or accepted.message != acceptance.message:
                out.events.append(Event("Warning", acceptance.reason, acceptance.message))
            out.wake_in(ACCEPTANCE_RECHECK_SECONDS)
            return finish(out)
        item_count = acceptance.item_count
        total = shard_count(item_count, spec.shard_size)
        status.item_count = item_count
        status.shards = ShardCounts(total=total, pending=total)
        status.conditions = set_condition(
            status.conditions, "Accepted", "True", "Accepted",
            f"{item_count} items in {total} shards of up to {spec.shard_size}", now, gen,
        )  # fmt: skip
        # Launch only once acceptance (and so the item count) is persisted: a later pass must
        # never re-accept from a source that may have changed meanwhile.
        out.wake_in(0)
        return finish(out)
    assert item_count is not None
    total = shard_count(item_count, spec.shard_size)

    # -- what the observed Jobs say -----------------------------------------------------------
    persisted_succeeded = IndexRanges.parse(old.succeeded_shards)
    persisted_failed = IndexRanges.parse(old.failed_shards)
    succeeded = persisted_succeeded
    failed = persisted_failed
    latest: dict[int, ShardJob] = {}
    for job in observed:
        if job.shard not in latest or job.attempt > latest[job.shard].attempt:
            latest[job.shard] = job

    new_succeeded: list[int] = []
    new_failures: list[ShardFailure] = []
    running: list[ShardJob] = []
    parked: list[ShardJob] = []  # suspended attempts: resumed before anything new starts
    retry_due: list[ShardJob] = []
    retrying = 0
    for shard, job in sorted(latest.items()):
        if shard in succeeded or shard in failed or shard >= total:
            continue
        if job.state == "succeeded":
            new_succeeded.append(shard)
        elif job.state == "failed":
            failure = _failure_of(job, spec.retry.non_retryable_exit_codes, spec.retry.limit)
            if failure is not None:
                new_failures.append(failure)
                continue
            retrying += 1
            failed_at = job.finished_at or now
            due = failed_at + datetime.timedelta(seconds=retry_delay(spec.retry.backoff, batch.uid, shard, job.attempt))
            if due <= now:
                retry_due.append(job)
            else:
                out.wake_in((due - now).total_seconds())
        elif job.state == "active":
            running.append(job)
        else:
            parked.append(job)
    succeeded = succeeded.union(new_succeeded)
    failed = failed.union(f.shard for f in new_failures)
    status.succeeded_shards = str(succeeded)
    status.failed_shards = str(failed)
    if new_failures:
        status.failures = (status.failures + new_failures)[-MAX_RECORDED_FAILURES:]
        for f in new_failures[:MAX_SHARD_EVENTS_PER_PASS]:
            out.events.append(Event("Warning", "ShardFailed", f"shard {f.shard} failed permanently: {f.message}"))

    # -- the batch's fate ---------------------------------------------------------------------
    was_terminal = old.phase in TERMINAL_PHASES
    if not was_terminal:
        if len(succeeded) + len(failed) >= total and len(failed) <= spec.max_failed_shards:
            msg = f"{len(succeeded)} of {total} shards succeeded"
            if failed:
                msg += f", {len(failed)} failed (tolerated: maxFailedShards {spec.max_failed_shards})"
            _terminate(status, "Succeeded", "Completed", msg, now, gen)
            out.events.append(Event("Normal", "Completed", msg))
        elif len(failed) > spec.max_failed_shards:
            msg = (
                f"{len(failed)} shards failed permanently (maxFailedShards {spec.max_failed_shards}): "
                + _describe_failures(status.failures)
            )
            _terminate(status, "Failed", "ShardsFailed", msg, now, gen)
            out.events.append(Event("Warning", "Failed", msg))
        elif (
            spec.active_deadline_seconds is not None
            and status.start_time is not None
            and now >= status.start_time + datetime.timedelta(seconds=spec.active_deadline_seconds)
        ):
            msg = f"the batch ran past its activeDeadlineSeconds ({spec.active_deadline_seconds}s)"
            _terminate(status, "Failed", "DeadlineExceeded", msg, now, gen)
            out.events.append(Event("Warning", "Failed", msg))

    terminal = status.phase in TERMINAL_PHASES

    # -- finalizers and clean-up: only for outcomes already persisted --------------------------
    failed_history = sorted(
        (j for j in observed if j.state == "failed"),
        key=lambda j: (j.finished_at or now, j.shard, j.attempt),
        reverse=True,
    )
    keep_failed = {j.name for j in failed_history[: spec.failed_jobs_history_limit]}
    for job in observed:
        newest = latest[job.shard]
        superseded = job.attempt < newest.attempt
        recorded = job.shard in persisted_succeeded or job.shard in persisted_failed
        done_with = recorded or superseded or was_terminal or job.shard >= total
        if not done_with:
            continue
        if job.has_finalizer:
            out.release.append(job.name)
        unneeded = job.state == "succeeded" or (job.state == "failed" and job.name not in keep_failed)
        if (unneeded or (was_terminal and not job.finished)) and not job.deleting:
            out.delete.append(job.name)

    # -- dispatch -------------------------------------------------------------------------------
    launched_now = 0
    retry_events = 0
    if terminal:
        # Stop what still runs; the Jobs are released once the terminal status is persisted.
        out.suspend += [j.name for j in running]
        if status.completion_time is not None and spec.ttl_seconds_after_finished is not None:
            expires = status.completion_time + datetime.timedelta(seconds=spec.ttl_seconds_after_finished)
            if now >= expires and was_terminal:  # only once the outcome is persisted
                out.delete_batch = True
            else:
                out.wake_in((expires - now).total_seconds())
        if not was_terminal:
            out.wake_in(0)  # persist, then release in the next pass
    elif spec.suspend:
        out.suspend += [j.name for j in running]
        if status.phase != "Suspended":
            out.events.append(Event("Normal", "Suspended", f"suspended; stopped {len(running)} running shards"))
        status.phase = "Suspended"
        status.conditions = set_condition(
            status.conditions, "Suspended", "True", "Suspended", "spec.suspend is true", now, gen
        )
        status.conditions = set_condition(
            status.conditions, "Running", "False", "Suspended", "spec.suspend is true", now, gen
        )
        running = []
    elif spec.start_after is not None and now < spec.start_after:
        status.phase = "Pending"
        out.wake_in((spec.start_after - now).total_seconds())
    else:
        slots = max(0, spec.parallelism - len(running))
        budget = slots if launch_budget is None else min(slots, max(0, launch_budget))
        # Ready work in launch order: resumed attempts, due retries, then new shards by index.
        busy = set(latest)
        fresh_needed = max(0, slots - len(parked) - len(retry_due))
        fresh = succeeded.union(failed).first_missing(0, total, fresh_needed, skip=busy)
        ready = len(parked) + len(retry_due) + len(fresh)
        out.unmet_demand = max(0, min(slots, ready) - budget)
        for job in parked:
            if launched_now >= budget:
                break
            out.resume.append(job.name)
            launched_now += 1
        for job in retry_due:
            if launched_now >= budget:
                break
            out.create.append(Launch(job.shard, job.attempt + 1))
            if retry_events < MAX_SHARD_EVENTS_PER_PASS:
                retry_events += 1
                why = f"exit code {job.exit_code}" if job.exit_code is not None else job.reason
                out.events.append(
                    Event(
                        "Normal",
                        "ShardRetrying",
                        f"retrying shard {job.shard}: attempt {job.attempt + 1} of {spec.retry.limit + 1} "
                        f"after attempt {job.attempt} failed ({why})",
                        on_status=False,
                    )
                )
            launched_now += 1
        for shard in fresh:
            if launched_now >= budget:
                break
            out.create.append(Launch(shard, 0))
            launched_now += 1
        # Started = some attempt exists or is being launched. Derived from what is observed, not from
        # "launched in this pass": a pass whose status write lost a race has still created Jobs.
        if status.start_time is None and (launched_now or latest):
            status.start_time = now
            out.events.append(Event("Normal", "Started", f"launching {total} shards, parallelism {spec.parallelism}"))
        if status.phase == "Suspended":
            out.events.append(Event("Normal", "Resumed", "spec.suspend is false; launching again"))
        if status.start_time is not None:
            status.phase = "Running"
            status.conditions = set_condition(
                status.conditions, "Running", "True", "Running", "shards are being launched", now, gen
            )
        else:
            status.phase = "Pending"
        if old.condition("Suspended") is not None:
            status.conditions = set_condition(
                status.conditions, "Suspended", "False", "Resumed", "spec.suspend is false", now, gen
            )
        if spec.active_deadline_seconds is not None and status.start_time is not None:
            deadline = status.start_time + datetime.timedelta(seconds=spec.active_deadline_seconds)
            out.wake_in((deadline - now).total_seconds())

    # -- counts ---------------------------------------------------------------------------------
    active = 0 if terminal else len(running) + len([j for j in parked if j.name in out.resume])
    active += len(out.create)
    retrying_left = max(0, retrying - len([c for c in out.create if c.attempt > 0]))
    status.shards = ShardCounts(
        total=total,
        running=active,
        retrying=0 if terminal else retrying_left,
        succeeded=len(succeeded),
        failed=len(failed),
        pending=max(0, total - len(succeeded) - len(failed) - (0 if terminal else active + retrying_left)),
    )
    return finish(out)


def _terminate(
    status: JobBatchStatus,
    phase: Literal["Succeeded", "Failed"],
    reason: str,
    message: str,
    now: datetime.datetime,
    gen: int,
) -> None:
    status.phase = phase
    status.completion_time = now
    status.conditions = set_condition(
        status.conditions, "Complete" if phase == "Succeeded" else "Failed", "True", reason, message, now, gen
    )
    status.conditions = set_condition(status.conditions, "Running", "False", reason, message, now, gen)
