"""Who may start shards now: the cluster-wide cap, BatchQueues' weighted shares and caps, priority.

Every batch registers (queue, namespace, priority) and reports after each pass what it runs and what it
could start but was not granted (its unmet demand). A pass asks ``budget`` how many shards it may start.
Grants are reserved at once, so passes of different batches cannot spend one slot twice within this
process. The decision, for a batch of queue q and namespace n:

1. **Shares.** Each queue's *want* is what it runs plus its batches' unmet demand, within its own
   ``maxRunningShards`` (and each namespace's part within ``maxRunningShardsPerNamespace``). The
   cluster cap C is water-filled over the queues that want anything, by weight: a queue wanting less
   than its weighted part gets what it wants, the rest is shared again among the others. The parts are
   rounded to whole shards by largest remainder (they sum to C), and a queue left with 0 takes one
   from the largest, so no queue with work starves while C is at least the number of queues with work
   (below that, the queues left without a share wait for the others' slots, in weight and name order).
2. **Who gets the free slots.** They are handed out one at a time, each to the queue with work that
   is furthest below its share (lowest running/share), and q may start its part. So a queue over its
   share (it borrowed while the others were idle) gets none while any queue with work is below its
   own, the queues below theirs fill up in step (a low-weight queue is served from the first freed
   slot, not after the others are full), and no slot stays free while some queue can use it.
   Borrowing is what is left: slots no queue below its share wants. Nothing running is ever stopped.
3. **Caps.** Never past C, the queue's ``maxRunningShards``, or n's ``maxRunningShardsPerNamespace``.
4. **Priority inside a queue.** The unmet demand of the queue's batches ranked ahead (higher
   PriorityClass value, then older) is held for them, in each limited pool they share (none when
   nothing limits the queue), as far as they can use it (their namespace's limit).

Without a cluster cap, only steps 3 and 4 apply (there is nothing to share). The outcome over time is
deficit round-robin on running shards. A queue's ``namespaces`` (if set) admit only those namespaces'
batches; the others are held (``holds``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence

from jobbatch.api import DEFAULT_QUEUE
from jobbatch.observed import ShardJob


@dataclasses.dataclass(frozen=True)
class QueueLimits:
    """A BatchQueue's spec, as the dispatcher uses it (the implicit default queue: all defaults)."""

    weight: int = 1
    max_running: int | None = None
    per_namespace: int | None = None
    namespaces: frozenset[str] = frozenset()  # empty: any namespace may use it


@dataclasses.dataclass(frozen=True)
class Observed:
    """Shards a batch's Jobs hold, as the Job index shows (the queue from the Jobs' label)."""

    namespace: str
    queue: str
    running: int


def observed_from(by_batch: Mapping[tuple[str, str], Iterable[ShardJob]]) -> dict[str, Observed]:
    """The Job index (by namespace and batch UID) as the dispatcher counts it: slots held per batch."""
    out = {}
    for (namespace, uid), jobs in by_batch.items():
        listed = list(jobs)
        out[uid] = Observed(namespace, next((j.queue for j in listed if j.queue), ""), sum(j.slots for j in listed))
    return out


@dataclasses.dataclass(frozen=True)
class QueueSummary:
    """What a BatchQueue's status shows."""

    running: int = 0
    waiting: int = 0
    share: int = 0
    admitted: int = 0
    waiting_batches: int = 0


@dataclasses.dataclass
class _Entry:
    priority: int
    created: datetime.datetime
    queue: str = DEFAULT_QUEUE
    namespace: str = ""
    running: int = 0
    demand: int = 0
    wake: asyncio.Event | None = None


@dataclasses.dataclass
class _Load:
    """One queue's running shards and unmet demand, in total and by namespace."""

    running: int = 0
    demand: int = 0
    by_namespace: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # ns -> [running, demand]

    def namespace_running(self, namespace: str) -> int:
        return self.by_namespace.get(namespace, [0, 0])[0]


