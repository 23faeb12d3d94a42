"""What the operator needs to know of one shard Job, distilled from the Job object.

The shard Job index (``jobbatch.jobwatch``) keeps one ``ShardJob`` per Job instead of whole Job bodies, so
memory stays small with thousands of Jobs, and the planner gets plain values.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Mapping
from typing import Any, Literal

from jobbatch.api import LABEL_ATTEMPT, LABEL_BATCH_UID, LABEL_SHARD, SHARD_FINALIZER

JobState = Literal["active", "suspended", "succeeded", "failed"]

# Message of a Job failed by a podFailurePolicy FailJob rule (pkg/controller/job/pod_failure_policy.go).
_EXIT_CODE = re.compile(r"failed with exit code (\d+)")


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """One attempt of one shard, as the API server last reported it."""

    name: str
    shard: int
    attempt: int
    state: JobState
    finished_at: datetime.datetime | None = None
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    finalizers: tuple[str, ...] = (SHARD_FINALIZER,)
    deleting: bool = False
    started_at: datetime.datetime | None = None

    @property
    def has_finalizer(self) -> bool:
        return SHARD_FINALIZER in self.finalizers

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed")


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def batch_uid_of(job: Mapping[str, Any]) -> str | None:
    labels = job.get("metadata", {}).get("labels") or {}
    uid = labels.get(LABEL_BATCH_UID)
    return str(uid) if uid else None


def summarize(job: Mapping[str, Any]) -> ShardJob | None:
    """The ShardJob of a batch/v1 Job made by this operator; None for any other Job."""
    meta = job.get("metadata", {})
    labels = meta.get("labels") or {}
    try:
        shard, attempt = int(labels[LABEL_SHARD]), int(labels[LABEL_ATTEMPT])
    except (KeyError, ValueError):
        return None
    spec, status = job.get("spec") or {}, job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    deleting = bool(meta.get("deletionTimestamp"))
    common: dict[str, Any] = {
        "name": meta.get("name", ""),
        "shard": shard,
        "attempt": attempt,
        "finalizers": tuple(meta.get("finalizers") or ()),
        "deleting": deleting,
        "started_at": parse_time(status.get("startTime")),
    }
    if "Complete" in conditions:
        return ShardJob(
            state="succeeded", finished_at=parse_time(conditions["Complete"].get("lastTransitionTime")), **common
        )
    if "Failed" in conditions:
        cond = conditions["Failed"]
        message = str(cond.get("message") or "")
        match = _EXIT_CODE.search(message)
        return ShardJob(
            state="failed",
            finished_at=parse_time(cond.get("lastTransitionTime")),
            exit_code=int(match.group(1)) if match else None,
            reason=str(cond.get("reason") or "Failed"),
            message=message,
            **common,
        )
    if deleting and not status.get("active"):
        # Deleted by someone before it finished, and its pod is gone: the attempt is lost, a failure.
        # (While the pod still runs, the attempt still runs: it may yet succeed and be recorded.)
        return ShardJob(
            state="failed",
            finished_at=parse_time(meta.get("deletionTimestamp")),
            reason="Deleted",
            message="the shard Job was deleted before it finished",
            **common,
        )
    return ShardJob(state="suspended" if spec.get("suspend") else "active", **common)
