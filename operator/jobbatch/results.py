"""Shard results: what a succeeded worker hands back, read from its pod and stored in page ConfigMaps.

A worker writes one line, ``jobbatch.io/result:<JSON>``, to its termination log (the SDK's
``worker.result``); the kubelet keeps it in the pod's status. For a batch with ``spec.results`` the
operator reads it from the succeeded pods of each shard Job (a paginated list, so memory stays bounded
whatever the Job's size) and merges it into ConfigMap page ``p = shard // shards_per_page`` under the key
``str(shard)``. Merging is idempotent, so a collection cut short (a restart, an error) is simply done
again.

Nothing is lost: a shard counts as succeeded in the batch's status only once its result is stored (or
known to be missing), and a shard Job keeps its finalizer -- and so its pods -- until every shard it ran
is recorded (record, then release; docs/design.md). No pod watch is needed: a Job's status says which
indexes succeeded, and a list of its pods, read after that, holds their messages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import weakref
from collections.abc import Mapping
from typing import Any, Protocol

from jobbatch.api import KIND, LABEL_ATTEMPT, LABEL_COMPLETION_INDEX, LABEL_FIRST_SHARD, RESULT_PREFIX, ResultError
from jobbatch.observed import controller_of
from jobbatch.ranges import IndexRanges

# A ConfigMap holds at most 1 MiB of data; pages are filled to about this, whatever the results' size.
PAGE_BYTES = 900_000
# A key costs more than its digits: the protobuf map entry, and its managedFields entry ("f:12345":{}).
KEY_BYTES = 40
# Merge patches over maps of many keys cost the API server: pages of tiny results stay this small.
MAX_SHARDS_PER_PAGE = 5_000
MAX_MISSING_RANGES = 100  # of status.results.missingShards
LIST_PAGE = 500  # pods per list call while collecting: what one collection holds in memory at once
WRITE_BYTES = 256_000  # results buffered before they are written out
MAX_ERRORS = 10
COLLECTIONS_AT_ONCE = 2
NO_SHARDS = IndexRanges()  # per operator process: bounds the memory collections take together


def shards_per_page(max_bytes: int) -> int:
    return max(1, min(MAX_SHARDS_PER_PAGE, PAGE_BYTES // (max_bytes + KEY_BYTES)))


def page_of(shard: int, per_page: int) -> int:
    return shard // per_page


@dataclasses.dataclass(frozen=True)
class Collected:
    """What this process stored of one Job's results so far (memory only: after a restart the shards
    not recorded yet are simply collected again)."""

    shards: IndexRanges  # decided: stored, or missing
    missing: IndexRanges = NO_SHARDS
    errors: tuple[ResultError, ...] = ()
    at: datetime.datetime | None = None

    def merge(self, other: Collected) -> Collected:
        return Collected(
            self.shards.union(other.shards),
            self.missing.difference(other.shards).union(other.missing),
            (*self.errors, *other.errors)[-MAX_ERRORS:],
            other.at or self.at,
        )


@dataclasses.dataclass(frozen=True)
class PodResult:
    """One succeeded pod's result: its JSON text, or why there is none to store."""

    shard: int
    attempt: int
    text: str | None
    reason: str = ""
    message: str = ""


