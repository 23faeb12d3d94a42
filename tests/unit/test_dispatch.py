from __future__ import annotations

import asyncio
import datetime
import random

import pytest

from jobbatch.dispatch import Dispatcher, InLine, Observed, QueueLimits, hand_out, water_fill

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
    assert d.budget("b", 10, {"a": Observed("ns", "", 10), "b": Observed("ns", "", 0)}) == 0
    assert d.budget("b", 10, {"a": Observed("ns", "", 6), "b": Observed("ns", "", 0)}) == 4


# -- BatchQueues ------------------------------------------------------------------------------------


def queued(cap: int, **queues: QueueLimits) -> Dispatcher:
    d = Dispatcher(cap)
    d.set_queues(queues)
    return d


def test_water_fill_shares_by_weight_within_wants() -> None:
    weights = {"high": 6, "mid": 3, "low": 1}
    assert water_fill(100, {"high": 1000, "mid": 1000, "low": 1000}, weights) == {"high": 60, "mid": 30, "low": 10}
    # A queue wanting less than its part gets what it wants; the rest goes to the others by weight.
    assert water_fill(100, {"high": 1000, "mid": 1000, "low": 4}, weights) == {"high": 64, "mid": 32, "low": 4}
    # Rounded by largest remainder: the parts sum to the cap.
    assert water_fill(100, {"a": 50, "b": 50, "c": 50}, {"a": 1, "b": 1, "c": 1}) == {"a": 34, "b": 33, "c": 33}
    # Fewer wanted than the cap: everyone gets what it wants.
    assert water_fill(100, {"a": 5, "b": 7}, {"a": 1, "b": 9}) == {"a": 5, "b": 7}
    # A queue with work never gets 0, however small its weight.
    assert water_fill(10, {"big": 100, "tiny": 100}, {"big": 1000, "tiny": 1}) == {"big": 9, "tiny": 1}


def test_three_saturated_queues_start_in_their_shares() -> None:
    d = queued(100, high=QueueLimits(6), mid=QueueLimits(3), low=QueueLimits(1))
    for name in ("high", "mid", "low"):
        d.register(name, 0, T0, asyncio.Event(), queue=name, namespace="ns")
        d.report(name, 0, 1000)
    # Whoever asks first takes only its share: the others' are reserved for them.
    assert d.budget("low", 1000) == 10
    assert d.budget("high", 1000) == 60
    assert d.budget("mid", 1000) == 30
    assert d.budget("high", 1000) == 0


def test_a_freed_slot_goes_to_the_queue_below_its_share() -> None:
    d = queued(100, high=QueueLimits(6), low=QueueLimits(1))
    for name in ("high", "low"):
        d.register(name, 0, T0, asyncio.Event(), queue=name, namespace="ns")
    # "low" was idle: "high" borrowed all 100 slots.
    d.report("high", 100, 500)
    d.report("low", 0, 0)
    assert d.budget("high", 500) == 0
    # Work arrives in "low" (share 100 * 1/7 -> 14): every slot that frees is its, none is high's...
    d.report("low", 0, 500)
    d.report("high", 95, 500)
    assert d.budget("high", 500) == 0
    assert d.budget("low", 500) == 5
    # ...until it holds its share; then high refills again.
    d.report("low", 14, 500)
    d.report("high", 80, 500)
    assert d.budget("low", 500) == 0
    assert d.budget("high", 500) == 6


def test_queue_and_namespace_caps_hold_without_a_cluster_cap() -> None:
    d = queued(0, q=QueueLimits(max_running=10, per_namespace=4))
    assert d.active
    d.register("a1", 0, T0, asyncio.Event(), queue="q", namespace="a")
    d.register("a2", 0, T0 + datetime.timedelta(seconds=1), asyncio.Event(), queue="q", namespace="a")
    d.register("b", 0, T0, asyncio.Event(), queue="q", namespace="b")
    d.register("free", 0, T0, asyncio.Event(), namespace="a")  # the default queue: no cap at all
    assert d.budget("a1", 100) == 4  # namespace a's limit
    assert d.budget("a2", 100) == 0  # the same namespace, same queue
    assert d.budget("b", 100) == 4
    d.report("a1", 4, 96)
    d.report("b", 4, 96)
    d.register("c", 0, T0, asyncio.Event(), queue="q", namespace="c")
    assert d.budget("c", 100) == 2  # the queue's own cap: 10
    assert d.budget("free", 1000) == 1000