class Dispatcher:
    def __init__(self, cap: int) -> None:
        self.cap = cap  # 0 = no cluster-wide cap
        self.queues: dict[str, QueueLimits] = {}  # the BatchQueues that exist, by name
        self.queues_listed = False  # the BatchQueue watch has listed them all once
        self._batches: dict[str, _Entry] = {}

    # -- queues -------------------------------------------------------------------------------------
    def set_queues(self, queues: Mapping[str, QueueLimits]) -> None:
        """The BatchQueues changed: a queue created, a raised weight or cap may let any batch start (rare: wake all)."""
        self.queues = dict(queues)
        self.queues_listed = True
        for entry in self._batches.values():
            if entry.wake is not None:
                entry.wake.set()

    def holds(self, queue: str, namespace: str) -> tuple[str, str] | None:
        """(reason, message) when the batch's queue keeps it from starting anything: it does not exist (the
        default queue always does), or it does not admit the batch's namespace."""
        if queue != DEFAULT_QUEUE and queue not in self.queues:
            if self.queues_listed:
                return "QueueNotFound", f'BatchQueue "{queue}" does not exist: no shard starts until it does'
            return "QueueNotFound", f'BatchQueue "{queue}" is not known yet (BatchQueues could not be listed)'
        allowed = self.limits(queue).namespaces
        if allowed and namespace not in allowed:
            return "QueueNotAllowed", f'BatchQueue "{queue}" does not admit namespace {namespace} (spec.namespaces)'
        return None

    @property
    def active(self) -> bool:
        """Whether anything limits starts: a cluster cap, or a queue with a cap of its own."""
        return bool(self.cap) or any(
            q.max_running is not None or q.per_namespace is not None for q in self.queues.values()
        )

    def limits(self, queue: str) -> QueueLimits:
        return self.queues.get(queue, QueueLimits())

    # -- batches ------------------------------------------------------------------------------------
    def register(
        self,
        uid: str,
        priority: int,
        created: datetime.datetime,
        wake: asyncio.Event,
        *,
        queue: str = DEFAULT_QUEUE,
        namespace: str = "",
    ) -> None:
        entry = self._batches.setdefault(uid, _Entry(priority, created, queue, namespace))
        moved = entry.queue != queue  # its shards now count in another queue: the old one has room
        entry.priority, entry.created, entry.wake = priority, created, wake
        entry.queue, entry.namespace = queue, namespace
        if moved:
            self._wake_waiting()

    def forget(self, uid: str) -> None:
        self._batches.pop(uid, None)
        self._wake_waiting()

    def budget(self, uid: str, wanted: int, observed: Mapping[str, Observed] | None = None) -> int | None:
        """How many shards ``uid`` may start now (None: nothing limits it). The grant is reserved at once.

        ``observed`` is what the Job index shows running per batch; it covers batches whose first pass has
        not reported yet (right after a restart) and reports that lag behind.
        """
        if not self.active:
            return None
        me = self._batches[uid]
        if wanted <= 0:
            return 0
        loads = self._loads(observed or {}, asking=(uid, wanted))
        load = loads.get(me.queue, _Load())
        limits = self.limits(me.queue)
        ahead_queue, ahead_namespace = self._ahead(uid, me, load, limits)
        rooms = []
        if self.cap:
            rooms.append(self._part_of_free(loads, me.queue) - ahead_queue)
        if limits.max_running is not None:
            rooms.append(limits.max_running - load.running - ahead_queue)
        if limits.per_namespace is not None:
            rooms.append(limits.per_namespace - load.namespace_running(me.namespace) - ahead_namespace)
        grant = max(0, min([wanted, *rooms]))
        me.running += grant
        me.demand = max(0, me.demand - grant)  # what it waits for is less by that: others see it at once
        return grant

    def report(self, uid: str, running: int, demand: int) -> None:
        """What a pass left the batch holding (slots its Jobs hold, stopping pods included) and waiting for.

        Fewer running, or less waiting (held back for it by priority or by its queue's share), may let
        others start: the waiting batches are woken.
        """
        entry = self._batches.get(uid)
        if entry is None:
            return
        released = running < entry.running or demand < entry.demand
        # More demand moves the shares: a slot one queue was kept from may now be another's to take.
        reshared = demand > entry.demand and self.cap > self._running_total()
        entry.running, entry.demand = running, demand
        if released or reshared:
            self._wake_waiting()

    def wake_waiting(self) -> None:
        """Slots were freed outside any batch's pass (a deleted batch's pods went): look again."""
        self._wake_waiting()

    def _running_total(self) -> int:
        return sum(e.running for e in self._batches.values())

    def summary(self, observed: Mapping[str, Observed] | None = None) -> dict[str, QueueSummary]:
        """Per queue with batches: running and waiting shards, its share now, admitted and waiting batches."""
        loads = self._loads(observed or {})
        shares = self._shares(loads) if self.cap else {}
        admitted: dict[str, int] = {}
        waiting: dict[str, int] = {}
        for entry in self._batches.values():
            if entry.running:
                admitted[entry.queue] = admitted.get(entry.queue, 0) + 1
            elif entry.demand:
                waiting[entry.queue] = waiting.get(entry.queue, 0) + 1
        return {
            q: QueueSummary(load.running, load.demand, shares.get(q, 0), admitted.get(q, 0), waiting.get(q, 0))
            for q, load in loads.items()
        }

    # -- the arithmetic -----------------------------------------------------------------------------
    def _ahead(self, uid: str, me: _Entry, load: _Load, limits: QueueLimits) -> tuple[int, int]:
        """What the batches of the queue ranked ahead of ``uid`` still wait for: in the queue's pools (its
        part of the cluster, its cap) and in the namespace's, but never more than a namespace can start
        (batches at their namespace's limit hold nothing back for the others)."""
        by_namespace: dict[str, int] = {}
        for other, e in self._batches.items():
            if other != uid and e.queue == me.queue and (-e.priority, e.created) < (-me.priority, me.created):
                by_namespace[e.namespace] = by_namespace.get(e.namespace, 0) + e.demand
        if limits.per_namespace is not None:
            for namespace, demand in by_namespace.items():
                room = max(0, limits.per_namespace - load.namespace_running(namespace))
                by_namespace[namespace] = min(demand, room)
        return sum(by_namespace.values()), by_namespace.get(me.namespace, 0)

    def _part_of_free(self, loads: Mapping[str, _Load], queue: str) -> int:
        """How many of the cluster's free slots are ``queue``'s (``hand_out``). Only the asking queue's part
        is counted: the others take theirs when they ask."""
        free = self.cap - sum(q.running for q in loads.values())
        if free <= 0:
            return 0
        shares = self._shares(loads)
        lines = []
        for name, load in loads.items():
            limits = self.limits(name)
            room = load.demand
            if limits.max_running is not None:
                room = min(room, limits.max_running - load.running)
            if room > 0:
                lines.append(InLine(name, load.running, shares.get(name, 0), limits.weight, room))
        return hand_out(free, lines).get(queue, 0)

    def _loads(self, observed: Mapping[str, Observed], asking: tuple[str, int] | None = None) -> dict[str, _Load]:
        """Each queue's running shards and unmet demand (the asking batch's demand: what it asks for now)."""
        loads: dict[str, _Load] = {}

        def add(queue: str, namespace: str, running: int, demand: int) -> None:
            load = loads.setdefault(queue, _Load())
            ns = load.by_namespace.setdefault(namespace, [0, 0])
            load.running += running
            ns[0] += running
            ns[1] += demand

        for uid, entry in self._batches.items():
            seen = observed.get(uid)
            running = max(entry.running, seen.running if seen is not None else 0)
            demand = asking[1] if asking is not None and asking[0] == uid else entry.demand
            add(entry.queue, entry.namespace, running, demand)
        for uid, seen in observed.items():
            if uid not in self._batches and seen.running:
                add(seen.queue or DEFAULT_QUEUE, seen.namespace, seen.running, 0)
        for queue, load in loads.items():
            per_ns = self.limits(queue).per_namespace
            load.demand = sum(
                max(0, min(d, per_ns - r)) if per_ns is not None else d for r, d in load.by_namespace.values()
            )
        return loads

    def _shares(self, loads: Mapping[str, _Load]) -> dict[str, int]:
        """Water-fill the cluster cap over the queues by weight, within what each wants (module docstring)."""
        wants: dict[str, int] = {}
        for queue, load in loads.items():
            want = load.running + load.demand
            cap = self.limits(queue).max_running
            if cap is not None:
                want = min(want, max(cap, load.running))
            if want > 0:
                wants[queue] = want
        return water_fill(self.cap, wants, {q: self.limits(q).weight for q in wants})

    def _wake_waiting(self) -> None:
        for entry in self._batches.values():
            if entry.demand and entry.wake is not None:
                entry.wake.set()


