"""`jobbatch run` starts against the control plane, reports live, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.waiting import eventually


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthz(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def test_operator_runs_and_stops(kubeconfig: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}/healthz"
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
            await eventually(lambda: asyncio.to_thread(_healthz, url), what=f"liveness {url}")
            assert "jobbatch operator started" in log.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), timeout=30)
    assert code == 0, log.read_text()
