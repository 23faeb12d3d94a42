from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from jobbatch import manifests, worker
from jobbatch.api import JobBatchSpec
from jobbatch.payloads import prepare


class Url(BaseModel):
    url: str


def shard_env(
    tmp_path: Path, payloads: Mapping[str, object], shard: int, shard_size: int, first: int | None = None
) -> dict[str, str]:
    """The environment a shard pod gets (from the operator and, for the index, from Kubernetes).

    The pod runs ``shard`` as completion index ``shard - first`` of a Job starting at ``first``.
    """
    first = shard if first is None else first
    spec = JobBatchSpec.model_validate(
        {
            "template": {"spec": {"containers": [{"name": "w", "image": "i"}]}},
            "payloads": payloads,
            "shardSize": shard_size,
        }
    )
    items = prepare(spec)
    job = manifests.shard_job(
        name="b", namespace="ns", uid="u", spec=spec, item_count=items.count, first_shard=first, count=10,
        attempt=1, parallelism=1, payload_digest=items.digest,
    )  # fmt: skip
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    env["JOB_COMPLETION_INDEX"] = str(shard - first)  # what the Job controller sets on an Indexed Job's pod
    if items.snapshot is not None:
        path = tmp_path / "payloads.jsonl"
        path.write_text(items.snapshot)
        env["JOBBATCH_PAYLOAD_FILE"] = str(path)
    return env


def test_items_of_a_shard_are_its_slice(tmp_path: Path) -> None:
    env = shard_env(tmp_path, {"items": [{"url": f"u{i}"} for i in range(7)]}, shard=1, shard_size=3)
    shard = worker.Shard.from_env(env)
    assert (shard.index, shard.count, shard.attempt, shard.item_start, shard.item_end) == (1, 3, 1, 3, 6)
    assert [i["url"] for i in worker.items(shard=shard)] == ["u3", "u4", "u5"]


def test_one_rule_finds_the_shard_in_any_job(tmp_path: Path) -> None:
    # Shard 5 as index 3 of a chunk starting at shard 2, and as index 0 of its own retry Job.
    payloads = {"items": [{"url": f"u{i}"} for i in range(20)]}
    for first in (2, 5):
        shard = worker.Shard.from_env(shard_env(tmp_path, payloads, shard=5, shard_size=3, first=first))
        assert (shard.index, shard.item_start, shard.item_end) == (5, 15, 18)
        assert [i["url"] for i in worker.items(shard=shard)] == ["u15", "u16", "u17"]


def test_a_piece_of_a_shard_reads_only_its_items(tmp_path: Path) -> None:
    """retry.isolate runs a shard's items in pieces: the pod's items are JOBBATCH_ITEM_START..END."""
    payloads = {"items": [{"url": f"u{i}"} for i in range(20)]}
    env = shard_env(tmp_path, payloads, shard=1, shard_size=8)
    job = manifests.shard_job(
        name="b", namespace="ns", uid="u", spec=JobBatchSpec.model_validate(
            {"template": {"spec": {"containers": [{"name": "w", "image": "i"}]}}, "payloads": payloads,
             "shardSize": 8}),
        item_count=20, first_shard=1, count=1, attempt=3, parallelism=1, node=6,
    )  # fmt: skip
    piece = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
    env.update(JOBBATCH_ITEM_START=piece["JOBBATCH_ITEM_START"], JOBBATCH_ITEM_END=piece["JOBBATCH_ITEM_END"])
    shard = worker.Shard.from_env(env)  # node 6: the third quarter of items 8-15
    assert (shard.index, shard.item_start, shard.item_end, shard.shard_items) == (1, 12, 14, (8, 16))
    assert [i["url"] for i in worker.items(shard=shard)] == ["u12", "u13"]
    # A count source, and a range that strays outside its shard (clipped to it: never another shard's).
    count_env = shard_env(tmp_path, {"count": 20}, shard=1, shard_size=8)
    count_env.update(JOBBATCH_ITEM_START="5", JOBBATCH_ITEM_END="10")
    assert list(worker.items(shard=worker.Shard.from_env(count_env))) == [8, 9]


