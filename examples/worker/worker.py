"""An example worker: process this shard's items, typed with pydantic.

Runs in every shard pod of a JobBatch. Exit 0 on success; a non-zero exit fails the
attempt (retried with backoff), and codes listed in retry.nonRetryableExitCodes fail
the shard at once.

Try it outside Kubernetes by faking the environment the operator provides:

    printf '{"url": "https://example.com/a"}\n{"url": "https://example.com/b"}\n' > /tmp/items.jsonl
    JOBBATCH_NAME=demo JOBBATCH_NAMESPACE=default JOBBATCH_FIRST_SHARD=0 JOB_COMPLETION_INDEX=0 \
    JOBBATCH_ATTEMPT=0 JOBBATCH_SHARD_COUNT=1 JOBBATCH_SHARD_SIZE=2 JOBBATCH_ITEM_COUNT=2 \
    JOBBATCH_PAYLOAD_FILE=/tmp/items.jsonl python examples/worker/worker.py

One image runs every example (examples/01 to 05): an item is a page (01, 02), a thumbnail
to make (04), or a record number from a `count` source (03, 05); anything else is bad input.

It hands back a result, {"items": N, "first": ..., "last": ...}, which a batch with spec.results
keeps (example 09). With WORKER_OUTPUT_DIR set, it also writes what it processed, one line per item, to one file per
shard attempt there (<batch>-<shard>-<attempt>.txt), which is how the real-node tests check its work.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pydantic import BaseModel, ValidationError

from jobbatch import worker

EXIT_BAD_INPUT = 2  # list it in retry.nonRetryableExitCodes: retrying cannot fix bad input


class Page(BaseModel):
    """A page to fetch (examples 01 and 02)."""

    url: str


class Thumbnail(BaseModel):
    """An image to resize (example 04)."""

    image: str
    width: int


# A `count` source's items are record numbers: the worker finds record N itself (examples 03, 05).
Item = Page | Thumbnail | int


def process(item: Item) -> str:
    """The real work goes here; returns what was done, for the output file."""
    if isinstance(item, Page):
        done = item.url
    elif isinstance(item, Thumbnail):
        done = f"{item.image} at {item.width}px"
    else:
        done = f"record {item}"
    print(f"processing {done}", flush=True)
    return done


def main() -> int:
    shard = worker.Shard.from_env()
    print(f"{shard.batch} shard {shard.index + 1}/{shard.count}, attempt {shard.attempt}", flush=True)
    done = []
    try:
        for item in worker.items(Item, shard=shard):
            done.append(process(item))
    except ValidationError as exc:
        print(f"bad item: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    output_dir = os.environ.get("WORKER_OUTPUT_DIR")
    if output_dir:
        out = Path(output_dir) / f"{shard.batch}-{shard.index}-{shard.attempt}.txt"
        partial = out.with_suffix(".partial")
        partial.write_text("".join(f"{line}\n" for line in done))
        partial.replace(out)  # a reader never sees half a file
    # Last, just before exit 0: the shard's result, kept in shard order when the batch sets
    # spec.results (example 09), a note in the log otherwise. Small: spec.results.maxBytes bounds it.
    worker.result(
        {"items": len(done), "first": done[0][:80] if done else None, "last": done[-1][:80] if done else None}
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
