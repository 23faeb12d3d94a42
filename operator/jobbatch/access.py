"""Keep a namespace-scoped operator's way into each watched namespace while it holds finalizers there.

Installed for a list of namespaces (the chart's ``operator.watchNamespaces``), the operator may act in a
namespace only through a RoleBinding inside it. Deleting the namespace deletes that RoleBinding along
with everything else, in no order the operator can rely on: once it is gone, the operator may no longer
remove its finalizers from the JobBatches and shard Jobs there, and the namespace stays Terminating.

So while anything in the namespace holds one of the operator's finalizers, its RoleBinding holds
``jobbatch.io/namespace-access`` too; it goes once nothing there does (so an uninstall with no batches
left, or a namespace emptied first, leaves nothing behind). The RBAC authorizer still honours a
RoleBinding that waits on a finalizer. A JobBatch event in a namespace whose binding is not held wakes
the guard at once (kopf adds its finalizer on a new batch's first event); nothing new can appear once
the namespace terminates: the API server refuses creates there, and new finalizers on objects being
deleted.

The binding is kept while it is deleted only if its *namespace* is being deleted. Deleted on its own
(``helm uninstall``, a namespace dropped from ``watchNamespaces``, an admin revoking the operator's
rights), it is let go at once: holding it would keep rights someone meant to take away. The batches
left in such a namespace then wait for an operator, or for ``jobbatch cleanup``.

kopf stops serving a namespace as soon as the namespace is marked for deletion (its ``is_deleted``, in
kopf/_core/reactor/observation.py, takes a deletionTimestamp plus any status condition for gone), so it
never removes its finalizer from the JobBatches being deleted there. Once their shard Jobs are released
(the operator's own Job watch goes on), the guard removes it in kopf's stead: the batch is going, and so
is everything it recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any, Literal

from jobbatch import api
from jobbatch.kube import Conflict, Kube

logger = logging.getLogger(__name__)

# How often the RoleBinding and the namespace are looked at without a wake-up; the least time between
# two looks (JobBatch events can come many a second); and how often while the RoleBinding is deleted.
POLL_SECONDS = 30.0
MIN_INTERVAL_SECONDS = 1.0
DRAIN_POLL_SECONDS = 1.0

Step = Literal["add", "remove", "drain", "wait"]


@dataclasses.dataclass(frozen=True)
class Holders:
    """What in a namespace holds one of the operator's finalizers."""

    jobs: int = 0  # shard Jobs holding jobbatch.io/shard-record
    batches: int = 0  # JobBatches holding kopf's finalizer
    deleting_batches: tuple[tuple[str, tuple[str, ...]], ...] = ()  # ... of which these (name, finalizers) go

    @property
    def any(self) -> bool:
        return bool(self.jobs or self.batches)


