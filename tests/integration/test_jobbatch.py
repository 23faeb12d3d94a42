"""The operator runs JobBatches on the real control plane: shards, retries, limits, lifecycle."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from kubernetes_asyncio import client

from jobbatch import api as jb
from jobbatch import manifests, naming
from jobbatch.ranges import IndexRanges
from tests.integration.conftest import OperatorFactory
from tests.integration.harness import Batches, PodRecorder, peak_running, template
from tests.waiting import eventually

FAST_RETRY = {"limit": 3, "backoff": {"initialSeconds": 0, "jitter": 0}}


def messages(events: list[dict[str, Any]], reason: str) -> list[str]:
    return [e["message"] for e in events if e["reason"] == reason]


async def test_inline_items_complete(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    items = [{"n": i} for i in range(7)]
    async with PodRecorder(api, namespace) as pods:
        created = await batches.create(
            "inline", {"template": template(duration="1s"), "payloads": {"items": items}, "shardSize": 2}
        )
        done = await batches.wait_for("inline", "Complete")

    status = done["status"]
    assert status["phase"] == "Succeeded"
    assert status["shards"] == {"total": 4, "pending": 0, "running": 0, "retrying": 0, "succeeded": 4, "failed": 0}
    assert status["succeededShards"] == "0-3"
    assert status["progress"] == "4/4"
    assert status["startTime"] <= status["completionTime"]
    # kstatus, for GitOps tools: done, at rest, not stalled.
    health = {c["type"]: c["status"] for c in status["conditions"]}
    assert (health["Ready"], health["Reconciling"], health["Stalled"]) == ("True", "False", "False")
    assert pods.attempts("inline") == {0: [0], 1: [0], 2: [0], 3: [0]}
    # The items reach the workers through an immutable snapshot, one item per line.
    uid = created["metadata"]["uid"]
    cm = await client.CoreV1Api(api).read_namespaced_config_map(naming.payload_configmap_name("inline", uid), namespace)
    assert cm.immutable
    assert cm.data[manifests.PAYLOAD_KEY].splitlines() == [f'{{"n":{i}}}' for i in range(7)]
    # Succeeded attempt Jobs are removed once recorded.
    await eventually(lambda: _no_jobs(batches), what="succeeded Jobs cleaned up")
    reasons = [e["reason"] for e in await batches.events("inline")]
    assert "Started" in reasons
    assert "Completed" in reasons


async def _no_jobs(batches: Batches) -> bool:
    return not await batches.jobs()


async def test_worker_pods_get_the_contract(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    await batches.create(
        "contract",
        {"template": template(duration="1h"), "payloads": {"items": ["a", "b", "c"]}, "shardSize": 2, "parallelism": 1},
    )

    async def first_pod() -> Any:
        pods = (await client.CoreV1Api(api).list_namespaced_pod(namespace)).items
        return pods[0] if pods else None

    pod = await eventually(first_pod, what="the first worker pod")
    env = {e.name: e.value for e in pod.spec.containers[0].env}
    assert env["JOBBATCH_NAME"] == "contract"
    assert env["JOBBATCH_NAMESPACE"] == namespace
    assert (env["JOBBATCH_FIRST_SHARD"], env["JOBBATCH_SHARD_COUNT"], env["JOBBATCH_ATTEMPT"]) == ("0", "2", "0")
    assert (env["JOBBATCH_SHARD_SIZE"], env["JOBBATCH_ITEM_COUNT"]) == ("2", "3")
    assert env["JOBBATCH_PAYLOAD_FILE"] == manifests.PAYLOAD_FILE
    # Kubernetes itself gives each pod of an Indexed Job its index: shard = first shard + index.
    index_env = next(e for e in pod.spec.containers[0].env if e.name == "JOB_COMPLETION_INDEX")
    assert "job-completion-index" in index_env.value_from.field_ref.field_path
    assert pod.spec.restart_policy == "Never"
    assert pod.metadata.labels[jb.LABEL_FIRST_SHARD] == "0"
    assert pod.metadata.labels[jb.LABEL_COMPLETION_INDEX] == "0"
    assert pod.metadata.labels[jb.LABEL_ATTEMPT] == "0"
    (job,) = await batches.jobs()  # both shards in one Indexed Job, one running at a time
    assert (job.spec.completion_mode, job.spec.completions, job.spec.parallelism) == ("Indexed", 2, 1)
    assert jb.SHARD_FINALIZER in job.metadata.finalizers
    assert job.metadata.owner_references[0].kind == "JobBatch"


async def test_configmap_source(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    lines = "\n".join(f'{{"url": "https://example.invalid/{i}"}}' for i in range(5))
    await client.CoreV1Api(api).create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="inputs"), data={"urls.jsonl": lines})
    )
    spec = {
        "template": template(),
        "payloads": {"configMap": {"name": "inputs", "key": "urls.jsonl"}},
        "payloadSchema": {"type": "object", "required": ["url"]},
        "shardSize": 2,
    }
    await batches.create("from-cm", spec)
    done = await batches.wait_for("from-cm", "Complete")
    assert done["status"]["itemCount"] == 5
    assert done["status"]["shards"]["total"] == 3


async def test_count_source(api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory) -> None:
    await operator()
    async with PodRecorder(api, namespace) as pods:
        await batches.create(
            "counted", {"template": template(), "payloads": {"count": 1000}, "shardSize": 100, "parallelism": 4}
        )
        done = await batches.wait_for("counted", "Complete")
    assert done["status"]["succeededShards"] == "0-9"
    assert sorted(pods.attempts("counted")) == list(range(10))
    cms = (await client.CoreV1Api(api).list_namespaced_config_map(namespace)).items
    assert not [cm for cm in cms if cm.metadata.name.endswith("-payloads")]  # no data, no snapshot


async def test_parallelism_is_never_exceeded(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    async with PodRecorder(api, namespace) as pods:
        await batches.create(
            "bounded", {"template": template(duration="500ms"), "payloads": {"count": 40}, "parallelism": 5}
        )
        await batches.wait_for("bounded", "Complete")
    assert pods.max_running["bounded"] == 5  # reached, never passed
    assert all(count <= 5 for _, batch, count in pods.running_series if batch == "bounded")
    assert pods.attempts("bounded") == {i: [0] for i in range(40)}


async def test_retry_then_success_follows_backoff(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    spec = {
        "template": template(exit_code="1", fail_shards="1", fail_attempts="0,1"),
        "payloads": {"count": 3},
        "retry": {"limit": 3, "backoff": {"initialSeconds": 2, "multiplier": 2, "jitter": 0}},
    }
    async with PodRecorder(api, namespace) as pods:
        await batches.create("flaky", spec)
        done = await batches.wait_for("flaky", "Complete")
    assert pods.attempts("flaky") == {0: [0], 1: [0, 1, 2], 2: [0]}
    # Retry n waits initialSeconds * multiplier^n after the failure: 2 s, then 4 s.
    first_wait = pods.created_at[("flaky", 1, 1)] - pods.finished_at[("flaky", 1, 0)]
    second_wait = pods.created_at[("flaky", 1, 2)] - pods.finished_at[("flaky", 1, 1)]
    # Failure times are recorded with whole-second precision, so each wait is within a second of nominal.
    assert 1.0 <= first_wait <= 3.5, first_wait
    assert 3.0 <= second_wait <= 5.5, second_wait
    assert done["status"]["shards"]["succeeded"] == 3
    assert len(messages(await batches.events("flaky"), "ShardRetrying")) == 2


async def test_non_retryable_exit_code_fails_at_once(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    bad = template(exit_code="3", fail_shards="1", message="row 17: no such table")
    failed, pods = await _fails_once(
        api, namespace, batches, "fatal", bad, {**FAST_RETRY, "nonRetryableExitCodes": [3]}
    )
    # The Job controller may start shard 2 in the freed slot before the failure is seen; it is then
    # stopped. What is left is released: deleted, or kept finished for inspection (failedJobsHistoryLimit).
    await eventually(lambda: batches.released("fatal"), what="the failed batch's Jobs stopped and released")
    await eventually(lambda: _none_running(pods), what="no pod of the failed batch running")
    cond = next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "ShardsFailed"
    assert "shard 1 (NonRetryableExitCode, exit code 3)" in cond["message"]
    assert failed["status"]["failedShards"] == "1"
    assert failed["status"]["failures"][0]["exitCode"] == 3
    # The worker's termination message says why, in the status and the Event.
    assert failed["status"]["failures"][0]["message"].endswith("code 3: row 17: no such table")
    assert any("row 17: no such table" in m for m in messages(await batches.events("fatal"), "ShardFailed"))


async def _fails_once(
    api: client.ApiClient, namespace: str, batches: Batches, name: str, pod: dict[str, Any], retry: dict[str, Any]
) -> tuple[dict[str, Any], PodRecorder]:
    """Run a 3-shard batch whose shard 1 fails; it must end Failed after that one attempt, no retry."""
    spec = {"template": pod, "payloads": {"count": 3}, "parallelism": 1, "retry": retry}
    async with PodRecorder(api, namespace) as pods:
        await batches.create(name, spec)
        failed = await batches.wait_for(name, "Failed")
    assert pods.attempts(name)[1] == [0]  # no retry
    return failed, pods


async def test_a_worker_asking_for_no_retry_fails_its_shard_at_once(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    """What `raise worker.SkipRetry(...)` leaves behind: a termination message the operator reads."""
    await operator()
    asking = template(exit_code="1", fail_shards="1", message="jobbatch.io/skip-retry: row 3 is not an email")
    failed, _ = await _fails_once(api, namespace, batches, "skipped", asking, FAST_RETRY)  # 3 retries allowed
    (failure,) = failed["status"]["failures"]
    assert (failure["shard"], failure["reason"], failure["exitCode"]) == (1, "SkipRetry", 1)
    assert failure["message"].endswith("asked for no retry: row 3 is not an email")


async def test_max_failed_shards_exceeded_stops_the_batch(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    # Shards 0 and 1 fail; the others run 2 s, so they are still running when the batch fails.
    spec = {
        "template": template(exit_code="1", fail_shards="0,1", duration="2s"),
        "payloads": {"count": 6},
        "parallelism": 6,
        "maxFailedShards": 1,
        "retry": {"limit": 0},
    }
    await batches.create("too-many", spec)
    failed = await batches.wait_for("too-many", "Failed")
    assert failed["status"]["failedShards"] == "0-1"
    cond = next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")
    assert "2 shards failed permanently (maxFailedShards 1)" in cond["message"]
    # Once the failure is recorded, the still-running attempts are stopped and deleted.
    await eventually(lambda: _only_failed_jobs_left(batches), what="running shard Jobs stopped")


async def _only_failed_jobs_left(batches: Batches) -> bool:
    jobs = await batches.jobs()
    return all(any(c.type == "Failed" for c in (j.status.conditions or [])) for j in jobs)


async def test_a_kept_failed_job_holds_only_its_failed_pods(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    spec = {
        "template": template(exit_code="3", fail_shards="1"),
        "payloads": {"count": 4},
        "maxFailedShards": 1,
        "retry": {"limit": 0},
    }
    await batches.create("tolerant", spec)
    done = await batches.wait_for("tolerant", "Complete")
    assert done["status"]["failedShards"] == "1"
    assert done["status"]["failures"][0]["exitCode"] == 3

    async def only_the_failed_pod_kept() -> bool:
        (job,) = await batches.jobs()  # kept for inspection (failedJobsHistoryLimit), released
        pods = (await client.CoreV1Api(api).list_namespaced_pod(namespace)).items
        released = jb.SHARD_FINALIZER not in (job.metadata.finalizers or [])
        return released and [p.status.phase for p in pods] == ["Failed"]

    await eventually(only_the_failed_pod_kept, what="the kept Job's succeeded pods deleted, its failed one kept")


async def test_shard_timeout_is_a_retryable_failure(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    spec = {
        "template": template(duration="1h"),
        "payloads": {"count": 1},
        "shardTimeoutSeconds": 1,
        "retry": {"limit": 1, "backoff": {"initialSeconds": 0, "jitter": 0}},
    }
    async with PodRecorder(api, namespace) as pods:
        await batches.create("slow", spec)
        failed = await batches.wait_for("slow", "Failed")
    assert pods.attempts("slow") == {0: [0, 1]}
    assert failed["status"]["failures"][0]["reason"] == "RetriesExhausted"
    assert "DeadlineExceeded" in failed["status"]["failures"][0]["message"]


async def test_suspend_and_resume_spend_no_retry(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    # Workers that, like real ones, exit 143 on the SIGTERM that stopping a pod sends (docs/testing.md).
    spec = {
        "template": template(duration="3s", sigterm_exit_code="143"),
        "payloads": {"count": 4},
        "parallelism": 2,
        "retry": {"limit": 0},
    }
    async with PodRecorder(api, namespace) as pods:
        await batches.create("pausable", spec)
        await batches.wait_status("pausable", lambda s: s.get("shards", {}).get("running") == 2, "2 running")
        await eventually(lambda: _running_at_least(pods, "pausable", 2), what="2 worker pods")
        await batches.patch_spec("pausable", {"suspend": True})
        suspended = await batches.wait_for("pausable", "Suspended")
        assert suspended["status"]["phase"] == "Suspended"
        await eventually(lambda: _all_jobs_suspended(batches), what="running Jobs suspended")
        await eventually(lambda: _none_running(pods), what="the stopped pods to end")
        launched_while_suspended = sum(pods.creations.values())
        await batches.patch_spec("pausable", {"suspend": False})
        done = await batches.wait_for("pausable", "Complete")
    assert launched_while_suspended == 2
    # The stopped pods ended as a real worker's would (SIGTERM, exit 143) ...
    stopped = [codes for codes in pods.exit_codes.values() if 143 in codes]
    assert len(stopped) == 2
    # ... and it used no retry (limit 0 would have failed the shard): every shard ran attempt 0 only.
    assert pods.attempts("pausable") == {i: [0] for i in range(4)}
    assert done["status"]["failedShards"] == ""
    assert done["status"]["failures"] == []
    reasons = [e["reason"] for e in await batches.events("pausable")]
    assert "Suspended" in reasons
    assert "Resumed" in reasons


async def _none_running(pods: PodRecorder) -> bool:
    return pods.total_running() == 0


async def test_lowering_parallelism_is_a_hard_ceiling_down_to_zero(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    spec = {
        "template": template(duration="2s", sigterm_exit_code="143"),
        "payloads": {"count": 12},
        "parallelism": 4,
        "retry": {"limit": 0},
    }
    async with PodRecorder(api, namespace) as pods:
        await batches.create("narrow", spec)
        await eventually(lambda: _running_at_least(pods, "narrow", 4), what="4 worker pods")
        await batches.patch_spec("narrow", {"parallelism": 1})
        await eventually(lambda: _running_at_most(pods, 1), what="at most 1 pod once lowered to 1")
        lowered = len(pods.running_series)
        await batches.patch_spec("narrow", {"parallelism": 0})
        await eventually(lambda: _running_at_most(pods, 0), what="no pod once lowered to 0")
        zeroed = len(pods.running_series)
        await batches.wait_status(
            "narrow",
            lambda s: s.get("phase") == "Running" and s["shards"]["running"] == 0 and s["shards"]["succeeded"] < 12,
            "Running with no shard running",
        )
        await batches.patch_spec("narrow", {"parallelism": 2})
        done = await batches.wait_for("narrow", "Complete")
    # From the moment the lower ceiling held, no pod start ever passed it.
    assert max((count for _, _, count in pods.running_series[lowered:zeroed]), default=0) <= 1
    assert max((count for _, _, count in pods.running_series[zeroed:]), default=0) <= 2
    # Attempts stopped by the lowering used no retry (limit 0): every shard ran attempt 0 only.
    assert pods.attempts("narrow") == {i: [0] for i in range(12)}
    assert done["status"]["failedShards"] == ""


async def _running_at_most(pods: PodRecorder, n: int) -> bool:
    return pods.total_running() <= n


async def test_a_job_the_batch_does_not_own_records_nothing(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    """Anyone who can read a batch can copy its labels and UID onto a Job in a namespace of their own.

    (An ownerReference to the batch would not survive there: the garbage collector looks owners up in
    the dependent's namespace and deletes the Job. Owned-by-another-batch is covered in test_jobwatch.)
    """
    core = client.CoreV1Api(api)
    other = f"{namespace}-other"
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        await operator("--namespace", other)  # the operator serves both namespaces
        await _forge_a_finished_shard(api, batches, other)
    finally:
        await core.delete_namespace(other)


async def _forge_a_finished_shard(api: client.ApiClient, batches: Batches, other: str) -> None:
    created = await batches.create(
        "target", {"template": template(duration="1h"), "payloads": {"count": 6}, "parallelism": 1}
    )
    uid = created["metadata"]["uid"]
    forged: Any = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "forged",
            "labels": {
                jb.LABEL_BATCH: "target", jb.LABEL_BATCH_UID: uid, jb.LABEL_FIRST_SHARD: "4", jb.LABEL_ATTEMPT: "0",
            },
        },
        "spec": {
            "completionMode": "Indexed", "completions": 1, "parallelism": 1,
            "template": {**template(), "metadata": {"labels": {jb.LABEL_FIRST_SHARD: "4"}},
                         "spec": {**template()["spec"], "restartPolicy": "Never"}},
        },
    }  # fmt: skip
    await batches.batch.create_namespaced_job(other, forged)
    await eventually(lambda: _job_complete(batches, other, "forged"), what="the forged Job to complete")
    # A batch pass after the forged Job finished: shard 4 is still not recorded.
    await batches.patch_spec("target", {"parallelism": 2})
    await batches.wait_status("target", lambda s: s.get("shards", {}).get("running") == 2, "2 running")
    body = await batches.get("target")
    assert 4 not in IndexRanges.parse(body["status"].get("succeededShards"))
    assert body["status"]["shards"]["succeeded"] == 0


async def _job_complete(batches: Batches, namespace: str, name: str) -> bool:
    job = await batches.batch.read_namespaced_job(name, namespace)
    return any(c.type == "Complete" and c.status == "True" for c in (job.status.conditions or []))


async def _all_jobs_suspended(batches: Batches) -> bool:
    jobs = await batches.jobs()
    return bool(jobs) and all(j.spec.suspend for j in jobs)


async def test_parallelism_raised_mid_run(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    async with PodRecorder(api, namespace) as pods:
        await batches.create("widen", {"template": template(duration="2s"), "payloads": {"count": 8}, "parallelism": 1})
        await batches.wait_status("widen", lambda s: s.get("shards", {}).get("running") == 1, "1 running")
        before = pods.max_running["widen"]
        await batches.patch_spec("widen", {"parallelism": 3})
        await eventually(lambda: _running_at_least(pods, "widen", 3), what="3 shards running after the change")
        await batches.wait_for("widen", "Complete")
    assert before == 1
    assert pods.max_running["widen"] == 3


async def _running_at_least(pods: PodRecorder, batch: str, n: int) -> bool:
    return pods.max_running[batch] >= n


async def test_priority_orders_dispatch_under_the_cluster_cap(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    scheduling = client.SchedulingV1Api(api)
    for name, value in ((f"{namespace}-high", 1000), (f"{namespace}-low", 10)):
        await scheduling.create_priority_class(
            client.V1PriorityClass(metadata=client.V1ObjectMeta(name=name), value=value)
        )
    try:
        await operator("--max-running-shards", "2")
        async with PodRecorder(api, namespace) as pods:
            base = {"payloads": {"count": 4}, "parallelism": 2}
            await batches.create(
                "low", {**base, "template": template(duration="3s"), "priorityClassName": f"{namespace}-low"}
            )
            await eventually(lambda: _running_at_least(pods, "low", 2), what="low batch holding the cap")
            await batches.create(
                "high", {**base, "template": template(duration="1s"), "priorityClassName": f"{namespace}-high"}
            )
            await batches.wait_for("high", "Complete")
            await batches.wait_for("low", "Complete")
        # Cap of 2 across both batches, and every high-priority shard started before low's remaining ones.
        assert peak_running(pods) <= 2
        last_high = max(t for (b, _, _), t in pods.created_at.items() if b == "high")
        later_low = [t for (b, s, _), t in pods.created_at.items() if b == "low" and s >= 2]
        assert later_low
        assert all(t > last_high for t in later_low)
    finally:
        for name in (f"{namespace}-high", f"{namespace}-low"):
            await scheduling.delete_priority_class(name)


async def test_payload_schema_violation_is_rejected_with_a_reason(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    spec = {
        "template": template(),
        "payloads": {"items": [{"url": "a"}, {"url": "b"}, {"url": 42}]},
        "payloadSchema": {"type": "object", "properties": {"url": {"type": "string"}}},
    }
    await batches.create("invalid", spec)
    rejected = await batches.wait_for("invalid", "Accepted", "False")
    cond = next(c for c in rejected["status"]["conditions"] if c["type"] == "Accepted")
    assert cond["reason"] == "PayloadSchemaViolation"
    assert "item 2['url']" in cond["message"]
    assert rejected["status"]["phase"] == "Pending"
    assert await batches.jobs() == []  # nothing half-started
    assert messages(await batches.events("invalid"), "PayloadSchemaViolation")


async def test_missing_configmap_then_created_recovers(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    spec = {"template": template(), "payloads": {"configMap": {"name": "later", "key": "items"}}}
    await batches.create("waiting", spec)
    rejected = await batches.wait_for("waiting", "Accepted", "False")
    cond = next(c for c in rejected["status"]["conditions"] if c["type"] == "Accepted")
    assert cond["reason"] == "ConfigMapNotFound"
    assert '"later"' in cond["message"]
    await client.CoreV1Api(api).create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="later"), data={"items": "1\n2\n"})
    )
    done = await batches.wait_for("waiting", "Complete")
    assert done["status"]["itemCount"] == 2


async def test_unknown_priority_class_is_rejected(batches: Batches, operator: OperatorFactory) -> None:
    await operator()
    await batches.create(
        "nopc", {"template": template(), "payloads": {"count": 1}, "priorityClassName": "no-such-class"}
    )
    rejected = await batches.wait_for("nopc", "Accepted", "False")
    cond = next(c for c in rejected["status"]["conditions"] if c["type"] == "Accepted")
    assert cond["reason"] == "PriorityClassNotFound"
    assert await batches.jobs() == []


async def test_operator_killed_mid_batch_loses_and_repeats_nothing(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    first = await operator()
    async with PodRecorder(api, namespace) as pods:
        await batches.create(
            "durable", {"template": template(duration="1s"), "payloads": {"count": 30}, "parallelism": 5}
        )
        await batches.wait_status("durable", lambda s: s.get("shards", {}).get("succeeded", 0) >= 5, "5 succeeded")
        await first.kill()
        # Work goes on without the operator: some attempts finish while nobody records them.
        await eventually(lambda: _finished_unrecorded(batches), what="a shard finished while the operator was down")
        await operator()
        done = await batches.wait_for("durable", "Complete")
    assert done["status"]["succeededShards"] == "0-29"
    # Every shard ran exactly once (one pod), as attempt 0.
    assert {key: n for key, n in pods.creations.items() if n != 1} == {}
    assert pods.attempts("durable") == {i: [0] for i in range(30)}


async def _finished_unrecorded(batches: Batches) -> bool:
    body = await batches.get("durable")
    recorded = IndexRanges.parse(body["status"].get("succeededShards"))
    for job in await batches.jobs():
        first = int(job.metadata.labels[jb.LABEL_FIRST_SHARD])
        done = IndexRanges.parse((job.status.completed_indexes if job.status else None) or "")
        if any(first + index not in recorded for index in done):
            return True
    return False


@pytest.mark.timeout(900)
async def test_large_batch_of_2000_shards(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    async with PodRecorder(api, namespace) as pods:
        await batches.create("big", {"template": template(), "payloads": {"count": 2000}, "parallelism": 200})
        done = await batches.wait_for("big", "Complete", timeout=600)
    assert done["status"]["succeededShards"] == "0-1999"
    assert pods.max_running["big"] <= 200
    assert sum(pods.creations.values()) == 2000
    body = await batches.get("big")
    assert len(str(body["status"])) < 4096


async def test_large_inline_payload_stays_out_of_annotations(batches: Batches, operator: OperatorFactory) -> None:
    await operator()
    items = [{"id": i, "text": "x" * 200} for i in range(2000)]  # ~450 KB: past the 256 KiB annotation limit
    await batches.create("bulky", {"template": template(), "payloads": {"items": items}, "shardSize": 500})
    done = await batches.wait_for("bulky", "Complete")
    annotations = done["metadata"].get("annotations") or {}
    assert sum(len(v) for v in annotations.values()) < 1024, list(annotations)


async def test_delete_cascades_to_running_jobs(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    await batches.create("doomed", {"template": template(duration="1h"), "payloads": {"count": 3}})
    await batches.wait_status("doomed", lambda s: s.get("shards", {}).get("running") == 3, "3 running")
    await batches.delete("doomed")
    await eventually(lambda: _gone(batches, "doomed"), what="the batch and its Jobs gone")


async def _gone(batches: Batches, name: str) -> bool:
    """The batch and its own Jobs no longer exist."""
    own = [j for j in await batches.jobs() if j.metadata.labels[jb.LABEL_BATCH] == name]
    return not await batches.exists(name) and not own


async def test_ttl_start_after_and_deadline(batches: Batches, operator: OperatorFactory) -> None:
    await operator()
    await batches.create("ephemeral", {"template": template(), "payloads": {"count": 1}, "ttlSecondsAfterFinished": 2})
    await batches.create(
        "deadline", {"template": template(duration="1h"), "payloads": {"count": 1}, "activeDeadlineSeconds": 2}
    )
    await batches.create(
        "later", {"template": template(), "payloads": {"count": 1}, "startAfter": "2999-01-01T00:00:00Z"}
    )
    await batches.wait_for("ephemeral", "Complete")
    await eventually(lambda: _gone(batches, "ephemeral"), what="the finished batch deleted after its TTL")
    failed = await batches.wait_for("deadline", "Failed")
    assert next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")["reason"] == "DeadlineExceeded"
    await eventually(
        lambda: _gone_jobs(batches, "deadline"), what="the deadline batch's running Job stopped and removed"
    )
    later = await batches.get("later")
    assert later["status"]["phase"] == "Pending"
    assert not [j for j in await batches.jobs() if j.metadata.labels[jb.LABEL_BATCH] == "later"]


async def test_batches_wait_for_each_other_only_through_the_cap(batches: Batches, operator: OperatorFactory) -> None:
    await operator()
    await asyncio.gather(
        *(batches.create(f"p{i}", {"template": template(), "payloads": {"count": 3}}) for i in range(3))
    )
    for i in range(3):
        await batches.wait_for(f"p{i}", "Complete")


async def _gone_jobs(batches: Batches, name: str) -> bool:
    return not [j for j in await batches.jobs() if j.metadata.labels[jb.LABEL_BATCH] == name]


async def test_foreground_delete_does_not_deadlock(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    await batches.create("fg", {"template": template(duration="1h"), "payloads": {"count": 2}})
    await batches.wait_status("fg", lambda s: s.get("shards", {}).get("running") == 2, "2 running")
    await batches.custom.delete_namespaced_custom_object(
        jb.GROUP, jb.VERSION, namespace, jb.PLURAL, "fg", body=client.V1DeleteOptions(propagation_policy="Foreground")
    )
    await eventually(lambda: _gone(batches, "fg"), what="foreground deletion of the batch and its Jobs to finish")


async def test_running_job_deleted_by_hand_is_retried_after_its_pod_ends(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    await operator()
    spec = {"template": template(duration="3s"), "payloads": {"count": 2}, "parallelism": 1, "retry": FAST_RETRY}
    async with PodRecorder(api, namespace) as pods:
        await batches.create("handled", spec)
        pod = await eventually(lambda: _running_pod(api, namespace), what="the first worker pod Running")
        (running,) = await batches.jobs()
        assert pod.metadata.labels["job-name"] == running.metadata.name
        deleted_at = time.monotonic()
        # As `kubectl delete job` does (the API's default for Jobs would orphan the pod instead).
        background = client.V1DeleteOptions(propagation_policy="Background")
        await batches.batch.delete_namespaced_job(running.metadata.name, namespace, body=background)
        await batches.wait_for("handled", "Complete")
    # A Job being deleted is no longer tracked by the Job controller, so the outcome of what it ran is
    # unknown: each of its shards gets a new attempt -- but only once its pod has ended, never beside it.
    assert pods.attempts("handled") == {0: [0, 1], 1: [1]}
    assert pods.created_at[("handled", 0, 1)] - deleted_at >= 1.0  # the running pod stopped first
    assert max(pods.max_running.values()) == 1


async def _running_pod(api: client.ApiClient, namespace: str) -> Any:
    pods = (await client.CoreV1Api(api).list_namespaced_pod(namespace)).items
    return next((p for p in pods if p.status.phase == "Running"), None)


async def test_a_rerun_runs_the_failed_shards_again_even_once_the_batch_is_idle(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    """Shards 1 and 3 fail both attempts (tolerated), then a rerun of the finished batch runs them again."""
    proc = await operator()
    spec = {
        "template": template(exit_code="42", fail_shards="1,3", fail_attempts="0,1"),
        "payloads": {"count": 5},
        "parallelism": 5,
        "maxFailedShards": 2,
        "retry": {"limit": 1, "backoff": {"initialSeconds": 0, "jitter": 0}},
    }
    async with PodRecorder(api, namespace) as pods:
        await batches.create("again", spec)
        first = await batches.wait_for("again", "Complete")
        assert first["status"]["failedShards"] == "1,3"
        # Its reconciler has nothing left to do and ends: the rerun must bring it back.
        await eventually(
            lambda: _logged(proc.log, f"{namespace}/again: finished; idle until its spec changes"),
            what="the finished batch's reconciler to end",
        )
        await batches.patch_spec("again", {"rerun": {"id": "r1"}})
        status = await batches.wait_status(
            "again", lambda s: s.get("phase") == "Succeeded" and bool(s.get("rerun")), "the rerun to succeed"
        )
    assert status["failedShards"] == ""
    assert status["succeededShards"] == "0-4"
    assert status["failures"] == []
    assert status["rerun"]["id"] == "r1"
    assert status["rerun"]["firstAttempt"] == 2  # above attempts 0 and 1
    assert status["rerun"]["shards"] == 2
    assert status["completionTime"] > first["status"]["completionTime"]
    complete = next(c for c in status["conditions"] if c["type"] == "Complete")
    assert complete["message"] == "5 of 5 shards succeeded (after rerun r1)"
    rerunning = next(c for c in status["conditions"] if c["type"] == "Rerunning")
    assert (rerunning["status"], rerunning["reason"]) == ("False", "Succeeded")
    # Every attempt ran once, under a name of its own; the rerun's attempt 2 succeeded.
    assert pods.attempts("again") == {0: [0], 1: [0, 1, 2], 2: [0], 3: [0, 1, 2], 4: [0]}
    assert all(n == 1 for n in pods.pods("again").values())
    said = messages(await batches.events("again"), "Rerun")
    assert said == ["rerun r1: running 2 failed shards (1,3) again, from attempt 2"]
    # The same id again is no new rerun.
    await batches.patch_spec("again", {"parallelism": 4})
    await batches.wait_status("again", lambda s: s.get("observedGeneration") == 3, "the spec change seen")
    assert (await batches.get("again"))["status"]["rerun"]["count"] == 1


async def _logged(log: Any, line: str) -> bool:
    return line in log.read_text(errors="replace")
