"""The sandbox runs untrusted computations in a child process, bounded in time and memory."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from typing import Any

import pytest

from jobbatch import payloads
from jobbatch.api import JobBatchSpec
from jobbatch.sandbox import Sandbox, SandboxError

# A pattern that backtracks exponentially on a near-miss: this would hold the GIL for hours.
EVIL = {"type": "string", "pattern": "^(a+)+$"}


def spec(items: list[Any], schema: dict[str, Any] | None = None) -> JobBatchSpec:
    body: dict[str, Any] = {
        "template": {"spec": {"containers": [{"name": "w", "image": "i"}]}},
        "payloads": {"items": items},
    }
    if schema is not None:
        body["payloadSchema"] = schema
    return JobBatchSpec.model_validate(body)


def _allocate(nbytes: int) -> int:
    return len(bytearray(nbytes))


def _exit() -> None:
    os._exit(3)


async def test_result_and_errors_come_back() -> None:
    sandbox = Sandbox(timeout=30)
    items = await sandbox.run(payloads.prepare, spec([1, 2]))
    assert items == payloads.Items(2, "1\n2\n")
    with pytest.raises(payloads.PayloadError) as exc:
        await sandbox.run(payloads.prepare, spec([1], {"type": "string"}))
    assert exc.value.reason == "PayloadSchemaViolation"


async def test_a_runaway_schema_is_killed_and_the_event_loop_keeps_running() -> None:
    sandbox = Sandbox(timeout=2)
    loop = asyncio.get_running_loop()
    stamps: list[float] = []

    async def tick() -> None:
        while True:
            stamps.append(loop.time())
            await asyncio.sleep(0.05)

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    try:
        with pytest.raises(SandboxError) as exc:
            await sandbox.run(payloads.prepare, spec(["a" * 40 + "!"], EVIL))
    finally:
        ticker.cancel()
    assert exc.value.reason == "Timeout"
    assert time.monotonic() - started < 10  # killed at its deadline, not run to the end
    # The loop never stopped: on this thread the match would have held it for the whole 2 s.
    assert max(b - a for a, b in itertools.pairwise(stamps)) < 1.0
    # The sandbox still works after a kill.
    assert (await sandbox.run(payloads.prepare, spec([1]))).count == 1


async def test_memory_is_limited() -> None:
    sandbox = Sandbox(timeout=30, memory=1 << 30)
    with pytest.raises(SandboxError) as exc:
        await sandbox.run(_allocate, 4 << 30)
    assert exc.value.reason == "OutOfMemory"
    assert await sandbox.run(_allocate, 1 << 20) == 1 << 20


async def test_a_dying_child_is_reported() -> None:
    with pytest.raises(SandboxError) as exc:
        await Sandbox(timeout=30).run(_exit)
    assert exc.value.reason == "Crashed"
    assert "exit code 3" in exc.value.message
