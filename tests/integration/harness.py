"""Helpers for tests that run the operator against the control plane."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from e2e import images, realnode
from e2e.cluster import SIMULATED_PLACEMENT
from jobbatch import api
from tests.waiting import TIMEOUT, eventually

MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
CRDS = Path(__file__).resolve().parents[2] / "crds"  # JobBatch and CronJobBatch


def template(**annotations: str) -> dict[str, Any]:
    """A worker pod template on kwok nodes; annotations steer the simulated pods (docs/testing.md)."""
    return {
        "metadata": {"annotations": {f"sim.jobbatch.io/{k.replace('_', '-')}": v for k, v in annotations.items()}},
        "spec": {**SIMULATED_PLACEMENT, "containers": [{"name": "worker", "image": "example.invalid/worker:1"}]},
    }


# What a production cluster's "restricted" Pod Security level asks of a worker.
RESTRICTED = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def host_dir(path: Path) -> Path:
    """A host folder the pods' non-root user (65532) may write to, for a hostPath volume."""
    path.mkdir()
    path.chmod(0o777)
    return path


def real_template(
    *, command: list[str] | None = None, env: dict[str, str] | None = None, mounts: dict[str, Path] | None = None
) -> dict[str, Any]:
    """A worker pod of the example-worker image on the real node, with host folders mounted."""
    container: dict[str, Any] = {
        "name": "worker",
        "image": images.EXAMPLE_WORKER.ref,
        "imagePullPolicy": "Never",  # loaded into the node's containerd; there is no registry
        "securityContext": RESTRICTED,
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
        "volumeMounts": [{"name": f"host-{i}", "mountPath": p} for i, p in enumerate(mounts or {})],
    }
    if command:
        container["command"] = command
    volumes = [
        {"name": f"host-{i}", "hostPath": {"path": str(path), "type": "Directory"}}
        for i, path in enumerate((mounts or {}).values())
    ]
    return {"spec": {**realnode.POD_PLACEMENT, "containers": [container], "volumes": volumes}}


