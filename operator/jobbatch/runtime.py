"""Start kopf with the operator's settings and shared state.

kopf's defaults are tuned for small clusters; each setting below names the
problem it avoids so a reader can judge it against their cluster.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from jobbatch import api, handlers, metrics
from jobbatch.config import OperatorConfig
from jobbatch.dispatch import Dispatcher
from jobbatch.kube import Kube, new_api_client
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
    # Watch only our shard Jobs, filtered by the API server rather than in memory.
    settings.watching.label_selectors["batch", "jobs"] = api.LABEL_BATCH_UID
    # kopf's own state on our objects goes under our API group, not kopf.zalando.org.
    settings.persistence.finalizer = "jobbatch.io/kopf-finalizer"
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
    memo["runtime"] = Runtime(config=config, kube=kube, dispatcher=Dispatcher(config.max_running_shards))
    metrics.serve(config.metrics_port)
    scope = "all namespaces" if config.clusterwide else ", ".join(config.namespaces)
    logger.info("jobbatch operator started, watching %s", scope)


@kopf.on.cleanup()
async def _cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await runtime.kube.api_client.close()


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
    memo = kopf.Memo(config=config)
    asyncio.run(
        kopf.operator(
            clusterwide=config.clusterwide,
            namespaces=config.namespaces,
            liveness_endpoint=config.liveness_endpoint or None,
            standalone=True,
            memo=memo,
        )
    )
