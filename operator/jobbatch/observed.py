"""What the operator needs to know of its shard Jobs and failed worker pods, distilled from the objects.

The indexes (``jobbatch.jobwatch``) keep one ``ShardJob`` per Job and one ``PodFailure`` per failed
worker pod instead of whole bodies, so memory stays small, and the planner gets plain values.

Trust: a Job counts for a batch only if its *controller* ownerReference names that batch's UID and
kind; labels are set by whoever creates the object and prove nothing. A pod counts for a Job only
if its controller ownerReference names that Job's UID.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from jobbatch import naming
from jobbatch.api import (
    KIND,
    LABEL_ATTEMPT,
    LABEL_COMPLETION_INDEX,
    LABEL_FIRST_SHARD,
    LABEL_ITEM_NODE,
    LABEL_QUEUE,
    SHARD_FINALIZER,
    SKIP_RETRY_PREFIX,
)
from jobbatch.ranges import IndexRanges

NO_SHARDS = IndexRanges()
# On a shard Job whose succeeded pods the operator deleted (it waits on a retry, or is kept for logs).
PODS_COLLECTED = "jobbatch.io/pods-collected"


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """One Indexed Job: attempt ``attempt`` of shards ``first .. first + count - 1``, as last reported.

    ``succeeded`` and ``failed`` hold absolute shard indexes (the Job's completed and failed
    completion indexes, shifted by ``first``).
    """

    name: str
    first: int
    count: int
    attempt: int
    parallelism: int
    suspended: bool = False
    succeeded: IndexRanges = NO_SHARDS
    failed: IndexRanges = NO_SHARDS
    active: int = 0  # pods running (status.active) ...
    terminating: int = 0  # ... and pods stopping (status.terminating): both still hold a slot
    finished: bool = False  # a Complete or Failed condition: no pod will start any more
    finished_at: datetime.datetime | None = None
    reason: str = ""  # of the Job's Failed condition
    finalizers: tuple[str, ...] = (SHARD_FINALIZER,)
    deleting: bool = False
    deleted_at: datetime.datetime | None = None
    uid: str = ""
    # False for a Job this process created but the watch has not shown yet (an expectation): it may
    # never exist, so it must not stand in for anything (e.g. supersede an older attempt).
    confirmed: bool = True
    # Its succeeded pods were deleted to keep finished pods bounded (annotation PODS_COLLECTED).
    pods_collected: bool = False
    queue: str = ""  # its batch's queue when it was made (label LABEL_QUEUE; "" on Jobs of older versions)
    started_at: datetime.datetime | None = None  # status.startTime: when the Job controller first synced it
    # 0: an ordinary attempt; else a piece of the shard's items (retry.isolate, jobbatch.isolation).
    node: int = 0

    @property
    def last(self) -> int:
        return self.first + self.count - 1

    @property
    def shards(self) -> IndexRanges:
        return IndexRanges([(self.first, self.last)]) if self.count else NO_SHARDS

    @property
    def unfinished(self) -> int:
        return self.count - len(self.succeeded) - len(self.failed)

    @property
    def refills_itself(self) -> bool:
        """The Job controller gives a slot this Job frees to its next index: no pass needs to hand it on.

        Running, with indexes not started yet, and no more pods than its parallelism (a Job the operator
        shrank frees slots that are not its own).
        """
        pods = self.active + self.terminating
        running = not (self.finished or self.suspended or self.deleting)
        return running and pods < self.unfinished and pods <= self.parallelism

    @property
    def has_finalizer(self) -> bool:
        return SHARD_FINALIZER in self.finalizers

    @property
    def lost(self) -> bool:
        """Deleted before it finished, its pods gone: the Job controller records nothing more for it."""
        return self.deleting and not self.finished and self.active == 0 and self.terminating == 0

    @property
    def slots(self) -> int:
        """How many of the batch's ``parallelism`` slots this Job holds (or will hold at once).

        A running Job may run a pod for each unfinished index up to its parallelism; a pod that is
        stopping still holds its slot until it is gone. A Job being deleted starts no pods.
        """
        pods = self.active + self.terminating
        if self.finished:
            return 0
        if self.suspended or self.deleting:
            return pods
        return max(pods, min(self.parallelism, self.unfinished))


@dataclasses.dataclass(frozen=True)
class PodFailure:
    """A failed worker pod: one failed attempt of one shard."""

    job_uid: str
    shard: int
    attempt: int
    exit_code: int | None
    reason: str
    message: str
    finished_at: datetime.datetime | None
    # It carried a DisruptionTarget condition (evicted, preempted, its node lost): not the worker's exit.
    disrupted: bool = False
    node: int = 0  # the piece of the shard's items it ran (retry.isolate); 0: the whole shard


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def controller_of(body: Mapping[str, Any], kind: str) -> tuple[str, str] | None:
    """(name, uid) of the object's controller ownerReference if it is of ``kind``."""
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind and ref.get("uid"):
            return str(ref.get("name", "")), str(ref["uid"])
    return None


def batch_uid_of(job: Mapping[str, Any]) -> str | None:
    """The UID of the JobBatch that controls this Job (its ownerReference, never its labels)."""
    owner = controller_of(job, KIND)
    return owner[1] if owner else None


def _relative_ranges(text: str | None, first: int, count: int) -> IndexRanges:
    try:
        found = IndexRanges.parse(text)
    except ValueError:
        return NO_SHARDS
    return IndexRanges((first + lo, first + min(hi, count - 1)) for lo, hi in found.intervals if lo < count)


