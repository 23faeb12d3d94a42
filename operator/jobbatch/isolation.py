"""Poison-item isolation (``retry.isolate``): split a failed shard's items until the bad ones are named.

A shard that has spent its retries (or failed for good at once: a non-retryable exit code, a
SkipRetry) is not failed whole. Its item range is halved and each half runs as an attempt of its own;
a half that fails is halved again, down to single items. The shard ends once every piece has
succeeded or is a single failed item, so every good item is processed and the bad ones are named.

The pieces form a binary tree numbered as a heap: node 1 is the shard's whole range, the halves of
node n are 2n (the lower half) and 2n + 1. Every piece runs once, in a one-pod Job named by
(shard, attempt, node), so a restarted operator finds each piece it made and never runs one twice.
All pieces of a shard share one attempt number, one above the attempt that failed.

Bound: each level of the tree holds at most k failed pieces for k bad items, and each failed piece
costs two attempts below it, so a shard of S items costs at most 2 * k * ceil(log2 S) attempts. At
most ``MAX_SPLITS_PER_LEVEL`` pieces of one level are split (a worker that fails every item would
otherwise cost 2 * S attempts): past that, a failing piece of that level is failed whole, so a shard
costs at most 2 * 16 * ceil(log2 S) attempts whatever its items do, and up to 16 bad items are each
named alone. Which pieces split is decided level-triggered: those split already keep their place,
then the lowest failed ones, so a piece once failed whole stays so. A failure that is not the items'
(every eighth of the shard fails the same way: a broken image, a worker that ignores its range) stops
the splitting at 14 pieces (``SYSTEMIC_LEVEL``): the eighths are held until all of them are decided.

Nothing here talks to Kubernetes: ``assess`` reads a shard's observed piece Jobs (level-triggered).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence

from jobbatch.observed import PodFailure, ShardJob
from jobbatch.ranges import IndexRanges

ROOT = 1  # the whole shard: its attempts are the ordinary ones, not pieces
# Failed pieces of one level of a shard's tree that are split; more are failed whole (the bound).
MAX_SPLITS_PER_LEVEL = 16
# When every eighth of a shard fails (all 8 pieces of this level), the failure is taken to be the
# worker's or its environment's (a broken image, a worker that ignores its piece's range), not its
# items': nothing of the shard is split further, so it costs at most 2 + 4 + 8 = 14 pieces.
SYSTEMIC_LEVEL = 4  # only when the eight failures look the same (exit code, reason and message)


def node_range(items: tuple[int, int], node: int) -> tuple[int, int]:
    """Half-open item range of ``node`` in a shard whose items are ``items`` (half-open)."""
    lo, hi = items
    for bit in bin(node)[3:]:  # the path from the root: 0 = lower half, 1 = upper half
        mid = lo + (hi - lo) // 2
        lo, hi = (lo, mid) if bit == "0" else (mid, hi)
    return lo, hi


def halves(node: int) -> tuple[int, int]:
    return 2 * node, 2 * node + 1


def max_attempts(items: int, bad: int) -> int:
    """The most piece attempts a shard of ``items`` items with ``bad`` bad ones can cost (docs, tests)."""
    depth = max(0, (items - 1).bit_length())  # ceil(log2 items)
    return 2 * min(bad, MAX_SPLITS_PER_LEVEL) * depth


@dataclasses.dataclass(frozen=True)
class FailedPiece:
    """A piece that failed for good: a single item, or a range once the shard named enough bad items."""

    node: int
    items: tuple[int, int]  # half-open
    exit_code: int | None
    reason: str
    message: str


@dataclasses.dataclass
class Isolation:
    """Where one shard's isolation stands, read from its piece Jobs."""

    shard: int
    attempt: int
    done: IndexRanges = dataclasses.field(default_factory=IndexRanges)  # items of pieces that succeeded
    failed: list[FailedPiece] = dataclasses.field(default_factory=list)
    wanted: list[int] = dataclasses.field(default_factory=list)  # pieces to run (nodes), lowest first
    busy: int = 0  # pieces running, or failed but not decided yet (their pod is not seen)
    systemic: bool = False  # every piece of SYSTEMIC_LEVEL failed the same way: splitting stopped
    # Failed pieces whose halves are wanted: failed whole if the batch ends before they run.
    splitting: list[FailedPiece] = dataclasses.field(default_factory=list)
    # Why a piece was split: (reason, exit code) of its failure, by node (metrics count it once).
    causes: dict[int, tuple[str, int | None]] = dataclasses.field(default_factory=dict)
    look_again: datetime.datetime | None = None

    @property
    def finished(self) -> bool:
        return not self.wanted and not self.busy

    @property
    def failed_items(self) -> IndexRanges:
        return IndexRanges((p.items[0], p.items[1] - 1) for p in self.failed)


