"""Worker SDK: what a shard's pod uses to read its items (the ``jobbatch-worker`` distribution).

The SDK is its own distribution (``sdk/``: this module, ``records`` and ``objectstore``; pydantic is
its one dependency; ``pip install ./sdk`` from a clone, not yet on PyPI), so a worker image carries
neither kopf nor a Kubernetes client.

Shards run as pods of Indexed Jobs, several shards per Job. Every pod finds its place by one rule,
whichever Job runs it::

    shard      = JOBBATCH_FIRST_SHARD + JOB_COMPLETION_INDEX
    items      = [JOBBATCH_ITEM_START, JOBBATCH_ITEM_END) when they are set, else
                 [shard * JOBBATCH_SHARD_SIZE, min((shard + 1) * JOBBATCH_SHARD_SIZE, JOBBATCH_ITEM_COUNT))
    attempt    = JOBBATCH_ATTEMPT

``JOBBATCH_ITEM_START``/``_END`` are set on a pod that runs a piece of its shard's items: with
``retry.isolate``, a shard that fails for good is run again in halves to find its bad items.

==========================  =====================================================
``JOBBATCH_NAME``           the JobBatch's name
``JOBBATCH_NAMESPACE``      its namespace
``JOBBATCH_FIRST_SHARD``    the first shard of the Job running this pod
``JOB_COMPLETION_INDEX``    this pod's index in that Job (set by Kubernetes)
``JOBBATCH_ATTEMPT``        the attempt this Job runs (0 = first run, 1 = first retry; a
                            rerun's attempts continue above the highest so far)
``JOBBATCH_SHARD_COUNT``    number of shards in the batch
``JOBBATCH_SHARD_SIZE``     items per shard (the last shard may hold fewer)
``JOBBATCH_ITEM_COUNT``     items in the batch
``JOBBATCH_ITEM_START``     (a piece of a shard, retry.isolate) its first item ...
``JOBBATCH_ITEM_END``       ... and the item after its last
``JOBBATCH_PAYLOAD_FILE``   JSON Lines file holding the batch's items (``items`` and
                            ``configMap`` sources only); line i is item i
``JOBBATCH_PAYLOAD_INDEX``  (``objectStore`` source) JSON index of the object: where
                            each shard's records start, of which object version
``JOBBATCH_PAYLOAD_DIGEST`` that file's SHA-256 as accepted (``objectStore``: the
                            index's); ``items`` raises PayloadMismatch otherwise
``JOBBATCH_OBJECT_STORE_*`` (``objectStore`` source) the credentials from its Secret
``JOBBATCH_RESULT_MAX_BYTES`` (``spec.results`` set) the most bytes of a result's JSON
``JOBBATCH_TERMINATION_LOG``  where to write a result or a SkipRetry (the container's
                            terminationMessagePath)
==========================  =====================================================

With an ``objectStore`` source, ``items`` reads only this shard's bytes of the object (one ranged
GET, of the version the batch indexed: a replaced object raises PayloadMismatch), and parses its
JSON Lines or CSV records (CSV records are dicts of the header's names to strings).

Typical use::

    from pydantic import BaseModel
    from jobbatch import worker

    class Url(BaseModel):
        url: str

    for item in worker.items(Url):
        fetch(item.url)

A worker hands back a result with ``worker.result(value)``, or returns it from ``worker.run(work)``:
any JSON value, at most the batch's ``spec.results.maxBytes``. The operator stores it in shard order
(``kubectl jobbatch results NAME``) if the batch sets ``spec.results``. It is one line,
``jobbatch.io/result:<JSON>``, written to the termination log, so a worker in any language can write it too.

A worker can report how far it has got with ``worker.progress(done, total)``: one log line,
``jobbatch.io/progress:{"done":412,"total":1000}``, printed at most once a second, which
``kubectl jobbatch progress NAME`` reads from the running pods' logs (nothing else reads it: no cost).

A worker signals a failure by exiting non-zero; exit codes listed in the batch's
``retry.nonRetryableExitCodes`` fail the shard without retries. From code, ``raise
worker.SkipRetry("why")`` does the same whatever the exit code: uncaught in the main thread (alone or
in an exception group), it writes ``jobbatch.io/skip-retry: why`` on one line to the termination log,
which the operator reads, and the process exits 1 with the usual traceback. The shard fails at once
(reason ``SkipRetry``) -- for data that no retry will fix. ``worker.skip_retry("why")`` does it from
anywhere (a thread, inside an ``except Exception``): it writes the message and exits at once.

Stopping: a pod is stopped with SIGTERM (suspend, lower parallelism, an eviction, a deleted pod), and
a container's first process is PID 1, which the kernel spares from signals it has no handler for: a
Python worker run as ``python worker.py`` would ignore SIGTERM and run on until SIGKILL, 30 s later,
finishing work its shard no longer owns. ``Shard.from_env`` (which ``items`` calls) therefore installs,
unless the worker has its own, a SIGTERM handler that exits with 143 (128 + SIGTERM) at once, running
``finally`` blocks and ``with`` exits on the way (``SystemExit``), as a shell-started process would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, NoReturn, TypeVar, overload

from pydantic import TypeAdapter

from jobbatch import objectstore, records

# A termination message starting with this fails the shard for good, whatever the retry limit; the
# operator (jobbatch.api re-exports it) reads it from the pod's last container status.
SKIP_RETRY_PREFIX = "jobbatch.io/skip-retry:"

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Shard:
    """This pod's place in its batch, read from the environment."""

    batch: str
    namespace: str
    index: int
    count: int
    attempt: int
    item_start: int
    item_end: int
    payload_file: str | None
    payload_digest: str | None = None  # SHA-256 of the payload file as the batch accepted it
    payload_index: str | None = None  # an objectStore source's index file
    object_credentials: objectstore.Credentials | None = None  # and its credentials (repr hides the secret)
    # The whole shard's items when this pod runs a piece of them (retry.isolate); None: the same.
    shard_items: tuple[int, int] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Shard:
        stop_on_sigterm()
        report_skip_retry()
        env = os.environ if env is None else env
        try:
            index = int(env["JOBBATCH_FIRST_SHARD"]) + int(env["JOB_COMPLETION_INDEX"])
            size, item_count = int(env["JOBBATCH_SHARD_SIZE"]), int(env["JOBBATCH_ITEM_COUNT"])
            whole = (min(index * size, item_count), min((index + 1) * size, item_count))
            start, end = whole
            if env.get("JOBBATCH_ITEM_START") is not None:  # a piece: within the shard, whatever it says
                start = max(whole[0], min(int(env["JOBBATCH_ITEM_START"]), whole[1]))
                end = max(start, min(int(env["JOBBATCH_ITEM_END"]), whole[1]))
            return cls(
                batch=env["JOBBATCH_NAME"],
                namespace=env["JOBBATCH_NAMESPACE"],
                index=index,
                count=int(env["JOBBATCH_SHARD_COUNT"]),
                attempt=int(env["JOBBATCH_ATTEMPT"]),
                item_start=start,
                item_end=end,
                payload_file=env.get("JOBBATCH_PAYLOAD_FILE") or None,
                payload_digest=env.get("JOBBATCH_PAYLOAD_DIGEST") or None,
                payload_index=env.get("JOBBATCH_PAYLOAD_INDEX") or None,
                object_credentials=_object_credentials(env),
                shard_items=whole if (start, end) != whole else None,
            )
        except KeyError as exc:
            raise RuntimeError(f"{exc.args[0]} is not set: is this running in a JobBatch shard pod?") from None


