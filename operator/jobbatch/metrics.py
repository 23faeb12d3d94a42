"""Prometheus metrics (prefix ``jobbatch_``), served over HTTP by ``jobbatch run``."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram, start_http_server

SHARD_STATES = ("pending", "running", "retrying", "succeeded", "failed")

shards = Gauge("jobbatch_shards", "Shards of each JobBatch by state.", ["namespace", "batch", "state"])
launches = Counter(
    "jobbatch_shard_launches_total",
    "Slots given to shard attempts: in new shard Jobs, and by raising or resuming existing ones.",
    ["namespace"],
)
retries = Counter("jobbatch_shard_retries_total", "Shard attempts launched after a failed attempt.", ["namespace"])
reconcile_errors = Counter("jobbatch_reconcile_errors_total", "Reconcile passes that failed.", ["namespace"])
reconcile_duration = Histogram(
    "jobbatch_reconcile_duration_seconds",
    "Duration of one reconcile pass of one JobBatch.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
status_writes = Counter("jobbatch_status_writes_total", "JobBatch status writes.", ["namespace"])
leader = Gauge(
    "jobbatch_leader", "1 while this process reconciles (it holds the Lease, or runs without leader election)."
)


def record_shards(namespace: str, batch: str, counts: dict[str, int]) -> None:
    for state in SHARD_STATES:
        shards.labels(namespace, batch, state).set(counts.get(state, 0))


def forget_batch(namespace: str, batch: str) -> None:
    """Drop a deleted batch's series so label cardinality stays bounded."""
    for state in SHARD_STATES:
        with contextlib.suppress(KeyError):
            shards.remove(namespace, batch, state)


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Serve /metrics from process start, on every replica: a standby answers too (``jobbatch_leader 0``)."""
    if port:
        start_http_server(port, addr=address)