def test_the_last_shard_may_hold_fewer_items(tmp_path: Path) -> None:
    shard = worker.Shard.from_env(shard_env(tmp_path, {"count": 10}, shard=2, shard_size=4, first=0))
    assert (shard.item_start, shard.item_end) == (8, 10)
    assert list(worker.items(shard=shard)) == [8, 9]


def test_typed_items(tmp_path: Path) -> None:
    env = shard_env(tmp_path, {"items": [{"url": "a"}, {"url": "b"}]}, shard=0, shard_size=5)
    got = list(worker.items(Url, shard=worker.Shard.from_env(env)))
    assert got == [Url(url="a"), Url(url="b")]


def test_typed_items_reject_bad_payloads(tmp_path: Path) -> None:
    env = shard_env(tmp_path, {"items": [{"url": 1}]}, shard=0, shard_size=1)
    with pytest.raises(ValidationError):
        list(worker.items(Url, shard=worker.Shard.from_env(env)))


def test_count_source_yields_indices(tmp_path: Path) -> None:
    env = shard_env(tmp_path, {"count": 10}, shard=3, shard_size=3)
    assert "JOBBATCH_PAYLOAD_FILE" not in env
    assert list(worker.items(shard=worker.Shard.from_env(env))) == [9]


def test_outside_a_shard_pod_the_error_says_so() -> None:
    with pytest.raises(RuntimeError, match="is not set: is this running in a JobBatch shard pod"):
        worker.Shard.from_env({})


def test_a_replaced_payload_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file's SHA-256 as accepted comes with the pod: a ConfigMap someone swapped in is not read.

    The worker waits to be stopped (the operator suspends the batch, using no retry), then fails."""
    env = shard_env(tmp_path, {"items": [{"url": "a"}, {"url": "b"}]}, shard=1, shard_size=1)
    assert env["JOBBATCH_PAYLOAD_DIGEST"]
    assert [i.url for i in worker.items(Url, shard=worker.Shard.from_env(env))] == ["b"]
    path = Path(env["JOBBATCH_PAYLOAD_FILE"])
    accepted = path.read_text()
    path.write_text('{"url": "evil"}\n{"url": "evil"}\n')
    waits: list[float] = []
    monkeypatch.setattr(worker, "MISMATCH_WAIT_SECONDS", 0.0)
    monkeypatch.setattr("jobbatch.worker.time.sleep", waits.append)
    with pytest.raises(worker.PayloadMismatch, match="as the batch accepted"):
        list(worker.items(Url, shard=worker.Shard.from_env(env)))
    assert waits == []  # no time left to wait
    # Put back while it waits: it goes on with the accepted items.
    monkeypatch.setattr(worker, "MISMATCH_WAIT_SECONDS", 60.0)
    monkeypatch.setattr("jobbatch.worker.time.sleep", lambda seconds: path.write_text(accepted))
    assert [i.url for i in worker.items(Url, shard=worker.Shard.from_env(env))] == ["b"]


STOPPABLE = """
import signal
from jobbatch import worker
try:
    worker.stop_on_sigterm()
    print("ready", flush=True)
    signal.pause()  # until a signal: the SIGTERM the test sends
finally:
    print("cleaned up", flush=True)
