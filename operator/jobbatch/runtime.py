"""Start kopf with the operator's settings and shared state.

kopf's defaults are tuned for small clusters; each setting below names the
problem it avoids so a reader can judge it against their cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import urllib.parse
import uuid
from typing import Any

import kopf
from aiohttp import web
from kubernetes_asyncio.leaderelection import electionconfig, leaderelection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

from jobbatch import access, api, dispatch, handlers, metrics, queues
from jobbatch.config import OperatorConfig
from jobbatch.dispatch import Dispatcher
from jobbatch.jobwatch import ListWatch, ShardWatch
from jobbatch.kube import Kube, new_api_client
from jobbatch.sandbox import Sandbox
from jobbatch.state import Runtime

logger = logging.getLogger("jobbatch")

__all__ = ["configure_kopf", "handlers", "run"]  # handlers: imported to register them with kopf


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """Apply the kopf settings every jobbatch operator runs with."""
    # Watch streams can go silent without an error (nolar/kopf#585, #860, #1276):
    # ask the server to end each stream, and give up on a stream that stays quiet.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.watching.inactivity_timeout = 330
    # kopf's own state on our objects goes under our API group, not kopf.zalando.org.
    settings.persistence.finalizer = api.KOPF_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="jobbatch.io")
    # Only warnings and errors become Kubernetes Events from kopf itself; the
    # operator posts its own meaningful Events (started, failed, completed).
    settings.posting.level = logging.WARNING
    # Peering freezes operators of equal priority and is not leader election;
    # one replica reconciles at a time by other means, so peering stays off.
    settings.peering.standalone = True


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_kopf(settings)
    config: OperatorConfig = memo["config"]
    kube = Kube(await new_api_client(), qps=config.api_qps, burst=config.api_burst)
    watch = ShardWatch(kube, config.namespaces)
    runtime = Runtime(
        kube=kube,
        dispatcher=Dispatcher(config.max_running_shards),
        watch=watch,
        sandbox=Sandbox(timeout=config.payload_validation_timeout),
        indexer=Sandbox(timeout=config.payload_indexing_timeout),
    )
    # Daemons start after this: every Job, failed pod and BatchQueue is known.
    queue_index = queues.QueueIndex(runtime.dispatcher)
    runtime.queues = ListWatch(kube, api.QUEUE_PLURAL, (), queue_index)
    await asyncio.gather(
        watch.start(handlers.on_shard_job_event(runtime), handlers.on_failed_pod_event(runtime)),
        runtime.queues.start(lambda kind, uid, body: None),
    )
    runtime.spawn(
        queues.write_status(
            kube,
            runtime.dispatcher,
            queue_index,
            lambda: dispatch.observed_from(watch.jobs.by_batch()),
            queues.release_name(config),
        )
    )
    memo["runtime"] = runtime
    if config.access_binding:
        runtime.access = access.AccessGuard(kube, config.namespaces, config.access_binding)
        runtime.spawn(runtime.access.run())
    metrics.leader.set(1)
    scope = "all namespaces" if config.clusterwide else ", ".join(config.namespaces)
    logger.info("jobbatch operator started, watching %s", scope)


@kopf.on.cleanup()
async def _cleanup(memo: kopf.Memo, **_: Any) -> None:
    metrics.leader.set(0)
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await runtime.close()


def _identity() -> str:
    """Who this process is, for the Lease and kopf.

    Given to kopf too: left alone, kopf asks ``getpass.getuser()``, which fails in a container whose
    user (65532 in the chart) has no passwd entry.
    """
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


async def _operator(config: OperatorConfig, *, identity: str, liveness: bool = True) -> None:
    await kopf.operator(
        identity=identity,  # type: ignore[arg-type]  # kopf.Identity: a NewType of str that kopf does not export
        clusterwide=config.clusterwide,
        namespaces=config.namespaces,
        liveness_endpoint=(config.liveness_endpoint or None) if liveness else None,
        standalone=True,
        memo=kopf.Memo(config=config),
    )


async def _health_server(endpoint: str) -> web.AppRunner | None:
    """A plain /healthz for a leader-electing replica: answers while its event loop runs, leader or not."""
    if not endpoint:
        return None
    url = urllib.parse.urlsplit(endpoint)
    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_get(url.path or "/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, url.hostname or "0.0.0.0", url.port or 8081).start()
    return runner


async def _lead(config: OperatorConfig) -> None:
    """Run kopf only while holding the Lease; exit when it is lost, so the pod restarts as a standby."""
    identity = _identity()
    api_client = await new_api_client()
    lock = LeaseLock(config.leader_election_lease, config.leader_election_namespace, identity, api_client)
    lost = asyncio.Event()
    stopped = asyncio.Event()  # kopf ended on its own (SIGTERM/SIGINT): the process ends too
    failures: list[BaseException] = []  # kopf failed: the process fails with it (the Lease expires)

    async def on_lost() -> None:
        logger.error("lost the leader Lease %s/%s; exiting", config.leader_election_namespace, lock.name)
        lost.set()

    async def on_lead() -> None:
        logger.info("%s leads (Lease %s/%s)", identity, config.leader_election_namespace, lock.name)
        try:
            await _operator(config, identity=identity, liveness=False)
        except Exception as exc:  # noqa: BLE001 - the election library drops its callbacks' failures unseen
            failures.append(exc)
        finally:
            stopped.set()

    duration = config.lease_duration_seconds
    try:
        election = leaderelection.LeaderElection(
            electionconfig.Config(
                lock,
                lease_duration=duration,
                renew_deadline=duration * 2 / 3,
                retry_period=max(1.1, duration / 5),  # the library needs > 1 s and < renew_deadline / 1.2
                onstarted_leading=on_lead,
                onstopped_leading=on_lost,
            )
        )
    except ValueError:
        await api_client.close()
        raise
    health = await _health_server(config.liveness_endpoint)
    logger.info("%s is a standby until it holds the Lease %s/%s", identity, config.leader_election_namespace, lock.name)
    electing = asyncio.create_task(election.run())
    ending = asyncio.create_task(stopped.wait())
    try:
        await asyncio.wait([electing, ending], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (electing, ending):
            task.cancel()
        if health is not None:
            await health.cleanup()
        await api_client.close()
    if electing.done() and not electing.cancelled() and (failure := electing.exception()) is not None:
        raise failure
    if failures:
        raise failures[0]
    if lost.is_set():
        raise SystemExit(1)


def run(config: OperatorConfig) -> None:
    """Run the operator until it is signalled to stop (SIGINT/SIGTERM)."""
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
    )
    if config.log_level != "DEBUG":
        # kopf logs every handler call at INFO: thousands of lines per large batch.
        for noisy in ("aiohttp.access", "kopf.objects"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    metrics.serve(config.metrics_port, config.metrics_bind_address)
    asyncio.run(_lead(config) if config.leader_election else _operator(config, identity=_identity()))
