"""The operator as a real process (``jobbatch run``), for tests and benchmarks."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from e2e.cluster import free_port

STARTUP_TIMEOUT = 90.0


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclasses.dataclass
class OperatorProcess:
    """One `jobbatch run` process; ``args`` are its flags (e.g. ``--namespace``)."""

    args: list[str]
    env: dict[str, str]
    log: Path
    metrics_port: int = 0  # 0: no metrics endpoint
    proc: asyncio.subprocess.Process | None = None
    url: str = ""  # of its liveness endpoint, once started

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        """Start the process and return once its liveness endpoint answers."""
        url = self.url = f"http://127.0.0.1:{free_port()}/healthz"
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "jobbatch.cli", "run", "--liveness-endpoint", url,
                "--metrics-port", str(self.metrics_port), *self.args,
                env=self.env, stdout=out, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not await asyncio.to_thread(healthy, url):
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"operator did not become live at {url} (log: {self.log})")
            await asyncio.sleep(0.2)

    async def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a node dies."""
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    async def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.returncode is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout=30)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()
