"""The import worker: load this shard's user records into PostgreSQL, idempotently.

A shard's records are inserted by one statement (one transaction): a pod stopped mid-shard leaves
none of them, and a retried or re-run shard skips the rows a finished attempt already wrote
(``ON CONFLICT (id) DO NOTHING``), so the table never holds a record twice.

DATABASE_URL (postgresql://user:password@host:port/database) comes from a Secret; the table is
made once beforehand (schema.sql). WORK_MS_PER_RECORD (default 0) stands in for real per-record work
(a lookup, a transformation) before the insert; the pipeline's chaos run sets it so that a deleted pod
is stopped mid-shard, not after its insert.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.parse

import pg8000.native
from pydantic import BaseModel, Field, ValidationError

from jobbatch import worker

EXIT_BAD_RECORD = 2  # in retry.nonRetryableExitCodes: retrying cannot fix a bad record

INSERT = """
INSERT INTO users (id, name, email)
SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:names AS text[]), CAST(:emails AS text[]))
ON CONFLICT (id) DO NOTHING
"""


class User(BaseModel):
    id: int = Field(ge=0, le=2**63 - 1)  # a bigint: a bigger id is a bad record, not a retry
    name: str
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")  # the same rule as payloadSchema's


def connect(url: str) -> pg8000.native.Connection:
    parts = urllib.parse.urlsplit(url)
    sslmode = dict(urllib.parse.parse_qsl(parts.query)).get("sslmode", "prefer")
    return pg8000.native.Connection(
        ssl_context=True if sslmode in ("require", "verify-ca", "verify-full") else None,
        user=urllib.parse.unquote(parts.username or ""),
        password=urllib.parse.unquote(parts.password or ""),
        host=parts.hostname or "localhost",
        port=parts.port or 5432,
        database=parts.path.lstrip("/"),
        timeout=30,
    )


def main() -> int:
    shard = worker.Shard.from_env()
    try:
        users = list(worker.items(User, shard=shard))
    except ValidationError as exc:
        print(f"shard {shard.index}: bad record: {exc}", file=sys.stderr)
        return EXIT_BAD_RECORD
    time.sleep(len(users) * float(os.environ.get("WORK_MS_PER_RECORD") or 0) / 1000)  # the "work"
    db = connect(os.environ["DATABASE_URL"])
    try:
        db.run(
            INSERT,
            ids=[u.id for u in users],
            names=[u.name for u in users],
            emails=[u.email for u in users],
        )
        inserted = db.row_count
    finally:
        db.close()
    print(f"shard {shard.index} attempt {shard.attempt}: {len(users)} records, {inserted} new rows", flush=True)
    if inserted != len(users) and shard.attempt == 0:
        # A first attempt finding rows already there: an earlier run, or two records with one id.
        print(f"shard {shard.index}: {len(users) - inserted} records were in the table already", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