def summarize(job: Mapping[str, Any]) -> ShardJob | None:
    """The ShardJob of a batch/v1 Job made by this operator; None for any other Job."""
    meta = job.get("metadata", {})
    labels = meta.get("labels") or {}
    spec, status = job.get("spec") or {}, job.get("status") or {}
    try:
        first, attempt = int(labels[LABEL_FIRST_SHARD]), int(labels[LABEL_ATTEMPT])
        count = int(spec["completions"])
    except (KeyError, ValueError, TypeError):
        return None
    if spec.get("completionMode") != "Indexed" or first < 0 or attempt < 0 or count < 0:
        return None
    node = _node(labels)
    if node is None or (node and count != 1):
        return None
    # Labels can be edited; the name cannot, and names the same (first shard, attempt, piece).
    owner = controller_of(job, KIND)
    if owner is None:
        return None
    name = naming.piece_job_name(*owner, first, attempt, node) if node else naming.job_name(*owner, first, attempt)
    if meta.get("name") != name:
        return None
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    done = conditions.get("Complete") or conditions.get("Failed")
    return ShardJob(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        first=first,
        count=count,
        attempt=attempt,
        parallelism=int(spec.get("parallelism") or 0),
        suspended=bool(spec.get("suspend")),
        succeeded=_relative_ranges(status.get("completedIndexes"), first, count),
        failed=_relative_ranges(status.get("failedIndexes"), first, count),
        active=int(status.get("active") or 0),
        terminating=int(status.get("terminating") or 0),
        finished=done is not None,
        finished_at=parse_time(done.get("lastTransitionTime")) if done else None,
        reason=str((conditions.get("Failed") or {}).get("reason") or ""),
        finalizers=tuple(meta.get("finalizers") or ()),
        deleting=bool(meta.get("deletionTimestamp")),
        deleted_at=parse_time(meta.get("deletionTimestamp")),
        pods_collected=(meta.get("annotations") or {}).get(PODS_COLLECTED) == "true",
        queue=str(labels.get(LABEL_QUEUE) or ""),
        started_at=parse_time(status.get("startTime")),
        node=node,
    )


def _node(labels: Mapping[str, Any]) -> int | None:
    """The piece a Job or pod runs (label LABEL_ITEM_NODE): 0 without the label, None if it is not a piece."""
    if LABEL_ITEM_NODE not in labels:
        return 0
    try:
        node = int(labels[LABEL_ITEM_NODE])
    except (ValueError, TypeError):
        return None
    return node if node >= 2 else None


# Characters of a failed pod's message kept (the kubelet keeps up to 4 KiB of a termination message).
TERMINATION_MESSAGE_CHARS = 900


def summarize_failed_pod(pod: Mapping[str, Any]) -> PodFailure | None:
    """The PodFailure of a failed worker pod of a shard Job; None for any other pod.

    The exit code is the first non-zero one among the containers (what the podFailurePolicy's
    ``FailIndex`` rule matched); the reason is the pod's (``DeadlineExceeded``, ``Evicted``) or the
    container's (``Error``, ``OOMKilled``).
    """
    meta = pod.get("metadata", {})
    labels = meta.get("labels") or {}
    status = pod.get("status") or {}
    owner = controller_of(pod, "Job")
    if owner is None or status.get("phase") != "Failed":
        return None
    try:
        shard = int(labels[LABEL_FIRST_SHARD]) + int(labels[LABEL_COMPLETION_INDEX])
        attempt = int(labels[LABEL_ATTEMPT])
    except (KeyError, ValueError):
        return None
    node = _node(labels)
    if node is None:
        return None
    exit_code: int | None = None
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or "")
    finished_at = None
    # Sidecars (init containers that keep running) end on SIGTERM when the pod stops: not the verdict.
    sidecars = {c.get("name") for c in (pod.get("spec") or {}).get("initContainers") or [] if c.get("restartPolicy")}
    statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    failed = [
        terminated
        for container in statuses
        if container.get("name") not in sidecars
        and isinstance((terminated := (container.get("state") or {}).get("terminated") or {}).get("exitCode"), int)
        and terminated["exitCode"] != 0
    ]
    # A container that asked for no retry speaks for the pod, whichever failed first.
    asked = [t for t in failed if str(t.get("message") or "").startswith(SKIP_RETRY_PREFIX)]
    for terminated in asked[:1] or failed[:1]:
        exit_code = int(terminated["exitCode"])
        reason = reason or str(terminated.get("reason") or "")
        message = (
            (str(terminated.get("message") or "") or message)
            if asked
            else (message or str(terminated.get("message") or ""))
        )
        finished_at = parse_time(terminated.get("finishedAt"))
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    if finished_at is None:
        ready: Mapping[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        finished_at = parse_time(ready.get("lastTransitionTime"))
    disruption = conditions.get("DisruptionTarget")
    if disruption is not None:
        # Who stopped it says more than the exit code of a worker killed on SIGTERM.
        reason = "Disrupted"
        message = f"{disruption.get('reason') or 'DisruptionTarget'}: {disruption.get('message') or ''}".rstrip(": ")
    return PodFailure(
        job_uid=owner[1],
        shard=shard,
        attempt=attempt,
        exit_code=exit_code,
        reason=reason or "Failed",
        message=message[:TERMINATION_MESSAGE_CHARS],
        finished_at=finished_at,
        disrupted=disruption is not None,
        node=node,
    )
