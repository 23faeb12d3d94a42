"""Kubernetes I/O: the only module that calls the API (besides kopf's own watches).

Every call goes through one token-bucket rate limiter and retries 429, 5xx and
connection errors with capped exponential backoff. AlreadyExists on create and
NotFound on delete are the expected outcomes of idempotent calls, not errors;
409 Conflict on an optimistic write is returned to the caller, which re-plans.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.client.rest import RESTResponse

from jobbatch import api, naming

logger = logging.getLogger(__name__)
T = TypeVar("T")

_RETRIABLE = {429, 500, 502, 503, 504}
_PROXY_ENV = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy"}
JOB_LIST_PAGE = 500
LABEL_JOB_NAME = "batch.kubernetes.io/job-name"  # set by the Job controller on its pods
WATCH_SECONDS = 300  # the server ends each watch stream after this; it is resumed from the last version
# Passed as **kwargs: the generated signatures omit `_content_type`, which the client accepts.
_MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
_METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


class Conflict(Exception):
    """An optimistic write lost a race (HTTP 409); re-read and re-plan."""


class Gone(Exception):
    """A watch or list resumed from a version the API server no longer has (HTTP 410): list again."""


def error_message(exc: BaseException, limit: int = 512) -> str:
    """What a failed call says, for conditions and Events: the API server's own message, bounded."""
    text = ""
    if isinstance(exc, ApiException):
        try:
            text = str(json.loads(exc.body or "{}").get("message") or "")
        except (ValueError, AttributeError):
            text = ""
        text = f"HTTP {exc.status}: {text or exc.reason}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _remove_finalizer(finalizers: tuple[str, ...], finalizer: str) -> list[dict[str, Any]]:
    """A JSON patch removing ``finalizer``, refused (422) if the list moved since it was read."""
    index = finalizers.index(finalizer)
    return [
        {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
        {"op": "remove", "path": f"/metadata/finalizers/{index}"},
    ]


class RateLimiter:
    """A token bucket: ``qps`` sustained, ``burst`` at once."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps, self.burst = qps, burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.qps)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.qps)


def _nothing_to_trust_in_env() -> bool:
    """No proxy variables and no netrc file: what aiohttp's trust_env would look for."""
    netrc = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    return not _PROXY_ENV.intersection(os.environ) and not os.path.exists(netrc)


async def new_api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig ($KUBECONFIG)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        await config.load_kube_config(client_configuration=configuration)
    api_client = client.ApiClient(configuration)
    if _nothing_to_trust_in_env():
        # kubernetes_asyncio opens its aiohttp session with trust_env=True, which reads ~/.netrc and
        # the proxy variables in a worker thread on *every* request (an eighth of the operator's CPU
        # in the benchmark profile). With neither present there is nothing to trust.
        api_client.rest_client.pool_manager._trust_env = False
    return api_client


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``: removed keys become null."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            patch[key] = merge_patch(before, value)
        else:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


class Kube:
    """The operator's API calls, each one rate-limited and retried."""

    def __init__(self, api_client: client.ApiClient, *, qps: float = 200, burst: int = 400, attempts: int = 6) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.scheduling = client.SchedulingV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.limiter = RateLimiter(qps, burst)
        self.attempts = attempts

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        delay = 0.1
        for attempt in range(1, self.attempts + 1):
            await self.limiter.acquire()
            try:
                return await fn()
            except ApiException as exc:
                if exc.status not in _RETRIABLE or attempt == self.attempts:
                    raise
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                wait = float(retry_after) if retry_after and retry_after.isdigit() else delay
                logger.info("%s: HTTP %s, retrying in %.1fs", what, exc.status, wait)
            except (TimeoutError, OSError, aiohttp.ClientError) as exc:
                if attempt == self.attempts:
                    raise
                wait = delay
                logger.info("%s: %s, retrying in %.1fs", what, exc, wait)
            await asyncio.sleep(wait * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    @staticmethod
    def _raw(fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Callable[[], Awaitable[bytes]]:
        """A call returning the response's bytes: no kubernetes_asyncio model is built from it.

        Decoding every Job into models (dates parsed field by field) was a tenth of the
        operator's CPU in the benchmark profile (docs/performance.md).
        """

        async def call() -> bytes:
            resp = await fn(*args, **kwargs, _preload_content=False)
            data: bytes = await resp.read()
            if not 200 <= resp.status <= 299:
                raise ApiException(http_resp=RESTResponse(resp, data))  # type: ignore[arg-type]  # as rest.py does
            return data

        return call

    def _plain(self, obj: Any) -> dict[str, Any]:
        return dict(self.api_client.sanitize_for_serialization(obj))

    # -- JobBatch -----------------------------------------------------------------------------
    async def get_batch(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_custom(api.PLURAL, namespace, name)

    async def patch_batch_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str, old: dict[str, Any]
    ) -> dict[str, Any]:
        """Write the status if the object is unchanged since ``resource_version`` read; else Conflict.

        ``old`` is the status as read: fields it has that ``status`` lacks are removed (a merge patch
        of the new status alone would keep them, e.g. the completionTime of a batch rerun).
        """
        return await self._patch_custom_status(api.PLURAL, namespace, name, status, resource_version, old)

    async def _get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A JobBatch or CronJobBatch; None if there is none."""
        try:
            body = await self._call(
                f"get {plural} {namespace}/{name}",
                lambda: self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, plural, name),
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(body)

    async def _patch_custom_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str,
        old: dict[str, Any],
    ) -> dict[str, Any]:
        body = {"metadata": {"resourceVersion": resource_version}, "status": merge_patch(old, status)}
        try:
            result = await self._call(
                f"patch {plural} {namespace}/{name} status",
                lambda: self.custom.patch_namespaced_custom_object_status(
                    api.GROUP, api.VERSION, namespace, plural, name, body, **_MERGE_PATCH
                ),
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"{plural} {namespace}/{name} changed since it was read") from None
            raise
        return dict(result)

    async def list_batches(self, namespace: str | None) -> list[dict[str, Any]]:
        """Every JobBatch (in ``namespace``, or everywhere)."""
        if namespace:
            call = self._raw(self.custom.list_namespaced_custom_object, api.GROUP, api.VERSION, namespace, api.PLURAL)
        else:
            call = self._raw(self.custom.list_cluster_custom_object, api.GROUP, api.VERSION, api.PLURAL)
        return list(json.loads(await self._call(f"list jobbatches in {namespace or 'all namespaces'}", call))["items"])

    async def release_batch(self, namespace: str, name: str, finalizers: tuple[str, ...]) -> None:
        """Remove kopf's finalizer from a JobBatch (``jobbatch cleanup``); guarded like ``release_job``."""
        if api.KOPF_FINALIZER not in finalizers:
            return
        ops = _remove_finalizer(finalizers, api.KOPF_FINALIZER)
        call = self._raw(
            self.custom.patch_namespaced_custom_object, api.GROUP, api.VERSION, namespace, api.PLURAL, name,
            ops, _content_type="application/json-patch+json",
        )  # fmt: skip
        what = f"release jobbatch {namespace}/{name}"
        await self._guarded(what, call, 422, f"finalizers of jobbatch {namespace}/{name} changed; run again")

    async def _guarded(self, what: str, call: Callable[[], Awaitable[bytes]], lost: int, conflict: str) -> None:
        """A write guarded by what it read: Conflict(``conflict``) on status ``lost`` (a 409 for a stale
        resourceVersion, a 422 for a failed JSON-patch test); nothing if the object is gone."""
        try:
            await self._call(what, call)
        except ApiException as exc:
            if exc.status == 404:
                return
            if exc.status == lost:
                raise Conflict(conflict) from None
            raise

    async def delete_batch(self, namespace: str, name: str, uid: str) -> None:
        options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid), propagation_policy="Background")
        try:
            await self._call(
                f"delete jobbatch {namespace}/{name}",
                lambda: self.custom.delete_namespaced_custom_object(
                    api.GROUP, api.VERSION, namespace, api.PLURAL, name, body=options
                ),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    async def create_batch(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create a JobBatch; False if one of that name already exists (a CronJobBatch's run, created before)."""
        try:
            await self._call(
                f"create jobbatch {namespace}/{body['metadata']['name']}",
                self._raw(
                    self.custom.create_namespaced_custom_object, api.GROUP, api.VERSION, namespace, api.PLURAL, body
                ),
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def list_cron_batches(self, namespace: str, cron_name: str) -> list[dict[str, Any]]:
        """The JobBatches labelled as created by CronJobBatch ``cron_name`` (the caller checks ownership)."""
        selector = f"{api.LABEL_CRON}={naming.label_value(cron_name)}"
        call = self._raw(
            self.custom.list_namespaced_custom_object,
            api.GROUP,
            api.VERSION,
            namespace,
            api.PLURAL,
            label_selector=selector,
        )
        return list(json.loads(await self._call(f"list jobbatches of {namespace}/{cron_name}", call))["items"])

    # -- CronJobBatch -------------------------------------------------------------------------
    async def get_cron(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._get_custom(api.CRON_PLURAL, namespace, name)

    async def patch_cron_status(
        self, namespace: str, name: str, status: dict[str, Any], resource_version: str, old: dict[str, Any]
    ) -> dict[str, Any]:
        """As ``patch_batch_status``, for a CronJobBatch: Conflict if it changed since read."""
        return await self._patch_custom_status(api.CRON_PLURAL, namespace, name, status, resource_version, old)

    async def patch_queue_status(self, name: str, status: dict[str, Any]) -> None:
        """Merge ``status`` into a BatchQueue's (no resourceVersion: this process is its only writer); a queue
        deleted meanwhile is no error."""
        try:
            await self._call(
                f"patch batchqueue {name} status",
                lambda: self.custom.patch_cluster_custom_object_status(
                    api.GROUP, api.VERSION, api.QUEUE_PLURAL, name, {"status": status}, **_MERGE_PATCH
                ),
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    # -- shard Jobs ---------------------------------------------------------------------------
    async def create_job(self, namespace: str, body: dict[str, Any], *, dry_run: bool = False) -> bool:
        """Create a Job; False if it already existed (deterministic names make that "already done").

        ``dry_run``: only ask the API server whether it would (validation and admission, nothing stored).
        """
        extra: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
        try:
            await self._call(
                f"create job {namespace}/{body['metadata']['name']}",
                self._raw(self.batch.create_namespaced_job, namespace, body, **extra),
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def get_job_metadata(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Job's metadata alone, or None if there is none: whose a Job of a taken name is."""
        return await self._get_metadata("job", "/apis/batch/v1/namespaces/{namespace}/jobs/{name}", namespace, name)

    def _listers(
        self, kind: str
    ) -> tuple[Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]], dict[str, Any]]:
        """(namespaced list, cluster-wide list, selectors) of what the operator watches: shard Jobs, failed pods, or
        BatchQueues (cluster-scoped: only the cluster-wide list)."""
        if kind == api.QUEUE_PLURAL:
            everywhere = functools.partial(self.custom.list_cluster_custom_object, api.GROUP, api.VERSION, kind)
            return everywhere, everywhere, {}
        selectors: dict[str, Any] = {"label_selector": api.LABEL_BATCH_UID}
        if kind == "jobs":
            return self.batch.list_namespaced_job, self.batch.list_job_for_all_namespaces, selectors
        if kind == "failed-pods":
            # Only failed worker pods: what exit codes are read from. The field selector keeps the
            # watch to a few events per failure instead of every pod's every change.
            selectors["field_selector"] = "status.phase=Failed"
            return self.core.list_namespaced_pod, self.core.list_pod_for_all_namespaces, selectors
        raise ValueError(kind)

    async def list_watched(self, kind: str, namespace: str | None) -> tuple[list[dict[str, Any]], str]:
        """Every object of ``kind`` (in ``namespace``, or everywhere), page by page; and the list's resourceVersion."""
        namespaced, everywhere, selectors = self._listers(kind)
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            kwargs: dict[str, Any] = {**selectors, "limit": JOB_LIST_PAGE}
            if token:
                kwargs["_continue"] = token
            call = self._raw(namespaced, namespace, **kwargs) if namespace else self._raw(everywhere, **kwargs)
            try:
                page = json.loads(await self._call(f"list {kind} in {namespace or 'all namespaces'}", call))
            except ApiException as exc:
                if exc.status == 410:  # the continue token expired: start over
                    raise Gone("list continue token expired") from None
                raise
            items += page.get("items") or []
            token = page["metadata"].get("continue") or ""
            if not token:
                return items, page["metadata"]["resourceVersion"]

    async def watch(
        self, kind: str, namespace: str | None, resource_version: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(event type, object) after ``resource_version``, BOOKMARKs included, until the server ends the stream.

        Raises Gone when the version is too old to watch from (list again).
        """
        namespaced, everywhere, selectors = self._listers(kind)
        kwargs: dict[str, Any] = {
            **selectors,
            "watch": True,
            "resource_version": resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": WATCH_SECONDS,
            "_request_timeout": WATCH_SECONDS + 30,
            "_preload_content": False,
        }
        await self.limiter.acquire()
        # With _preload_content=False the generated client hands back the raw aiohttp response.
        if namespace:
            resp = cast(aiohttp.ClientResponse, await namespaced(namespace, **kwargs))
        else:
            resp = cast(aiohttp.ClientResponse, await everywhere(**kwargs))
        try:
            if resp.status == 410:
                raise Gone(f"resourceVersion {resource_version} is too old")
            if not 200 <= resp.status <= 299:
                raise ApiException(http_resp=RESTResponse(resp, await resp.read()))  # type: ignore[arg-type]
            # One JSON object per line. Lines are split here, not by StreamReader.readline,
            # which refuses lines over 64 KiB (a Job with a large pod template).
            pending = b""
            async for chunk in resp.content.iter_any():
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone(str(obj.get("message", "resourceVersion too old")))
                        raise ApiException(status=int(obj.get("code") or 500), reason=str(obj.get("message")))
                    yield str(event["type"]), obj
        finally:
            resp.release()

    async def scale_job(self, namespace: str, name: str, current: int, to: int) -> bool:
        """Set a Job's parallelism from ``current`` to ``to``; False if it no longer is ``current`` (or is gone).

        Conditional (a JSON-patch ``test``), so a write planned from a stale view never undoes a newer one:
        lowering a Job's parallelism below its running pods stops them.
        """
        ops = [
            {"op": "test", "path": "/spec/parallelism", "value": current},
            {"op": "replace", "path": "/spec/parallelism", "value": to},
        ]
        try:
            await self._call(
                f"scale job {namespace}/{name} to {to}",
                self._raw(self.batch.patch_namespaced_job, name, namespace, ops),
            )
        except ApiException as exc:
            if exc.status in (404, 422):
                return False
            raise
        return True

    async def resume_job(self, namespace: str, name: str, parallelism: int) -> None:
        await self._patch_job(namespace, name, {"spec": {"suspend": False, "parallelism": parallelism}}, "resume")

    async def suspend_job(self, namespace: str, name: str) -> None:
        await self._patch_job(namespace, name, {"spec": {"suspend": True}}, "suspend")

    async def _patch_job(self, namespace: str, name: str, patch: dict[str, Any], what: str) -> None:
        try:
            await self._call(
                f"{what} job {namespace}/{name}",
                self._raw(self.batch.patch_namespaced_job, name, namespace, patch, **_MERGE_PATCH),
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def release_job(self, namespace: str, name: str, finalizers: tuple[str, ...]) -> None:
        """Remove the shard finalizer; a JSON-patch ``test`` guards against a changed finalizer list.

        ``finalizers`` is the list as last observed; if it moved (or an earlier try already removed
        ours), the Job is re-read and the patch made against what it holds now.
        """
        for _ in range(3):
            if api.SHARD_FINALIZER not in finalizers:
                return
            ops = _remove_finalizer(finalizers, api.SHARD_FINALIZER)
            try:
                await self._call(
                    f"release job {namespace}/{name}",
                    self._raw(self.batch.patch_namespaced_job, name, namespace, ops),
                )
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status != 422:
                    raise
            try:
                job = await self._call(
                    f"get job {namespace}/{name}", lambda: self.batch.read_namespaced_job(name, namespace)
                )
            except ApiException as exc:
                if exc.status == 404:
                    return
                raise
            finalizers = tuple(job.metadata.finalizers or ())
        raise Conflict(f"finalizers of job {namespace}/{name} keep changing")

    async def annotate_job(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        await self._patch_job(namespace, name, {"metadata": {"annotations": annotations}}, "annotate")

    async def delete_succeeded_pods(self, namespace: str, job_name: str) -> None:
        """Delete a Job's succeeded pods in one call (a Job kept for inspection keeps its failed ones).

        The response lists every pod deleted: asked for as metadata only, so a chunk's thousands of
        pods are not serialized whole for a reply nobody reads. The API server deletes them one by
        one; for a chunk's 2,000 pods on a saturated control plane that took longer than its request
        timeout (HTTP 504, measured; docs/performance.md). A retry lists what is left and goes on, and
        what the call did not delete the garbage collector does when the Job goes.
        """
        query = [("labelSelector", f"{LABEL_JOB_NAME}={job_name}"), ("fieldSelector", "status.phase=Succeeded")]
        await self._call(
            f"delete succeeded pods of job {namespace}/{job_name}",
            self._raw(
                self.api_client.call_api, "/api/v1/namespaces/{namespace}/pods", "DELETE",
                path_params={"namespace": namespace}, query_params=query, header_params={"Accept": _METADATA_LIST},
                auth_settings=["BearerToken"], response_types_map={},
            ),
        )  # fmt: skip

    async def delete_job(self, namespace: str, name: str) -> None:
        options = client.V1DeleteOptions(propagation_policy="Background")
        try:
            await self._call(
                f"delete job {namespace}/{name}",
                self._raw(self.batch.delete_namespaced_job, name, namespace, body=options),
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    # -- what acceptance reads and writes -----------------------------------------------------
    async def _get(
        self, what: str, call: Callable[[], Awaitable[bytes]], absent: tuple[int, ...] = (404,)
    ) -> dict[str, Any] | None:
        """One object as a plain dict; None if the API server answers with a status in ``absent``."""
        try:
            body = await self._call(what, call)
        except ApiException as exc:
            if exc.status in absent:
                return None
            raise
        return dict(json.loads(body))

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ConfigMap as a plain dict, or None if there is none."""
        call = self._raw(self.core.read_namespaced_config_map, name, namespace)
        return await self._get(f"get configmap {namespace}/{name}", call)

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret as a plain dict (data base64-encoded, as the API gives it), or None if there is none."""
        call = self._raw(self.core.read_namespaced_secret, name, namespace)
        return await self._get(f"get secret {namespace}/{name}", call)

    async def get_configmap_metadata(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ConfigMap's metadata alone (as PartialObjectMetadata: its data, up to 1 MiB, stays on the
        server), or None if there is none."""
        return await self._get_metadata(
            "configmap", "/api/v1/namespaces/{namespace}/configmaps/{name}", namespace, name
        )

    async def _get_metadata(self, kind: str, path: str, namespace: str, name: str) -> dict[str, Any] | None:
        """An object's metadata alone (as PartialObjectMetadata), or None if there is none."""
        call = self._raw(
            self.api_client.call_api, path, "GET",
            path_params={"namespace": namespace, "name": name}, query_params=[],
            header_params={"Accept": _METADATA_ONLY}, auth_settings=["BearerToken"], response_types_map={},
        )  # fmt: skip
        return await self._get(f"get {kind} {namespace}/{name} metadata", call)

    async def create_configmap(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create a ConfigMap; False if one of that name already existed (whoever made it)."""
        try:
            await self._call(
                f"create configmap {namespace}/{body['metadata']['name']}",
                lambda: self.core.create_namespaced_config_map(namespace, body),  # type: ignore[arg-type]
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
            return False
        return True

    async def merge_configmap_data(self, namespace: str, name: str, data: Mapping[str, str]) -> bool:
        """Add (or replace) keys of a ConfigMap's data with a merge patch; False if there is no such ConfigMap."""
        try:
            await self._call(
                f"patch configmap {namespace}/{name}",
                self._raw(self.core.patch_namespaced_config_map, name, namespace, {"data": dict(data)}, **_MERGE_PATCH),
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def list_succeeded_pods(
        self, namespace: str, job_name: str, limit: int, token: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        """One page of a Job's succeeded pods, read from etcd (consistent with the Job status read before),
        and the continue token of the next page ("" after the last). Raises Gone if the token expired."""
        kwargs: dict[str, Any] = {
            "label_selector": f"{LABEL_JOB_NAME}={job_name}",
            "field_selector": "status.phase=Succeeded",
            "limit": limit,
        }
        if token:
            kwargs["_continue"] = token
        call = self._raw(self.core.list_namespaced_pod, namespace, **kwargs)
        try:
            page = json.loads(await self._call(f"list succeeded pods of job {namespace}/{job_name}", call))
        except ApiException as exc:
            if exc.status == 410:
                raise Gone("list continue token expired") from None
            raise
        return list(page.get("items") or []), str(page["metadata"].get("continue") or "")

    async def get_priority_value(self, name: str) -> int | None:
        """The value of a PriorityClass, or None if there is no such class."""
        try:
            pc = await self._call(f"get priorityclass {name}", lambda: self.scheduling.read_priority_class(name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return int(pc.value)

    # -- the RoleBinding of a watched namespace (jobbatch.access) -----------------------------
    async def get_rolebinding(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A RoleBinding as a plain dict, or None if there is none (or it may not be read)."""
        call = self._raw(self.rbac.read_namespaced_role_binding, name, namespace)
        return await self._get(f"get rolebinding {namespace}/{name}", call, absent=(403, 404))

    async def namespace_terminating(self, namespace: str) -> bool:
        """Whether the namespace is being deleted (or is gone). A list by name: the rights the operator
        has on namespaces are list and watch (kopf observes them)."""
        body = await self._call(
            f"list namespace {namespace}",
            self._raw(self.core.list_namespace, field_selector=f"metadata.name={namespace}"),
        )
        found = json.loads(body).get("items") or []
        return not found or bool(found[0].get("metadata", {}).get("deletionTimestamp"))

    async def list_held_metadata(self, namespace: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The metadata of every JobBatch and of every shard Job in ``namespace`` (PartialObjectMetadata:
        no specs, no statuses, however large), for what holds a finalizer."""
        out: list[list[dict[str, Any]]] = []
        paths: tuple[tuple[str, list[tuple[str, str]]], ...] = (
            (f"/apis/{api.GROUP}/{api.VERSION}/namespaces/{{namespace}}/{api.PLURAL}", []),
            ("/apis/batch/v1/namespaces/{namespace}/jobs", [("labelSelector", api.LABEL_BATCH_UID)]),
        )
        for path, query in paths:
            body = await self._call(
                f"list {path.rsplit('/', 1)[1]} metadata in {namespace}",
                self._raw(
                    self.api_client.call_api, path, "GET", path_params={"namespace": namespace},
                    query_params=query, header_params={"Accept": _METADATA_LIST}, auth_settings=["BearerToken"],
                    response_types_map={},
                ),
            )  # fmt: skip
            out.append([item.get("metadata") or {} for item in json.loads(body).get("items") or []])
        return out[0], out[1]

    async def list_leases(self) -> list[dict[str, Any]]:
        """Every coordination.k8s.io Lease: for ``jobbatch cleanup``, which must not race a live operator."""
        coordination = client.CoordinationV1Api(self.api_client)
        body = await self._call("list leases", self._raw(coordination.list_lease_for_all_namespaces))
        return list(json.loads(body)["items"])

    async def list_rolebindings(self, namespace: str | None) -> list[dict[str, Any]]:
        """Every RoleBinding (in ``namespace``, or everywhere): for ``jobbatch cleanup``."""
        if namespace:
            call = self._raw(self.rbac.list_namespaced_role_binding, namespace)
        else:
            call = self._raw(self.rbac.list_role_binding_for_all_namespaces)
        where = namespace or "all namespaces"
        return list(json.loads(await self._call(f"list rolebindings in {where}", call))["items"])

    async def set_rolebinding_finalizers(
        self, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> None:
        """Replace a RoleBinding's finalizers if it is unchanged since ``resource_version``; else Conflict.

        Only finalizers change, so the API server skips its RBAC escalation check (IsOnlyMutatingGCFields).
        """
        body = {"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}}
        call = self._raw(self.rbac.patch_namespaced_role_binding, name, namespace, body, **_MERGE_PATCH)
        what = f"patch rolebinding {namespace}/{name} finalizers"
        await self._guarded(what, call, 409, f"rolebinding {namespace}/{name} changed since it was read")

    # -- Events -------------------------------------------------------------------------------
    async def post_event(
        self, involved: dict[str, Any], type_: str, reason: str, message: str, *, kind: str = api.KIND
    ) -> None:
        """A core/v1 Event on the JobBatch, or on a ``kind`` object (``kubectl describe`` shows it).
        Failures are logged, not raised."""
        meta = involved["metadata"]
        now = datetime.datetime.now(datetime.UTC)
        event = {
            "metadata": {"name": naming.event_name(meta["name"]), "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": api.API_VERSION,
                "kind": kind,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "jobbatch-operator"},
            "reportingComponent": "jobbatch.io/operator",
            "reportingInstance": "jobbatch-operator",
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
        }
        try:
            await self._call(
                f"post event {reason}",
                lambda: self.core.create_namespaced_event(meta["namespace"], event),  # type: ignore[arg-type]
            )
        except ApiException as exc:
            logger.warning("could not post event %s on %s: %s", reason, meta["name"], exc.reason)
