"""BatchQueues against the local cluster: weighted shares of the cap, queue and namespace caps, missing queues."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from e2e.cluster import free_port
from jobbatch import api
from tests.integration.conftest import OperatorFactory
from tests.integration.harness import Batches, PodRecorder, peak_running, template
from tests.integration.test_observability import scrape, total
from tests.waiting import eventually

WEIGHTS = {"high": 6, "mid": 3, "low": 1}
CAP = 100
WINDOW = 60.0  # seconds of saturation the shares are measured over
DURATION = 10  # seconds each shard runs
# Where the 6/3/1 test leaves its figures (docs/performance.md quotes them).
FIGURES = Path(os.environ.get("JOBBATCH_QUEUE_FIGURES", Path.home() / ".cache/jobbatch/logs/queue-shares.json"))


class Queues:
    """BatchQueue calls; every queue made here is deleted at the end (they are cluster-scoped)."""

    def __init__(self, api_client: client.ApiClient, prefix: str) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.prefix = prefix
        self.made: list[str] = []

    def name(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    async def create(self, short: str, spec: dict[str, Any]) -> str:
        name = self.name(short)
        body = {"apiVersion": api.API_VERSION, "kind": api.QUEUE_KIND, "metadata": {"name": name}, "spec": spec}
        await self.custom.create_cluster_custom_object(api.GROUP, api.VERSION, api.QUEUE_PLURAL, body)
        self.made.append(name)
        return name

    async def get(self, short: str) -> dict[str, Any]:
        args = (api.GROUP, api.VERSION, api.QUEUE_PLURAL, self.name(short))
        return dict(await self.custom.get_cluster_custom_object(*args))

    async def status(self, short: str) -> dict[str, Any]:
        return dict((await self.get(short)).get("status") or {})

    async def delete_all(self) -> None:
        for name in self.made:
            try:
                await self.custom.delete_cluster_custom_object(api.GROUP, api.VERSION, api.QUEUE_PLURAL, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture
async def queues(api: client.ApiClient, namespace: str, crd: None) -> AsyncIterator[Queues]:
    made = Queues(api, namespace)
    yield made
    await made.delete_all()


def time_weighted(pods: PodRecorder, start: float, end: float) -> dict[str, float]:
    """Each batch's mean count of slot-holding pods over [start, end], from the pod watch's every event."""
    level: dict[str, int] = {}
    area: dict[str, float] = {}
    last = start
    for t, batch, count in pods.running_series:
        if t > end:
            break
        if t > start:
            for b, n in level.items():
                area[b] = area.get(b, 0.0) + n * (t - last)
            last = t
        level[batch] = count
    for b, n in level.items():
        area[b] = area.get(b, 0.0) + n * (end - last)
    return {b: a / (end - start) for b, a in area.items()}


def quietest_slice(pods: PodRecorder, batch: str, start: float, end: float, slice_: float) -> int:
    """The fewest pods of ``batch`` created in any ``slice_``-second part of [start, end]: 0 means it starved."""
    created = [t for (b, _, _), t in pods.created_at.items() if b == batch]
    slices = int((end - start) // slice_)
    return min(sum(1 for t in created if start + i * slice_ <= t < start + (i + 1) * slice_) for i in range(slices))


async def test_three_saturated_queues_hold_the_cap_in_the_ratio_of_their_weights(
    api: client.ApiClient, batches: Batches, queues: Queues, operator: OperatorFactory
) -> None:
    """Queues weighted 6/3/1 under --max-running-shards 100, each with far more work than its share: over a
    minute of saturation they hold running shards in the ratio 6:3:1 (each share within 10 % of its weight's
    part, measured from the pod watch), shards of the low queue start in every 20 seconds of it (twice a
    shard's duration: its pods start in waves, one per duration), and the cap is never passed."""
    for short, weight in WEIGHTS.items():
        await queues.create(short, {"weight": weight})
    port = free_port()
    await operator("--max-running-shards", str(CAP), metrics_port=port)
    async with PodRecorder(api, batches.ns) as pods:
        for short in WEIGHTS:
            spec = {
                "template": template(duration=f"{DURATION}s"),
                "payloads": {"count": 3000},
                "parallelism": CAP,
                "queueName": queues.name(short),
            }
            await batches.create(short, spec)

        async def saturated() -> bool:
            return pods.total_running() >= CAP and all(pods.max_running[b] for b in WEIGHTS)

        await eventually(saturated, what=f"{CAP} shards running, some of each queue", timeout=120)
        start = time.monotonic() + 20  # the first minute's shares settle as the first shards end
        end = start + WINDOW

        async def window_over() -> bool:
            return time.monotonic() >= end

        await eventually(window_over, what="the measuring window to pass", timeout=WINDOW + 60)
        shares = time_weighted(pods, start, end)
        quietest = quietest_slice(pods, "low", start, end, 2 * DURATION)
        peak = peak_running(pods)
        statuses = {short: await queues.status(short) for short in WEIGHTS}
        gauges = (await asyncio.to_thread(scrape, port)).get("jobbatch_queue_shards")
    running = sum(shares.values())
    measured = {b: round(shares.get(b, 0.0) / running, 4) for b in WEIGHTS}
    figures = {
        "cap": CAP,
        "window_seconds": WINDOW,
        "mean_running": shares,
        "ratio": measured,
        "low_started_in_quietest_20s": quietest,
    }
    save_figures(figures)
    for short, weight in WEIGHTS.items():
        expected = weight / sum(WEIGHTS.values())
        assert abs(measured[short] - expected) <= 0.1 * expected, figures
    assert quietest > 0, figures  # the low queue never starves: its shards start in every 20 s
    assert peak <= CAP
    # Each queue's status says what it holds and what it is entitled to.
    assert {s: statuses[s]["fairShare"] for s in WEIGHTS} == {"high": 60, "mid": 30, "low": 10}
    for short in WEIGHTS:
        assert statuses[short]["waitingShards"] > 0
        assert statuses[short]["admittedBatches"] == 1
    # ...and so does the operator's gauge.
    shares_exported = {s: total(gauges, queue=queues.name(s), state="share") for s in WEIGHTS}
    assert shares_exported == {"high": 60, "mid": 30, "low": 10}


def save_figures(figures: dict[str, Any]) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(figures, indent=2) + "\n")