class SkipRetry(Exception):
    """Raise (uncaught, in the main thread) to fail this shard for good: no retry will fix it.

    ``skip_retry(why)`` does the same from anywhere: it writes the message and exits at once (a
    ``SkipRetry`` raised in another thread, or caught by an ``except Exception``, does not end the
    process).
    """


# Where the kubelet reads a container's termination message (the operator sets the variable from
# the container's terminationMessagePath).
TERMINATION_LOG = "/dev/termination-log"
# Bytes of the reason kept: the kubelet keeps at most 4 KiB of a message, less with several containers.
SKIP_RETRY_REASON_BYTES = 1024


def skip_retry_message(exc: BaseException | str) -> str:
    """``jobbatch.io/skip-retry: <why>`` on one line, its reason cut to whole UTF-8 characters."""
    why = " ".join(str(exc).split()).encode()[:SKIP_RETRY_REASON_BYTES].decode(errors="ignore")
    return f"{SKIP_RETRY_PREFIX} {why}".strip()


def _write_skip_retry(exc: BaseException | str, path: str | None = None) -> None:
    target = path or os.environ.get("JOBBATCH_TERMINATION_LOG") or TERMINATION_LOG
    try:
        with open(target, "w", encoding="utf-8") as log:
            log.write(skip_retry_message(exc))
    except OSError:
        pass  # no termination log here (not in a pod): the traceback still says it