def test_no_limit_anywhere_means_no_budget() -> None:
    d = queued(0, q=QueueLimits(weight=5))
    d.register("a", 0, T0, asyncio.Event(), queue="q")
    assert not d.active
    assert d.budget("a", 100) is None


def test_a_queue_cap_is_never_passed_even_by_borrowing() -> None:
    d = queued(100, capped=QueueLimits(weight=10, max_running=20), other=QueueLimits(1))
    d.register("x", 0, T0, asyncio.Event(), queue="capped")
    d.register("y", 0, T0, asyncio.Event(), queue="other")
    d.report("y", 0, 1000)
    assert d.budget("x", 1000) == 20
    assert d.budget("y", 1000) == 80  # what "capped" cannot use is the other queue's


def test_priority_orders_batches_inside_a_queue_only() -> None:
    d = queued(10, a=QueueLimits(1), b=QueueLimits(1))
    d.register("a-low", 0, T0, asyncio.Event(), queue="a")
    d.register("a-high", 100, T0, asyncio.Event(), queue="a")
    d.register("b-low", 0, T0, asyncio.Event(), queue="b")
    for uid in ("a-low", "a-high", "b-low"):
        d.report(uid, 0, 10)
    assert d.budget("a-low", 10) == 0  # a-high's demand comes first in queue a
    assert d.budget("b-low", 10) == 5  # queue b's share does not care about a's priorities
    assert d.budget("a-high", 10) == 5


def test_missing_queues_and_unreported_batches() -> None:
    d = Dispatcher(10)
    assert d.holds("default", "ns") is None
    assert d.holds("nightly", "ns") == (
        "QueueNotFound",
        'BatchQueue "nightly" is not known yet (BatchQueues could not be listed)',
    )
    d.set_queues({"nightly": QueueLimits(max_running=3), "team": QueueLimits(namespaces=frozenset({"team-a"}))})
    assert d.holds("nightly", "ns") is None
    assert d.holds("gone", "ns") == ("QueueNotFound", 'BatchQueue "gone" does not exist: no shard starts until it does')
    assert d.holds("team", "team-a") is None
    assert d.holds("team", "team-b") == (
        "QueueNotAllowed",
        'BatchQueue "team" does not admit namespace team-b (spec.namespaces)',
    )
    # Right after a restart: a batch not reported yet counts against its queue through its Jobs' label.
    d.register("new", 0, T0, asyncio.Event(), queue="nightly", namespace="ns")
    observed = {"old": Observed("ns", "nightly", 2), "new": Observed("ns", "nightly", 0)}
    assert d.budget("new", 10, observed) == 1


def test_setting_queues_wakes_every_batch() -> None:
    d = Dispatcher(0)
    held = asyncio.Event()
    d.register("held", 0, T0, held, queue="later")
    d.report("held", 0, 0)  # a batch held by a missing queue reports no demand
    d.set_queues({"later": QueueLimits()})
    assert held.is_set()


def test_summary_shows_each_queue() -> None:
    d = queued(100, high=QueueLimits(6), low=QueueLimits(1))
    d.register("h", 0, T0, asyncio.Event(), queue="high")
    d.register("l1", 0, T0, asyncio.Event(), queue="low")
    d.register("l2", 0, T0, asyncio.Event(), queue="low")
    d.report("h", 90, 10)
    d.report("l1", 10, 5)
    d.report("l2", 0, 5)
    summary = d.summary()
    high, low = summary["high"], summary["low"]
    assert (high.running, high.waiting, high.admitted, high.waiting_batches) == (90, 10, 1, 0)
    assert (low.running, low.waiting, low.admitted, low.waiting_batches) == (10, 10, 1, 1)
    assert summary["high"].share + summary["low"].share == 100