def read_result(pod: Mapping[str, Any], max_bytes: int) -> PodResult | None:
    """The result a succeeded worker pod holds; None for a pod that is not a shard's."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    try:
        shard = int(labels[LABEL_FIRST_SHARD]) + int(labels[LABEL_COMPLETION_INDEX])
        attempt = int(labels[LABEL_ATTEMPT])
    except (KeyError, ValueError):
        return None
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    messages = [
        message
        for container in statuses
        if isinstance(message := ((container.get("state") or {}).get("terminated") or {}).get("message"), str)
        and message.startswith(RESULT_PREFIX)
    ]
    if not messages:
        return PodResult(shard, attempt, None, "NoResult", f"attempt {attempt} succeeded without writing a result")
    text = messages[0][len(RESULT_PREFIX) :].strip()
    size = len(text.encode())
    if size > max_bytes:
        why = f"attempt {attempt}'s result is {size} bytes, over spec.results.maxBytes ({max_bytes})"
        return PodResult(shard, attempt, None, "TooLarge", why)
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        why = f"attempt {attempt}'s result is not JSON ({exc}): {text[:100]!r}"
        return PodResult(shard, attempt, None, "NotJSON", why)
    # Stored compact, on one line: what readers get is strict JSON, whatever the worker's spacing.
    return PodResult(shard, attempt, json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class PageConflict(Exception):
    """A ConfigMap of a result page's name exists and is not this batch's: nothing is written into it."""


def page_body(
    name: str, namespace: str, data: Mapping[str, str], labels: Mapping[str, str], owner: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels), "ownerReferences": [dict(owner)]},
        "data": dict(data),
    }


_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def collection_slot() -> asyncio.Semaphore:
    """The process-wide bound on collections running at once (one semaphore per event loop)."""
    loop = asyncio.get_running_loop()
    slot = _slots.get(loop)
    if slot is None:
        slot = _slots[loop] = asyncio.Semaphore(COLLECTIONS_AT_ONCE)
    return slot


class PageWriter(Protocol):
    """The API calls a ResultStore makes (jobbatch.kube.Kube has them)."""

    async def list_succeeded_pods(
        self, namespace: str, job_name: str, limit: int, token: str = ""
    ) -> tuple[list[dict[str, Any]], str]: ...
    async def create_configmap(self, namespace: str, body: dict[str, Any]) -> bool: ...
    async def get_configmap_metadata(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def merge_configmap_data(self, namespace: str, name: str, data: Mapping[str, str]) -> bool: ...


class ResultStore:
    """Collects one batch's results from its shard Jobs' pods into the batch's result pages."""

    def __init__(
        self,
        kube: PageWriter,
        *,
        namespace: str,
        batch_uid: str,
        prefix: str,
        per_page: int,
        max_bytes: int,
        labels: Mapping[str, str],
        owner: Mapping[str, Any],
    ) -> None:
        self.kube, self.namespace, self.batch_uid = kube, namespace, batch_uid
        self.prefix, self.per_page, self.max_bytes = prefix, per_page, max_bytes
        self.labels, self.owner = dict(labels), dict(owner)
        self._ours: set[str] = set()  # pages known to be this batch's: written with a merge patch alone
        self._conflicts: set[str] = set()  # pages of that name that are not: never written

    async def collect(self, job_name: str, job_uid: str, shards: IndexRanges, now: datetime.datetime) -> Collected:
        """Store the results of ``shards`` (succeeded indexes of the Job) that its pods hold.

        Every shard of ``shards`` is decided: stored, or missing (no result, not storable, pod gone).
        """
        async with collection_slot():
            seen: set[int] = set()
            missing: list[int] = []
            errors: list[ResultError] = []
            pages: dict[int, dict[str, str]] = {}
            buffered = 0
            token = ""
            while True:
                pods, token = await self.kube.list_succeeded_pods(self.namespace, job_name, LIST_PAGE, token)
                for pod in pods:
                    meta = pod.get("metadata") or {}
                    # The Job controller names its pods <job>-<index>-<random>.
                    owner = controller_of(pod, "Job")
                    if owner is None or owner[1] != job_uid or not str(meta.get("name", "")).startswith(f"{job_name}-"):
                        continue
                    found = read_result(pod, self.max_bytes)
                    if found is None or found.shard not in shards or found.shard in seen:
                        continue
                    seen.add(found.shard)
                    if found.text is None:
                        missing.append(found.shard)
                        errors.append(ResultError(shard=found.shard, reason=found.reason, message=found.message))
                        continue
                    pages.setdefault(page_of(found.shard, self.per_page), {})[str(found.shard)] = found.text
                    buffered += len(found.text) + KEY_BYTES
                    if buffered >= WRITE_BYTES:
                        for shard, error in await self._write(pages):
                            missing.append(shard)
                            errors.append(error)
                        pages, buffered = {}, 0
                if not token:
                    for shard, error in await self._write(pages):
                        missing.append(shard)
                        errors.append(error)
                    pages, buffered = {}, 0
                if not token:
                    break
            gone = shards.difference(IndexRanges.of(seen))
            for lo, hi in gone.intervals[:MAX_ERRORS]:
                which = f"shard {lo}" if lo == hi else f"shards {lo}-{hi}"
                why = f"no succeeded pod of Job {job_name} for {which} was left when the results were read"
                errors.append(ResultError(shard=lo, reason="PodGone", message=why))
            return Collected(shards, IndexRanges.of(missing).union(gone), tuple(errors[-MAX_ERRORS:]), now)

    async def _write(self, pages: Mapping[int, Mapping[str, str]]) -> list[tuple[int, ResultError]]:
        """Write buffered results page by page; the shards a page conflict kept out, with why."""
        refused: list[tuple[int, ResultError]] = []
        for page, data in sorted(pages.items()):
            name = f"{self.prefix}{page}"
            try:
                await self._write_page(name, data)
            except PageConflict as exc:
                refused += [(int(k), ResultError(shard=int(k), reason="PageConflict", message=str(exc))) for k in data]
        return refused

    async def _write_page(self, name: str, data: Mapping[str, str]) -> None:
        if name in self._conflicts:
            raise PageConflict(f"ConfigMap {name} exists and is not this batch's: results meant for it are not stored")
        for _ in range(3):
            if name not in self._ours:
                body = page_body(name, self.namespace, data, self.labels, self.owner)
                if await self.kube.create_configmap(self.namespace, body):
                    self._ours.add(name)
                    return
                found = await self.kube.get_configmap_metadata(self.namespace, name)
                if found is None:
                    continue  # deleted since: create it again
                owner = controller_of(found, KIND)
                if owner is None or owner[1] != self.batch_uid:
                    self._conflicts.add(name)
                    raise PageConflict(
                        f"ConfigMap {name} exists and is not this batch's: results meant for it are not stored"
                    )
                self._ours.add(name)
            if await self.kube.merge_configmap_data(self.namespace, name, data):
                return
            self._ours.discard(name)  # deleted (by hand) since it was made: make it again
        raise RuntimeError(f"result page {name} keeps disappearing while it is written")