def skip_retry(why: str) -> NoReturn:
    """Fail this shard for good, now: write the message the operator reads and exit 1."""
    _write_skip_retry(why)
    print(f"SkipRetry: {why}", file=sys.stderr, flush=True)
    os._exit(1)  # past any `except Exception` or thread: the decision is made


def _skip_retry_of(exc: BaseException) -> BaseException | None:
    """The SkipRetry an uncaught exception is (or, as an exception group, holds only of)."""
    if isinstance(exc, SkipRetry):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found = [_skip_retry_of(e) for e in exc.exceptions]
        if found and all(found):
            return found[0]
    return None


def report_skip_retry(path: str | None = None) -> None:
    """Have an uncaught ``SkipRetry`` write its termination message before the usual traceback.

    Installed when this module is imported in a shard pod (and by ``Shard.from_env``).
    """
    previous = sys.excepthook
    if getattr(previous, "_jobbatch_skip_retry", False):
        return

    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        asked = _skip_retry_of(exc)
        if asked is not None:
            _write_skip_retry(asked, path)
        previous(kind, exc, tb)

    hook._jobbatch_skip_retry = True  # type: ignore[attr-defined]
    sys.excepthook = hook


if os.environ.get("JOBBATCH_NAME"):  # in a shard pod: a SkipRetry before the first item counts too
    report_skip_retry()


# A succeeded pod's termination message starting with this holds its shard's result (JSON), which the
# operator collects when the batch sets ``spec.results``.
RESULT_PREFIX = "jobbatch.io/result:"
# The most result bytes (UTF-8 JSON) any batch allows: the kubelet keeps at most 4,096 bytes of a
# termination message, the prefix included.
MAX_RESULT_BYTES = 4000


class ResultTooLarge(SkipRetry):
    """The result is over the batch's ``spec.results.maxBytes``: the shard fails for good (its next
    attempt would produce the same result), with this message in ``status.failures``."""


def result_message(value: Any, max_bytes: int = MAX_RESULT_BYTES) -> str:
    """``jobbatch.io/result:<compact JSON>``; ResultTooLarge when the JSON is over ``max_bytes``."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    size = len(text.encode())
    if size > max_bytes:
        raise ResultTooLarge(
            f"the shard's result is {size} bytes of JSON, over spec.results.maxBytes ({max_bytes}); "
            "return less (a summary, or where the output was written)"
        )
    return RESULT_PREFIX + text


def run(work: Callable[[Shard], Any]) -> None:
    """Run ``work(shard)`` and hand back what it returns as the shard's result (``None``: no result)."""
    value = work(Shard.from_env())
    if value is not None:
        result(value)


def result(value: Any, *, env: Mapping[str, str] | None = None, path: str | None = None) -> None:
    """Hand back this shard's result: any JSON value, stored in shard order if the batch sets ``spec.results``.

    Call it once, last, just before exiting 0 (a later call replaces the result; a failed shard has
    none, and a written result takes the place of the log tail a failure would report). It writes one
    line to the termination log, which the kubelet keeps in the pod's status and the operator copies
    into the batch's result ConfigMaps. Raises ResultTooLarge (a SkipRetry: uncaught, it fails the shard
    for good) when the JSON is over the batch's limit, and TypeError/ValueError for values JSON cannot
    hold. On a batch without ``spec.results`` (no ``JOBBATCH_RESULT_MAX_BYTES``) it only prints a note,
    so one worker serves both; outside a pod (no termination log) it prints the line to stderr instead.
    """
    env = os.environ if env is None else env
    if not env.get("JOBBATCH_RESULT_MAX_BYTES"):  # the batch keeps no results: nothing to refuse or write
        print(f"jobbatch: result not kept (the batch has no spec.results): {str(value)[:200]}", file=sys.stderr)
        return
    limit = int(env["JOBBATCH_RESULT_MAX_BYTES"])
    message = result_message(value, min(limit, MAX_RESULT_BYTES))
    target = path or env.get("JOBBATCH_TERMINATION_LOG")
    if target is None:
        if not os.path.exists(TERMINATION_LOG):  # not in a pod (a local run): say it, write nowhere
            print(f"jobbatch: {message}", file=sys.stderr, flush=True)
            return
        target = TERMINATION_LOG
    try:
        with open(target, "w", encoding="utf-8") as log:
            log.write(message)
    except OSError as exc:
        raise RuntimeError(f"cannot write the result to {target}: {exc} (is this running in a shard pod?)") from exc


