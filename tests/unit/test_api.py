from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from jobbatch import api, crd

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / "jobbatch.io_jobbatches.yaml"


CHART_TEMPLATES = CRD_FILE.parents[1] / "charts" / "jobbatch-operator" / "templates"


@pytest.mark.parametrize("plural", sorted(crd.CRDS))
def test_committed_crds_match_the_models(plural: str) -> None:
    committed = CRD_FILE.parent / f"jobbatch.io_{plural}.yaml"
    assert committed.read_text() == crd.render(plural), "crds/ drifted from jobbatch.api: run `make crds`"
    chart = CHART_TEMPLATES / f"crd-{plural}.yaml"
    assert chart.read_text() == crd.render_chart_template(plural), "the chart's CRD drifted: run `make crds`"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for name, sub in node.get("properties", {}).items():
            out += _walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            out += _walk(node["items"], f"{path}[]")
    return out


def test_schema_is_structural() -> None:
    schema = crd.openapi_schema()
    for path, node in _walk(schema):
        assert "$ref" not in node, path
        assert "anyOf" not in node, path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("type") or node.get("x-kubernetes-preserve-unknown-fields"), path


def test_every_spec_field_is_described() -> None:
    spec = crd.openapi_schema()["properties"]["spec"]
    for path, node in _walk(spec):
        if path.count(".") == 1:  # top-level spec fields are what `kubectl explain` shows first
            assert node.get("description"), path


def test_printer_columns_and_short_name() -> None:
    doc = yaml.safe_load(CRD_FILE.read_text())
    version = doc["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase", "Done", "Running", "Failed", "Priority", "Age", "Queue",
    ]  # fmt: skip
    assert [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority")] == ["Queue"]  # -o wide
    assert doc["spec"]["names"]["shortNames"] == ["jb"]
    assert version["subresources"] == {
        "status": {},
        "scale": {"specReplicasPath": ".spec.parallelism", "statusReplicasPath": ".status.shards.running"},
    }


def test_batch_queues_are_cluster_scoped_and_need_no_spec() -> None:
    doc = crd.queue_crd()
    assert doc["spec"]["scope"] == "Cluster"
    assert doc["spec"]["names"]["shortNames"] == ["bq"]
    version = doc["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Weight", "Max", "Share", "Running", "Waiting", "Admitted", "Age",
    ]  # fmt: skip
    schema = version["schema"]["openAPIV3Schema"]
    assert "required" not in schema
    assert schema["properties"]["spec"]["default"] == {}
    assert api.BatchQueueSpec().weight == 1
    with pytest.raises(ValidationError):
        api.BatchQueueSpec.model_validate({"weight": 0})
    # A batch names its queue with a DNS label; no name means the default queue.
    assert api.JobBatchSpec.model_validate(_spec()).queue_name == "default"
    with pytest.raises(ValidationError):
        api.JobBatchSpec.model_validate(_spec(queueName="Not_A_Label"))


def _spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "template": {"spec": {"containers": [{"name": "w", "image": "i"}]}},
        "payloads": {"count": 5},
    }
    return {**base, **overrides}


def test_defaults_match_the_documented_contract() -> None:
    spec = api.JobBatchSpec.model_validate(_spec())
    assert (spec.shard_size, spec.parallelism, spec.suspend, spec.max_failed_shards) == (1, 10, False, 0)
    assert spec.retry.limit == 3
    assert (spec.retry.backoff.initial_seconds, spec.retry.backoff.multiplier) == (10.0, 2.0)
    assert (spec.retry.backoff.max_seconds, spec.retry.backoff.jitter) == (600.0, 0.1)


@pytest.mark.parametrize("payloads", [{}, {"count": 1, "items": [1]}])
def test_exactly_one_payload_source(payloads: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="exactly one of"):
        api.JobBatchSpec.model_validate(_spec(payloads=payloads))


def test_camel_case_round_trip() -> None:
    spec = api.JobBatchSpec.model_validate(_spec(shardSize=7, retry={"nonRetryableExitCodes": [3]}))
    dumped = spec.dump()
    assert dumped["shardSize"] == 7
    assert dumped["retry"]["nonRetryableExitCodes"] == [3]
