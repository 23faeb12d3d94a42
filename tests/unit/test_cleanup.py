"""`jobbatch cleanup` does not race an operator that still runs."""

from __future__ import annotations

import datetime
from typing import Any

from jobbatch.cleanup import live_leases

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)


def lease(name: str, holder: str | None, renewed_ago: float | None, duration: int = 15) -> dict[str, Any]:
    spec: dict[str, Any] = {"leaseDurationSeconds": duration}
    if holder:
        spec["holderIdentity"] = holder
    if renewed_ago is not None:
        spec["renewTime"] = (NOW - datetime.timedelta(seconds=renewed_ago)).isoformat().replace("+00:00", "Z")
    return {"metadata": {"namespace": "ops", "name": name}, "spec": spec}


def test_only_operator_leases_renewed_within_their_duration_are_live() -> None:
    leases = [
        lease("jb-jobbatch-operator", "pod-a", 3),  # the chart's: live
        lease("jobbatch-operator", "pod-b", 20),  # stale: its holder is gone
        lease("jobbatch-operator", "pod-c", 20, duration=60),  # a longer lease: still live
        lease("kube-scheduler", "x", 1),  # not an operator's
        lease("idle-jobbatch-operator", None, 1),  # released
        lease("new-jobbatch-operator", "pod-d", None),  # never renewed
    ]
    assert live_leases(leases, NOW) == [
        "ops/jb-jobbatch-operator (held by pod-a)",
        "ops/jobbatch-operator (held by pod-c)",
    ]
