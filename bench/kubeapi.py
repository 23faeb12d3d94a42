"""A lean client for the local control plane: raw JSON over aiohttp, plus etcd and /metrics.

The harness watches every pod of a 10,000-shard run; decoding events into
kubernetes_asyncio models would cost more CPU than the operator under test, on
the same two cores. Plain dicts keep the observer cheap and the same for A and B.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp

from e2e.cluster import LocalCluster

logger = logging.getLogger(__name__)

WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})


class ApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status = status


class LocalApi:
    """JSON calls to one local cluster's API server, its /metrics, and its etcd."""

    def __init__(self, cluster: LocalCluster) -> None:
        pki = cluster.state / "pki"
        self._ssl = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._ssl.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        ports = cluster.ports()
        self.base = f"https://127.0.0.1:{ports['apiserver']}"
        self.etcd = f"http://127.0.0.1:{ports['etcd']}"
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LocalApi:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=16),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use LocalApi as an async context manager"
        return self._session

    async def request(self, method: str, path: str, body: Any = None, **params: str) -> dict[str, Any]:
        """One call; 429 and 503 (e.g. "storage is (re)initializing" after a CRD appears) are retried."""
        for attempt in range(10):
            async with self.session.request(
                method, self.base + path, json=body, params=params, timeout=aiohttp.ClientTimeout(total=60)
            ) as resp:
                text = await resp.text()
                if resp.status in (429, 503) and attempt < 9:
                    await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                    continue
                if resp.status >= 300:
                    raise ApiError(resp.status, text)
                return dict(json.loads(text)) if text else {}
        raise AssertionError("unreachable")

    async def get(self, path: str, **params: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", path, **params)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def metrics_text(self) -> str:
        async with self.session.get(self.base + "/metrics", timeout=aiohttp.ClientTimeout(total=60)) as resp:
            resp.raise_for_status()
            return await resp.text()

    async def watch(
        self,
        path: str,
        on_event: Callable[[str, dict[str, Any]], None],
        ready: asyncio.Event | None = None,
        **params: str,
    ) -> None:
        """Feed every event of ``path`` to ``on_event`` until cancelled, resuming after stream ends.

        Starts with a list (its items arrive as ADDED; then ``ready`` is set), and watches
        from the list's resourceVersion, so nothing between the two is missed.
        """
        listing = await self.request("GET", path, **params)
        for item in listing.get("items", []):
            on_event("ADDED", item)
        if ready is not None:
            ready.set()
        rv = listing["metadata"]["resourceVersion"]
        while True:
            query = {**params, "watch": "1", "resourceVersion": rv, "timeoutSeconds": "600"}
            query["allowWatchBookmarks"] = "true"
            async with self.session.get(
                self.base + path, params=query, timeout=aiohttp.ClientTimeout(total=None, sock_read=700)
            ) as resp:
                if resp.status >= 300:
                    raise ApiError(resp.status, await resp.text())
                async for line in resp.content:
                    event = json.loads(line)
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raise ApiError(int(obj.get("code", 500)), obj.get("message", ""))
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        on_event(event["type"], obj)

    async def etcd_value_size(self, key: str) -> int | None:
        """Bytes stored under ``key`` in etcd (what the API server wrote), via etcd's JSON gateway."""
        body = {"key": base64.b64encode(key.encode()).decode()}
        async with self.session.post(self.etcd + "/v3/kv/range", json=body, ssl=False) as resp:
            resp.raise_for_status()
            found = await resp.json()
        kvs = found.get("kvs") or []
        return len(base64.b64decode(kvs[0]["value"])) if kvs else None

    async def wait_for(self, path: str, *, exists: bool, timeout: float) -> None:
        """Poll ``path`` until it exists (or is gone); TimeoutError saying which after ``timeout``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (await self.get(path) is not None) != exists:
            if asyncio.get_running_loop().time() > deadline:
                state = "missing" if exists else "still there"
                raise TimeoutError(f"{path} {state} after {timeout:.0f}s")
            await asyncio.sleep(0.2)

    async def wait_until_empty(self, path: str, *, timeout: float) -> None:
        """Poll the collection ``path`` until it lists nothing; TimeoutError saying how much is left."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (listing := await self.request("GET", path, limit="1"))["items"]:
            if asyncio.get_running_loop().time() > deadline:
                left = listing["metadata"].get("remainingItemCount", 0) + 1
                raise TimeoutError(f"{path}: {left} left after {timeout:.0f}s")
            await asyncio.sleep(0.2)
