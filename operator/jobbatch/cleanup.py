"""``jobbatch cleanup``: release every finalizer the operator holds, for an uninstall that gets stuck.

JobBatches carry kopf's finalizer and shard Jobs the shard-record finalizer; only a running operator
removes them (and, installed per namespace, the one on its RoleBinding there: ``jobbatch.access``).
With the operator gone (uninstalled first, or its namespace deleted), deleting a batch or
a namespace waits on them forever. This removes them -- nothing else: no object is deleted. Run it
only with no operator running: an operator removes a Job's finalizer only once the Job's outcome is
recorded, and this does not wait for that.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from jobbatch import api
from jobbatch.kube import Kube


@dataclasses.dataclass
class Held:
    """What holds an operator finalizer: (namespace, name) of shard Jobs and of JobBatches."""

    jobs: list[tuple[str, str, tuple[str, ...]]] = dataclasses.field(default_factory=list)
    batches: list[tuple[str, str, tuple[str, ...]]] = dataclasses.field(default_factory=list)
    bindings: list[tuple[str, str, tuple[str, ...]]] = dataclasses.field(default_factory=list)


async def find_held(kube: Kube, namespaces: tuple[str, ...]) -> Held:
    held = Held()
    for scope in namespaces or (None,):
        jobs, _ = await kube.list_watched("jobs", scope)
        for job in jobs:
            meta = job["metadata"]
            finalizers = tuple(meta.get("finalizers") or ())
            if api.SHARD_FINALIZER in finalizers:
                held.jobs.append((meta["namespace"], meta["name"], finalizers))
        for batch in await kube.list_batches(scope):
            meta = batch["metadata"]
            finalizers = tuple(meta.get("finalizers") or ())
            if api.KOPF_FINALIZER in finalizers:
                held.batches.append((meta["namespace"], meta["name"], finalizers))
    return held


async def find_held_bindings(kube: Kube, held: Held, namespaces: tuple[str, ...]) -> None:
    """Add the RoleBindings holding the operator's namespace-access finalizer (a namespace-scoped install)."""
    for scope in namespaces or (None,):
        for binding in await kube.list_rolebindings(scope):
            meta = binding["metadata"]
            finalizers = tuple(meta.get("finalizers") or ())
            if api.ACCESS_FINALIZER in finalizers:
                held.bindings.append((meta["namespace"], meta["name"], finalizers))


# In the Lease names of operators: `jobbatch run`'s default, and the chart's (its fullname).
LEASE_NAME_PART = "jobbatch-operator"


def live_leases(leases: list[dict[str, Any]], now: datetime.datetime) -> list[str]:
    """``namespace/name (holder)`` of operator Leases renewed within their duration: an operator still runs."""
    live = []
    for lease in leases:
        meta, spec = lease.get("metadata") or {}, lease.get("spec") or {}
        if LEASE_NAME_PART not in str(meta.get("name", "")) or not spec.get("holderIdentity"):
            continue
        renewed = spec.get("renewTime")
        if not renewed:
            continue
        at = datetime.datetime.fromisoformat(str(renewed).replace("Z", "+00:00"))
        if now - at < datetime.timedelta(seconds=int(spec.get("leaseDurationSeconds") or 15)):
            live.append(f"{meta.get('namespace')}/{meta.get('name')} (held by {spec['holderIdentity']})")
    return live


async def release(kube: Kube, held: Held) -> None:
    for namespace, name, finalizers in held.jobs:
        await kube.release_job(namespace, name, finalizers)
    for namespace, name, finalizers in held.batches:
        await kube.release_batch(namespace, name, finalizers)
    # Last: while the others are released, the operator may still need what the binding grants.
    for namespace, name, finalizers in held.bindings:
        rest = [f for f in finalizers if f != api.ACCESS_FINALIZER]
        binding = await kube.get_rolebinding(namespace, name)
        if binding is not None:
            await kube.set_rolebinding_finalizers(namespace, name, rest, binding["metadata"]["resourceVersion"])
