"""How a leader-electing process ends: its reconciler's failure is its own, never a silent exit 0.

The Lease itself is tested against the API server (tests/integration/test_leader_election.py);
here the election library is replaced, so only the process's own bookkeeping runs.
"""

from __future__ import annotations

import asyncio
import getpass
import socket
from typing import Any

import pytest
from kubernetes_asyncio.leaderelection import leaderelection

from jobbatch import runtime
from jobbatch.config import OperatorConfig


class _Client:
    async def close(self) -> None:
        pass


class _ElectedAtOnce:
    """Stands in for LeaderElection: leads at once, then keeps renewing until cancelled.

    As the library does, it starts the callback as a task of its own and never looks at its result.
    """

    def __init__(self, config: Any) -> None:
        self.config = config
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        self.tasks.add(asyncio.create_task(self.config.onstarted_leading()))
        await asyncio.Event().wait()


@pytest.fixture
def elected(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []

    async def new_api_client() -> _Client:
        return _Client()

    monkeypatch.setattr(runtime, "new_api_client", new_api_client)
    monkeypatch.setattr(runtime, "LeaseLock", lambda name, *_: type("Lock", (), {"name": name})())
    monkeypatch.setattr(leaderelection, "LeaderElection", _ElectedAtOnce)
    return seen


async def test_a_leader_whose_reconciler_fails_exits_with_that_failure(
    elected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing(config: OperatorConfig, *, identity: str, liveness: bool = True) -> None:
        elected.append(identity)
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(runtime, "_operator", failing)
    config = OperatorConfig(leader_election=True, liveness_endpoint="")
    with pytest.raises(KeyError, match="uid not found"):
        await runtime._lead(config)
    (identity,) = elected
    assert identity.startswith(socket.gethostname())  # the Lease's identity, given to kopf too


async def test_a_leader_stopped_by_a_signal_exits_cleanly(elected: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    async def stopped(config: OperatorConfig, *, identity: str, liveness: bool = True) -> None:
        elected.append(identity)  # kopf returns when SIGTERM stops it

    monkeypatch.setattr(runtime, "_operator", stopped)
    await runtime._lead(OperatorConfig(leader_election=True, liveness_endpoint=""))
    assert len(elected) == 1


def test_the_identity_needs_no_passwd_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_user() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(getpass, "getuser", no_user)
    assert runtime._identity() != runtime._identity()  # unique per process start, whoever runs it
