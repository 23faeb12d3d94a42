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

    def first_missing(self, start: int, stop: int, limit: int, skip: set[int] | None = None) -> list[int]:
        """Up to ``limit`` indexes in ``[start, stop)`` not in this set (nor in ``skip``), ascending.

        Walks the gaps between intervals, so it costs O(intervals + limit), not O(stop).
        """
        out: list[int] = []
        skip = skip or set()
        cursor = start
        pos = max(0, bisect.bisect_right(self._intervals, (start, float("inf"))) - 1)
        intervals = self._intervals
        while cursor < stop and len(out) < limit:
            while pos < len(intervals) and intervals[pos][1] < cursor:
                pos += 1
            if pos < len(intervals) and intervals[pos][0] <= cursor:
                cursor = intervals[pos][1] + 1
                continue
            gap_end = min(stop, intervals[pos][0] if pos < len(intervals) else stop)
            while cursor < gap_end and len(out) < limit:
                if cursor not in skip:
                    out.append(cursor)
                cursor += 1
        return out