@dataclasses.dataclass(frozen=True)
class InLine:
    """A queue waiting for free slots: what it runs, its share, its weight, and how many more it can use."""

    name: str
    running: int
    share: int
    weight: int
    room: int

    def level(self, given: int) -> float:
        """How far along it is with ``given`` more: running/share (below its share: under 1); a queue
        without a share (the cap is smaller than the number of queues) comes after, by running/weight."""
        return (self.running + given) / (self.share if self.share > 0 else self.weight)


ONE_AT_A_TIME = 256  # up to this many free slots the handout is a plain heap walk, one step each


def hand_out(free: int, lines: Sequence[InLine]) -> dict[str, int]:
    """The free slots handed out one at a time, each to the queue with the lowest level (ties: the larger
    weight, then the name), none past its room; returns what each got.

    Done in O(queues) rather than one step per slot (a cap can be 100,000): queues with a share first,
    then those without, each group filled up to the highest level whose slots all fit, found by
    bisection (every slot below that level comes before any at or above it in the one-at-a-time order),
    then the few slots left one at a time.
    """
    given = {line.name: 0 for line in lines}
    for group in ([q for q in lines if q.share > 0], [q for q in lines if q.share <= 0]):
        if free <= 0 or not group:
            continue
        if sum(q.room for q in group) <= free:
            for q in group:
                given[q.name] = q.room
            free -= sum(q.room for q in group)
            continue

        def below(level: float, group: list[InLine] = group) -> dict[str, int]:
            scale = {q.name: q.share if q.share > 0 else q.weight for q in group}
            return {q.name: min(q.room, max(0, math.ceil(level * scale[q.name] - q.running))) for q in group}

        if free > ONE_AT_A_TIME:
            lo, hi = 0.0, max(q.level(q.room) for q in group) + 1.0
            for _ in range(60):
                mid = (lo + hi) / 2
                if sum(below(mid).values()) <= free:
                    lo = mid
                else:
                    hi = mid
            for name, count in below(lo).items():
                given[name] = count
                free -= count
        heap = [(q.level(given[q.name]), -q.weight, q.name, q) for q in group if given[q.name] < q.room]
        heapq.heapify(heap)
        while free > 0 and heap:
            _, _, name, q = heapq.heappop(heap)
            given[name] += 1
            free -= 1
            if given[name] < q.room:
                heapq.heappush(heap, (q.level(given[name]), -q.weight, name, q))
    return {name: n for name, n in given.items() if n > 0}


