from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
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


def _worker_rule() -> str:
    """The shell block of docs/design.md's "The worker rule", as a worker in another language copies it."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "design.md").read_text()
    section = text[text.index("## The worker rule") :]
    return section[section.index("```sh\n") + len("```sh\n") : section.index("```\n", section.index("```sh\n") + 1)]


def _run_rule(job: dict[str, Any], index: int, files: dict[str, Path]) -> subprocess.CompletedProcess[str]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env = {k: str(files.get(k, v)) for k, v in env.items()}  # the mounted files, at their test paths
    env |= {"JOB_COMPLETION_INDEX": str(index), "PATH": os.environ["PATH"]}
    return subprocess.run(["sh", "-c", _worker_rule()], env=env, capture_output=True, text=True, check=False)


def test_the_documented_shell_rule_finds_every_pods_items(tmp_path: Path) -> None:
    """Chunk indexes (the last shard partial), a retry Job, a piece, a count and an objectStore source."""
    items = [{"i": i} for i in range(23)]
    payload = tmp_path / "payloads.jsonl"
    payload.write_text("".join(json.dumps(item) + "\n" for item in items))
    digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    s = JobBatchSpec.model_validate(
        {"template": {"spec": {"containers": [{"name": "w", "image": "i"}]}}, "payloads": {"items": items},
         "shardSize": 5}
    )  # fmt: skip
    files = {"JOBBATCH_PAYLOAD_FILE": payload}

    def rule(first: int, count: int, attempt: int, index: int, node: int = 0) -> list[int]:
        job = manifests.shard_job(
            name="b", namespace="ns", uid="uid", spec=s, item_count=23, first_shard=first, count=count,
            attempt=attempt, parallelism=1, payload_digest=digest, node=node,
        )  # fmt: skip
        done = _run_rule(job, index, files)
        assert done.returncode == 0, done.stderr
        return [json.loads(line)["i"] for line in done.stdout.splitlines()]

    assert [rule(2, 3, 0, index) for index in range(3)] == [[10, 11, 12, 13, 14], [15, 16, 17, 18, 19], [20, 21, 22]]
    assert rule(4, 1, 2, 0) == [20, 21, 22]  # a retry Job of the last shard: index 0
    assert rule(4, 1, 2, 0, node=3) == [21, 22]  # a piece of it (retry.isolate)
    # A replaced file is refused.
    payload.write_text(payload.read_text().replace('{"i": 0}', '{"i": -1}'))
    job = manifests.shard_job(
        name="b", namespace="ns", uid="uid", spec=s, item_count=23, first_shard=0, count=1, attempt=0,
        parallelism=1, payload_digest=digest,
    )  # fmt: skip
    assert _run_rule(job, 0, files).returncode != 0
    # count: no file, nothing to check or print.
    counted = JobBatchSpec.model_validate(
        {"template": {"spec": {"containers": [{"name": "w", "image": "i"}]}}, "payloads": {"count": 23}}
    )
    job = manifests.shard_job(
        name="b", namespace="ns", uid="uid", spec=counted, item_count=23, first_shard=0, count=23, attempt=0,
        parallelism=1,
    )  # fmt: skip
    done = _run_rule(job, 7, {})
    assert (done.returncode, done.stdout) == (0, "")
    # objectStore: the digest is the index file's.
    index = tmp_path / "index.json"
    index.write_text('{"offsets": [0, 10]}')
    stored = JobBatchSpec.model_validate(
        {"template": {"spec": {"containers": [{"name": "w", "image": "i"}]}}, "shardSize": 5,
         "payloads": {"objectStore": {"endpoint": "http://s3", "bucket": "bkt", "key": "k",
                                      "credentialsSecret": {"name": "c"}}}}
    )  # fmt: skip
    job = manifests.shard_job(
        name="b", namespace="ns", uid="uid", spec=stored, item_count=23, first_shard=0, count=5, attempt=0,
        parallelism=1, payload_digest=hashlib.sha256(index.read_bytes()).hexdigest(),
    )  # fmt: skip
    done = _run_rule(job, 1, {"JOBBATCH_PAYLOAD_INDEX": index})
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
