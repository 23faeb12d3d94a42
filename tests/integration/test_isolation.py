"""Poison-item isolation (retry.isolate) against the local cluster: the bad items of a shard are named,
every good item runs once, in one piece, even with the operator SIGKILLed half-way."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from jobbatch import api
from jobbatch.isolation import max_attempts
from tests.integration.conftest import OperatorFactory
from tests.integration.harness import Batches, NamespaceWatch, template
from tests.integration.test_kubectl_plugin import kubectl_jobbatch
from tests.waiting import eventually

ITEMS = 1000
BAD = (17, 503)


class PieceRecorder(NamespaceWatch):
    """Every pod of a batch's pieces: its (attempt, node), its items (from its env) and how it ended."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        super().__init__(api_client, client.CoreV1Api(api_client).list_namespaced_pod, namespace)
        self.pods: dict[str, tuple[int, int, range]] = {}  # pod uid -> (attempt, node, items)
        self.ended: dict[str, str] = {}  # pod uid -> Succeeded or Failed
        self.whole: set[str] = set()  # pods running the whole shard

    def seen(self, kind: str, pod: dict[str, Any]) -> None:
        labels = pod["metadata"].get("labels") or {}
        uid = pod["metadata"]["uid"]
        if api.LABEL_ATTEMPT not in labels:
            return
        if api.LABEL_ITEM_NODE not in labels:
            self.whole.add(uid)
            return
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or []}
        items = range(int(env["JOBBATCH_ITEM_START"]), int(env["JOBBATCH_ITEM_END"]))
        self.pods[uid] = (int(labels[api.LABEL_ATTEMPT]), int(labels[api.LABEL_ITEM_NODE]), items)
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            self.ended[uid] = phase


@pytest.mark.timeout(600)
async def test_a_1000_item_shard_with_2_bad_items_ends_with_998_done_and_those_2_named(
    api: client.ApiClient, kubeconfig: Path, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    first = await operator()
    spec = {
        "template": template(exit_code="1", fail_items=",".join(map(str, BAD)), message="bad record"),
        "payloads": {"count": ITEMS},
        "shardSize": ITEMS,
        "parallelism": 10,
        "maxFailedShards": 1,
        "retry": {"limit": 1, "backoff": {"initialSeconds": 1, "jitter": 0}, "isolate": True},
    }
    async with PieceRecorder(api, namespace) as pods:
        await batches.create("poison", spec)
        # The operator is SIGKILLed once pieces run; the next one resumes from the Jobs it finds.
        await eventually(lambda: _at_least(pods, 6), what="six pieces started")
        await first.kill()
        await operator()
        done = await batches.wait_for("poison", "Complete", timeout=300)
    status = done["status"]
    assert status["failedShards"] == "0"
    assert status["failedItems"] == "17,503"
    assert status["failedItemCount"] == 2
    assert [(f["items"], f["exitCode"], f["message"]) for f in status["itemFailures"]] == [
        ("17", 1, "bad record"),
        ("503", 1, "bad record"),
    ]
    assert status["failures"][-1]["reason"] == "ItemsFailed"
    assert "2 items failed when run apart (17,503)" in status["failures"][-1]["message"]
    # Each piece ran once; the pieces that succeeded hold every good item exactly once.
    runs = collections.Counter((attempt, node) for attempt, node, _ in pods.pods.values())
    assert runs
    assert max(runs.values()) == 1, runs
    done_items = collections.Counter(
        item for uid, (_, _, items) in pods.pods.items() if pods.ended.get(uid) == "Succeeded" for item in items
    )
    assert set(done_items) == set(range(ITEMS)) - set(BAD)
    assert max(done_items.values()) == 1
    # Two whole attempts (retry.limit 1), then at most 2 * k * ceil(log2 S) pieces.
    assert len(pods.whole) == 2
    assert len(pods.pods) <= max_attempts(ITEMS, len(BAD))
    reasons = {e["reason"] for e in await batches.events("poison")}
    assert {"IsolatingItems", "ItemsFailed", "Completed"} <= reasons
    # What a user reads: the plugin's failed items, as data and as a table, and the batch's status line.
    shown = await kubectl_jobbatch(kubeconfig, "failures", "poison", "--items", "-o", "json", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert (data["failedItems"], data["failedItemCount"]) == ("17,503", 2)
    assert [(r["items"], r["shard"], r["exitCode"]) for r in data["itemFailures"]] == [("17", 0, 1), ("503", 0, 1)]
    table = await kubectl_jobbatch(kubeconfig, "failures", "poison", "--items", "-n", namespace)
    assert table.stdout.splitlines()[-1] == "2 failed items: 17,503"
    status = await kubectl_jobbatch(kubeconfig, "status", "poison", "-n", namespace)
    assert "Failed items:  2: 17,503" in status.stdout


async def _at_least(pods: PieceRecorder, count: int) -> bool:
    return len(pods.pods) >= count


async def test_isolation_is_refused_with_results(batches: Batches) -> None:
    spec = {
        "template": template(),
        "payloads": {"count": 4},
        "retry": {"isolate": True},
        "results": {"maxBytes": 100},
    }
    with pytest.raises(ApiException) as refused:
        await batches.create("both", spec)
    assert refused.value.status == 422
    assert "retry.isolate cannot be combined with results" in str(refused.value.body)
