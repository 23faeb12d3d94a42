"""Cron schedules read as CronJob reads them, and the CronJobBatch plan (pure: no cluster)."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pytest

from jobbatch import api, cron, cronplan
from jobbatch.cronplan import OwnedBatch

UTC = datetime.UTC


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime.datetime:
    return datetime.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("* * * * *", at(2026, 12, 2, 10, 0, 30), at(2026, 12, 2, 10, 1)),
        ("*/15 9-17 * * MON-FRI", at(2026, 12, 4, 16, 50), at(2026, 12, 4, 17, 0)),  # a Friday
        ("*/15 9-17 * * MON-FRI", at(2026, 12, 4, 17, 45), at(2026, 12, 7, 9, 0)),  # over the weekend
        ("@hourly", at(2026, 12, 31, 23, 0), at(2027, 1, 1, 0, 0)),
        ("@monthly", at(2026, 1, 31, 0, 0), at(2026, 2, 1, 0, 0)),
        ("0 0 29 2 *", at(2026, 3, 1), at(2028, 2, 29)),  # the next leap day
        ("5/20 * * * *", at(2026, 1, 1, 0, 6), at(2026, 1, 1, 0, 25)),  # a/n: from a to the end
        ("0 0 1,15 * MON", at(2026, 12, 1), at(2026, 12, 7)),  # both day fields restricted: either
        ("0 0 * 12 MON", at(2026, 12, 1), at(2026, 12, 7)),  # day-of-month *: both
        ("0 0 */2 * MON", at(2024, 1, 1), at(2024, 1, 3)),  # a stepped * restricts: odd dates or Mondays
        ("0 0 5,* * MON", at(2024, 1, 2), at(2024, 1, 8)),  # a bare * among terms does not: Mondays
        ("0 12 ? JAN,jul *", at(2026, 2, 1), at(2026, 7, 1, 12)),
    ],
)
def test_next_schedule_time(expression: str, after: datetime.datetime, expected: datetime.datetime) -> None:
    assert cron.parse(expression).next_after(after, UTC) == expected


def test_a_schedule_that_never_matches_has_no_next_time() -> None:
    assert cron.parse("0 0 30 2 *").next_after(at(2026, 1, 1), UTC) is None


def test_time_zones_and_daylight_saving() -> None:
    berlin = cron.zone("Europe/Berlin")
    # 02:30 does not exist on 29 March 2026 in Berlin (clocks go 02:00 -> 03:00): that day is skipped.
    assert cron.parse("30 2 * * *").next_after(at(2026, 3, 28, 12), berlin) == at(2026, 3, 30, 0, 30)
    # 02:30 happens twice on 25 October 2026 (CEST, then CET): it runs at both, as robfig/cron does.
    first = cron.parse("30 2 * * *").next_after(at(2026, 10, 24, 12), berlin)
    assert first == at(2026, 10, 25, 0, 30)
    second = cron.parse("30 2 * * *").next_after(first, berlin)
    assert second == at(2026, 10, 25, 1, 30)
    assert cron.parse("30 2 * * *").next_after(second, berlin) == at(2026, 10, 26, 1, 30)
    assert cron.parse("0 9 * * *").next_after(at(2026, 7, 1), cron.zone("America/New_York")) == at(2026, 7, 1, 13)


@pytest.mark.parametrize(
    ("expression", "complaint"),
    [
        ("* * * *", "expected 5 fields"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("* * * * 7", "day of week: 7 is outside 0-6"),
        ("5-1 * * * *", "ends before it starts"),
        ("*/0 * * * *", "step must be at least 1"),
        ("@DAILY", "unknown descriptor"),  # robfig reads descriptors in lower case only
        ("* * * FOO *", "month: unknown value 'FOO'"),
        ("@every 5m", "unknown descriptor"),
        ("TZ=UTC * * * * *", "set spec.timeZone"),
    ],
)
def test_bad_schedules_say_what_is_wrong(expression: str, complaint: str) -> None:
    with pytest.raises(cron.ScheduleError, match=complaint):
        cron.parse(expression)


def test_unknown_zone() -> None:
    with pytest.raises(cron.ScheduleError, match="unknown time zone 'Mars/Olympus'"):
        cron.zone("Mars/Olympus")
    assert cron.zone(None) is UTC


def test_latest_counts_missed_runs_and_finds_the_last_one_past_the_cap() -> None:
    hourly = cron.parse("@hourly")
    assert hourly.latest(at(2026, 1, 1), at(2026, 1, 1, 5, 30), UTC) == (at(2026, 1, 1, 5), 5)
    assert hourly.latest(at(2026, 1, 1, 5), at(2026, 1, 1, 5, 30), UTC) == (None, 0)
    every_minute = cron.parse("* * * * *")
    latest, missed = every_minute.latest(at(2025, 1, 1), at(2026, 12, 2, 7, 3, 20), UTC)
    assert (latest, missed) == (at(2026, 12, 2, 7, 3), cron.MISSED_CAP + 1)


# -- the plan ------------------------------------------------------------------------------------

CREATED = at(2026, 12, 2, 9, 0, 10)


def spec(**fields: Any) -> api.CronJobBatchSpec:
    template = {"spec": {"template": {"spec": {"containers": [{"name": "w", "image": "w"}]}}, "payloads": {"count": 1}}}
    return api.CronJobBatchSpec.model_validate({"schedule": "*/5 * * * *", "jobBatchTemplate": template, **fields})


def run(
    now: datetime.datetime,
    owned: list[OwnedBatch] | None = None,
    status: api.CronJobBatchStatus | None = None,
    **fields: Any,
) -> cronplan.CronPlan:
    return cronplan.plan(
        name="nightly",
        spec=spec(**fields),
        status=status or api.CronJobBatchStatus(),
        generation=1,
        created=CREATED,
        owned=owned or [],
        now=now,
    )


def batch(minute: int, phase: str = "Running", completed: datetime.datetime | None = None) -> OwnedBatch:
    scheduled = at(2026, 12, 2, 9, minute)
    return OwnedBatch(cronplan.batch_name("nightly", scheduled), scheduled, phase, completed)


def test_nothing_is_due_before_the_first_schedule_time() -> None:
    plan = run(at(2026, 12, 2, 9, 3))
    assert plan.create is None
    assert plan.wake_at == at(2026, 12, 2, 9, 5)
    assert plan.status.condition("Scheduled").status == "True"  # type: ignore[union-attr]


def test_a_due_run_gets_its_deterministic_name_and_is_recorded() -> None:
    plan = run(at(2026, 12, 2, 9, 5, 2))
    scheduled = at(2026, 12, 2, 9, 5)
    assert plan.create == cronplan.CreateBatch(f"nightly-{int(scheduled.timestamp()) // 60}", scheduled)
    assert plan.status.last_schedule_time == scheduled
    assert (plan.status.active, plan.status.active_count) == ([plan.create.name], 1)
    assert [e.reason for e in plan.events] == ["Created"]
    assert plan.wake_at == at(2026, 12, 2, 9, 10)


def test_a_run_created_before_a_lost_status_write_is_recorded_not_created_again() -> None:
    plan = run(at(2026, 12, 2, 9, 6), owned=[batch(5)])
    assert plan.create is None
    assert plan.status.last_schedule_time == at(2026, 12, 2, 9, 5)
    assert plan.events == []


def test_after_an_outage_only_the_latest_missed_run_starts() -> None:
    status = api.CronJobBatchStatus(last_schedule_time=at(2026, 12, 2, 9, 5))
    plan = run(at(2026, 12, 2, 9, 31), status=status, owned=[batch(5, "Succeeded", at(2026, 12, 2, 9, 6))])
    assert plan.create is not None
    assert plan.create.scheduled == at(2026, 12, 2, 9, 30)
    assert "(4 earlier runs missed)" in plan.events[-1].message
    assert plan.status.last_successful_time == at(2026, 12, 2, 9, 6)


def test_the_starting_deadline_skips_a_run_that_is_too_late() -> None:
    status = api.CronJobBatchStatus(last_schedule_time=at(2026, 12, 2, 9, 5))
    assert run(at(2026, 12, 2, 9, 12), status=status, starting_deadline_seconds=60).create is None
    late_but_in_time = run(at(2026, 12, 2, 9, 10, 50), status=status, starting_deadline_seconds=60)
    assert late_but_in_time.create is not None


def test_forbid_waits_for_the_running_batch_then_starts_the_due_run() -> None:
    status = api.CronJobBatchStatus(last_schedule_time=at(2026, 12, 2, 9, 5))
    waiting = run(at(2026, 12, 2, 9, 10, 1), owned=[batch(5)], status=status, concurrency_policy="Forbid")
    assert waiting.create is None
    condition = waiting.status.condition("Scheduled")
    assert condition is not None
    assert (condition.status, condition.reason) == ("True", "Waiting")
    assert batch(5).name in condition.message
    assert "Forbid" in condition.message
    assert [(e.type, e.reason) for e in waiting.events] == [("Normal", "Waiting")]
    again = run(at(2026, 12, 2, 9, 10, 30), owned=[batch(5)], status=waiting.status, concurrency_policy="Forbid")
    assert again.events == []  # said once
    deleting = dataclasses.replace(batch(5), deleting=True)  # its pods may still run: still waits
    assert run(at(2026, 12, 2, 9, 10, 40), owned=[deleting], status=status, concurrency_policy="Forbid").create is None
    ended = [batch(5, "Failed", at(2026, 12, 2, 9, 11))]
    started = run(at(2026, 12, 2, 9, 11, 5), owned=ended, status=status, concurrency_policy="Forbid")
    assert started.create is not None
    assert started.create.scheduled == at(2026, 12, 2, 9, 10)


def test_replace_deletes_the_running_batch_and_starts_the_new_one() -> None:
    status = api.CronJobBatchStatus(last_schedule_time=at(2026, 12, 2, 9, 5))
    plan = run(at(2026, 12, 2, 9, 10, 1), owned=[batch(5)], status=status, concurrency_policy="Replace")
    assert plan.create is not None
    message = f"deleting running JobBatch {batch(5).name} for {plan.create.name}"
    assert plan.deletes == [
        cronplan.DeleteBatch(batch(5).name, "Replaced", cronplan.Event("Normal", "Replaced", message))
    ]
    assert "Replaced" not in [e.reason for e in plan.events]  # said with the delete, not after the status write
    assert plan.status.active == [plan.create.name]


def test_allow_runs_both() -> None:
    status = api.CronJobBatchStatus(last_schedule_time=at(2026, 12, 2, 9, 5))
    plan = run(at(2026, 12, 2, 9, 10, 1), owned=[batch(5)], status=status)
    assert plan.create is not None
    assert plan.deletes == []
    assert plan.status.active_count == 2


def test_a_run_is_never_created_again_while_its_unrecorded_batch_is_being_deleted() -> None:
    unrecorded = dataclasses.replace(batch(5, "Succeeded", at(2026, 12, 2, 9, 6)), deleting=True)
    plan = run(at(2026, 12, 2, 9, 7), owned=[unrecorded], successful_batches_history_limit=0)
    assert plan.create is None
    assert plan.status.last_schedule_time == at(2026, 12, 2, 9, 5)
    # ...and history never deletes a run the status has not recorded.
    done = batch(5, "Succeeded", at(2026, 12, 2, 9, 6))
    assert run(at(2026, 12, 2, 9, 7), owned=[done], successful_batches_history_limit=0).deletes == []


def test_a_schedule_that_never_fires_is_refused() -> None:
    plan = run(at(2026, 12, 2, 9, 20), schedule="0 0 30 2 *")
    condition = plan.status.condition("Scheduled")
    assert condition is not None
    assert (condition.status, condition.reason) == ("False", "InvalidSchedule")
    assert "never fires" in condition.message


def test_history_limits_delete_the_oldest_finished_batches() -> None:
    owned = [batch(m, "Succeeded", at(2026, 12, 2, 9, m + 1)) for m in (0, 5, 10, 15)]
    owned += [batch(m, "Failed", at(2026, 12, 2, 9, m + 1)) for m in (20, 25)]
    owned.append(batch(30))
    status = api.CronJobBatchStatus(last_schedule_time=at(2026, 12, 2, 9, 30))
    plan = run(
        at(2026, 12, 2, 9, 31),
        owned=owned,
        status=status,
        successful_batches_history_limit=2,
        failed_batches_history_limit=0,
    )
    assert [d.name for d in plan.deletes] == [batch(0).name, batch(5).name, batch(20).name, batch(25).name]
    assert {d.why for d in plan.deletes} == {"History"}
    assert plan.status.active == [batch(30).name]


def test_suspended_creates_nothing_and_on_resuming_starts_the_latest_missed_run() -> None:
    status = api.CronJobBatchStatus(last_schedule_time=at(2026, 12, 2, 9, 5))
    plan = run(at(2026, 12, 2, 9, 20), status=status, suspend=True)
    assert plan.create is None
    assert plan.wake_at is None
    assert plan.status.condition("Scheduled").reason == "Suspended"  # type: ignore[union-attr]
    resumed = run(at(2026, 12, 2, 9, 21), status=plan.status)  # as CronJob: the latest missed run, once
    assert resumed.create == cronplan.CreateBatch(batch(20).name, at(2026, 12, 2, 9, 20))
    assert "(2 earlier runs missed)" in resumed.events[-1].message


def test_a_bad_schedule_or_zone_is_a_condition_and_one_event() -> None:
    plan = run(at(2026, 12, 2, 9, 20), schedule="61 * * * *")
    condition = plan.status.condition("Scheduled")
    assert condition is not None
    assert (condition.status, condition.reason) == ("False", "InvalidSchedule")
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "InvalidSchedule")]
    assert plan.create is None
    again = run(at(2026, 12, 2, 9, 21), status=plan.status, schedule="61 * * * *")
    assert again.events == []  # said once
    zone = run(at(2026, 12, 2, 9, 20), time_zone="Nowhere/Land")
    assert zone.status.condition("Scheduled").reason == "InvalidTimeZone"  # type: ignore[union-attr]


def test_batch_names_fit_a_label_value() -> None:
    name = cronplan.batch_name("x" * api.MAX_CRON_NAME, at(2160, 1, 1))
    assert len(name) <= 63
