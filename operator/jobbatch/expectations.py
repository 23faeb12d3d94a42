"""Bookkeeping of the reconciler's own Job writes: what it expects to see, and what is in flight.

The Job watch lags behind the operator's own writes. A pass that planned from the watch alone
would grant the same free slot twice (a created Job, or a raised parallelism, not seen yet) and so
run past ``parallelism``. ``Expectations`` overlays what was asked for on what is observed until the
watch confirms it, like the Job controller's ``ControllerExpectations``; ``JobCalls`` keeps at most
one call per Job in flight, so writes to one Job never overtake each other.

Both take an injected monotonic clock, so tests drive time instead of sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from jobbatch.observed import ShardJob

# How long an expectation outlives its call when the watch never confirms it (the Job was changed
# again by someone else, or the watch is down): then the watch is believed.
EXPECTATION_TTL = 60.0
# ShardJob fields the Job controller cannot move on its own once the Job finished.
_SPEC_FIELDS = frozenset({"parallelism", "suspended"})


@dataclasses.dataclass
class _Expected:
    fields: dict[str, Any]
    created: ShardJob | None  # what a create asked for: shown until the Job is observed
    deadline: float | None  # None while the call is in flight


class Expectations:
    """Job states this process asked for whose watch events have not arrived yet."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, ttl: float = EXPECTATION_TTL) -> None:
        self._clock, self._ttl = clock, ttl
        self._by_name: dict[str, _Expected] = {}

    def __len__(self) -> int:
        return len(self._by_name)

    def expect(self, name: str, *, created: ShardJob | None = None, **fields: Any) -> None:
        """Before a call: from now on the Job is shown with ``fields`` (or as ``created``, if not observed)."""
        previous = self._by_name.get(name)
        base = created or (previous.created if previous else None)
        merged = {**(previous.fields if previous else {}), **fields}
        self._by_name[name] = _Expected(merged, base, None)

    def settled(self, name: str) -> None:
        """The call succeeded: the expectation now lasts until confirmed, or at most the TTL."""
        if (entry := self._by_name.get(name)) is not None:
            entry.deadline = self._clock() + self._ttl

    def forget(self, name: str) -> None:
        """The call failed (or did nothing): the Job is what the watch says."""
        self._by_name.pop(name, None)

    def overlay(self, observed: Mapping[str, ShardJob]) -> dict[str, ShardJob]:
        """The observed Jobs with unconfirmed expectations applied; confirmed or expired ones are dropped."""
        jobs = dict(observed)
        now = self._clock()
        for name, entry in list(self._by_name.items()):
            seen = observed.get(name)
            if entry.deadline is not None and now >= entry.deadline:
                del self._by_name[name]
            elif seen is None:
                if entry.created is not None:
                    jobs[name] = dataclasses.replace(entry.created, **entry.fields)
                elif entry.deadline is not None:
                    del self._by_name[name]  # the Job is gone: nothing left to expect
            elif _confirmed(seen, entry.fields):
                if entry.deadline is not None:
                    del self._by_name[name]
                # (in flight: keep it, a later field of the same call may still be pending)
            else:
                jobs[name] = dataclasses.replace(seen, **entry.fields)
        return jobs


def _confirmed(seen: ShardJob, fields: Mapping[str, Any]) -> bool:
    if seen.finished and _SPEC_FIELDS.issuperset(fields):
        return True
    return all(getattr(seen, key) == value for key, value in fields.items())


class JobCalls:
    """The reconciler's Job calls, run in the background, at most one per Job at a time."""

    def __init__(self, wake: asyncio.Event) -> None:
        self._wake = wake
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failures: list[BaseException] = []
        self._again: set[str] = set()  # Jobs a pass had another call for while one was in flight

    def busy(self, name: str) -> bool:
        return name in self._tasks

    def again(self, name: str) -> None:
        """A pass wanted another call for this busy Job: wake the loop when the one in flight ends.

        Not left to the Job's watch event: an event that only shows progress need not wake it at once
        (``BatchReconciler.job_changed``), and a raise held back here is a slot left idle.
        """
        if name in self._tasks:
            self._again.add(name)

    def start(self, name: str, call: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(call)
        self._tasks[name] = task

        def done(task: asyncio.Task[None]) -> None:
            if self._tasks.get(name) is task:
                del self._tasks[name]
                if name in self._again:
                    self._again.discard(name)
                    self._wake.set()
            if not task.cancelled() and (exc := task.exception()) is not None:
                self._failures.append(exc)
                self._wake.set()  # the next pass backs off, then plans the call again

        task.add_done_callback(done)

    def take_failures(self) -> list[BaseException]:
        failures, self._failures = self._failures, []
        return failures

    async def drain(self) -> None:
        """Wait for the calls in flight to end (their failures stay to be taken)."""
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
