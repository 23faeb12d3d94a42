from __future__ import annotations

from typing import Any

from jobbatch import api, manifests, naming
from jobbatch.api import JobBatchSpec


def spec(**kw: Any) -> JobBatchSpec:
    template = {
        "metadata": {"labels": {"app": "w"}},
        "spec": {
            "restartPolicy": "OnFailure",
            "initContainers": [{"name": "init", "image": "i"}],
            "containers": [{"name": "a", "image": "i", "env": [{"name": "JOBBATCH_SHARD", "value": "bogus"}]}],
        },
    }
    return JobBatchSpec.model_validate({"template": template, "payloads": {"items": [1, 2, 3]}, **kw})


def job(s: JobBatchSpec, shard: int = 1, attempt: int = 2) -> dict[str, Any]:
    return manifests.shard_job(name="b", namespace="ns", uid="uid", spec=s, item_count=3, shard=shard, attempt=attempt)


def test_job_identity_ownership_and_finalizer() -> None:
    j = job(spec())
    meta = j["metadata"]
    assert meta["name"] == naming.job_name("b", "uid", 1, 2)
    assert meta["labels"][api.LABEL_SHARD] == "1"
    assert meta["labels"][api.LABEL_ATTEMPT] == "2"
    assert meta["finalizers"] == [api.SHARD_FINALIZER]
    assert meta["ownerReferences"][0]["kind"] == "JobBatch"
    assert meta["ownerReferences"][0]["controller"] is True


def test_one_pod_no_job_level_retries_and_exit_codes_reported() -> None:
    j = job(spec(shardTimeoutSeconds=30))["spec"]
    assert (j["backoffLimit"], j["completions"], j["parallelism"]) == (0, 1, 1)
    assert j["activeDeadlineSeconds"] == 30
    actions = [r["action"] for r in j["podFailurePolicy"]["rules"]]
    assert actions == ["Ignore", "FailJob"]


def test_pod_template_is_completed_not_replaced() -> None:
    pod = job(spec(priorityClassName="high"))["spec"]["template"]
    assert pod["metadata"]["labels"]["app"] == "w"
    assert pod["metadata"]["labels"][api.LABEL_SHARD] == "1"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["priorityClassName"] == "high"
    for container in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["JOBBATCH_SHARD"] == "1"  # ours wins over a template value
        assert (env["JOBBATCH_ITEM_START"], env["JOBBATCH_ITEM_END"]) == ("1", "2")
        assert env["JOBBATCH_PAYLOAD_FILE"] == manifests.PAYLOAD_FILE
        assert container["volumeMounts"][0]["mountPath"] == manifests.PAYLOAD_DIR
    assert pod["spec"]["volumes"][0]["configMap"]["name"] == naming.payload_configmap_name("b", "uid")


def test_template_of_the_spec_is_not_mutated() -> None:
    s = spec()
    job(s)
    assert s.template["spec"]["restartPolicy"] == "OnFailure"


def test_long_names_stay_valid() -> None:
    name = naming.job_name("x" * 253, "uid", 9_999_999, 100)
    assert len(name) <= 63
    assert len(naming.label_value("y" * 253)) <= 63
