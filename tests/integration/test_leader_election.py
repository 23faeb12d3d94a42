"""Two replicas with leader election: one reconciles; the other takes over when it dies."""

from __future__ import annotations

import asyncio
import time
import urllib.request

from kubernetes_asyncio import client

from e2e.cluster import free_port
from tests.integration.conftest import OperatorFactory
from tests.integration.harness import Batches, PodRecorder, template
from tests.waiting import eventually

LEASE = "jobbatch-test-leader"


async def _holder(api: client.ApiClient, namespace: str) -> str | None:
    try:
        lease = await client.CoordinationV1Api(api).read_namespaced_lease(LEASE, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return str(lease.spec.holder_identity or "") or None


def _pid_of(holder: str) -> int:
    # The operator's identity is <hostname>-<pid>-<random> (runtime._lead); the takeover test below
    # finds both replicas by it, so a wrong parse fails there.
    return int(holder.rsplit("-", 2)[-2])


async def test_standby_takes_over_when_the_leader_dies(
    api: client.ApiClient, namespace: str, batches: Batches, operator: OperatorFactory
) -> None:
    flags = ("--leader-elect", "--leader-election-namespace", namespace, "--leader-election-lease", LEASE)
    ports = [free_port(), free_port()]
    replicas = [await operator(*flags, "--lease-duration", "4", "--metrics-port", str(port)) for port in ports]
    holder = await eventually(lambda: _holder(api, namespace), what="a replica holding the Lease")
    by_pid = {r.proc.pid: r for r in replicas if r.proc is not None}
    leader = by_pid[_pid_of(holder)]
    (standby,) = [r for r in replicas if r is not leader]
    port_of = {id(r): port for r, port in zip(replicas, ports, strict=True)}
    # Both replicas serve metrics (a Service selects both); only the leader says it leads.
    assert await eventually(lambda: _leader_gauge(port_of[id(leader)], "1.0"), what="the leader's jobbatch_leader 1")
    assert await _leader_gauge(port_of[id(standby)], "0.0")

    async with PodRecorder(api, namespace) as pods:
        await batches.create("ha", {"template": template(duration="1s"), "payloads": {"count": 24}, "parallelism": 4})
        await batches.wait_status("ha", lambda s: s.get("shards", {}).get("succeeded", 0) >= 4, "4 succeeded")
        # Exactly one replica reconciles: the standby has not started kopf at all.
        assert "leads" in leader.log.read_text()
        assert "leads" not in standby.log.read_text()
        await leader.kill()
        killed = time.monotonic()
        new_holder = await eventually(
            lambda: _other_holder(api, namespace, holder), what="the standby taking the Lease", timeout=30
        )
        took_over = time.monotonic() - killed
        assert _pid_of(new_holder) == standby.proc.pid  # type: ignore[union-attr]
        await batches.wait_for("ha", "Complete")
        assert await _leader_gauge(port_of[id(standby)], "1.0")
    assert took_over < 15, took_over  # lease 4 s: seconds, not minutes
    assert {key: n for key, n in pods.creations.items() if n != 1} == {}
    assert pods.attempts("ha") == {i: [0] for i in range(24)}


async def _other_holder(api: client.ApiClient, namespace: str, old: str) -> str | None:
    holder = await _holder(api, namespace)
    return holder if holder and holder != old else None


async def _leader_gauge(port: int, value: str) -> bool:
    def read() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    return f"jobbatch_leader {value}" in (await asyncio.to_thread(read)).splitlines()
