"""Worker SDK: what a shard's pod uses to read its items.

Shards run as pods of Indexed Jobs, several shards per Job. Every pod finds its place by one rule,
whichever Job runs it::

    shard      = JOBBATCH_FIRST_SHARD + JOB_COMPLETION_INDEX
    items      = [shard * JOBBATCH_SHARD_SIZE, min((shard + 1) * JOBBATCH_SHARD_SIZE, JOBBATCH_ITEM_COUNT))
    attempt    = JOBBATCH_ATTEMPT

==========================  =====================================================
``JOBBATCH_NAME``           the JobBatch's name
``JOBBATCH_NAMESPACE``      its namespace
``JOBBATCH_FIRST_SHARD``    the first shard of the Job running this pod
``JOB_COMPLETION_INDEX``    this pod's index in that Job (set by Kubernetes)
``JOBBATCH_ATTEMPT``        the attempt this Job runs (0 = first run, 1 = first retry)
``JOBBATCH_SHARD_COUNT``    number of shards in the batch
``JOBBATCH_SHARD_SIZE``     items per shard (the last shard may hold fewer)
``JOBBATCH_ITEM_COUNT``     items in the batch
``JOBBATCH_PAYLOAD_FILE``   JSON Lines file holding the batch's items (``items`` and
                            ``configMap`` sources only); line i is item i
``JOBBATCH_PAYLOAD_DIGEST`` that file's SHA-256 as the batch accepted it; ``items``
                            raises PayloadMismatch on any other file
==========================  =====================================================

Typical use::

    from pydantic import BaseModel
    from jobbatch import worker

    class Url(BaseModel):
        url: str

    for item in worker.items(Url):
        fetch(item.url)

A worker signals a failure by exiting non-zero; exit codes listed in the batch's
``retry.nonRetryableExitCodes`` fail the shard without retries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar, overload

from pydantic import TypeAdapter

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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Shard:
        env = os.environ if env is None else env
        try:
            index = int(env["JOBBATCH_FIRST_SHARD"]) + int(env["JOB_COMPLETION_INDEX"])
            size, item_count = int(env["JOBBATCH_SHARD_SIZE"]), int(env["JOBBATCH_ITEM_COUNT"])
            return cls(
                batch=env["JOBBATCH_NAME"],
                namespace=env["JOBBATCH_NAMESPACE"],
                index=index,
                count=int(env["JOBBATCH_SHARD_COUNT"]),
                attempt=int(env["JOBBATCH_ATTEMPT"]),
                item_start=min(index * size, item_count),
                item_end=min((index + 1) * size, item_count),
                payload_file=env.get("JOBBATCH_PAYLOAD_FILE") or None,
                payload_digest=env.get("JOBBATCH_PAYLOAD_DIGEST") or None,
            )
        except KeyError as exc:
            raise RuntimeError(f"{exc.args[0]} is not set: is this running in a JobBatch shard pod?") from None


class PayloadMismatch(RuntimeError):
    """The payload file does not hold the items the batch accepted (it was replaced): nothing is run."""


# How long a worker whose payload file was replaced waits to be stopped before it fails. The operator
# checks the snapshot every 30 s and then suspends the batch, which stops the pod without using a
# retry; failing at once would spend one per pod started meanwhile.
MISMATCH_WAIT_SECONDS = 300.0
MISMATCH_POLL_SECONDS = 5.0


def _accepted_bytes(shard: Shard) -> bytes:
    """The payload file's bytes, once they hash to the digest the batch accepted (read once: what is
    hashed is what is parsed)."""
    assert shard.payload_file is not None
    assert shard.payload_digest is not None
    deadline = time.monotonic() + MISMATCH_WAIT_SECONDS
    said = False
    while True:
        with open(shard.payload_file, "rb") as file:  # at most 1 MiB: a ConfigMap's limit
            data = file.read()
        found = hashlib.sha256(data).hexdigest()
        if found == shard.payload_digest:
            return data
        why = (
            f"{shard.payload_file} has SHA-256 {found}, not {shard.payload_digest} as the batch accepted: its "
            "ConfigMap was replaced; refusing to process its items"
        )
        if time.monotonic() >= deadline:
            raise PayloadMismatch(why)
        if not said:
            print(f"jobbatch: {why}; waiting to be stopped", file=sys.stderr, flush=True)
            said = True
        time.sleep(MISMATCH_POLL_SECONDS)


def _raw_items(shard: Shard) -> Iterator[Any]:
    if shard.payload_file is None:  # a `count` source: the items are their indices
        yield from range(shard.item_start, shard.item_end)
        return
    if shard.payload_digest is not None:
        accepted = _accepted_bytes(shard).decode("utf-8").split("\n")  # lines end at "\n" only, as written
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
def items(model: type[T] | None = None, *, shard: Shard | None = None) -> Iterator[Any]:
    """This shard's items in order; validated as ``model`` (any pydantic-compatible type) if given."""
    shard = shard or Shard.from_env()
    if model is None:
        yield from _raw_items(shard)
        return
    adapter = TypeAdapter(model)
    for item in _raw_items(shard):
        yield adapter.validate_python(item)
