"""BatchQueues: watched into the dispatcher, and their status written back from it.

The queues are read by a list+watch of their own (``jobwatch.ListWatch``, cluster-scoped), started
before any batch is reconciled, so a batch naming a queue never plans from an empty view of them. Only
a change of a queue's spec reaches the dispatcher (the operator's own status writes come back as watch
events too, and each would wake every batch).

The status is the dispatcher's view (``Dispatcher.summary``), written every few seconds for each queue
whose numbers changed: one merge patch per changed queue, none when nothing moves. The status names the
release that wrote it (``operator``): several releases in one cluster each enforce a queue's caps on
their own batches, a release leaves another's numbers alone while none of its own batches use the
queue, and only a queue used by two at once shows whichever wrote last. The same numbers
are the gauge ``jobbatch_queue_shards{queue,state}`` (one series per existing queue and state).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from jobbatch import api, metrics
from jobbatch.config import OperatorConfig
from jobbatch.dispatch import Dispatcher, Observed, QueueLimits, QueueSummary
from jobbatch.kube import Kube, error_message

logger = logging.getLogger(__name__)

STATUS_SECONDS = 5.0  # how often queue status is brought up to date


class QueueIndex:
    """The BatchQueues by name; hands their limits to the dispatcher when a spec changes."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self._limits: dict[str, QueueLimits] = {}
        self.status: dict[str, dict[str, Any]] = {}  # each queue's status as last seen

    def apply(self, kind: str, body: Mapping[str, Any]) -> str | None:
        name = str((body.get("metadata") or {}).get("name") or "")
        if not name:
            return None
        limits = dict(self._limits)
        if kind == "DELETED":
            limits.pop(name, None)
            self.status.pop(name, None)
        else:
            limits[name] = _limits(name, body.get("spec") or {})
            self.status[name] = dict(body.get("status") or {})
        self._publish(limits)
        return None

    def replace(self, namespace: str | None, bodies: Iterable[Mapping[str, Any]]) -> set[str]:
        self.status.clear()
        limits = {}
        for body in bodies:
            name = str((body.get("metadata") or {}).get("name") or "")
            limits[name] = _limits(name, body.get("spec") or {})
            self.status[name] = dict(body.get("status") or {})
        self._limits = {}  # a fresh list is always published: it marks the queues listed
        self._publish(limits)
        return set()

    def _publish(self, limits: dict[str, QueueLimits]) -> None:
        if limits != self._limits or not self.dispatcher.queues_listed:
            self._limits = limits
            self.dispatcher.set_queues(limits)


def _limits(name: str, spec: Mapping[str, Any]) -> QueueLimits:
    try:
        parsed = api.BatchQueueSpec.model_validate(spec)
    except ValidationError as exc:  # the CRD's schema forbids it; an older schema may not have
        logger.warning("BatchQueue %s: spec not understood (%s); its batches get weight 1, no caps", name, exc)
        return QueueLimits()
    return QueueLimits(
        parsed.weight, parsed.max_running_shards, parsed.max_running_shards_per_namespace, frozenset(parsed.namespaces)
    )


def status_of(summary: QueueSummary | None, operator: str) -> dict[str, Any]:
    summary = summary or QueueSummary()
    return api.BatchQueueStatus(
        running_shards=summary.running,
        waiting_shards=summary.waiting,
        fair_share=summary.share,
        admitted_batches=summary.admitted,
        waiting_batches=summary.waiting_batches,
        operator=operator,
    ).model_dump(by_alias=True, mode="json")


def to_write(status: dict[str, Any], shown: Mapping[str, Any], operator: str) -> bool:
    """Whether ``status`` (this release's numbers) should replace ``shown`` (the queue's status now)."""
    if {k: shown.get(k) for k in status} == status:
        return False  # already right
    ours = bool(status["runningShards"] or status["waitingShards"])
    return ours or not shown or shown.get("operator") == operator  # never over another release's numbers


def release_name(config: OperatorConfig) -> str:
    """Who writes queue status: the Lease of a leader-electing release, else the namespaces it watches."""
    if config.leader_election:
        return f"{config.leader_election_namespace}/{config.leader_election_lease}"
    return "namespaces " + ",".join(config.namespaces) if config.namespaces else "cluster-wide"


async def write_status(
    kube: Kube,
    dispatcher: Dispatcher,
    index: QueueIndex,
    observed: Callable[[], Mapping[str, Observed]],
    operator: str,
    *,
    every: float = STATUS_SECONDS,
) -> None:
    """Forever: each queue's status, from the dispatcher, whenever it differs from what the queue shows.

    Written for the queues this release's batches run or wait in, for those whose status it wrote last
    (back to zero once they are idle, even after a restart), and for those with no status yet; never over
    another release's numbers while none of this one's batches use the queue.
    """
    exported: set[str] = set()
    while True:
        summary = dispatcher.summary(observed())
        for name in exported - set(dispatcher.queues):
            for state in ("running", "waiting", "share"):
                metrics.queue_shards.remove(name, state)
        exported = set(dispatcher.queues)
        for name in exported:
            numbers = summary.get(name) or QueueSummary()
            for state, value in (("running", numbers.running), ("waiting", numbers.waiting), ("share", numbers.share)):
                metrics.queue_shards.labels(name, state).set(value)
        for name in list(dispatcher.queues):
            status = status_of(summary.get(name), operator)
            shown = index.status.get(name)
            if shown is None or not to_write(status, shown, operator):
                continue
            try:
                await kube.patch_queue_status(name, status)
            except Exception as exc:  # noqa: BLE001  # tried again next round
                logger.warning("BatchQueue %s: writing status failed: %s", name, error_message(exc))
            else:
                index.status[name] = {**shown, **status}
        await asyncio.sleep(every)