@pytest.mark.parametrize("seed", range(5))
def test_shares_hold_over_time_with_random_shard_ends(seed: int) -> None:
    """Three saturated queues weighted 6/3/1 under a cap of 100: shards end at random, every freed slot
    is asked for by all three in a random order; over time each holds its weight's part (within 10 %)."""
    rng = random.Random(seed)
    d = queued(100, high=QueueLimits(6), mid=QueueLimits(3), low=QueueLimits(1))
    running = {"high": 0, "mid": 0, "low": 0}
    for name in running:
        d.register(name, 0, T0, asyncio.Event(), queue=name)
        d.report(name, 0, 10_000)
    held = {name: 0 for name in running}
    for step in range(5_000):
        for name in rng.sample(list(running), 3):
            running[name] += d.budget(name, 10_000) or 0
            d.report(name, running[name], 10_000)
        assert sum(running.values()) <= 100
        if step >= 500:
            for name in running:
                held[name] += running[name]
        ending = rng.choice([n for n in running for _ in range(running[n])])
        running[ending] -= 1
        d.report(ending, running[ending], 10_000)
    total = sum(held.values())
    for name, weight in (("high", 0.6), ("mid", 0.3), ("low", 0.1)):
        assert abs(held[name] / total - weight) <= weight * 0.1


def test_priority_holds_nothing_back_where_nothing_is_limited() -> None:
    # A capped queue elsewhere turns the dispatcher on; the default queue still has no limit at all.
    d = queued(0, capped=QueueLimits(max_running=5))
    d.register("high", 100, T0, asyncio.Event())
    d.register("low", 0, T0, asyncio.Event())
    d.report("high", 10, 50)
    assert d.budget("low", 10) == 10


def test_a_batch_at_its_namespace_limit_holds_nothing_back_for_the_others() -> None:
    d = queued(0, q=QueueLimits(max_running=10, per_namespace=3))
    d.register("a-high", 100, T0, asyncio.Event(), queue="q", namespace="a")
    d.register("b-low", 0, T0, asyncio.Event(), queue="q", namespace="b")
    d.report("a-high", 3, 50)  # at namespace a's limit: its demand cannot be met anyway
    assert d.budget("b-low", 10) == 3
    # Below its limit, the higher-priority batch's usable demand comes first.
    d2 = queued(0, q=QueueLimits(max_running=4, per_namespace=3))
    d2.register("a-high", 100, T0, asyncio.Event(), queue="q", namespace="a")
    d2.register("b-low", 0, T0, asyncio.Event(), queue="q", namespace="b")
    d2.report("a-high", 1, 50)  # may start 2 more; the queue has 3 left
    assert d2.budget("b-low", 10) == 1


def test_slots_a_borrower_frees_go_to_the_queues_furthest_below_their_shares_and_none_sits_idle() -> None:
    # "high" borrowed all 100 slots while the others were idle; "mid" and "low" then get work.
    d = queued(100, high=QueueLimits(6), mid=QueueLimits(3), low=QueueLimits(1))
    for name in ("high", "mid", "low"):
        d.register(name, 0, T0, asyncio.Event(), queue=name)
    d.report("high", 100, 500)
    d.report("mid", 0, 500)
    d.report("low", 0, 500)
    running = {"high": 100, "mid": 0, "low": 0}
    low_first = None
    for ended in range(1, 41):  # high's shards end one at a time; every queue asks after each
        running["high"] -= 1
        d.report("high", running["high"], 500)
        for name in ("high", "mid", "low"):
            running[name] += d.budget(name, 500) or 0
            d.report(name, running[name], 500)
        assert sum(running.values()) == 100  # the freed slot was taken at once: none idle
        if low_first is None and running["low"]:
            low_first = ended
    assert low_first is not None
    assert low_first <= 4  # low is served from the start, not after mid is full
    assert running["high"] == 60  # and high, above its share, got none of them
    assert abs(running["mid"] / running["low"] - 3) <= 0.5


def test_ten_equal_queues_and_one_borrower_keep_the_cluster_full() -> None:
    names = [f"q{i}" for i in range(10)]
    d = queued(100, **{n: QueueLimits(1) for n in names})
    for n in names:
        d.register(n, 0, T0, asyncio.Event(), queue=n)
        d.report(n, 0, 500)
    d.report("q0", 100, 500)
    running = dict.fromkeys(names, 0)
    running["q0"] = 100
    for _ in range(90):
        running["q0"] -= 1
        d.report("q0", running["q0"], 500)
        for n in names:
            running[n] += d.budget(n, 500) or 0
            d.report(n, running[n], 500)
        assert sum(running.values()) == 100
    assert sorted(running.values()) == [10] * 10


