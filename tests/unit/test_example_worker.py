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


def test_every_example_payload_is_an_item(tmp_path: Path) -> None:
    """examples/04's thumbnails and the `count` sources of 03 and 05 run as written on the real node."""
    out = tmp_path / "out"
    out.mkdir()
    lines = '{"image": "s3://bucket/1.png", "width": 128}\n{"image": "s3://bucket/2.png", "width": 256}\n'
    result = run_worker(tmp_path, lines, 0, 2, WORKER_OUTPUT_DIR=str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "demo-0-0.txt").read_text() == "s3://bucket/1.png at 128px\ns3://bucket/2.png at 256px\n"
    # A `count` source has no payload file: shard 1 of 1,000-record shards holds records 1000-1999.
    env = {"JOBBATCH_PAYLOAD_FILE": "", "JOBBATCH_ITEM_COUNT": "100000", "JOBBATCH_SHARD_SIZE": "1000"}
    result = run_worker(tmp_path, "", 1, 1000, WORKER_OUTPUT_DIR=str(out), **env)
    assert result.returncode == 0, result.stderr
    records = (out / "demo-1-0.txt").read_text().splitlines()
    assert records == [f"record {i}" for i in range(1000, 2000)]
