"""The one way tests wait: poll a condition until it holds or a timeout explains what was seen.

Timing constants live here and nowhere else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# How long a cluster-side condition (a Job completing, a pod starting) may take.
TIMEOUT = 90.0
# How often conditions are re-checked.
INTERVAL = 0.25


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    what: str,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
) -> T:
    """Return the first truthy result of ``probe``; on timeout, fail with the last result seen."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        result = await probe()
        if result:
            return result
        last = result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last saw: {last!r}")
        await asyncio.sleep(interval)
