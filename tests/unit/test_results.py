"""Shard results without a cluster: reading a pod's result, paging, the collector, and the planner's gate."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
from collections.abc import Mapping
from typing import Any

import pytest

from jobbatch import manifests, naming, planner, results, worker
from jobbatch.api import RESULT_PREFIX, JobBatchStatus
from jobbatch.planner import CollectResults, ReleaseJob, plan
from jobbatch.ranges import IndexRanges
from jobbatch.results import Collected, ResultStore, read_result
from tests.unit.test_planner import FIN, T0, UID, accepted, job, persisted, spec

NOW = T0 + datetime.timedelta(seconds=5)


def pod(first: int, index: int, message: str | None, *, attempt: int = 0, owner: str = "job-uid") -> dict[str, Any]:
    terminated: dict[str, Any] = {"exitCode": 0}
    if message is not None:
        terminated["message"] = message
    return {
        "metadata": {
            "name": f"j-{index}-{attempt}x",
            "labels": {
                "jobbatch.io/first-shard": str(first),
                "batch.kubernetes.io/job-completion-index": str(index),
                "jobbatch.io/attempt": str(attempt),
            },
            "ownerReferences": [{"kind": "Job", "uid": owner, "controller": True}],
        },
        "status": {"phase": "Succeeded", "containerStatuses": [{"name": "w", "state": {"terminated": terminated}}]},
    }


# -- reading a pod's result ----------------------------------------------------------------------------
def test_a_result_is_the_json_after_the_prefix() -> None:
    found = read_result(pod(10, 3, RESULT_PREFIX + '{"rows": 7}\n'), 100)
    assert found == results.PodResult(13, 0, '{"rows":7}')  # stored compact, on one line


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (None, "NoResult"),
        ("some log tail", "NoResult"),
        (RESULT_PREFIX + '"' + "x" * 200 + '"', "TooLarge"),
        (RESULT_PREFIX + "{not json", "NotJSON"),
    ],
)
def test_a_result_that_cannot_be_stored_says_why(message: str | None, reason: str) -> None:
    found = read_result(pod(0, 4, message, attempt=2), 100)
    assert found is not None
    assert found.text is None
    assert found.shard == 4
    assert found.reason == reason
    assert "attempt 2" in found.message


def test_only_shard_pods_have_results() -> None:
    body = pod(0, 1, RESULT_PREFIX + "1")
    del body["metadata"]["labels"]["jobbatch.io/first-shard"]
    assert read_result(body, 100) is None


def test_pages_stay_under_a_configmaps_limit_for_every_max_bytes() -> None:
    for max_bytes in (1, 100, 1024, 4000):
        per_page = results.shards_per_page(max_bytes)
        assert per_page >= 1
        assert per_page <= results.MAX_SHARDS_PER_PAGE
        # Each key costs its digits, its protobuf entry and its managedFields entry: ~40 bytes in all.
        assert per_page * (max_bytes + 40) <= 1_000_000


# -- the SDK side --------------------------------------------------------------------------------------
def test_the_sdk_writes_one_result_line(tmp_path: Any) -> None:
    log = tmp_path / "termination-log"
    worker.result({"rows": 7, "name": "é"}, env={"JOBBATCH_RESULT_MAX_BYTES": "100"}, path=str(log))
    text = log.read_text(encoding="utf-8")
    found = read_result(pod(0, 0, text), 100)
    assert found is not None
    assert json.loads(found.text or "") == {"rows": 7, "name": "é"}


def test_a_result_over_the_limit_fails_the_shard_for_good(tmp_path: Any) -> None:
    log = tmp_path / "termination-log"
    with pytest.raises(worker.ResultTooLarge, match=r"over spec.results.maxBytes \(10\)") as raised:
        worker.result("x" * 20, env={"JOBBATCH_RESULT_MAX_BYTES": "10"}, path=str(log))
    assert isinstance(raised.value, worker.SkipRetry)
    assert not log.exists()


def test_a_value_json_cannot_hold_is_refused(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        worker.result(float("nan"), env={"JOBBATCH_RESULT_MAX_BYTES": "100"}, path=str(tmp_path / "log"))


def test_the_pod_gets_the_limit_only_with_results() -> None:
    def env(**kw: Any) -> dict[str, str]:
        job = manifests.shard_job(
            name="b", namespace="ns", uid=UID, spec=spec(**kw), item_count=10, first_shard=0, count=1, attempt=0,
            parallelism=1,
        )  # fmt: skip
        return {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert env(results={"maxBytes": 300})["JOBBATCH_RESULT_MAX_BYTES"] == "300"
    assert "JOBBATCH_RESULT_MAX_BYTES" not in env()


# -- the collector, against an in-memory API -------------------------------------------------------------
@dataclasses.dataclass
class FakeApi:
    pods: list[dict[str, Any]]
    configmaps: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    page_size_seen: list[int] = dataclasses.field(default_factory=list)
    writes: int = 0

    async def list_succeeded_pods(
        self, namespace: str, job_name: str, limit: int, token: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        start = int(token or 0)
        page = self.pods[start : start + limit]
        self.page_size_seen.append(len(page))
        return page, str(start + limit) if start + limit < len(self.pods) else ""

    async def create_configmap(self, namespace: str, body: dict[str, Any]) -> bool:
        name = body["metadata"]["name"]
        if name in self.configmaps:
            return False
        self.writes += 1
        self.configmaps[name] = json.loads(json.dumps(body))
        return True

    async def get_configmap_metadata(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.configmaps.get(name)
        return {"metadata": found["metadata"]} if found else None

    async def merge_configmap_data(self, namespace: str, name: str, data: Mapping[str, str]) -> bool:
        if name not in self.configmaps:
            return False
        self.writes += 1
        self.configmaps[name].setdefault("data", {}).update(data)
        return True


def store(api: FakeApi, per_page: int = 4, max_bytes: int = 100) -> ResultStore:
    return ResultStore(
        api,
        namespace="ns",
        batch_uid=UID,
        prefix=naming.results_configmap_prefix("b", UID),
        per_page=per_page,
        max_bytes=max_bytes,
        labels=manifests.results_labels("b", UID),
        owner=manifests.owner_reference("b", UID),
    )


def stored(api: FakeApi) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for body in api.configmaps.values():
        out |= {int(k): json.loads(v) for k, v in (body.get("data") or {}).items()}
    return out


def test_a_collection_stores_each_asked_shard_in_its_page_and_decides_every_one() -> None:
    pods = [pod(100, i, RESULT_PREFIX + json.dumps({"s": 100 + i})) for i in range(1, 12)]
    pods.append(pod(100, 2, RESULT_PREFIX + '"dup"'))  # a second pod of an index: the first one counts
    pods.append(pod(100, 3, RESULT_PREFIX + '"other job"', owner="someone-else"))
    pods.append(pod(100, 5, None, attempt=1))  # duplicate of index 5: ignored, 5 already decided
    api = FakeApi(pods)
    asked = IndexRanges.parse("100-110")  # index 0 (shard 100) has no pod left; 111 is not asked for
    done = asyncio.run(store(api).collect("j", "job-uid", asked, NOW))
    assert done.shards == asked
    assert done.at == NOW
    assert done.missing == IndexRanges.parse("100")
    assert [(e.shard, e.reason) for e in done.errors] == [(100, "PodGone")]
    assert stored(api) == {s: {"s": s} for s in range(101, 111)}
    prefix = naming.results_configmap_prefix("b", UID)
    assert sorted(api.configmaps) == [f"{prefix}{p}" for p in (25, 26, 27)]  # 4 shards a page
    page = api.configmaps[f"{prefix}25"]
    assert page["metadata"]["ownerReferences"][0]["uid"] == UID
    assert page["metadata"]["labels"]["jobbatch.io/results"] == "true"
    assert max(api.page_size_seen) <= results.LIST_PAGE


def test_a_collection_repeated_stores_the_same_and_a_page_deleted_by_hand_is_made_again() -> None:
    api = FakeApi([pod(0, i, RESULT_PREFIX + str(i)) for i in range(3)])
    writer = store(api)
    asyncio.run(writer.collect("j", "job-uid", IndexRanges.parse("0-1"), NOW))
    api.configmaps.clear()
    done = asyncio.run(writer.collect("j", "job-uid", IndexRanges.parse("0-2"), NOW))
    assert not done.missing
    assert stored(api) == {0: 0, 1: 1, 2: 2}


def test_a_page_someone_else_owns_is_never_written() -> None:
    api = FakeApi([pod(0, i, RESULT_PREFIX + str(i)) for i in range(6)])
    prefix = naming.results_configmap_prefix("b", UID)
    api.configmaps[f"{prefix}0"] = {"metadata": {"name": f"{prefix}0", "ownerReferences": []}, "data": {"x": "1"}}
    done = asyncio.run(store(api).collect("j", "job-uid", IndexRanges.parse("0-5"), NOW))
    assert api.configmaps[f"{prefix}0"]["data"] == {"x": "1"}
    assert done.missing == IndexRanges.parse("0-3")
    assert {e.reason for e in done.errors} == {"PageConflict"}
    assert sorted(api.configmaps) == [f"{prefix}0", f"{prefix}1"]
    assert api.configmaps[f"{prefix}1"]["data"] == {"4": "4", "5": "5"}


def test_a_big_collection_writes_as_it_goes() -> None:
    text = json.dumps("y" * 900)
    api = FakeApi([pod(0, i, RESULT_PREFIX + text) for i in range(2000)])
    done = asyncio.run(store(api, per_page=results.shards_per_page(1000), max_bytes=1000).collect(
        "j", "job-uid", IndexRanges.parse("0-1999"), NOW
    ))  # fmt: skip
    assert not done.missing
    assert len(stored(api)) == 2000
    pages = len(api.configmaps)
    assert pages == 3
    assert api.writes > pages


def test_errors_kept_are_bounded() -> None:
    api = FakeApi([pod(0, i, None) for i in range(50)])
    done = asyncio.run(store(api).collect("j", "job-uid", IndexRanges.parse("0-99"), NOW))
    assert done.missing == IndexRanges.parse("0-99")
    assert len(done.errors) == results.MAX_ERRORS


# -- the planner: a success counts once its result is decided ---------------------------------------------
def results_batch(**kw: Any) -> planner.Batch:
    return accepted(spec(results={"maxBytes": 100}, parallelism=4, **kw), items=4)


def test_successes_wait_for_their_results_and_hold_their_job() -> None:
    b = results_batch()
    assert b.status.results is not None
    assert b.status.results.config_map_prefix.endswith("-results-")
    finished = job(0, 4, succeeded="0-3")
    first = plan(b, [finished], NOW, launch_budget=None, collected={})
    assert first.status.succeeded_shards == ""
    assert first.status.shards.running == 4
    assert first.results == [CollectResults(finished.name, "job-0-0", IndexRanges.parse("0-3"))]
    assert not first.release
    assert not first.delete
    assert first.status.phase == "Running"

    done = {"job-0-0": Collected(IndexRanges.parse("0-3"), IndexRanges.parse("2"), (), NOW)}
    second = plan(persisted(b, first), [finished], NOW, launch_budget=None, collected=done)
    assert second.status.succeeded_shards == "0-3"
    assert second.status.phase == "Succeeded"
    assert second.status.results is not None
    assert (second.status.results.stored, second.status.results.missing_shards) == (3, "2")
    assert not second.results
    third = plan(persisted(b, second), [finished], NOW, launch_budget=None, collected=done)
    assert third.release == [ReleaseJob(finished.name, FIN)]
    assert third.status.results == second.status.results  # counted once


def test_a_running_job_is_collected_every_30_seconds() -> None:
    b = accepted(spec(results={"maxBytes": 100}, parallelism=8), items=20)
    started = T0
    running = job(0, 20, parallelism=8, succeeded="0-11", active=8, started_at=started)
    early = plan(b, [running], started + datetime.timedelta(seconds=10), collected={})
    assert not early.results
    assert early.requeue_after is not None
    assert early.requeue_after <= 20
    later = plan(b, [running], started + datetime.timedelta(seconds=31), collected={})
    assert later.results == [CollectResults(running.name, "job-0-0", IndexRanges.parse("0-11"))]
    # After a collection the clock restarts from it, and only the shards since are asked for.
    done = {"job-0-0": Collected(IndexRanges.parse("0-3"), at=started + datetime.timedelta(seconds=31))}
    more = dataclasses.replace(running, succeeded=IndexRanges.parse("0-5"))
    waiting = plan(b, [more], started + datetime.timedelta(seconds=40), collected=done)
    assert not waiting.results
    assert waiting.requeue_after is not None
    assert waiting.requeue_after <= 21
    due = plan(b, [more], started + datetime.timedelta(seconds=62), collected=done)
    assert due.results == [CollectResults(running.name, "job-0-0", IndexRanges.parse("4-5"))]


def test_without_results_nothing_waits() -> None:
    b = accepted(spec(parallelism=4), items=4)
    out = plan(b, [job(0, 4, succeeded="0-3")], NOW, collected={})
    assert out.status.succeeded_shards == "0-3"
    assert not out.results
    assert out.status.results is None


def test_a_failed_attempt_of_a_shard_whose_success_waits_is_not_retried() -> None:
    b = results_batch()
    chunk = job(0, 4, succeeded="0-3")
    other = job(1, 1, attempt=1, failed="1")
    out = plan(b, [chunk, other], NOW, collected={})
    assert not out.create
    assert out.status.failed_shards == ""


def test_a_rerun_waits_for_unstored_successes() -> None:
    b = results_batch()
    status: JobBatchStatus = b.status.model_copy(
        update={"phase": "Failed", "failed_shards": "1", "succeeded_shards": "0"}
    )
    b = dataclasses.replace(b, status=status, spec=spec(results={"maxBytes": 100}, parallelism=4, rerun={"id": "r1"}))
    late = job(2, 2, succeeded="2-3")
    out = plan(b, [late], NOW, collected={})
    assert out.status.rerun is None
    assert out.results


def test_the_plugin_reads_only_pages_of_wanted_succeeded_shards() -> None:
    from jobbatch.plugin import result_pages

    status = {"succeededShards": "0-2,5,9-12", "results": {"configMapPrefix": "b-x-results-", "shardsPerPage": 4}}
    assert [(n, str(s)) for n, s in result_pages(status, None)] == [
        ("b-x-results-0", "0-2"),
        ("b-x-results-1", "5"),
        ("b-x-results-2", "9-11"),
        ("b-x-results-3", "12"),
    ]
    assert [(n, str(s)) for n, s in result_pages(status, IndexRanges.parse("2-9"))] == [
        ("b-x-results-0", "2"),
        ("b-x-results-1", "5"),
        ("b-x-results-2", "9"),
    ]
    assert result_pages({"succeededShards": "0-3"}, None) == []


def test_stored_results_are_strict_one_line_json() -> None:
    found = read_result(pod(0, 0, RESULT_PREFIX + '{"a":\n  [1, 2.5, "é"]}'), 100)
    assert found is not None
    assert found.text == '{"a":[1,2.5,"é"]}'
    for constant in ("NaN", "Infinity", '{"x": -Infinity}'):
        refused = read_result(pod(0, 0, RESULT_PREFIX + constant), 100)
        assert refused is not None
        assert refused.reason == "NotJSON"


def test_the_sdk_only_notes_a_result_when_the_batch_keeps_none(tmp_path: Any) -> None:
    log = tmp_path / "termination-log"
    worker.result("x" * 5000, env={}, path=str(log))  # no limit to break: nothing written, nothing raised
    assert not log.exists()


def test_run_hands_back_what_the_work_returns(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "termination-log"
    env = {
        "JOBBATCH_NAME": "b", "JOBBATCH_NAMESPACE": "ns", "JOBBATCH_FIRST_SHARD": "3", "JOB_COMPLETION_INDEX": "1",
        "JOBBATCH_ATTEMPT": "0", "JOBBATCH_SHARD_COUNT": "9", "JOBBATCH_SHARD_SIZE": "1", "JOBBATCH_ITEM_COUNT": "9",
        "JOBBATCH_RESULT_MAX_BYTES": "100", "JOBBATCH_TERMINATION_LOG": str(log),
    }  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    worker.run(lambda shard: {"shard": shard.index})
    assert log.read_text() == RESULT_PREFIX + '{"shard":4}'


def test_missing_shards_stay_bounded_in_the_status() -> None:
    b = accepted(spec(results={"maxBytes": 100}, parallelism=400), items=400)
    chunk = job(0, 400, succeeded="0-399")
    odd = IndexRanges.of(range(1, 400, 2))
    out = plan(b, [chunk], NOW, collected={"job-0-0": Collected(IndexRanges.parse("0-399"), odd, (), NOW)})
    assert out.status.results is not None
    assert (out.status.results.stored, out.status.results.missing) == (200, 200)
    assert len(IndexRanges.parse(out.status.results.missing_shards).intervals) == results.MAX_MISSING_RANGES


def test_shards_being_stored_hold_no_slot_and_a_failing_store_stalls_the_batch() -> None:
    b = results_batch()
    out = plan(b, [job(0, 4, succeeded="0-3")], NOW, collected={}, results_stall="job j: 422 refused")
    assert out.storing == 4
    assert out.status.results is not None
    assert out.status.results.pending == 4
    stalled = out.status.condition("Stalled")
    assert stalled is not None
    assert (stalled.status, stalled.reason) == ("True", "ResultsNotStored")
    assert "422 refused" in stalled.message
    assert "ResultsNotStored" in [e.reason for e in out.events]


def test_the_plugin_splits_scattered_shards_by_page_in_one_pass() -> None:
    from jobbatch.plugin import result_pages

    status = {
        "succeededShards": str(IndexRanges.of(range(0, 20_000, 2))),
        "results": {"configMapPrefix": "p-", "shardsPerPage": 5000},
    }
    pages = result_pages(status, None)
    assert [n for n, _ in pages] == ["p-0", "p-1", "p-2", "p-3"]
    assert all(len(shards) == 2500 for _, shards in pages)
