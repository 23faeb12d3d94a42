"""The cluster-wide cap on running shards, shared by all batches in priority order.

With ``--max-running-shards`` set, a batch may only launch into free cluster slots,
and free slots go first to the batch with the highest PriorityClass value (then the
oldest). Each batch reports its running count and unmet demand after every pass;
grants are reserved at once, so passes of different batches cannot spend the same
slot twice within this process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from collections.abc import Mapping


@dataclasses.dataclass
class _Entry:
    priority: int
    created: datetime.datetime
    running: int = 0
    demand: int = 0
    wake: asyncio.Event | None = None


class Dispatcher:
    def __init__(self, cap: int) -> None:
        self.cap = cap  # 0 = no cap
        self._batches: dict[str, _Entry] = {}

    def register(self, uid: str, priority: int, created: datetime.datetime, wake: asyncio.Event) -> None:
        entry = self._batches.setdefault(uid, _Entry(priority, created))
        entry.priority, entry.created, entry.wake = priority, created, wake

    def forget(self, uid: str) -> None:
        self._batches.pop(uid, None)
        self._wake_waiting()

    def budget(self, uid: str, wanted: int, observed_running: Mapping[str, int] | None = None) -> int | None:
        """How many shards ``uid`` may launch now (None: no cap). The grant is reserved at once.

        ``observed_running`` is what the Job index shows running per batch; it covers batches whose
        first pass has not reported yet (right after a restart) and reports that lag behind.
        """
        if not self.cap:
            return None
        me = self._batches[uid]
        observed = observed_running or {}
        busy = {other: e.running for other, e in self._batches.items()}
        for other, count in observed.items():
            busy[other] = max(busy.get(other, 0), count)
        free = self.cap - sum(busy.values())
        ahead = sum(
            e.demand
            for other, e in self._batches.items()
            if other != uid and (-e.priority, e.created) < (-me.priority, me.created)
        )
        grant = max(0, min(wanted, free - ahead))
        me.running += grant
        return grant

    def report(self, uid: str, running: int, demand: int) -> None:
        entry = self._batches.get(uid)
        if entry is None:
            return
        freed = running < entry.running
        entry.running, entry.demand = running, demand
        if freed:
            self._wake_waiting()

    def _wake_waiting(self) -> None:
        for entry in self._batches.values():
            if entry.demand and entry.wake is not None:
                entry.wake.set()
