"""Cron schedules as Kubernetes CronJobs read them: five fields, the same macros, the same day rule.

A CronJobBatch's ``schedule`` means what a CronJob's means (the controller-manager parses it with
robfig/cron's standard parser): ``minute hour day-of-month month day-of-week``, each ``*``, ``?``
(day fields), a value, a range ``a-b``, a step ``*/n``, ``a-b/n`` or ``a/n``, or a comma list of these;
month names ``JAN``-``DEC`` and weekday names ``SUN``-``SAT``; ``@yearly`` (``@annually``),
``@monthly``, ``@weekly``, ``@daily`` (``@midnight``), ``@hourly`` (lower case, as robfig/cron).
When both day fields are restricted a day matching either runs (cron's OR); when either holds a
``*`` or ``?`` term without a step (robfig's "star bit"), both must match. Not supported: ``@every``
(a CronJob accepts it; the operator says so with InvalidSchedule).

Times are wall-clock times of the schedule's zone, as robfig/cron reads them: a time that does not
exist (a DST gap) is skipped, a time that happens twice (DST fold) runs twice.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from zoneinfo import ZoneInfo

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_MONTHS = {m: i for i, m in enumerate(_MONTH_NAMES, start=1)}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
# (name, lowest, highest, names)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _DAYS),
)
_TERM = re.compile(r"^(?:(\*|\?)|([0-9A-Za-z]+)(?:-([0-9A-Za-z]+))?)(?:/([0-9]+))?$")
# A schedule that matches nothing within this many years never fires (e.g. `0 0 30 2 *`).
_HORIZON_YEARS = 5
# Past this many missed times the count stops (CronJob warns "too many missed start times" at 100).
MISSED_CAP = 100


class ScheduleError(ValueError):
    """A schedule that cannot be read; the message says which field and why."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool  # the day-of-month field starts with `*` or `?`
    any_weekday: bool

    def _day_matches(self, day: datetime.date) -> bool:
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def next_after(self, after: datetime.datetime, zone: datetime.tzinfo) -> datetime.datetime | None:
        """The first schedule time strictly after ``after`` (aware), in UTC; None if none within years."""
        # From the minute of `after` itself: in a DST fold its second occurrence still lies ahead.
        start = after.astimezone(zone).replace(tzinfo=None, second=0, microsecond=0)
        wall = start
        limit = start + _days(366 * _HORIZON_YEARS)
        while wall < limit:
            if wall.month not in self.months:
                wall = _first_of_next_month(wall)
            elif not self._day_matches(wall.date()):
                wall = datetime.datetime.combine(wall.date() + _days(1), datetime.time())
            elif wall.hour not in self.hours:
                wall = wall.replace(minute=0) + datetime.timedelta(hours=1)
            elif wall.minute not in self.minutes:
                wall += datetime.timedelta(minutes=1)
            else:
                for moment in _occurrences(wall, zone):
                    if moment > after:
                        return moment.astimezone(datetime.UTC)
                wall += datetime.timedelta(minutes=1)
        return None

    def latest(
        self, since: datetime.datetime, now: datetime.datetime, zone: datetime.tzinfo
    ) -> tuple[datetime.datetime | None, int]:
        """The last schedule time in (since, now], and how many there are (counted up to MISSED_CAP + 1)."""
        latest: datetime.datetime | None = None
        count = 0
        cursor = since
        # Counting from `since` is bounded by the cap; the latest time may lie further on.
        while count <= MISSED_CAP:
            following = self.next_after(cursor, zone)
            if following is None or following > now:
                return latest, count
            latest, cursor, count = following, following, count + 1
        return self._latest_in_window(since, now, zone) or latest, count

    def _latest_in_window(
        self, since: datetime.datetime, now: datetime.datetime, zone: datetime.tzinfo
    ) -> datetime.datetime | None:
        """The last time in (since, now], searched from windows ending at now, each 4x the last."""
        window = datetime.timedelta(hours=1)
        while True:
            start = max(since, now - window)
            found, cursor = None, start
            while (following := self.next_after(cursor, zone)) is not None and following <= now:
                found, cursor = following, following
            if found is not None or start == since:
                return found
            window *= 4


def parse(expression: str) -> Schedule:
    """The schedule of a cron expression, or ScheduleError naming what is wrong."""
    text = _MACROS.get(expression.strip(), expression.strip())
    if text.startswith("@"):
        raise ScheduleError(f"unknown descriptor {expression.strip()!r} (use one of {', '.join(_MACROS)})")
    if re.match(r"^(CRON_)?TZ=", text):
        raise ScheduleError("TZ= in the schedule is not supported: set spec.timeZone")
    parts = text.split()
    if len(parts) != 5:
        raise ScheduleError(f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}")
    fields = [_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
    return Schedule(
        minutes=fields[0][0],
        hours=fields[1][0],
        days=fields[2][0],
        months=fields[3][0],
        weekdays=fields[4][0],
        any_day=fields[2][1],
        any_weekday=fields[4][1],
    )


def zone(name: str | None) -> datetime.tzinfo:
    """The IANA zone ``name`` (UTC when unset), or ScheduleError."""
    if not name:
        return datetime.UTC
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError) as exc:  # ZoneInfoNotFoundError is a KeyError; a malformed name a ValueError
        raise ScheduleError(f"unknown time zone {name!r}") from exc


def _field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> tuple[frozenset[int], bool]:
    """The values of one field, and whether a term was `*`/`?` without a step (robfig's star bit)."""
    values: set[int] = set()
    any_value = False
    for term in text.split(","):
        match = _TERM.match(term)
        if not match:
            raise ScheduleError(f"{name}: cannot read {term!r}")
        star, first, last, step = match.groups()
        if star is not None:
            start, end = low, high
            any_value = any_value or not step or int(step) == 1
        else:
            start = _value(first, name, low, high, names)
            # `a/n` runs from a to the field's end, as robfig/cron reads it.
            end = _value(last, name, low, high, names) if last is not None else (high if step else start)
        if start > end:
            raise ScheduleError(f"{name}: range {term!r} ends before it starts")
        stride = int(step) if step else 1
        if stride < 1:
            raise ScheduleError(f"{name}: step must be at least 1 in {term!r}")
        values.update(range(start, end + 1, stride))
    return frozenset(values), any_value


def _value(text: str, name: str, low: int, high: int, names: dict[str, int]) -> int:
    value = names.get(text.upper()) if not text.isdigit() else int(text)
    if value is None:
        raise ScheduleError(f"{name}: unknown value {text!r}")
    if not low <= value <= high:
        raise ScheduleError(f"{name}: {value} is outside {low}-{high}")
    return value


def _days(n: int) -> datetime.timedelta:
    return datetime.timedelta(days=n)


def _first_of_next_month(wall: datetime.datetime) -> datetime.datetime:
    year, month = (wall.year + 1, 1) if wall.month == 12 else (wall.year, wall.month + 1)
    return datetime.datetime(year, month, 1)


def _occurrences(wall: datetime.datetime, zone: datetime.tzinfo) -> list[datetime.datetime]:
    """The moments ``wall`` is in ``zone``: none inside a DST gap, two inside a fold, else one."""
    found: list[datetime.datetime] = []
    for fold in (0, 1):
        moment = wall.replace(tzinfo=zone, fold=fold)
        utc = moment.astimezone(datetime.UTC)
        if utc.astimezone(zone).replace(tzinfo=None) == wall and all(utc != f for f in found):
            found.append(utc)
    return sorted(found)
