"""Run untrusted computations -- a user's payloadSchema over a user's items -- in a killable child process.

A schema is code in all but name: a ``pattern`` such as ``^(a+)+$`` backtracks for hours inside
one call of the C regex engine, which never releases the GIL. In a thread it would stall the event
loop, and with it ``/healthz`` and every other tenant's batches; in a child process it is killed at
its deadline. Children are forked from a forkserver that has imported the validating code already,
so a call costs a fork, not an interpreter start. At most ``concurrency`` children run at once, and
at most one per tenant (namespace): a tenant with many slow schemas waits behind itself, while the
others' checks take turns with it (asyncio's locks wake waiters in order). A caller that gives up (its
batch deleted) kills its child at once; the slot is free only once the child is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import resource
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 20.0  # seconds one computation may take
# Bytes of address space a child may map: a child starts at about 50 MB, and two of them must fit
# beside the operator in the chart's 512 MiB container limit.
DEFAULT_MEMORY = 192 << 20
_PRELOAD = ["jobbatch.payloads"]
CANCEL_POLL_SECONDS = 0.25  # how soon a child is killed once its caller gave up


class SandboxError(Exception):
    """The computation did not finish: it ran out of time or memory, or its process died."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def _child(
    conn: multiprocessing.connection.Connection, memory: int, fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    os.nice(10)  # the operator's own work comes first
    # If memory runs short in the pod anyway, the kernel kills this process, not the operator.
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w", encoding="ascii") as adj:
        adj.write("1000")
    try:
        result: tuple[str, Any] = ("ok", fn(*args))
    except MemoryError:
        result = ("memory", None)
    except BaseException as exc:  # noqa: BLE001 -- whatever it is, it goes back to the caller
        result = ("raised", exc)
    try:
        conn.send(result)
    except Exception as exc:  # noqa: BLE001 -- e.g. an exception that does not pickle
        conn.send(("raised", RuntimeError(f"{type(exc).__name__} while sending the result")))
    conn.close()


class Sandbox:
    """Runs ``fn(*args)`` in a child process with a deadline and a memory limit; see the module doc."""

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, memory: int = DEFAULT_MEMORY, concurrency: int = 2) -> None:
        self.timeout, self.memory = timeout, memory
        self._slots = asyncio.Semaphore(concurrency)
        self._tenants: dict[str, tuple[asyncio.Lock, int]] = {}  # tenant -> (its one turn, callers)
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(_PRELOAD)

    async def run(self, fn: Callable[..., T], *args: Any, tenant: str = "") -> T:
        """The result of ``fn(*args)``; what it raises is raised here; SandboxError if it did not finish.

        ``fn`` and ``args`` must pickle (``fn`` a module-level function).
        """
        turn, callers = self._tenants.get(tenant) or (asyncio.Lock(), 0)
        self._tenants[tenant] = (turn, callers + 1)
        try:
            async with turn:
                kind, value = await self._in_a_slot(fn, args)
        finally:
            turn, callers = self._tenants[tenant]
            if callers == 1:
                del self._tenants[tenant]  # bounded by the tenants waiting now, not every tenant ever seen
            else:
                self._tenants[tenant] = (turn, callers - 1)
        if kind == "ok":
            return value  # type: ignore[no-any-return]
        if kind == "raised":
            raise value
        if kind == "memory":
            raise SandboxError("OutOfMemory", f"ran out of memory (limit {self.memory >> 20} MiB)")
        if kind == "timeout":
            raise SandboxError("Timeout", f"took longer than {self.timeout:g}s")
        raise SandboxError("Crashed", f"its process ended without a result ({value})")

    async def _in_a_slot(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> tuple[str, Any]:
        """Run in one of the slots; the slot is given back when the child is gone, even if the caller is not."""
        await self._slots.acquire()
        cancel = threading.Event()
        try:
            running = asyncio.ensure_future(asyncio.to_thread(self._run_blocking, fn, args, cancel))
        except BaseException:
            self._slots.release()
            raise
        running.add_done_callback(lambda _: self._slots.release())
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            cancel.set()  # the child is killed within a poll step; its slot is free once it is
            raise

    def _run_blocking(
        self, fn: Callable[..., Any], args: tuple[Any, ...], cancel: threading.Event | None = None
    ) -> tuple[str, Any]:
        receiver, sender = self._context.Pipe(duplex=False)
        proc = self._context.Process(target=_child, args=(sender, self.memory, fn, args), daemon=True)
        try:
            proc.start()
        except Exception as exc:  # noqa: BLE001 -- no process (fork refused, forkserver gone): not the input's fault
            sender.close()
            receiver.close()
            return ("crashed", f"could not start: {type(exc).__name__}: {exc}")
        try:
            sender.close()  # ours; the child holds its own copy
            deadline = time.monotonic() + self.timeout
            while not receiver.poll(max(0.0, min(CANCEL_POLL_SECONDS, deadline - time.monotonic()))):
                if cancel is not None and cancel.is_set():
                    return ("cancelled", None)
                if time.monotonic() >= deadline:
                    return ("timeout", None)
            try:
                result: tuple[str, Any] = receiver.recv()
            except EOFError:  # it died before sending (killed, or OOM-killed)
                proc.join(5)
                return ("crashed", f"exit code {proc.exitcode}")
            except Exception as exc:  # noqa: BLE001 -- a result that does not unpickle
                return ("crashed", f"{type(exc).__name__} reading its result")
            return result
        finally:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
            proc.close()
            receiver.close()
