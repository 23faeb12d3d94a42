"""Holding the operator's RoleBinding in a watched namespace while it holds finalizers there."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jobbatch import access, api
from jobbatch.access import Holders, holders, next_step
from jobbatch.kube import Kube

NOTHING = Holders()
A_JOB = Holders(jobs=1)


def binding(*finalizers: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "op-application", "namespace": "ns", "resourceVersion": "1"}
    if finalizers:
        meta["finalizers"] = list(finalizers)
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta}


def test_held_exactly_while_something_holds_a_finalizer() -> None:
    assert next_step(None, A_JOB) == "wait"  # no binding: nothing to hold
    assert next_step(binding("other"), A_JOB) == "add"
    assert next_step(binding(api.ACCESS_FINALIZER), A_JOB) == "wait"
    assert next_step(binding(api.ACCESS_FINALIZER), NOTHING) == "remove"  # an uninstall then leaves nothing
    assert next_step(binding(), NOTHING) == "wait"


def test_a_binding_being_deleted_with_its_namespace_drains_first() -> None:
    going = binding(api.ACCESS_FINALIZER, deleting=True)
    assert next_step(going, A_JOB, namespace_terminating=True) == "drain"
    assert next_step(going, NOTHING, namespace_terminating=True) == "remove"
    assert next_step(binding(deleting=True), A_JOB, namespace_terminating=True) == "wait"  # too late to add one


def test_a_binding_deleted_on_its_own_is_let_go_at_once() -> None:
    """An uninstall, a namespace dropped from watchNamespaces, rights revoked: never kept against that."""
    assert next_step(binding(api.ACCESS_FINALIZER, deleting=True), A_JOB, namespace_terminating=False) == "remove"


def test_holders_from_metadata() -> None:
    batches: list[dict[str, Any]] = [
        {"name": "live", "finalizers": [api.KOPF_FINALIZER]},
        {"name": "going", "finalizers": ["x", api.KOPF_FINALIZER], "deletionTimestamp": "2026-01-01T00:00:00Z"},
        {"name": "free"},
    ]
    jobs = [{"name": "j1", "finalizers": [api.SHARD_FINALIZER]}, {"name": "j2", "finalizers": []}]
    going = ("going", ("x", api.KOPF_FINALIZER))
    assert holders(batches, jobs) == Holders(jobs=1, batches=2, deleting_batches=(going,))
    assert not holders([{"name": "free"}], [{"name": "j2"}]).any


class FakeKube:
    """The calls the guard makes: one RoleBinding, and the metadata of the namespace's batches and Jobs."""

    def __init__(self) -> None:
        self.binding: dict[str, Any] | None = binding("other")
        self.batches: list[dict[str, Any]] = []
        self.jobs: list[dict[str, Any]] = []
        self.writes: list[list[str]] = []
        self.looks = 0
        self.terminating = True
        self.changed = asyncio.Condition()

    async def _note(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def get_rolebinding(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.binding

    async def set_rolebinding_finalizers(
        self, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> None:
        assert self.binding is not None
        assert resource_version == self.binding["metadata"]["resourceVersion"]
        self.binding["metadata"]["finalizers"] = finalizers
        self.binding["metadata"]["resourceVersion"] = str(int(resource_version) + 1)
        self.writes.append(finalizers)
        await self._note()

    async def list_held_metadata(self, namespace: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        self.looks += 1
        await self._note()
        return [b["metadata"] for b in self.batches], [j["metadata"] for j in self.jobs]

    async def namespace_terminating(self, namespace: str) -> bool:
        return self.terminating

    async def release_batch(self, namespace: str, name: str, finalizers: tuple[str, ...]) -> None:
        for batch in self.batches:
            if batch["metadata"]["name"] == name:
                batch["metadata"]["finalizers"] = [f for f in finalizers if f != api.KOPF_FINALIZER]
        await self._note()

    async def until(self, check: Any) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(check), timeout=5)


def batch(name: str, *, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "finalizers": [api.KOPF_FINALIZER]}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:01Z"
    return {"metadata": meta}


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("POLL_SECONDS", "MIN_INTERVAL_SECONDS", "DRAIN_POLL_SECONDS"):
        monkeypatch.setattr(access, name, 0.01)


@contextlib.asynccontextmanager
async def guarding(kube: FakeKube) -> AsyncIterator[access.AccessGuard]:
    """The guard of namespace "ns", running until the block ends."""
    guard = access.AccessGuard(kube, ("ns",), "op-application")  # type: ignore[arg-type]
    task = asyncio.create_task(guard.run())
    try:
        yield guard
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_binding_follows_what_the_namespace_holds(fast: None) -> None:
    kube = FakeKube()
    async with guarding(kube) as guard:
        await kube.until(lambda: kube.looks >= 3)
        assert kube.writes == []  # nothing of ours there: nothing to hold
        kube.batches = [batch("b")]
        guard.wake("ns")
        await kube.until(lambda: kube.writes)
        assert kube.writes[-1] == ["other", api.ACCESS_FINALIZER]
        # The namespace is deleted while a shard Job still holds the operator's finalizer: kept.
        kube.batches = [batch("b", deleting=True)]
        kube.jobs = [{"metadata": {"name": "j", "finalizers": [api.SHARD_FINALIZER]}}]
        assert kube.binding is not None
        kube.binding["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        looked = kube.looks
        await kube.until(lambda: kube.looks >= looked + 3)
        assert len(kube.writes) == 1
        assert kube.batches[0]["metadata"]["finalizers"] == [api.KOPF_FINALIZER]  # its Job first
        # Its Job released: kopf, which stopped serving the namespace, would never let the batch go.
        kube.jobs = []
        await kube.until(lambda: len(kube.writes) == 2)
        assert kube.batches[0]["metadata"]["finalizers"] == []
        assert kube.writes[-1] == ["other"]  # only ours goes


async def test_the_binding_is_let_go_once_the_namespace_holds_nothing(fast: None) -> None:
    kube = FakeKube()
    kube.binding = binding(api.ACCESS_FINALIZER)
    kube.batches = [batch("b")]
    async with guarding(kube):
        await kube.until(lambda: kube.looks >= 3)
        assert kube.writes == []
        kube.batches = []  # deleted while the operator ran: an uninstall now leaves no binding behind
        await kube.until(lambda: kube.writes)
        assert kube.writes == [[]]


async def test_a_failing_call_does_not_end_the_guard(fast: None) -> None:
    kube = FakeKube()
    kube.batches = [batch("b")]
    calls = 0
    real_get = kube.get_rolebinding

    async def flaky(namespace: str, name: str) -> dict[str, Any] | None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise OSError("connection reset")
        return await real_get(namespace, name)

    kube.get_rolebinding = flaky  # type: ignore[method-assign]
    async with guarding(kube):
        await kube.until(lambda: kube.writes)
        assert kube.writes[-1] == ["other", api.ACCESS_FINALIZER]
        assert calls == 3


async def test_wake_ups_cost_nothing_while_the_binding_is_held(fast: None) -> None:
    """Every JobBatch event wakes the guard (the operator's own status writes too): only an unheld binding looks."""
    kube = FakeKube()
    kube.binding = binding(api.ACCESS_FINALIZER)
    kube.batches = [batch("b")]
    async with guarding(kube) as guard:
        await kube.until(lambda: kube.looks >= 1)
        assert guard._held["ns"]
        for _ in range(50):
            guard.wake("ns")
        assert not guard._wake["ns"].is_set()
        guard.wake("ns", gone=True)  # a batch deleted: maybe the last one
        assert guard._wake["ns"].is_set()


def test_the_fake_has_the_signatures_of_the_kube_calls_it_stands_for() -> None:
    calls = ("get_rolebinding", "set_rolebinding_finalizers", "list_held_metadata", "release_batch")
    for name in (*calls, "namespace_terminating"):
        real = inspect.signature(getattr(Kube, name)).parameters
        fake = inspect.signature(getattr(FakeKube, name)).parameters
        assert list(real) == list(fake), name
