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
from tests.waiting import eventually

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


def _wait_for_release(path: str) -> int:
    """Stand-in for a slow schema: blocks until a byte comes through the FIFO ``path``; returns its pid."""
    with open(path + ".pids", "a", encoding="ascii") as pids:
        pids.write(f"{os.getpid()}\n")
    with open(path, "rb", buffering=0) as fifo:  # unbuffered: it takes one byte, and leaves the rest
        fifo.read(1)
    return os.getpid()


def _pids(path: str) -> list[int]:
    try:
        with open(path + ".pids", encoding="ascii") as pids:
            return [int(line) for line in pids]
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().split()[2] != "Z"  # a zombie is gone, only not yet reaped


async def _started(path: str) -> list[int]:
    return _pids(path)


async def test_a_caller_that_gives_up_kills_its_child_and_holds_its_slot_until_then(tmp_path: Any) -> None:
    sandbox = Sandbox(timeout=60, concurrency=1)
    never = str(tmp_path / "never")
    os.mkfifo(never)  # nobody ever writes: the child blocks until it is killed
    gave_up = asyncio.create_task(sandbox.run(_wait_for_release, never))
    await eventually(lambda: _started(never), what="the child to start", timeout=10)
    (child,) = _pids(never)
    gave_up.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gave_up
    # The next caller gets the one slot only once that child is dead: long before its 60 s deadline.
    assert (await sandbox.run(payloads.prepare, spec([1]))).count == 1
    assert not _alive(child)


async def test_one_tenant_cannot_take_every_slot(tmp_path: Any) -> None:
    sandbox = Sandbox(timeout=60, concurrency=2)
    release = str(tmp_path / "release")
    os.mkfifo(release)
    writer = os.open(release, os.O_RDWR)  # a writer that never blocks: children open it at once
    try:
        slow = [asyncio.create_task(sandbox.run(_wait_for_release, release, tenant="a")) for _ in range(3)]
        await eventually(lambda: _started(release), what="tenant a's first child", timeout=10)
        # Tenant b is not queued behind tenant a's other two: they wait for a's own turn.
        assert (await asyncio.wait_for(sandbox.run(payloads.prepare, spec([1]), tenant="b"), 30)).count == 1
        assert len(_pids(release)) == 1
        os.write(writer, b"abc")  # one byte for each of a's three, one after the other
        assert len(set(await asyncio.gather(*slow))) == 3  # each in its own child
    finally:
        os.close(writer)
    assert sandbox._tenants == {}  # nothing kept for tenants with nothing waiting
