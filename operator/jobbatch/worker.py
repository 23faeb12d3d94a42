"""Worker SDK: what a shard's pod uses to read its items.

Every shard pod gets these environment variables from the operator:

==========================  =====================================================
``JOBBATCH_NAME``           the JobBatch's name
``JOBBATCH_NAMESPACE``      its namespace
``JOBBATCH_SHARD``          this shard's index (0-based)
``JOBBATCH_SHARD_COUNT``    number of shards in the batch
``JOBBATCH_ATTEMPT``        this attempt's number (0 = first run, 1 = first retry)
``JOBBATCH_ITEM_START``     first item index of the shard
``JOBBATCH_ITEM_END``       one past the last item index (half-open range)
``JOBBATCH_PAYLOAD_FILE``   JSON Lines file holding the batch's items (``items`` and
                            ``configMap`` sources only); line i is item i
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
import json
import os
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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Shard:
        env = os.environ if env is None else env
        try:
            return cls(
                batch=env["JOBBATCH_NAME"],
                namespace=env["JOBBATCH_NAMESPACE"],
                index=int(env["JOBBATCH_SHARD"]),
                count=int(env["JOBBATCH_SHARD_COUNT"]),
                attempt=int(env["JOBBATCH_ATTEMPT"]),
                item_start=int(env["JOBBATCH_ITEM_START"]),
                item_end=int(env["JOBBATCH_ITEM_END"]),
                payload_file=env.get("JOBBATCH_PAYLOAD_FILE") or None,
            )
        except KeyError as exc:
            raise RuntimeError(f"{exc.args[0]} is not set: is this running in a JobBatch shard pod?") from None


def _raw_items(shard: Shard) -> Iterator[Any]:
    if shard.payload_file is None:  # a `count` source: the items are their indices
        yield from range(shard.item_start, shard.item_end)
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
