"""Retry delays: exponential, capped, with jitter that is deterministic per (batch, shard, attempt).

Deterministic jitter keeps the operator level-triggered: the next launch time of a
failed shard is its recorded failure time plus a delay any operator process
computes identically, before or after a restart.
"""

from __future__ import annotations

import hashlib
import math

from jobbatch.api import Backoff


def jitter_factor(jitter: float, batch_uid: str, shard: int, attempt: int) -> float:
    """A factor in [1 - jitter, 1 + jitter], uniform over (uid, shard, attempt)."""
    digest = hashlib.sha256(f"{batch_uid}/{shard}/{attempt}".encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64  # [0, 1)
    return 1.0 + jitter * (2.0 * unit - 1.0)


def retry_delay(backoff: Backoff, batch_uid: str, shard: int, failed_attempt: int) -> float:
    """Seconds to wait after attempt ``failed_attempt`` (0 = the first) failed."""
    try:
        grown = backoff.initial_seconds * backoff.multiplier**failed_attempt
    except OverflowError:  # the operator's own create backoff counts refusals without a limit
        grown = math.inf
    base = min(backoff.max_seconds, grown)
    return base * jitter_factor(backoff.jitter, batch_uid, shard, failed_attempt)