# A progress report is one line of the container's log: `kubectl jobbatch progress NAME` reads the
# last one of each running pod (the operator never reads it, and the API server only passes it on when
# someone asks, so it costs nothing
# until asked for).
PROGRESS_PREFIX = "jobbatch.io/progress:"
PROGRESS_EVERY_SECONDS = 1.0


class _Progress:
    """At most one progress line a second; a report held back is printed when its second is up, so the
    latest one is always in the log (a shard that stalls after a burst shows where it stalled)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        timer: Callable[[float, Callable[[], None]], threading.Timer] = threading.Timer,
    ) -> None:
        self.clock, self.make_timer = clock, timer
        self.lock = threading.Lock()
        self.at = -PROGRESS_EVERY_SECONDS  # when the last line was printed
        self.pending: str | None = None  # a report held back, printed by the timer
        self.timer: threading.Timer | None = None

    def report(self, message: str, force: bool) -> bool:
        with self.lock:
            wait = self.at + PROGRESS_EVERY_SECONDS - self.clock()
            if force or wait <= 0:
                self._print(message)
                return True
            self.pending = message
            if self.timer is None:
                self.timer = self.make_timer(wait, self.flush)
                self.timer.daemon = True
                self.timer.start()
            return False

    def flush(self) -> None:
        with self.lock:
            self.timer = None
            if self.pending is not None:
                self._print(self.pending)

    def _print(self, message: str) -> None:
        # One write of the whole line, under the lock: another thread's print may put its text before it
        # on the same line, never inside it (readers look for the prefix anywhere in a line).
        sys.stdout.write(message + "\n")
        sys.stdout.flush()
        self.at = self.clock()
        self.pending = None


_progress = _Progress()


def progress_message(done: int, total: int | None = None) -> str:
    """``jobbatch.io/progress:{"done":412,"total":1000}`` (total omitted when unknown)."""
    report = {"done": int(done)} if total is None else {"done": int(done), "total": int(total)}
    return PROGRESS_PREFIX + json.dumps(report, separators=(",", ":"))


def progress(done: int, total: int | None = None, *, force: bool = False) -> bool:
    """Say how far this shard has got: ``kubectl jobbatch progress NAME`` shows the latest report.

    Cheap to call per item: it prints one line to stdout at most once a second; a report made within
    the second is printed when the second is up (the latest one wins), so the log always ends with the
    latest report. ``force`` prints at once. Nothing else happens -- no API call, no credentials.
    Returns whether it printed now. A worker without the SDK prints the same line itself.
    """
    return _progress.report(progress_message(done, total), force)


SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(SIGTERM_EXIT_CODE)


def stop_on_sigterm() -> None:
    """Exit with 143 on SIGTERM (see the module doc), unless a handler is set already; a no-op off the main
    thread, where handlers cannot be set."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _object_credentials(env: Mapping[str, str]) -> objectstore.Credentials | None:
    # Stripped as the operator strips them: a Secret made with `echo ... | base64` ends in a line break.
    key_id = (env.get("JOBBATCH_OBJECT_STORE_ACCESS_KEY_ID") or "").strip()
    secret = (env.get("JOBBATCH_OBJECT_STORE_SECRET_ACCESS_KEY") or "").strip()
    if not key_id or not secret:
        return None
    token = (env.get("JOBBATCH_OBJECT_STORE_SESSION_TOKEN") or "").strip()
    return objectstore.Credentials(key_id, secret, token or None)


class PayloadMismatch(RuntimeError):
    """The payload file does not hold the items the batch accepted (it was replaced): nothing is run."""


# How long a worker whose payload file was replaced waits to be stopped before it fails. The operator
# checks the snapshot every 30 s and then suspends the batch, which stops the pod without using a
# retry; failing at once would spend one per pod started meanwhile.
MISMATCH_WAIT_SECONDS = 300.0
MISMATCH_POLL_SECONDS = 5.0


