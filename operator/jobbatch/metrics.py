"""Prometheus metrics (prefix ``jobbatch_``), served over HTTP by ``jobbatch run``."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from jobbatch.version import __version__

SHARD_STATES = ("pending", "running", "retrying", "succeeded", "failed")
PHASES = ("Pending", "Running", "Suspended", "Succeeded", "Failed")
# Reasons of failed attempts as labelled; anything else is "Other" (label values stay a fixed set).
FAILURE_REASONS = frozenset(
    {"Error", "OOMKilled", "DeadlineExceeded", "Disrupted", "Deleted", "Failed", "Evicted", "ContainerCannotRun"}
)

shards = Gauge("jobbatch_shards", "Shards of each JobBatch by state.", ["namespace", "batch", "state"])
launches = Counter(
    "jobbatch_shard_launches_total",
    "Slots given to shard attempts: in new shard Jobs, and by raising or resuming existing ones.",
    ["namespace"],
)
retries = Counter("jobbatch_shard_retries_total", "Shard attempts launched after a failed attempt.", ["namespace"])
attempts = Counter(
    "jobbatch_shard_attempts_total",
    "Shard attempts given a Job (each shard of a new Job once; a suspended and resumed attempt is not counted again).",
    ["namespace"],
)
reconcile_errors = Counter("jobbatch_reconcile_errors_total", "Reconcile passes that failed.", ["namespace"])
reconcile_duration = Histogram(
    "jobbatch_reconcile_duration_seconds",
    "Duration of one reconcile pass of one JobBatch.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
status_writes = Counter("jobbatch_status_writes_total", "JobBatch status writes.", ["namespace"])
results_collected = Counter(
    "jobbatch_results_collected_total",
    "Shard results read from succeeded pods (spec.results), by outcome: stored in a result ConfigMap, or missing "
    "(none written, not storable, pod gone). A collection repeated after a restart counts again.",
    ["namespace", "outcome"],
)
batch_duration = Histogram(
    "jobbatch_batch_duration_seconds",
    "Time from a batch's start (or its rerun's) to its completion, by outcome.",
    ["namespace", "outcome"],
    buckets=(10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
)
attempt_failures = Counter(
    "jobbatch_shard_attempt_failures_total",
    "Failed shard attempts, counted when retried or recorded as a permanent failure (an attempt left undecided "
    "when its batch ends is not).",
    ["namespace", "reason", "exit_code"],
)
queue_shards = Gauge(
    "jobbatch_queue_shards",
    "Shards of each BatchQueue's batches: running, waiting (could start but a cap or the other queues' shares "
    "hold them back), and share (what the queue is entitled to run now).",
    ["queue", "state"],
)
build_info = Gauge("jobbatch_build_info", "The operator's version; always 1.", ["version", "python"])
build_info.labels(__version__, platform.python_version()).set(1)
leader = Gauge(
    "jobbatch_leader", "1 while this process reconciles (it holds the Lease, or runs without leader election)."
)


def touch_namespace(namespace: str) -> None:
    """Create a namespace's series at 0, so they exist before their first increment (``increase()``
    and ``rate()`` miss the first one of a series that appears already at 1)."""
    for counter in (launches, retries, attempts, reconcile_errors, status_writes):
        counter.labels(namespace)
    for outcome in ("Succeeded", "Failed"):
        batch_duration.labels(namespace, outcome)
    for outcome in ("stored", "missing"):
        results_collected.labels(namespace, outcome)


def attempt_failed(namespace: str, reason: str, exit_code: int | None) -> None:
    label = reason if reason in FAILURE_REASONS else "Other"
    attempt_failures.labels(namespace, label, "none" if exit_code is None else str(exit_code)).inc()


def record_shards(namespace: str, batch: str, counts: dict[str, int]) -> None:
    for state in SHARD_STATES:
        shards.labels(namespace, batch, state).set(counts.get(state, 0))


def forget_batch(namespace: str, batch: str, uid: str) -> None:
    """Drop an idle or deleted batch's per-batch series so label cardinality stays bounded."""
    for state in SHARD_STATES:
        with contextlib.suppress(KeyError):
            shards.remove(namespace, batch, state)
    BATCHES.waiting.pop(uid, None)


class Batches(Collector):
    """``jobbatch_batches`` (every batch by phase) and ``jobbatch_shards_waiting`` (pending shards).

    Computed at scrape time from what the batches' watch events and reconcilers last said: a finished
    batch has no reconciler, but still counts by its phase until deleted. Bounded by the batches that
    exist; a priority class is a label only for running (so accepted) batches, whose class existed.
    """

    def __init__(self) -> None:
        self.phases: dict[str, tuple[str, str]] = {}  # uid -> (namespace, phase)
        self.waiting: dict[str, tuple[str, str, int]] = {}  # uid -> (namespace, priority class, pending)

    def seen(self, uid: str, namespace: str, phase: str) -> None:
        self.phases[uid] = (namespace, phase if phase in PHASES else "Pending")

    def gone(self, uid: str) -> None:
        self.phases.pop(uid, None)
        self.waiting.pop(uid, None)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("jobbatch_batches", "JobBatches by phase.", labels=["namespace", "phase"])
        yield GaugeMetricFamily(
            "jobbatch_shards_waiting",
            "Shards of running batches not started yet (the queue), by namespace and PriorityClass.",
            labels=["namespace", "priority_class"],
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_phase: dict[tuple[str, str], int] = {}
        for namespace, phase in list(self.phases.values()):
            for each in PHASES:  # every phase, 0 included: a line on a chart drops to 0, not off it
                by_phase.setdefault((namespace, each), 0)
            by_phase[(namespace, phase)] += 1
        batches, waiting = self.describe()
        for (namespace, phase), count in sorted(by_phase.items()):
            batches.add_metric([namespace, phase], count)
        by_class: dict[tuple[str, str], int] = {}
        for namespace, priority_class, count in list(self.waiting.values()):
            by_class[(namespace, priority_class)] = by_class.get((namespace, priority_class), 0) + count
        for (namespace, priority_class), count in sorted(by_class.items()):
            waiting.add_metric([namespace, priority_class], count)
        yield batches
        yield waiting


BATCHES = Batches()
REGISTRY.register(BATCHES)


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Serve /metrics from process start, on every replica: a standby answers too (``jobbatch_leader 0``)."""
    if port:
        start_http_server(port, addr=address)
