"""What GitOps tools read from a batch: the Argo CD health check, run on statuses the planner writes."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51  # type: ignore[import-untyped]

from jobbatch.api import JobBatchSpec, JobBatchStatus
from jobbatch.observed import ShardJob
from jobbatch.planner import Acceptance, Batch, plan
from jobbatch.ranges import IndexRanges

HEALTH_CHECK = Path(__file__).parents[2] / "examples" / "gitops" / "argocd-health.lua"
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def health(status: JobBatchStatus) -> tuple[str, str]:
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    check = runtime.eval(f"function(obj) {HEALTH_CHECK.read_text()} end")
    result = check(_to_lua(runtime, {"status": status.dump()}))
    return str(result["status"]), str(result["message"])


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: _to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([_to_lua(runtime, v) for v in value])
    return value


def spec(**kw: Any) -> JobBatchSpec:
    return JobBatchSpec.model_validate(
        {"template": {"spec": {"containers": [{"name": "w", "image": "i"}]}}, "payloads": {"count": 2}, **kw}
    )


def chunk(succeeded: str = "", failed: str = "") -> ShardJob:
    ok, bad = IndexRanges.parse(succeeded), IndexRanges.parse(failed)
    done = len(ok) + len(bad) == 2
    return ShardJob(
        "b-x-0-0", 0, 2, 0, 2, uid="j", succeeded=ok, failed=bad, active=0 if done else 2 - len(ok) - len(bad),
        finished=done, finished_at=T0 - datetime.timedelta(seconds=60) if done else None,
    )  # fmt: skip


def accepted(s: JobBatchSpec) -> Batch:
    first = plan(Batch("b", "ns", "u", 1, s, JobBatchStatus()), [], T0, acceptance=Acceptance(True, "Accepted", "", 2))
    return Batch("b", "ns", "u", 1, s, first.status)


def test_argocd_health_of_each_kind_of_batch() -> None:
    b = accepted(spec())
    assert health(plan(b, [], T0).status) == ("Progressing", "shards finished: 0/2")
    assert health(plan(b, [chunk(succeeded="0-1")], T0).status)[0] == "Healthy"
    failed = accepted(spec(retry={"limit": 0}))
    status = plan(failed, [chunk(succeeded="1", failed="0")], T0).status
    state, message = health(status)
    assert state == "Degraded"
    assert message.startswith("ShardsFailed: ")
    refused = plan(
        Batch("b", "ns", "u", 1, spec(), JobBatchStatus()), [], T0,
        acceptance=Acceptance(False, "ConfigMapNotFound", 'ConfigMap "x" not found'),
    )  # fmt: skip
    assert health(refused.status) == ("Degraded", 'ConfigMapNotFound: ConfigMap "x" not found')
    assert health(plan(accepted(spec(suspend=True)), [], T0).status)[0] == "Suspended"
    assert health(JobBatchStatus()) == ("Progressing", "shards finished: ")
