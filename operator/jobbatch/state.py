"""What one operator process shares between handlers (kept in kopf's memo)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from jobbatch.dispatch import Dispatcher
from jobbatch.kube import Kube
from jobbatch.sandbox import Sandbox

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from jobbatch.access import AccessGuard
    from jobbatch.cronreconciler import CronReconciler
    from jobbatch.jobwatch import ListWatch, ShardWatch
    from jobbatch.reconciler import BatchReconciler


@dataclasses.dataclass
class Runtime:
    kube: Kube
    dispatcher: Dispatcher
    watch: ShardWatch
    sandbox: Sandbox
    indexer: Sandbox  # object-storage sources are indexed in a sandbox of their own
    reconcilers: dict[str, BatchReconciler] = dataclasses.field(default_factory=dict)
    # UIDs of batches a reconciler serves (or is about to, once their namespace is listed) ...
    serving: set[str] = dataclasses.field(default_factory=set)
    # ... and of batches whose reconciler ended with nothing left to do: a spec change revives it.
    finished: set[str] = dataclasses.field(default_factory=set)
    access: AccessGuard | None = None  # holds the operator's RoleBindings (a namespace-scoped install)
    crons: dict[str, CronReconciler] = dataclasses.field(default_factory=dict)  # by the CronJobBatch's UID
    queues: ListWatch | None = None  # the BatchQueue watch, feeding the dispatcher
    _tasks: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)

    def spawn(self, call: Coroutine[Any, Any, None]) -> None:
        """Run a call in the background, kept referenced until it ends; a failure is logged.

        For idempotent calls a later event repeats anyway (e.g. releasing an orphaned Job).
        """
        task = asyncio.create_task(call)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("background call failed: %s: %s", type(exc).__name__, exc)

    async def close(self) -> None:
        await self.watch.stop()
        if self.queues is not None:
            await self.queues.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.kube.api_client.close()
