"""`jobbatch run` starts against the control plane, reports live, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from e2e.cluster import free_port
from e2e.operator_process import healthy
from tests.waiting import eventually


async def test_operator_runs_and_stops(kubeconfig: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/healthz"
    log = tmp_path / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jobbatch.cli",
            "run",
            "--liveness-endpoint",
            url,
            "--metrics-port",
            "0",
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await eventually(lambda: asyncio.to_thread(healthy, url), what=f"liveness {url}")
            assert "jobbatch operator started" in log.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), timeout=30)
    assert code == 0, log.read_text()
