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
            "containers": [{"name": "a", "image": "i", "env": [{"name": "JOBBATCH_FIRST_SHARD", "value": "bogus"}]}],
        },
    }
    return JobBatchSpec.model_validate({"template": template, "payloads": {"items": [1, 2, 3]}, **kw})


def job(s: JobBatchSpec, first: int = 1, attempt: int = 2, count: int = 2, parallelism: int = 1) -> dict[str, Any]:
    return manifests.shard_job(
        name="b", namespace="ns", uid="uid", spec=s, item_count=3, first_shard=first, count=count,
        attempt=attempt, parallelism=parallelism,
    )  # fmt: skip


def test_job_identity_ownership_and_finalizer() -> None:
    j = job(spec())
    meta = j["metadata"]
    assert meta["name"] == naming.job_name("b", "uid", 1, 2)
    assert meta["labels"][api.LABEL_FIRST_SHARD] == "1"
    assert meta["labels"][api.LABEL_ATTEMPT] == "2"
    assert meta["finalizers"] == [api.SHARD_FINALIZER]
    assert meta["ownerReferences"][0]["kind"] == "JobBatch"
    assert meta["ownerReferences"][0]["controller"] is True


def test_an_indexed_job_with_one_try_per_index_and_no_job_wide_failure() -> None:
    j = job(spec(shardTimeoutSeconds=30, retry={"disruptionLimit": 2}), count=5, parallelism=3)["spec"]
    assert (j["completionMode"], j["completions"], j["parallelism"]) == ("Indexed", 5, 3)
    # Each attempt's deadline is the pod's own, not the Job's (which runs many shards).
    assert "activeDeadlineSeconds" not in j
    assert j["template"]["spec"]["activeDeadlineSeconds"] == 30
    rules = j["podFailurePolicy"]["rules"]
    # Never FailJob: the Job controller applies the policy to pods it deleted for suspension.
    assert [r["action"] for r in rules] == ["Count", "FailIndex"]
    # A worker's exit fails its index at once; only disruptions count, up to the batch's limit.
    assert rules[0]["onPodConditions"] == [{"type": "DisruptionTarget"}]
    assert rules[1]["onExitCodes"] == {"operator": "NotIn", "values": [0]}
    assert j["backoffLimitPerIndex"] == 2
    assert job(spec())["spec"]["backoffLimitPerIndex"] == 3  # the default


def test_pod_template_is_completed_not_replaced() -> None:
    pod = job(spec(priorityClassName="high"))["spec"]["template"]
    assert pod["metadata"]["labels"]["app"] == "w"
    assert pod["metadata"]["labels"][api.LABEL_FIRST_SHARD] == "1"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["priorityClassName"] == "high"
    for container in pod["spec"]["initContainers"] + pod["spec"]["containers"]:
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["JOBBATCH_FIRST_SHARD"] == "1"  # ours wins over a template value
        assert (env["JOBBATCH_SHARD_SIZE"], env["JOBBATCH_ITEM_COUNT"], env["JOBBATCH_ATTEMPT"]) == ("1", "3", "2")
        assert env["JOBBATCH_PAYLOAD_FILE"] == manifests.PAYLOAD_FILE
        assert container["volumeMounts"][0]["mountPath"] == manifests.PAYLOAD_DIR
    assert pod["spec"]["volumes"][0]["configMap"]["name"] == naming.payload_configmap_name("b", "uid")


def test_template_of_the_spec_is_not_mutated() -> None:
    s = spec()
    job(s)
    assert s.template["spec"]["restartPolicy"] == "OnFailure"


def test_long_names_stay_valid() -> None:
    name = naming.job_name("x" * 253, "uid", 9_999_999, 100)
    # The Job controller names pods' hostnames "<job>-<index>": a DNS label of at most 63 characters.
    assert len(f"{name}-{9_999}") <= 63
    assert len(naming.label_value("y" * 253)) <= 63


def test_dotted_batch_names_make_dns_label_job_names() -> None:
    name = naming.job_name("a.b.c", "uid", 0, 0)
    assert "." not in name
    assert name.startswith("a-b-c-")


def test_event_names_fit_for_the_longest_batch_names() -> None:
    longest = "a" * 252 + "b"
    names = {naming.event_name(longest) for _ in range(3)}
    assert len(names) == 3  # unique
    for name in names:
        assert len(name) <= 253
        assert name.startswith("a" * 240 + ".")
    assert naming.event_name("short").startswith("short.")


def test_a_failing_worker_says_why_even_without_a_termination_log() -> None:
    pod = job(spec())["spec"]["template"]["spec"]
    assert {c["terminationMessagePolicy"] for c in pod["containers"]} == {"FallbackToLogsOnError"}
    own = spec()
    own.template["spec"]["containers"][0]["terminationMessagePolicy"] = "File"
    assert job(own)["spec"]["template"]["spec"]["containers"][0]["terminationMessagePolicy"] == "File"