def water_fill(capacity: int, wants: Mapping[str, int], weights: Mapping[str, int]) -> dict[str, int]:
    """Whole shares of ``capacity`` by weight, none above its want, summing to min(capacity, sum of wants).

    Rounded by largest remainder (ties: the larger weight, then the name); a queue that wants something
    and would get 0 takes one from the largest share, if that share has more than one.
    """
    exact: dict[str, float] = {}
    left, open_ = float(capacity), set(wants)
    while open_ and left > 1e-9:
        total = sum(weights[q] for q in open_)
        part = {q: left * weights[q] / total for q in open_}
        full = {q for q in open_ if wants[q] - exact.get(q, 0.0) <= part[q]}
        if not full:
            for q in open_:
                exact[q] = exact.get(q, 0.0) + part[q]
            break
        for q in full:
            left -= wants[q] - exact.get(q, 0.0)
            exact[q] = float(wants[q])
        open_ -= full
    shares = {q: math.floor(v + 1e-9) for q, v in exact.items()}
    target = min(capacity, sum(wants.values()))
    spare = target - sum(shares.values())
    order = sorted(shares, key=lambda q: (-(exact[q] - shares[q]), -weights[q], q))
    for q in order[: max(0, spare)]:  # remainders add at most one per queue
        if shares[q] < wants[q]:
            shares[q] += 1
    for q in sorted(wants):
        if shares.get(q, 0) == 0:
            donor = max(shares, key=lambda d: (shares[d], d), default=None)
            if donor is not None and shares[donor] > 1:
                shares[donor] -= 1
                shares[q] = 1
    return {q: v for q, v in shares.items() if v > 0}