def holders(batches: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> Holders:
    """Holders from the metadata of the namespace's JobBatches and shard Jobs."""
    held = [m for m in batches if api.KOPF_FINALIZER in (m.get("finalizers") or [])]
    return Holders(
        jobs=sum(1 for m in jobs if api.SHARD_FINALIZER in (m.get("finalizers") or [])),
        batches=len(held),
        deleting_batches=tuple(
            (str(m.get("name")), tuple(m.get("finalizers") or ())) for m in held if m.get("deletionTimestamp")
        ),
    )


def next_step(binding: dict[str, Any] | None, held: Holders, namespace_terminating: bool = False) -> Step:
    """What to do about one RoleBinding, given what holds the operator's finalizers in its namespace."""
    if binding is None:
        return "wait"  # none (not installed yet, or removed on purpose): nothing to hold
    meta = binding.get("metadata") or {}
    ours = api.ACCESS_FINALIZER in (meta.get("finalizers") or [])
    if meta.get("deletionTimestamp"):
        if not ours:
            return "wait"  # too late to add one
        return "drain" if held.any and namespace_terminating else "remove"
    if held.any:
        return "wait" if ours else "add"
    return "remove" if ours else "wait"


class AccessGuard:
    """One guard per watched namespace, each woken early by JobBatch events in its namespace."""

    def __init__(self, kube: Kube, namespaces: tuple[str, ...], binding: str) -> None:
        self.kube, self.binding = kube, binding
        self._wake = {namespace: asyncio.Event() for namespace in namespaces}
        self._held = dict.fromkeys(namespaces, False)  # the binding held our finalizer when last read

    def wake(self, namespace: str, gone: bool = False) -> None:
        """A JobBatch event: look now if the binding may need holding, or (``gone``: a batch was deleted)
        may be let go. Other events of a held binding's batches wait for the next poll: they come many a
        second (every status write)."""
        event = self._wake.get(namespace)
        if event is not None and (gone or not self._held.get(namespace)):
            event.set()

    async def run(self) -> None:
        """Guard every namespace until cancelled."""
        await asyncio.gather(*(self.guard(namespace) for namespace in self._wake))

    async def guard(self, namespace: str) -> None:
        draining = False
        wake = self._wake[namespace]
        while True:
            wake.clear()
            delay = POLL_SECONDS
            try:
                binding = await self.kube.get_rolebinding(namespace, self.binding)
                meta = (binding or {}).get("metadata") or {}
                self._held[namespace] = api.ACCESS_FINALIZER in (meta.get("finalizers") or [])
                held = holders(*await self.kube.list_held_metadata(namespace)) if binding is not None else Holders()
                terminating = bool(meta.get("deletionTimestamp")) and await self.kube.namespace_terminating(namespace)
                step = next_step(binding, held, terminating)
                if step == "drain":
                    delay = DRAIN_POLL_SECONDS
                    await self._release_deleting_batches(namespace, held)
                    if not draining:
                        logger.info("rolebinding %s/%s is being deleted; kept until the operator has released "
                                    "its JobBatches and shard Jobs there", namespace, self.binding)  # fmt: skip
                    draining = True
                elif step in ("add", "remove") and binding is not None:
                    finalizers = [f for f in meta.get("finalizers") or [] if f != api.ACCESS_FINALIZER]
                    if step == "add":
                        finalizers.append(api.ACCESS_FINALIZER)
                    await self.kube.set_rolebinding_finalizers(
                        namespace, self.binding, finalizers, meta["resourceVersion"]
                    )
                    self._held[namespace] = step == "add"
                    if step == "add":
                        logger.info("rolebinding %s/%s held", namespace, self.binding)
                    elif meta.get("deletionTimestamp") and held.any:
                        logger.warning(
                            "rolebinding %s/%s is being deleted while its namespace is not: let go, and with it "
                            "the operator's rights there; its %d JobBatches and %d shard Jobs wait for an operator "
                            "or `jobbatch cleanup`", namespace, self.binding, held.batches, held.jobs,
                        )  # fmt: skip
                    else:
                        logger.info("rolebinding %s/%s released: nothing of the operator's is left there",
                                    namespace, self.binding)  # fmt: skip
                        # A batch made between the look and the patch is seen at the next look, soon.
                        delay = MIN_INTERVAL_SECONDS
            except asyncio.CancelledError:
                raise
            except Conflict:
                delay = MIN_INTERVAL_SECONDS  # changed since read: look again soon
            except Exception as exc:  # noqa: BLE001 -- a guard must outlive any one failed call
                logger.warning("guarding rolebinding %s/%s: %s: %s", namespace, self.binding, type(exc).__name__, exc)
            await asyncio.sleep(min(delay, MIN_INTERVAL_SECONDS))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=max(0.0, delay - MIN_INTERVAL_SECONDS))

    async def _release_deleting_batches(self, namespace: str, held: Holders) -> None:
        """kopf's finalizer off batches being deleted, once no shard Job holds ours (see the module doc)."""
        if held.jobs:
            return  # released as their batches go (jobbatch.reconciler.release_orphan)
        for name, finalizers in held.deleting_batches:
            await self.kube.release_batch(namespace, name, finalizers)