"""


def test_a_worker_stops_at_once_on_sigterm_and_runs_its_cleanup() -> None:
    """Even as PID 1 of a container, which ignores a SIGTERM it has no handler for, the SDK's worker ends."""
    import signal
    import subprocess
    import sys

    with subprocess.Popen([sys.executable, "-c", STOPPABLE], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert proc.stdout.read() == "cleaned up\n"


def test_a_workers_own_sigterm_handler_is_kept() -> None:
    import signal

    def mine(signum: int, frame: object) -> None: ...

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        worker.stop_on_sigterm()
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_skip_retry_uncaught_writes_the_termination_message_and_exits_1(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    code = (
        "from jobbatch import worker\n"
        f"worker.report_skip_retry({str(log)!r})\n"
        "raise worker.SkipRetry('row 3 is not an email')\n"
    )
    done = python(code)
    assert done.returncode == 1
    assert "SkipRetry: row 3 is not an email" in done.stderr  # the usual traceback too
    assert log.read_text() == "jobbatch.io/skip-retry: row 3 is not an email"
    log.unlink()
    other = python(code.replace("worker.SkipRetry", "ValueError"))
    assert other.returncode == 1
    assert not log.exists()  # any other error: a retry may fix it


def test_a_skip_retry_message_is_one_line_of_bounded_bytes() -> None:
    assert worker.skip_retry_message(worker.SkipRetry("bad\nrow  3")) == "jobbatch.io/skip-retry: bad row 3"
    long = worker.skip_retry_message("é" * 5000)
    assert long.startswith("jobbatch.io/skip-retry: ")
    assert len(long.removeprefix("jobbatch.io/skip-retry: ").encode()) <= worker.SKIP_RETRY_REASON_BYTES


def python(code: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)


def test_skip_retry_in_an_exception_group_or_by_call_counts_too(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    env = {**os.environ, "JOBBATCH_NAME": "b", "JOBBATCH_TERMINATION_LOG": str(log)}
    grouped = (
        "import asyncio\n"
        "from jobbatch import worker\n"  # imported in a shard pod: the hook is in place already
        "async def other():\n"
        "    return None\n"
        "async def main():\n"
        "    async with asyncio.TaskGroup() as tg:\n"
        "        tg.create_task(other())\n"
        "        raise worker.SkipRetry('no such table')\n"
        "asyncio.run(main())\n"
    )
    done = python(grouped, env)
    assert done.returncode == 1
    assert log.read_text() == "jobbatch.io/skip-retry: no such table"
    log.unlink()
    in_thread = (
        "import threading\n"
        "from jobbatch import worker\n"
        "def work():\n"
        "    try:\n"
        "        worker.skip_retry('bad input')\n"
        "    except Exception:\n"
        "        pass\n"
        "t = threading.Thread(target=work); t.start(); t.join()\n"
        "print('not reached')\n"
    )
    done = python(in_thread, env)
    assert done.returncode == 1
    assert "not reached" not in done.stdout
    assert log.read_text() == "jobbatch.io/skip-retry: bad input"


def test_progress_is_one_log_line_at_most_once_a_second_and_the_latest_is_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert worker.progress_message(3, 10) == 'jobbatch.io/progress:{"done":3,"total":10}'
    assert worker.progress_message(3) == 'jobbatch.io/progress:{"done":3}'
    now = [100.0]
    timers: list[float] = []

    def timer(wait: float, flush: Callable[[], None]) -> threading.Timer:
        timers.append(wait)  # the flush it would schedule; the test runs it
        return threading.Timer(3600, flush)  # started by the reporter, never fires within the test

    reporter = worker._Progress(clock=lambda: now[0], timer=timer)
    assert reporter.report(worker.progress_message(1, 10), force=False)  # the first always prints
    now[0] += 0.25
    assert not reporter.report(worker.progress_message(2, 10), force=False)  # held back ...
    now[0] += 0.25
    assert not reporter.report(worker.progress_message(3, 10), force=False)  # ... replaced by the latest
    assert timers == [0.75]  # one flush, when the second is up
    now[0] += 0.5
    reporter.flush()  # the timer fires: the latest report is printed though no call came after it
    now[0] += 0.1
    assert reporter.report(worker.progress_message(4, 10), force=True)
    reporter.flush()  # nothing held back: nothing printed
    for t in threading.enumerate():
        if isinstance(t, threading.Timer):
            t.cancel()
    assert capsys.readouterr().out.splitlines() == [
        'jobbatch.io/progress:{"done":1,"total":10}',
        'jobbatch.io/progress:{"done":3,"total":10}',
        'jobbatch.io/progress:{"done":4,"total":10}',
    ]


def test_progress_lines_of_many_threads_never_interleave() -> None:
    """Each report is one write under the SDK's lock: reports from several threads come out whole.

    (Other threads' plain print() calls race inside Python's text layer itself; that is outside the SDK.)
    """
    script = (
        "import threading\n"
        "from jobbatch import worker\n"
        "def report(k):\n"
        "    for n in range(200): worker.progress(k * 1000 + n, 1000, force=True)\n"
        "threads = [threading.Thread(target=report, args=(k,)) for k in range(4)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    reports = [json.loads(line.removeprefix("jobbatch.io/progress:")) for line in out.splitlines()]
    assert sorted(r["done"] for r in reports) == [k * 1000 + n for k in range(4) for n in range(200)]
