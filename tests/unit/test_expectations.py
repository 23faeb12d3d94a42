"""Expectations of the reconciler's own writes, with a fake monotonic clock."""

from __future__ import annotations

import asyncio
import dataclasses

from jobbatch.expectations import Expectations, JobCalls
from jobbatch.observed import ShardJob


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def chunk(parallelism: int = 2) -> ShardJob:
    return ShardJob("j", first=0, count=10, attempt=0, parallelism=parallelism)


def test_a_created_job_is_shown_until_the_watch_has_it() -> None:
    clock = Clock()
    exp = Expectations(clock, ttl=60)
    exp.expect("j", created=chunk(4))
    assert exp.overlay({})["j"].parallelism == 4
    exp.settled("j")
    assert exp.overlay({})["j"].parallelism == 4  # the watch lags: still expected
    seen = {"j": chunk(4)}
    assert exp.overlay(seen) == seen
    assert len(exp) == 0  # confirmed


def test_in_flight_expectations_never_expire() -> None:
    clock = Clock()
    exp = Expectations(clock, ttl=60)
    exp.expect("j", created=chunk(4))
    clock.now += 3600  # the call waits in the rate limiter for an hour
    assert "j" in exp.overlay({})
    exp.settled("j")
    clock.now += 61
    assert exp.overlay({}) == {}  # settled and never seen: the watch is believed


def test_a_raise_overlays_the_observed_job_until_confirmed() -> None:
    exp = Expectations(Clock())
    exp.expect("j", parallelism=7)
    exp.settled("j")
    assert exp.overlay({"j": chunk(2)})["j"].parallelism == 7
    assert exp.overlay({"j": chunk(7)})["j"].parallelism == 7
    assert len(exp) == 0


def test_a_finished_job_confirms_spec_expectations() -> None:
    exp = Expectations(Clock())
    exp.expect("j", parallelism=7)
    exp.settled("j")
    done = dataclasses.replace(chunk(2), finished=True)
    assert exp.overlay({"j": done})["j"].parallelism == 2
    assert len(exp) == 0


def test_a_failed_call_is_forgotten() -> None:
    exp = Expectations(Clock())
    exp.expect("j", suspended=True)
    exp.forget("j")
    assert exp.overlay({"j": chunk()})["j"].suspended is False


def test_expectations_of_one_job_merge() -> None:
    exp = Expectations(Clock())
    exp.expect("j", created=chunk(2))
    exp.expect("j", parallelism=5)
    assert exp.overlay({})["j"].parallelism == 5


async def test_calls_run_one_per_job_and_report_failures() -> None:
    wake = asyncio.Event()
    calls = JobCalls(wake)
    gate = asyncio.Event()

    async def slow() -> None:
        await gate.wait()

    async def broken() -> None:
        raise RuntimeError("boom")

    calls.start("a", slow())
    assert calls.busy("a")
    calls.start("b", broken())
    await asyncio.wait_for(wake.wait(), 1)
    assert [str(e) for e in calls.take_failures()] == ["boom"]
    assert not calls.busy("b")
    gate.set()
    await calls.drain()
    assert not calls.busy("a")
    assert calls.take_failures() == []


async def test_a_call_a_pass_wanted_again_while_it_was_in_flight_wakes_the_loop_when_it_ends() -> None:
    wake = asyncio.Event()
    calls = JobCalls(wake)
    gate = asyncio.Event()

    async def slow() -> None:
        await gate.wait()

    async def quick() -> None:
        return None

    calls.start("b", quick())
    calls.again("c")  # nothing in flight: nothing to wait for
    await calls.drain()
    assert not wake.is_set()  # no pass wanted "b" again: its end wakes nothing
    calls.start("a", slow())
    calls.again("a")  # a pass had another raise for "a" while its first was in flight
    gate.set()
    await asyncio.wait_for(wake.wait(), 1)
    assert not calls.busy("a")
    assert calls.take_failures() == []