async def test_a_missing_queue_holds_its_batch_and_queue_caps_bound_each_namespace(
    api: client.ApiClient,
    namespace: str,
    other_namespace: str,
    batches: Batches,
    queues: Queues,
    operator: OperatorFactory,
) -> None:
    """A batch naming a queue that does not exist starts nothing (Stalled, QueueNotFound) until it does, nor
    one naming a queue that does not admit its namespace (QueueNotAllowed); then the queue's caps hold with
    no cluster cap at all: at most 5 of its shards run, at most 3 per namespace."""
    await operator("--namespace", other_namespace)
    tenant = Batches(api, other_namespace)
    spec = {
        "template": template(duration="3s"),
        "payloads": {"count": 12},
        "parallelism": 10,
        "queueName": queues.name("capped"),
    }
    await batches.create("mine", spec)
    stalled = await batches.wait_for("mine", "Stalled")
    reason = next(c for c in stalled["status"]["conditions"] if c["type"] == "Stalled")
    assert reason["reason"] == "QueueNotFound"
    assert queues.name("capped") in reason["message"]
    assert await batches.jobs() == []  # nothing half-started
    assert "QueueNotFound" in [e["reason"] for e in await batches.events("mine")]

    # A queue that admits only the other namespace holds this one's batch.
    await queues.create("theirs-only", {"namespaces": [other_namespace]})
    await batches.create("refused", {**spec, "queueName": queues.name("theirs-only")})

    async def not_allowed() -> dict[str, Any] | None:
        body = await batches.get("refused")
        found = [c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == "Stalled"]
        return found[0] if found and found[0]["reason"] == "QueueNotAllowed" else None

    held = await eventually(not_allowed, what="the batch held by a queue that does not admit its namespace")
    assert namespace in held["message"]
    await batches.delete("refused")

    async with PodRecorder(api, namespace) as mine, PodRecorder(api, other_namespace) as theirs:
        await tenant.create("theirs", spec)
        await queues.create("capped", {"maxRunningShards": 5, "maxRunningShardsPerNamespace": 3})
        await batches.wait_for("mine", "Complete", timeout=180)
        await tenant.wait_for("theirs", "Complete", timeout=180)
    assert mine.max_running["mine"] == 3
    assert theirs.max_running["theirs"] == 3
    assert peak_running(mine, theirs) <= 5
    # The status of a queue with nothing left to run.
    status = await eventually(
        lambda: _settled(queues, "capped"), what="the queue's status back to nothing running", timeout=30
    )
    assert (status["runningShards"], status["waitingShards"], status["fairShare"]) == (0, 0, 0)


async def _settled(queues: Queues, short: str) -> dict[str, Any] | None:
    status = await queues.status(short)
    return status if status and status.get("runningShards") == 0 and status.get("admittedBatches") == 0 else None
