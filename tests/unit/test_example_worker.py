"""The example worker runs against the environment the operator provides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).resolve().parents[2] / "examples" / "worker" / "worker.py"


def run_worker(
    tmp_path: Path, lines: str, shard: int, shard_size: int, **extra: str
) -> subprocess.CompletedProcess[str]:
    payload = tmp_path / "items.jsonl"
    payload.write_text(lines)
    env = {
        **os.environ,
        "JOBBATCH_NAME": "demo", "JOBBATCH_NAMESPACE": "default", "JOBBATCH_FIRST_SHARD": "0",
        "JOB_COMPLETION_INDEX": str(shard), "JOBBATCH_SHARD_COUNT": "2", "JOBBATCH_ATTEMPT": "0",
        "JOBBATCH_SHARD_SIZE": str(shard_size), "JOBBATCH_ITEM_COUNT": str(len(lines.splitlines())),
        "JOBBATCH_PAYLOAD_FILE": str(payload), **extra,
    }  # fmt: skip
    return subprocess.run([sys.executable, str(WORKER)], env=env, capture_output=True, text=True, timeout=60)


def test_worker_processes_its_slice(tmp_path: Path) -> None:
    lines = "".join(f'{{"url": "https://example.com/{i}"}}\n' for i in range(4))
    result = run_worker(tmp_path, lines, 1, 2)
    assert result.returncode == 0, result.stderr
    assert "demo shard 2/2, attempt 0" in result.stdout
    assert "processing https://example.com/2" in result.stdout
    assert "processing https://example.com/3" in result.stdout
    assert "example.com/1" not in result.stdout


def test_bad_item_is_a_non_retryable_exit(tmp_path: Path) -> None:
    result = run_worker(tmp_path, '{"url": 5}\n', 0, 1)
    assert result.returncode == 2
    assert "bad item" in result.stderr


def test_worker_writes_what_it_processed_when_asked(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    lines = "".join(f'{{"url": "https://example.com/{i}"}}\n' for i in range(4))
    result = run_worker(tmp_path, lines, 1, 2, WORKER_OUTPUT_DIR=str(out))
    assert result.returncode == 0, result.stderr
    assert [p.name for p in out.iterdir()] == ["demo-1-0.txt"]
    assert (out / "demo-1-0.txt").read_text() == "https://example.com/2\nhttps://example.com/3\n"
