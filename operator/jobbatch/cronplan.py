"""What a CronJobBatch should do now: a pure function of its spec, its status, its batches and the time.

It follows the CronJob controller (pkg/controller/cronjob, v2): the run due is the latest schedule
time after the last one created (or the object's creation), looking back no further than
``startingDeadlineSeconds``; only that one starts however many were missed. Its JobBatch is named
``<cron>-<scheduled time in Unix minutes>``, so creating it twice is impossible: a restart that lost
the status write finds the batch by that name (or the create answers AlreadyExists) and records it.
Forbid leaves a due run waiting while a batch runs (it starts once that batch ends, if still due;
the condition says it waits); Replace starts the new run and deletes the running ones. Finished
batches past the history limits are deleted, oldest first, never one the status has not recorded.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Literal

from jobbatch import api, cron

CONDITION_SCHEDULED = "Scheduled"
_MINUTE = 60


@dataclasses.dataclass(frozen=True)
class OwnedBatch:
    """A JobBatch this CronJobBatch created, as listed (ownerReference checked by the caller)."""

    name: str
    scheduled: datetime.datetime | None  # its jobbatch.io/scheduled-time annotation
    phase: str
    completed: datetime.datetime | None  # status.completionTime
    deleting: bool = False

    @property
    def finished(self) -> bool:
        return self.phase in api.TERMINAL_PHASES


@dataclasses.dataclass(frozen=True)
class CreateBatch:
    name: str
    scheduled: datetime.datetime


@dataclasses.dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class DeleteBatch:
    name: str
    why: str  # Replaced, or History
    event: Event | None = None  # said before the delete, so a later conflict cannot lose it


@dataclasses.dataclass
class CronPlan:
    status: api.CronJobBatchStatus
    create: CreateBatch | None = None
    deletes: list[DeleteBatch] = dataclasses.field(default_factory=list)
    events: list[Event] = dataclasses.field(default_factory=list)
    wake_at: datetime.datetime | None = None  # the next schedule time: look again then
    waiting: str = ""  # why a due run did not start (Forbid), for the log


def batch_name(cron_name: str, scheduled: datetime.datetime) -> str:
    """The JobBatch of the run scheduled at ``scheduled``: one name per (cron, minute), as CronJob's Jobs."""
    return f"{cron_name}-{int(scheduled.timestamp()) // _MINUTE}"


def plan(
    *,
    name: str,
    spec: api.CronJobBatchSpec,
    status: api.CronJobBatchStatus,
    generation: int | None,
    created: datetime.datetime,
    owned: Sequence[OwnedBatch],
    now: datetime.datetime,
) -> CronPlan:
    out = CronPlan(status=status.model_copy(deep=True))
    out.status.observed_generation = generation
    live = [b for b in owned if not b.deleting]
    _keep_history(out, spec, live)
    _record_outcomes(out, live)
    try:
        schedule, zone = cron.parse(spec.schedule), cron.zone(spec.time_zone)
    except cron.ScheduleError as exc:
        reason = "InvalidTimeZone" if "time zone" in str(exc) else "InvalidSchedule"
        _condition(out, "False", reason, str(exc), now)
        return out
    if spec.suspend:
        _condition(out, "True", "Suspended", "spec.suspend is true: no new runs", now)
        return out
    out.wake_at = schedule.next_after(now, zone)
    if out.wake_at is None and schedule.next_after(out.status.last_schedule_time or created, zone) is None:
        _condition(out, "False", "InvalidSchedule", f"schedule {spec.schedule!r} never fires", now)
        return out
    _start_due_run(out, name, spec, schedule, zone, created, owned, now)
    if out.waiting:
        _condition(out, "True", "Waiting", out.waiting, now)
    else:
        _condition(out, "True", "Scheduling", f"schedule {spec.schedule!r} in {spec.time_zone or 'UTC'}", now)
    return out


def refused(
    status: api.CronJobBatchStatus, generation: int | None, reason: str, message: str, now: datetime.datetime
) -> CronPlan:
    """What to write when no run can be made (a template no JobBatch can be made from, a create the API
    server refuses): the status as it was, with Scheduled=False saying why (a Warning once per message)."""
    out = CronPlan(status=status.model_copy(deep=True))
    out.status.observed_generation = generation
    _condition(out, "False", reason, message, now)
    return out