def _accepted_bytes(shard: Shard, path: str) -> bytes:
    """The payload file's bytes, once they hash to the digest the batch accepted (read once: what is
    hashed is what is parsed)."""
    assert shard.payload_digest is not None
    deadline = time.monotonic() + MISMATCH_WAIT_SECONDS
    said = False
    while True:
        with open(path, "rb") as file:  # at most 1 MiB: a ConfigMap's limit
            data = file.read()
        found = hashlib.sha256(data).hexdigest()
        if found == shard.payload_digest:
            return data
        why = (
            f"{path} has SHA-256 {found}, not {shard.payload_digest} as the batch accepted: its "
            "ConfigMap was replaced; refusing to process its items"
        )
        if time.monotonic() >= deadline:
            raise PayloadMismatch(why)
        if not said:
            print(f"jobbatch: {why}; waiting to be stopped", file=sys.stderr, flush=True)
            said = True
        time.sleep(MISMATCH_POLL_SECONDS)


def _object_items(shard: Shard) -> Iterator[Any]:
    """This shard's records of an objectStore source: one ranged read of the indexed object version."""
    assert shard.payload_index is not None
    if shard.payload_digest is not None:
        raw = _accepted_bytes(shard, shard.payload_index)
    else:
        with open(shard.payload_index, "rb") as file:
            raw = file.read()
    index = json.loads(raw)
    if index.get("version") != 1 or not index.get("etag"):
        raise PayloadMismatch(f"{shard.payload_index} is not an object index this SDK reads (version 1, with an ETag)")
    lo, hi = shard.shard_items or (shard.item_start, shard.item_end)
    count = hi - lo
    if shard.item_end == shard.item_start:
        return
    offsets = index["offsets"]
    start, end = offsets[shard.index], offsets[shard.index + 1]
    if shard.object_credentials is None:
        raise RuntimeError(
            "JOBBATCH_OBJECT_STORE_ACCESS_KEY_ID or ..._SECRET_ACCESS_KEY is not set (from the source's Secret)"
        )
    store = objectstore.ObjectStore(index["endpoint"], shard.object_credentials, index["region"])
    try:
        data = store.get_range(index["bucket"], index["key"], start, end, if_match=index["etag"])
    except objectstore.ObjectChanged:
        raise PayloadMismatch(
            f"object {index['bucket']}/{index['key']} was replaced since the batch indexed it; refusing to "
            "process records of another version"
        ) from None
    header = index["header"].encode() if index.get("header") is not None else None
    found = list(records.parse(index["format"], data, header))
    if len(found) != count:
        raise PayloadMismatch(f"bytes {start}-{end} of the object hold {len(found)} records, not {count}")
    yield from found[shard.item_start - lo : shard.item_end - lo]  # a piece's, or all of them


def _raw_items(shard: Shard) -> Iterator[Any]:
    if shard.payload_index is not None:
        yield from _object_items(shard)
        return
    if shard.payload_file is None:  # a `count` source: the items are their indices
        yield from range(shard.item_start, shard.item_end)
        return
    if shard.payload_digest is not None:
        accepted = (
            _accepted_bytes(shard, shard.payload_file).decode("utf-8").split("\n")
        )  # lines end at "\n" only, as written
        yield from (json.loads(line) for line in accepted[shard.item_start : shard.item_end])
        return
    with open(shard.payload_file, encoding="utf-8") as lines:
        for index, line in enumerate(lines):
            if index >= shard.item_end:
                break
            if index >= shard.item_start:
                yield json.loads(line)


@overload
def items(model: None = None, *, shard: Shard | None = None) -> Iterator[Any]: ...
@overload
def items(model: type[T], *, shard: Shard | None = None) -> Iterator[T]: ...
@overload
def items(model: object, *, shard: Shard | None = None) -> Iterator[Any]: ...  # a union, Annotated[...]
def items(model: Any = None, *, shard: Shard | None = None) -> Iterator[Any]:
    """This shard's items in order; validated as ``model`` (any pydantic-compatible type) if given."""
    shard = shard or Shard.from_env()
    if model is None:
        yield from _raw_items(shard)
        return
    adapter: TypeAdapter[Any] = TypeAdapter(model)
    for item in _raw_items(shard):
        yield adapter.validate_python(item)