def test_a_batch_that_stops_wanting_wakes_the_others() -> None:
    d = Dispatcher(10)
    waiting = asyncio.Event()
    d.register("high", 100, T0, asyncio.Event())
    d.register("low", 0, T0, waiting)
    d.report("high", 0, 10)
    d.report("low", 0, 10)
    waiting.clear()
    d.report("high", 0, 0)  # suspended, say: nothing held back for it any more
    assert waiting.is_set()


def test_moving_a_batch_to_another_queue_wakes_the_others() -> None:
    d = queued(0, a=QueueLimits(max_running=5), b=QueueLimits(max_running=5))
    waiting = asyncio.Event()
    d.register("mover", 0, T0, asyncio.Event(), queue="a")
    d.register("other", 0, T0, waiting, queue="a")
    d.report("mover", 5, 0)
    d.report("other", 0, 5)
    waiting.clear()
    d.register("mover", 0, T0, asyncio.Event(), queue="b")
    assert waiting.is_set()
    assert d.budget("other", 5) == 5


def naive_hand_out(free: int, lines: list[InLine]) -> dict[str, int]:
    """The definition: one slot at a time to the lowest (group, level, -weight, name)."""
    given = {q.name: 0 for q in lines}
    for _ in range(free):
        open_ = [q for q in lines if given[q.name] < q.room]
        if not open_:
            break
        q = min(open_, key=lambda q: (q.share <= 0, q.level(given[q.name]), -q.weight, q.name))
        given[q.name] += 1
    return {name: n for name, n in given.items() if n > 0}


def test_the_fast_handout_is_the_one_at_a_time_handout() -> None:
    for seed in range(300):
        rng = random.Random(seed)
        lines = [
            InLine(
                f"q{i}",
                rng.randrange(400),
                rng.choice([0, *range(1, 300)]),
                rng.randrange(1, 10),
                rng.randrange(1, 600),
            )
            for i in range(rng.randrange(1, 8))
        ]
        free = rng.randrange(2000)
        assert hand_out(free, lines) == naive_hand_out(free, lines), seed


def test_a_handout_of_100000_slots_fills_every_queue_to_its_share() -> None:
    # 50 queues of share 2,000 and 100,000 free slots: each reaches its share exactly (in O(queues) steps,
    # not 100,000: docs/performance.md has the time).
    lines = [InLine(f"q{i}", 0, 2000, 1 + i % 7, 100_000) for i in range(50)]
    assert hand_out(100_000, lines) == {f"q{i}": 2000 for i in range(50)}


def test_a_batch_that_wants_nothing_gets_and_holds_nothing() -> None:
    d = Dispatcher(10)
    d.register("idle", 0, T0, asyncio.Event())
    assert d.budget("idle", 0) == 0
    d.register("busy", 0, T0, asyncio.Event())
    assert d.budget("busy", 10) == 10


def test_a_grant_lowers_the_demand_others_see_and_new_demand_wakes_them_while_slots_are_free() -> None:
    d = Dispatcher(10)
    waiting = asyncio.Event()
    d.register("a", 100, T0, asyncio.Event())
    d.register("b", 0, T0, waiting)
    d.report("a", 0, 6)
    assert d.budget("a", 6) == 6
    assert d.budget("b", 10) == 4  # a's demand is met: nothing more is held back for it
    d.report("b", 4, 6)
    waiting.clear()
    d.report("a", 6, 3)  # more work became ready for a, with no slot free: nothing to wake for
    assert not waiting.is_set()
    d.report("b", 2, 6)  # b's two shards ended: slots free, b waits
    waiting.clear()
    d.report("a", 6, 5)  # a wants more while slots are free: the shares moved, b looks again
    assert waiting.is_set()


def test_queue_status_is_written_over_nothing_ours_or_idle_numbers_of_our_own() -> None:
    from jobbatch.dispatch import QueueSummary
    from jobbatch.queues import status_of, to_write

    busy, idle = status_of(QueueSummary(running=5), "us"), status_of(None, "us")
    assert to_write(idle, {}, "us")  # a new queue: zeros
    assert to_write(busy, {**idle, "operator": "them"}, "us")  # ours run in it
    assert not to_write(idle, {**busy, "operator": "them"}, "us")  # their numbers, none of ours
    assert to_write(idle, {**busy, "operator": "us"}, "us")  # ours went (even across a restart): zero it
    assert not to_write(busy, busy, "us")