class Batches:
    """JobBatch calls for one namespace."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.ns = namespace

    async def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": spec}
        return dict(
            await self.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, self.ns, api.PLURAL, body)
        )

    async def all(self) -> list[dict[str, Any]]:
        found = await self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, self.ns, api.PLURAL)
        return list(found["items"])

    async def get(self, name: str) -> dict[str, Any]:
        return dict(await self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, self.ns, api.PLURAL, name))

    async def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        await self.custom.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, self.ns, api.PLURAL, name, {"spec": spec}, **MERGE_PATCH
        )

    async def delete(self, name: str) -> None:
        await self.custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, self.ns, api.PLURAL, name)

    async def exists(self, name: str) -> bool:
        try:
            await self.get(name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def condition(self, name: str, ctype: str, status: str = "True") -> dict[str, Any] | None:
        body = await self.get(name)
        for cond in body.get("status", {}).get("conditions", []):
            if cond["type"] == ctype and cond["status"] == status:
                return body
        return None

    async def wait_for(self, name: str, ctype: str, status: str = "True", timeout: float = TIMEOUT) -> dict[str, Any]:
        """The batch once condition ``ctype`` has ``status``."""
        return await eventually(
            lambda: self.condition(name, ctype, status), what=f"jobbatch {name} {ctype}={status}", timeout=timeout
        )

    async def wait_status(
        self, name: str, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            status = (await self.get(name)).get("status", {})
            return status if check(status) else None

        return await eventually(probe, what=f"jobbatch {name}: {what}", timeout=timeout)

    async def events(self, name: str) -> list[dict[str, Any]]:
        found = await self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}")
        return [{"type": e.type, "reason": e.reason, "message": e.message} for e in found.items]

    async def jobs(self) -> list[Any]:
        return list((await self.batch.list_namespaced_job(self.ns)).items)

    async def released(self, name: str) -> bool:
        """Every shard Job of the batch finished (its pods stopped) and its finalizer released."""
        own = [j for j in await self.jobs() if j.metadata.labels[api.LABEL_BATCH] == name]
        finished = [any(c.type in ("Complete", "Failed") for c in (j.status.conditions or [])) for j in own]
        return all(finished) and not any(api.SHARD_FINALIZER in (j.metadata.finalizers or []) for j in own)


class NamespaceWatch:
    """Lists one kind of object in a namespace, then watches it, handing each to ``seen`` in the API
    server's order (listed objects as ``LISTED``). Use it as an async context manager: entering returns
    once the listing is in; leaving stops the watch and re-raises what broke it, if anything did.
    """

    def __init__(self, api_client: client.ApiClient, list_fn: Callable[..., Awaitable[Any]], namespace: str) -> None:
        self.sanitize = api_client.sanitize_for_serialization
        self.list_fn = list_fn
        self.ns = namespace
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def seen(self, kind: str, obj: dict[str, Any]) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        listing = await self.list_fn(self.ns)
        rv = listing.metadata.resource_version
        for item in listing.items:
            self.seen("LISTED", self.sanitize(item))
        self._ready.set()
        while True:
            async with watch.Watch().stream(
                self.list_fn, self.ns, resource_version=rv, timeout_seconds=300,
                allow_watch_bookmarks=True, _preload_content=False,
            ) as stream:  # fmt: skip
                async for event in stream:
                    obj = event["raw_object"]
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self.seen(event["type"], obj)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), timeout=TIMEOUT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._task.done() and not self._task.cancelled() and self._task.exception():
            raise self._task.exception()  # type: ignore[misc]


def peak_running(*recorders: PodRecorder) -> int:
    """The most pods holding slots at once, over every batch of the recorders (their events merged by time)."""
    events = sorted((t, (i, batch), count) for i, r in enumerate(recorders) for t, batch, count in r.running_series)
    current: dict[tuple[int, str], int] = {}
    peak = 0
    for _, key, count in events:
        current[key] = count
        peak = max(peak, sum(current.values()))
    return peak


class PodRecorder(NamespaceWatch):
    """Watches every worker pod in a namespace for a whole test and keeps what a test asserts on.

    A pod's key is (batch, shard, attempt), its shard being first-shard + completion index (the
    worker rule). Pods still holding a slot (not Succeeded or Failed; stopping ones included) are
    counted at every event, in the API server's own order, so ``max_running`` is the true peak, not
    a sample.
    """

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        super().__init__(api_client, client.CoreV1Api(api_client).list_namespaced_pod, namespace)
        self.creations: collections.Counter[tuple[str, int, int]] = collections.Counter()
        self.created_at: dict[tuple[str, int, int], float] = {}
        self.finished_at: dict[tuple[str, int, int], float] = {}
        self.exit_codes: dict[tuple[str, int, int], list[int]] = collections.defaultdict(list)
        self.running: dict[str, tuple[str, int, int]] = {}  # pod uid -> key
        self.max_running: dict[str, int] = collections.defaultdict(int)
        self.running_series: list[tuple[float, str, int]] = []
        self.nodes: dict[str, str] = {}  # pod uid -> the node it was bound to
        self._seen: set[str] = set()
        self._ended: set[str] = set()

    @staticmethod
    def key_of(pod: dict[str, Any]) -> tuple[str, int, int] | None:
        labels = pod["metadata"].get("labels") or {}
        if api.LABEL_FIRST_SHARD not in labels:
            return None
        shard = int(labels[api.LABEL_FIRST_SHARD]) + int(labels[api.LABEL_COMPLETION_INDEX])
        return labels[api.LABEL_BATCH], shard, int(labels[api.LABEL_ATTEMPT])

    def seen(self, kind: str, pod: dict[str, Any]) -> None:
        key = self.key_of(pod)
        if key is None:
            return
        meta = pod["metadata"]
        now = time.monotonic()
        if meta["uid"] not in self._seen:
            self._seen.add(meta["uid"])
            self.creations[key] += 1
            self.created_at.setdefault(key, now)
        if node := (pod.get("spec") or {}).get("nodeName"):
            self.nodes[meta["uid"]] = node
        phase = (pod.get("status") or {}).get("phase")
        if kind != "DELETED" and phase not in ("Succeeded", "Failed"):
            self.running[meta["uid"]] = key
        else:
            self.running.pop(meta["uid"], None)
            if phase in ("Succeeded", "Failed") and meta["uid"] not in self._ended:
                self._ended.add(meta["uid"])
                self.finished_at.setdefault(key, now)
                for status in (pod.get("status") or {}).get("containerStatuses") or []:
                    code = ((status.get("state") or {}).get("terminated") or {}).get("exitCode")
                    if code is not None:
                        self.exit_codes[key].append(int(code))
        batch = key[0]
        count = sum(1 for k in self.running.values() if k[0] == batch)
        self.max_running[batch] = max(self.max_running[batch], count)
        self.running_series.append((now, batch, count))

    def total_running(self) -> int:
        return len(self.running)

    def attempts(self, batch: str) -> dict[int, list[int]]:
        """Shard -> the attempts that got a pod, for one batch."""
        out: dict[int, list[int]] = collections.defaultdict(list)
        for b, shard, attempt in sorted(self.creations):
            if b == batch:
                out[shard].append(attempt)
        return dict(out)

    def pods(self, batch: str) -> dict[tuple[int, int], int]:
        """(shard, attempt) -> pods created for it, for one batch."""
        return {(s, a): n for (b, s, a), n in self.creations.items() if b == batch}
