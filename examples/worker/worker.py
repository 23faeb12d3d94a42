"""An example worker: process this shard's items, typed with pydantic.

Runs in every shard pod of a JobBatch. Exit 0 on success; a non-zero exit fails the
attempt (retried with backoff), and codes listed in retry.nonRetryableExitCodes fail
the shard at once.

Try it outside Kubernetes by faking the environment the operator provides:

    printf '{"url": "https://example.com/a"}\n{"url": "https://example.com/b"}\n' > /tmp/items.jsonl
    JOBBATCH_NAME=demo JOBBATCH_NAMESPACE=default JOBBATCH_FIRST_SHARD=0 JOB_COMPLETION_INDEX=0 \
    JOBBATCH_ATTEMPT=0 JOBBATCH_SHARD_COUNT=1 JOBBATCH_SHARD_SIZE=2 JOBBATCH_ITEM_COUNT=2 \
    JOBBATCH_PAYLOAD_FILE=/tmp/items.jsonl python examples/worker/worker.py
"""

from __future__ import annotations

import sys

from pydantic import BaseModel, ValidationError

from jobbatch import worker

EXIT_BAD_INPUT = 2  # list it in retry.nonRetryableExitCodes: retrying cannot fix bad input


class Page(BaseModel):
    url: str


def main() -> int:
    shard = worker.Shard.from_env()
    print(f"{shard.batch} shard {shard.index + 1}/{shard.count}, attempt {shard.attempt}", flush=True)
    try:
        for page in worker.items(Page, shard=shard):
            print(f"processing {page.url}", flush=True)  # real work goes here
    except ValidationError as exc:
        print(f"bad item: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