def _keep_history(out: CronPlan, spec: api.CronJobBatchSpec, live: Sequence[OwnedBatch]) -> None:
    """Delete finished batches past the history limits, oldest first (by completion, then schedule).

    Never a run scheduled after status.lastScheduleTime: its create was not recorded yet (the status
    write was lost), and deleting it before it is would let a later pass create it again.
    """
    epoch = datetime.datetime.min.replace(tzinfo=datetime.UTC)
    recorded = out.status.last_schedule_time or epoch
    for phase, limit in (
        ("Succeeded", spec.successful_batches_history_limit),
        ("Failed", spec.failed_batches_history_limit),
    ):
        done = sorted(
            (b for b in live if b.phase == phase and (b.scheduled or epoch) <= recorded),
            key=lambda b: (b.completed or epoch, b.scheduled or epoch, b.name),
        )
        out.deletes += [DeleteBatch(b.name, "History") for b in done[: max(len(done) - limit, 0)]]


def _record_outcomes(out: CronPlan, live: Sequence[OwnedBatch]) -> None:
    epoch = datetime.datetime.min.replace(tzinfo=datetime.UTC)
    active = sorted((b for b in live if not b.finished), key=lambda b: (b.scheduled or epoch, b.name))
    out.status.active = [b.name for b in active[:20]]
    out.status.active_count = len(active)
    succeeded = [b.completed for b in live if b.phase == "Succeeded" and b.completed is not None]
    if succeeded:
        latest = max(succeeded)
        if out.status.last_successful_time is None or latest > out.status.last_successful_time:
            out.status.last_successful_time = latest


def _start_due_run(
    out: CronPlan,
    name: str,
    spec: api.CronJobBatchSpec,
    schedule: cron.Schedule,
    zone: datetime.tzinfo,
    created: datetime.datetime,
    owned: Sequence[OwnedBatch],
    now: datetime.datetime,
) -> None:
    earliest = out.status.last_schedule_time or created
    if spec.starting_deadline_seconds is not None:
        earliest = max(earliest, now - datetime.timedelta(seconds=spec.starting_deadline_seconds))
    due, missed = schedule.latest(earliest, now, zone)
    if due is None:
        return
    batch = batch_name(name, due)
    # Created by an earlier pass whose status write was lost (even if being deleted since): record it.
    if any(b.name == batch for b in owned):
        out.status.last_schedule_time = due
        return
    running = [b for b in owned if not b.finished]  # one being deleted may still have pods: it counts
    if running and spec.concurrency_policy == "Forbid":
        out.waiting = f"run of {due.isoformat()} waits: {running[0].name} is still running (concurrencyPolicy Forbid)"
        return
    if running and spec.concurrency_policy == "Replace":
        for b in running:
            if not b.deleting:
                event = Event("Normal", "Replaced", f"deleting running JobBatch {b.name} for {batch}")
                out.deletes.append(DeleteBatch(b.name, "Replaced", event))
        out.status.active, out.status.active_count = [], 0
    if missed > cron.MISSED_CAP:
        message = f"more than {cron.MISSED_CAP} runs missed since {earliest.isoformat()}: only the latest starts"
        out.events.append(Event("Warning", "TooManyMissedTimes", message))
    out.create = CreateBatch(batch, due)
    out.status.last_schedule_time = due
    out.status.active = [*out.status.active, batch][:20]
    out.status.active_count += 1
    skipped = f" ({missed - 1} earlier runs missed)" if missed > 1 else ""
    out.events.append(Event("Normal", "Created", f"created JobBatch {batch} for {due.isoformat()}{skipped}"))


def _condition(
    out: CronPlan, state: Literal["True", "False"], reason: str, message: str, now: datetime.datetime
) -> None:
    old = out.status.condition(CONDITION_SCHEDULED)
    if old is not None and (old.status, old.reason, old.message) == (state, reason, message):
        return
    if state == "False" or reason == "Waiting":  # said once per message: the condition remembers it
        out.events.append(Event("Warning" if state == "False" else "Normal", reason, message))
    since = old.last_transition_time if old is not None and old.status == state else now
    condition = api.Condition(
        type=CONDITION_SCHEDULED, status=state, reason=reason, message=message, last_transition_time=since
    )
    out.status.conditions = [c for c in out.status.conditions if c.type != CONDITION_SCHEDULED] + [condition]