def assess(
    shard: int,
    items: tuple[int, int],
    jobs: Sequence[ShardJob],
    failures: Mapping[tuple[int, int, int], PodFailure],
    now: datetime.datetime,
    grace: datetime.timedelta,
) -> Isolation:
    """The state of a shard's isolation from the piece Jobs observed for it (all of one attempt).

    A piece exists only because its parent failed, so each observed piece's sibling is wanted too (a
    create of the pair may have half failed). A failed piece of several items is split unless its
    level has ``MAX_SPLITS_PER_LEVEL`` split pieces; one whose halves exist is decided by them.
    """
    attempt = max(j.attempt for j in jobs)
    by_node = {j.node: j for j in jobs if j.attempt == attempt and j.node > ROOT}
    state = Isolation(shard, attempt)
    wanted: set[int] = set()
    outcomes: dict[int, FailedPiece | None] = {}  # failed nodes, with their failure once decided
    for node, job in by_node.items():
        if node ^ 1 not in by_node:
            wanted.add(node ^ 1)
        span = node_range(items, node)
        if job.succeeded:
            state.done = state.done.union(IndexRanges([(span[0], span[1] - 1)]))
        elif job.failed or job.lost:
            pod = failures.get((shard, attempt, node))
            if pod is not None:
                outcomes[node] = FailedPiece(node, span, pod.exit_code, pod.reason, pod.message)
            elif job.lost:
                why = "the piece's Job was deleted before it finished"
                outcomes[node] = FailedPiece(node, span, None, "Deleted", why)
            elif job.finished_at is not None and now >= job.finished_at + grace:
                outcomes[node] = FailedPiece(node, span, None, "Failed", "")
            else:
                outcomes[node] = None
                state.busy += 1
                if job.finished_at is not None:
                    at = job.finished_at + grace
                    state.look_again = at if state.look_again is None else min(state.look_again, at)
        else:
            state.busy += 1
    # Splits per level of the tree: those made already (their halves exist) first, then the lowest.
    made: dict[int, set[int]] = {}
    for node in by_node:
        if node // 2 > ROOT:
            made.setdefault((node // 2).bit_length(), set()).add(node // 2)
    quota = {level: len(parents) for level, parents in made.items()}
    possible = _systemic_possible(items, by_node, outcomes)
    eighths = range(2 ** (SYSTEMIC_LEVEL - 1), 2**SYSTEMIC_LEVEL)
    state.systemic = possible and all(outcomes.get(n) is not None for n in eighths)
    for node in sorted(outcomes):
        piece = outcomes[node]
        low, high = halves(node)
        if low in by_node or high in by_node:
            continue  # decided by its halves (the missing one is wanted as a sibling)
        if piece is None:
            continue  # undecided: counted busy
        level = node.bit_length()
        if possible and not state.systemic and level == SYSTEMIC_LEVEL:
            # Held until every eighth is decided, whatever order they end in: the same 14 pieces at most.
            state.busy += 1
            state.splitting.append(piece)
            continue
        splittable = piece.items[1] - piece.items[0] > 1 and not state.systemic
        if splittable and quota.get(level, 0) < MAX_SPLITS_PER_LEVEL:
            quota[level] = quota.get(level, 0) + 1
            wanted.update((low, high))
            state.splitting.append(piece)
            state.causes[node] = (piece.reason, piece.exit_code)
        else:
            state.failed.append(piece)
    state.wanted = sorted(n for n in wanted if n > ROOT)
    state.failed.sort(key=lambda p: p.items)
    return state


def _signature(piece: FailedPiece) -> tuple[int | None, str, str]:
    return piece.exit_code, piece.reason, piece.message


def _systemic_possible(
    items: tuple[int, int], by_node: Mapping[int, ShardJob], outcomes: Mapping[int, FailedPiece | None]
) -> bool:
    """Whether every eighth of the shard may yet fail the same way: nothing down to the eighths has
    succeeded and every failure decided there looks the same (exit code, reason, message). A worker's
    bad items usually say which item they are; a broken image, or a worker reading its whole shard in
    every piece, says the same thing every time."""
    if items[1] - items[0] < 2 ** (SYSTEMIC_LEVEL - 1):
        return False  # fewer items than eighths
    top = range(2, 2**SYSTEMIC_LEVEL)
    if any(n in by_node and by_node[n].succeeded for n in top):
        return False
    seen = {_signature(p) for n in top if (p := outcomes.get(n)) is not None}
    return len(seen) <= 1
