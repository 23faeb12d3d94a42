"""Compact sets of shard indexes, written like ``Job.status.completedIndexes``: ``"0-41,43,45-99"``.

Status must stay small at 100,000 shards, so sets of shards are stored as sorted,
merged, inclusive intervals and only rendered to text at the edge.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator


class IndexRanges:
    """An immutable set of non-negative integers stored as disjoint inclusive intervals."""

    __slots__ = ("_intervals",)

    def __init__(self, intervals: Iterable[tuple[int, int]] = ()) -> None:
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(intervals):
            if lo > hi or lo < 0:
                raise ValueError(f"bad interval {lo}-{hi}")
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        self._intervals: tuple[tuple[int, int], ...] = tuple(merged)

    @classmethod
    def parse(cls, text: str | None) -> IndexRanges:
        """Parse ``"0-3,7"``; empty or None is the empty set."""
        intervals = []
        for part in (text or "").split(","):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            try:
                intervals.append((int(lo), int(hi) if sep else int(lo)))
            except ValueError:
                raise ValueError(f"bad index range {part!r} in {text!r}") from None
        return cls(intervals)

    @classmethod
    def of(cls, indexes: Iterable[int]) -> IndexRanges:
        return cls((i, i) for i in indexes)

    def __str__(self) -> str:
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self._intervals)

    def __repr__(self) -> str:
        return f"IndexRanges({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IndexRanges) and self._intervals == other._intervals

    def __hash__(self) -> int:
        return hash(self._intervals)

    def __len__(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self._intervals)

    def __bool__(self) -> bool:
        return bool(self._intervals)

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int):
            return False
        pos = bisect.bisect_right(self._intervals, (index, float("inf"))) - 1
        return pos >= 0 and self._intervals[pos][0] <= index <= self._intervals[pos][1]

    def __iter__(self) -> Iterator[int]:
        for lo, hi in self._intervals:
            yield from range(lo, hi + 1)

    @property
    def intervals(self) -> tuple[tuple[int, int], ...]:
        return self._intervals

    def union(self, other: IndexRanges | Iterable[int]) -> IndexRanges:
        extra = other.intervals if isinstance(other, IndexRanges) else [(i, i) for i in other]
        return IndexRanges([*self._intervals, *extra])

    def difference(self, other: IndexRanges) -> IndexRanges:
        """The indexes of this set that are not in ``other``; O(intervals of both)."""
        out: list[tuple[int, int]] = []
        theirs = other.intervals
        pos = 0
        for lo, hi in self._intervals:
            while pos < len(theirs) and theirs[pos][1] < lo:
                pos += 1
            cursor, scan = lo, pos
            while scan < len(theirs) and theirs[scan][0] <= hi:
                if theirs[scan][0] > cursor:
                    out.append((cursor, theirs[scan][0] - 1))
                cursor = max(cursor, theirs[scan][1] + 1)
                scan += 1
            if cursor <= hi:
                out.append((cursor, hi))
        return IndexRanges(out)

    def intersection(self, other: IndexRanges) -> IndexRanges:
        return self.difference(self.difference(other))

    def gaps(self, start: int, stop: int) -> Iterator[tuple[int, int]]:
        """The maximal runs ``(lo, hi)`` (inclusive) of ``[start, stop)`` not in this set, ascending."""
        cursor = start
        for lo, hi in self._intervals:
            if hi < cursor:
                continue
            if lo >= stop:
                break
            if lo > cursor:
                yield cursor, lo - 1
            cursor = hi + 1
        if cursor < stop:
            yield cursor, stop - 1
