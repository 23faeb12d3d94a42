"""`kubectl jobbatch`'s rendering and argument handling (no cluster: tests/integration/test_kubectl_plugin.py)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from jobbatch import plugin
from jobbatch.ranges import IndexRanges

NOW = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)


def batch(status: dict[str, Any], *, generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "b", "namespace": "ns", "generation": generation, "uid": "u"},
        "spec": spec,
        "status": status,
    }


def test_the_strip_stays_three_rows_at_100k_shards_and_shows_a_lone_failure() -> None:
    total = 100_000
    rows = plugin.shard_strip(
        total,
        succeeded=IndexRanges([(0, 49_999)]),
        failed=IndexRanges.of([77_777]),
        running=IndexRanges([(50_000, 50_009)]),
        width=60,
    )
    assert len(rows) == 3
    assert all(len(r) <= 60 for r in rows)
    cells = "".join(rows)
    per_cell = -(-total // 180)
    assert cells.count("x") == 1  # one shard in 100,000, still visible
    assert cells[77_777 // per_cell] == "x"
    assert cells[50_000 // per_cell] == ">"
    assert set(cells[: 49_999 // per_cell]) == {"#"}
    assert cells[-1] == "."


def test_a_small_batch_gets_a_cell_per_shard() -> None:
    (row,) = plugin.shard_strip(5, IndexRanges.of([0, 1]), IndexRanges.of([4]), IndexRanges.of([2]), width=60)
    assert row == "##>.x"
    assert plugin.shard_strip(0, IndexRanges(), IndexRanges(), IndexRanges()) == []


def test_a_partly_done_cell_differs_from_a_done_one() -> None:
    # Width 1: three cells at most, so two shards a cell.
    assert plugin.shard_strip(4, IndexRanges.of([0, 1, 2]), IndexRanges(), IndexRanges(), width=1) == ["#", "+"]


def test_colour_only_when_asked() -> None:
    (plain,) = plugin.shard_strip(2, IndexRanges.of([0]), IndexRanges.of([1]), IndexRanges())
    (coloured,) = plugin.shard_strip(2, IndexRanges.of([0]), IndexRanges.of([1]), IndexRanges(), colour=True)
    assert "\x1b[" not in plain
    assert "\x1b[31mx\x1b[0m" in coloured


def test_status_shows_counts_durations_conditions_and_failed_shards() -> None:
    status = {
        "phase": "Failed",
        "shards": {"total": 4, "succeeded": 3, "failed": 1},
        "succeededShards": "0-2",
        "failedShards": "3",
        "startTime": "2026-12-02T11:58:30Z",
        "completionTime": "2026-12-02T11:59:45Z",
        "conditions": [
            {"type": "Failed", "status": "True", "reason": "TooManyFailedShards", "message": "1 shard failed"},
            {"type": "Complete", "status": "False", "reason": "Failed", "message": ""},
        ],
    }
    text = plugin.render_status(batch(status, parallelism=2), IndexRanges(), now=NOW)
    assert "Phase:       Failed" in text
    assert "4 total: 3 succeeded, 1 failed" in text
    assert "took 1m15s" in text
    assert "Failed:      TooManyFailedShards: 1 shard failed" in text
    assert "Complete:" not in text
    assert "  ###x" in text
    assert "Failed shards: 3" in text


def test_status_of_a_refused_batch_says_why() -> None:
    status = {"conditions": [{"type": "Accepted", "status": "False", "reason": "PayloadInvalid", "message": "item 3"}]}
    text = plugin.render_status(batch(status), IndexRanges(), now=NOW)
    assert "Not accepted: PayloadInvalid: item 3" in text
    assert "Phase:       Pending" in text


def test_failures_are_rows_with_exit_codes() -> None:
    failures = [{"shard": 3, "attempt": 2, "exitCode": 7, "reason": "RetriesExhausted", "message": "exit 7"}]
    rows = plugin.failure_rows(batch({"failures": failures}))
    assert rows == [{"shard": 3, "attempt": 2, "exitCode": 7, "reason": "RetriesExhausted", "message": "exit 7"}]
    table = plugin.render_table(rows, ["shard", "attempt", "exitCode", "reason", "message"]).splitlines()
    assert table[0].split() == ["SHARD", "ATTEMPT", "EXIT", "CODE", "REASON", "MESSAGE"]
    assert table[1].split() == ["3", "2", "7", "RetriesExhausted", "exit", "7"]


def test_failed_items_are_shown_and_listed() -> None:
    status = {
        "phase": "Succeeded",
        "failedShards": "0",
        "failedItems": "17,503",
        "failedItemCount": 2,
        "itemFailures": [
            {"items": "17", "shard": 0, "attempt": 2, "exitCode": 1, "reason": "Error", "message": "bad record"},
            {"items": "503", "shard": 0, "attempt": 2, "exitCode": 1, "reason": "Error", "message": "bad record"},
        ],
    }
    text = plugin.render_status(batch(status), IndexRanges(), now=NOW)
    assert "Failed items:  2: 17,503   (kubectl jobbatch failures b --items)" in text
    out = io.StringIO()
    args = argparse.Namespace(name="b", output=None)
    assert plugin._item_failures(batch(status, retry={"isolate": True}), args, out) == plugin.EXIT_OK
    lines = out.getvalue().splitlines()
    assert lines[0].split()[:3] == ["ITEMS", "SHARD", "ATTEMPT"]
    assert lines[1].split() == ["17", "0", "2", "1", "Error", "bad", "record"]
    assert lines[-1] == "2 failed items: 17,503"
    out = io.StringIO()
    plugin._item_failures(batch(status), argparse.Namespace(name="b", output="json"), out)
    data = json.loads(out.getvalue())
    assert data["failedItems"] == "17,503"
    assert data["failedItemCount"] == 2
    assert [r["items"] for r in data["itemFailures"]] == ["17", "503"]
    out = io.StringIO()
    plugin._item_failures(batch({}), argparse.Namespace(name="b", output=None), out)
    assert out.getvalue() == "No failed items in jobbatch b (retry.isolate is off)\n"


def test_the_last_progress_report_of_a_log() -> None:
    log = "\n".join(
        [
            '2026-12-03T07:00:00.123456789Z jobbatch.io/progress:{"done":1,"total":10}',
            "2026-12-03T07:00:01.000000000Z processing record 7",
            '2026-12-03T07:00:02.500000000Z jobbatch.io/progress:{"done":4,"total":10}',
            "2026-12-03T07:00:03.000000000Z jobbatch.io/progress:{not json",
            "2026-12-03T07:00:04.000000000Z done with a line that mentions jobbatch.io/progress: in passing",
        ]
    )
    found = plugin.last_progress(log)
    assert found is not None
    assert found[0] == {"done": 4, "total": 10}
    assert found[1] == datetime.datetime(2026, 12, 3, 7, 0, 2, 500000, tzinfo=datetime.UTC)
    assert plugin.last_progress('x jobbatch.io/progress:{"done":7}') == ({"done": 7}, None)
    assert plugin.last_progress("2026-12-03T07:00:00Z nothing to see") is None


class _Content:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def iter_chunked(self, size: int) -> Any:
        for at in range(0, len(self.data), size):
            yield self.data[at : at + size]


class _Response:
    def __init__(self, data: bytes) -> None:
        self.content = _Content(data)
        self.released = False

    def release(self) -> None:
        self.released = True


class _FakeCluster:
    """What ``progress`` asks of the cluster: the batch, its running pods, and their logs (bytes, or an error)."""

    def __init__(self, logs: dict[str, bytes | Exception]) -> None:
        self.logs = logs
        self.core = self
        self.asked: list[dict[str, Any]] = []

    async def get(self, name: str) -> dict[str, Any]:
        return batch({}, shardSize=1)

    async def pods(self, batch: dict[str, Any], *, running_only: bool = False) -> list[client.V1Pod]:
        return [_pod(name, index) for index, name in enumerate(self.logs)]

    async def read_namespaced_pod_log(self, name: str, namespace: str, **kw: Any) -> _Response:
        self.asked.append({"name": name, **kw})
        found = self.logs[name]
        if isinstance(found, Exception):
            raise found
        return _Response(found)


def _pod(name: str, index: int, annotations: dict[str, str] | None = None) -> client.V1Pod:
    labels = {"jobbatch.io/first-shard": "0", "batch.kubernetes.io/job-completion-index": str(index)}
    containers = [client.V1Container(name="proxy"), client.V1Container(name="worker")]
    meta = client.V1ObjectMeta(name=name, namespace="ns", labels=labels, annotations=annotations)
    return client.V1Pod(metadata=meta, spec=client.V1PodSpec(containers=containers))


def test_progress_survives_any_log_and_says_which_pods_it_could_not_read(capsys: pytest.CaptureFixture[str]) -> None:
    report = b'2026-12-03T07:00:02Z jobbatch.io/progress:{"done":4,"total":10}\n'
    noise = b"2026-12-03T07:00:01Z " + b"\xff\xfe binary \xe2\x82" + b"x" * 1000 + b"\n"
    cluster = _FakeCluster(
        {
            "big": noise * 400 + report,  # 400 KiB of non-UTF-8 noise, then the report: the end is kept
            "odd": report + b'2026-12-03T07:00:03Z worker says jobbatch.io/progress:{"done":1e400}\n',
            "refused": ApiException(status=403, reason="Forbidden"),
        }
    )
    out = io.StringIO()
    args = argparse.Namespace(name="b", output="json", max_pods=50, container=None)
    code = asyncio.run(plugin.cmd_progress(cluster, args, out))  # type: ignore[arg-type]
    assert code == plugin.EXIT_OK
    rows = {r["pod"]: r for r in json.loads(out.getvalue())}
    assert (rows["big"]["done"], rows["odd"]["done"], rows["refused"]["done"]) == (4, 4, None)
    assert "1 of 3 pods' logs could not be read (first: refused: 403 Forbidden)" in capsys.readouterr().err
    assert all(a["container"] == "proxy" and "limit_bytes" not in a for a in cluster.asked)  # no default set
    # Every read refused: an error, not "no reports".
    refused = _FakeCluster({"p": ApiException(status=403, reason="Forbidden")})
    out = io.StringIO()
    args = argparse.Namespace(name="b", output=None, max_pods=50, container=None)
    assert asyncio.run(plugin.cmd_progress(refused, args, out)) == plugin.EXIT_ERROR  # type: ignore[arg-type]
    assert "no progress reports" not in out.getvalue()


def test_the_container_read_is_the_pods_default() -> None:
    pod = _pod("p", 0, {"kubectl.kubernetes.io/default-container": "worker"})
    assert plugin.container_of(pod) == "worker"
    assert plugin.container_of(pod, "proxy") == "proxy"
    assert plugin.container_of(_pod("p", 0)) == "proxy"  # no annotation: the first, as kubectl
    assert plugin.container_of(_pod("p", 0, {"kubectl.kubernetes.io/default-container": "gone"})) == "proxy"


def test_max_pods_must_be_at_least_one() -> None:
    with pytest.raises(SystemExit) as refused:
        plugin.build_parser().parse_args(["progress", "b", "--max-pods", "0"])
    assert refused.value.code == 2


def test_a_progress_row() -> None:
    labels = {
        "jobbatch.io/first-shard": "2",
        "batch.kubernetes.io/job-completion-index": "1",
        "jobbatch.io/attempt": "0",
    }
    env = [
        client.V1EnvVar(name="JOBBATCH_SHARD_SIZE", value="100"),
        client.V1EnvVar(name="JOBBATCH_ITEM_COUNT", value="1000"),
    ]
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="p", labels=labels),
        spec=client.V1PodSpec(containers=[client.V1Container(name="w", env=env)]),
    )
    when = NOW - datetime.timedelta(seconds=75)
    row = plugin.progress_row(pod, ({"done": 41, "total": 100}, when), NOW)
    assert row == {"shard": 3, "attempt": 0, "items": "300-399", "done": 41, "total": 100, "percent": "41%",
                   "updated": "1m15s ago", "pod": "p"}  # fmt: skip
    silent = plugin.progress_row(pod, None, NOW)
    assert (silent["done"], silent["percent"], silent["updated"]) == (None, None, None)


def test_the_items_a_pod_ran() -> None:
    def pod(index: int, **env: str) -> client.V1Pod:
        labels = {"jobbatch.io/first-shard": "4", "batch.kubernetes.io/job-completion-index": str(index)}
        container = client.V1Container(name="w", env=[client.V1EnvVar(name=k, value=v) for k, v in env.items()])
        return client.V1Pod(metadata=client.V1ObjectMeta(labels=labels), spec=client.V1PodSpec(containers=[container]))

    sized = {"JOBBATCH_SHARD_SIZE": "10", "JOBBATCH_ITEM_COUNT": "55"}
    assert plugin.items_of(pod(1, **sized)) == range(50, 55)  # shard 5, the last one
    assert plugin.items_of(pod(0, **sized, JOBBATCH_ITEM_START="42", JOBBATCH_ITEM_END="45")) == range(42, 45)
    assert plugin.items_of(pod(0)) == range(0)


def test_wait_ends_on_the_batchs_phase_whatever_changed_after() -> None:
    assert plugin.wait_outcome(batch({"phase": "Succeeded"})) == plugin.EXIT_OK
    assert plugin.wait_outcome(batch({"phase": "Failed"})) == plugin.EXIT_FAILED
    # Scaled after it finished: a finished batch stays finished (only a rerun starts it again).
    assert plugin.wait_outcome(batch({"phase": "Succeeded"}, generation=2)) == plugin.EXIT_OK
    assert plugin.wait_outcome(batch({"phase": "Running"})) is None
    assert plugin.wait_outcome(batch({})) is None
    refused = {"conditions": [{"type": "Accepted", "status": "False", "reason": "PayloadInvalid", "message": "x"}]}
    assert plugin.refusal(batch(refused)) == "PayloadInvalid: x"


def test_long_range_lists_are_cut() -> None:
    assert plugin.brief_ranges("0-3,7") == "0-3,7"
    text = ",".join(str(i * 2) for i in range(50))
    assert plugin.brief_ranges(text) == "0,2,4,6,8,10,12,14,16,18 ... (40 more ranges)"


def test_the_list_view_strip_is_one_row_over_every_shard() -> None:
    failed = IndexRanges.of([50])
    (row,) = plugin.shard_strip(60, IndexRanges(), failed, IndexRanges(), width=20, rows=1)
    assert len(row) == 20
    assert row[50 // 3] == "x"


def test_several_kubeconfig_files_use_the_first_current_context_as_kubectl_does(tmp_path: Path) -> None:
    first, second = tmp_path / "a.kc", tmp_path / "b.kc"
    first.write_text("current-context: ctxa\n")
    second.write_text("current-context: ctxb\n")
    empty = tmp_path / "none.kc"
    empty.write_text("{}\n")
    paths = os.pathsep.join([str(tmp_path / "missing"), str(empty), str(first), str(second)])
    assert plugin.first_current_context(paths) == "ctxa"
    assert plugin.first_current_context(str(empty)) is None


async def test_connect_acts_on_the_context_kubectl_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def kubeconfig(name: str, current: str) -> Path:
        path = tmp_path / f"{name}.kc"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": current,
            "clusters": [{"name": name, "cluster": {"server": f"https://{name}.invalid"}}],
            "users": [{"name": name, "user": {"token": "t"}}],
            "contexts": [{"name": current, "context": {"cluster": name, "user": name, "namespace": f"ns-{name}"}}],
        }))  # fmt: skip
        return path

    a, b = kubeconfig("a", "ctxa"), kubeconfig("b", "ctxb")
    monkeypatch.setenv("KUBECONFIG", f"{a}{os.pathsep}{b}")
    cluster = await plugin.Cluster.connect(None, None, None)
    try:
        assert cluster.namespace == "ns-a"
        assert cluster.api_client.configuration.host == "https://a.invalid"
    finally:
        await cluster.close()
    other = await plugin.Cluster.connect(None, "ctxb", "given")
    try:
        assert (other.namespace, other.api_client.configuration.host) == ("given", "https://b.invalid")
    finally:
        await other.close()


@pytest.mark.parametrize(
    "argv",
    [
        ["-n", "team", "--context", "c", "status", "b"],  # `kubectl jobbatch -n team ...` passes them so
        ["status", "b", "-n", "team", "--context", "c"],
        ["--context", "c", "status", "-n", "team", "b"],
    ],
)
def test_connection_flags_work_before_and_after_the_command(argv: list[str]) -> None:
    args = plugin.build_parser().parse_args(argv)
    assert (args.namespace, args.context, args.name, args.kubeconfig) == ("team", "c", "b", None)


def test_wait_takes_kubectl_durations() -> None:
    parser = plugin.build_parser()
    assert parser.parse_args(["wait", "b", "--timeout", "90s"]).timeout == 90
    assert parser.parse_args(["wait", "b", "--timeout", "5m"]).timeout == 300
    assert parser.parse_args(["wait", "b", "--timeout", "1h30m"]).timeout == 5400
    assert parser.parse_args(["wait", "b"]).timeout == 1800
    with pytest.raises(SystemExit):
        parser.parse_args(["wait", "b", "--timeout", "soon"])


def test_wait_does_not_take_the_old_outcome_while_a_rerun_is_unanswered() -> None:
    failed = {"phase": "Failed"}
    assert plugin.wait_outcome(batch(failed, rerun={"id": "r1"})) is None
    answered = {"phase": "Failed", "rerun": {"id": "r1", "shards": 0}}  # refused: the outcome stands
    assert plugin.wait_outcome(batch(answered, rerun={"id": "r1"})) == plugin.EXIT_FAILED
    assert plugin.wait_outcome(batch({"phase": "Succeeded", "rerun": {"id": "r0"}}, rerun={"id": "r0"})) == 0


def rerunning(status: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": "Rerunning", "status": status, "reason": reason, "message": message}


def test_the_operators_answer_to_a_rerun() -> None:
    asked = batch({"phase": "Failed"}, rerun={"id": "r1"})
    assert plugin.rerun_answer(asked, "r1") is None
    started = {"rerun": {"id": "r1", "shards": 3}, "conditions": [rerunning("True", "Rerunning", "rerun r1: 3")]}
    assert plugin.rerun_answer(batch(started), "r1") == (0, "rerun r1: 3")
    refused = {"rerun": {"id": "r1", "shards": 0}, "conditions": [rerunning("False", "NothingToRerun", "no shard")]}
    assert plugin.rerun_answer(batch(refused), "r1") == (1, "refused (NothingToRerun): no shard")
    waits = {"conditions": [rerunning("False", "WaitingForBatchToFinish", "rerun r1 starts once the batch ...")]}
    assert plugin.rerun_answer(batch(waits), "r1") == (0, "rerun r1 starts once the batch ...")
    assert plugin.rerun_answer(batch(waits), "r2") is None  # another rerun's wait


def test_status_says_a_rerun_ran_or_was_refused() -> None:
    shards = {"total": 4, "succeeded": 3, "failed": 1}
    ran = {"phase": "Running", "shards": shards, "rerun": {"id": "r1", "shards": 1, "firstAttempt": 4, "count": 2}}
    assert "Rerun:       r1: 1 shards from attempt 4 (rerun 2 of this batch)" in plugin.render_status(
        batch(ran), IndexRanges(), now=NOW
    )
    refused = {"phase": "Failed", "shards": shards, "conditions": [rerunning("False", "WouldFailAgain", "too many")]}
    assert "Rerun:       WouldFailAgain: too many" in plugin.render_status(batch(refused), IndexRanges(), now=NOW)


def test_rerun_takes_failed_or_ranges_not_both() -> None:
    args = plugin.build_parser().parse_args(["rerun", "b", "--shards", "3,7-9"])
    assert (args.command, args.shards, args.failed) == ("rerun", "3,7-9", False)
    with pytest.raises(SystemExit):
        plugin.build_parser().parse_args(["rerun", "b", "--failed", "--shards", "1"])
