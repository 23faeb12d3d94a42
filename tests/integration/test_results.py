"""Shard results against the local cluster: collected completely and in order, bounded, and clear when refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from bench.measure import peak_rss_bytes
from jobbatch import naming, results
from jobbatch.api import LABEL_BATCH, LABEL_RESULTS
from tests.integration.conftest import OperatorFactory
from tests.integration.harness import Batches, template
from tests.integration.test_kubectl_plugin import kubectl_jobbatch

SHARDS = 10_000
# The simulated result is {"firstShard":F,"index":I,"value":"x..."}: 100 bytes with the value's padding.
PADDING = 50
MiB = 1024 * 1024


@pytest.mark.timeout(900)  # 10,000 simulated pods: about 4 minutes on the 2-core machine
async def test_ten_thousand_results_are_collected_completely_and_in_order(
    kubeconfig: Path, api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    proc = await operator()
    value = json.dumps("x" * PADDING)
    spec = {
        "template": template(result=value),
        "payloads": {"count": SHARDS},
        "parallelism": 1000,
        "results": {"maxBytes": 128},
    }
    created = await batches.create("many", spec)
    done = await batches.wait_for("many", "Complete", timeout=600)
    status = done["status"]
    assert status["succeededShards"] == f"0-{SHARDS - 1}"
    kept = status["results"]
    per_page = results.shards_per_page(128)
    prefix = naming.results_configmap_prefix("many", created["metadata"]["uid"])
    assert kept == {
        "configMapPrefix": prefix, "shardsPerPage": per_page, "stored": SHARDS, "missing": 0, "missingShards": "",
        "pending": 0, "errors": [],
    }  # fmt: skip
    # Pages: ConfigMaps the batch owns, labelled for kubectl, each well under the 1 MiB limit.
    pages = await client.CoreV1Api(api).list_namespaced_config_map(
        namespace, label_selector=f"{LABEL_RESULTS}=true,{LABEL_BATCH}=many"
    )
    assert sorted(p.metadata.name for p in pages.items) == [f"{prefix}{n}" for n in range(math.ceil(SHARDS / per_page))]
    for page in pages.items:
        assert page.metadata.owner_references[0].uid == created["metadata"]["uid"]
        assert sum(len(k) + len(v.encode()) for k, v in page.data.items()) < 1_000_000
    # The plugin prints each shard's own result, in shard order, as JSON Lines.
    shown = await kubectl_jobbatch(kubeconfig, "results", "many", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    lines = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [line["shard"] for line in lines] == list(range(SHARDS))
    assert all(line["result"]["firstShard"] + line["result"]["index"] == line["shard"] for line in lines)
    assert all(line["result"]["value"] == "x" * PADDING for line in lines)
    assert len(json.dumps(lines[5000]["result"], separators=(",", ":"))) >= 90  # about 100 bytes each
    assert f"{SHARDS} results of {SHARDS} succeeded shards" in shown.stderr
    some = await kubectl_jobbatch(
        kubeconfig, "results", "many", "-n", namespace, "--shards", "7,9998-9999", "-o", "json"
    )
    assert [r["shard"] for r in json.loads(some.stdout)] == [7, 9998, 9999]
    # Memory stays bounded: collections read pods a page at a time and write results as they go.
    assert peak_rss_bytes(proc.pid) < 200 * MiB


async def test_a_result_that_cannot_be_stored_is_named_and_the_batch_still_completes(
    kubeconfig: Path, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    spec = {
        "template": template(result=json.dumps("y" * 40)),
        "payloads": {"count": 3},
        "results": {"maxBytes": 20},
    }
    await batches.create("big", spec)
    done = await batches.wait_for("big", "Complete")
    kept = done["status"]["results"]
    assert kept["stored"] == 0
    assert kept["missingShards"] == "0-2"
    assert kept["missing"] == 3
    assert {e["reason"] for e in kept["errors"]} == {"TooLarge"}
    assert "over spec.results.maxBytes (20)" in kept["errors"][0]["message"]
    shown = await kubectl_jobbatch(kubeconfig, "results", "big", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == ""
    assert "0 results of 3 succeeded shards" in shown.stderr
    assert "3 without a result (first: 0-2" in shown.stderr
    # A batch without spec.results says so.
    await batches.create("plain", {"template": template(), "payloads": {"count": 1}})
    await batches.wait_for("plain", "Complete")
    refused = await kubectl_jobbatch(kubeconfig, "results", "plain", "-n", namespace)
    assert refused.returncode != 0
    assert "keeps no results" in refused.stderr
