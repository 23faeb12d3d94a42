from __future__ import annotations

import asyncio
import datetime

from jobbatch.dispatch import Dispatcher

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def test_no_cap_means_no_budget() -> None:
    d = Dispatcher(0)
    d.register("a", 0, T0, asyncio.Event())
    assert d.budget("a", 100) is None


def test_higher_priority_demand_goes_first() -> None:
    d = Dispatcher(10)
    low, high = asyncio.Event(), asyncio.Event()
    d.register("low", 0, T0, low)
    d.register("high", 1000, T0 + datetime.timedelta(seconds=5), high)
    d.report("low", running=8, demand=5)
    d.report("high", running=0, demand=4)
    # Two free slots, and the high-priority batch wants four: the low one gets nothing.
    assert d.budget("low", 5) == 0
    assert d.budget("high", 4) == 2
    assert d.budget("high", 2) == 0  # reserved: the same slots are not granted twice
    # A low-priority shard finishes: the waiting batches are woken.
    d.report("high", running=2, demand=2)
    d.report("low", running=7, demand=5)
    assert high.is_set()
    assert d.budget("high", 2) == 1


def test_equal_priority_older_batch_first() -> None:
    d = Dispatcher(1)
    d.register("old", 5, T0, asyncio.Event())
    d.register("new", 5, T0 + datetime.timedelta(seconds=1), asyncio.Event())
    d.report("old", 0, 3)
    d.report("new", 0, 3)
    assert d.budget("new", 3) == 0
    assert d.budget("old", 3) == 1


def test_batches_not_reported_yet_count_from_the_index() -> None:
    # Right after a restart only one batch has run its first pass; the other's Jobs still run.
    d = Dispatcher(10)
    d.register("b", 0, T0, asyncio.Event())
    assert d.budget("b", 10, observed_running={"a": 10, "b": 0}) == 0
    assert d.budget("b", 10, observed_running={"a": 6, "b": 0}) == 4
