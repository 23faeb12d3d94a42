"""What the harness measures, computed from watch events, /proc and the API server's metrics.

Everything here is plain computation on recorded data (unit-tested without a cluster);
``bench.run`` feeds it.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import statistics
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from bench.kubeapi import WRITE_VERBS

T = TypeVar("T")

_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def request_totals(metrics_text: str) -> collections.Counter[str]:
    """``apiserver_request_total`` summed over codes, keyed ``"VERB resource[/subresource]"``."""
    out: collections.Counter[str] = collections.Counter()
    for line in metrics_text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        if not labels.get("resource"):
            continue  # non-resource URLs: /healthz, discovery
        resource = labels["resource"]
        if labels.get("group"):
            resource = f"{resource}.{labels['group']}"
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        out[f"{labels['verb']} {resource}"] += round(float(match["value"]))
    return out


def writes_between(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """Write requests made between two ``request_totals`` readings, by verb and resource."""
    return _between(before, after, writes=True)


def reads_between(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """Read requests (GET, LIST, WATCH) made between two readings, by verb and resource."""
    return _between(before, after, writes=False)


def _between(before: Mapping[str, int], after: Mapping[str, int], *, writes: bool) -> dict[str, int]:
    out = {}
    for key, value in after.items():
        if (key.split(" ", 1)[0] in WRITE_VERBS) == writes and value - before.get(key, 0) > 0:
            out[key] = value - before.get(key, 0)
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


# Writes only the operator makes: shard Jobs (the Job controller writes only jobs/status),
# the JobBatch and its status, the payload snapshot. Events are shared with the controllers.
OPERATOR_RESOURCES = frozenset({"jobs.batch", "jobbatches.jobbatch.io", "jobbatches.jobbatch.io/status", "configmaps"})


def operator_writes(writes: Mapping[str, int]) -> int:
    return sum(n for key, n in writes.items() if key.split(" ", 1)[1] in OPERATOR_RESOURCES)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def peak_rss_bytes(pid: int) -> int:
    """The process's high-water resident set (VmHWM): a true peak, not a sample."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no VmHWM for pid {pid}")


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None without data."""
    data = sorted(values)
    if not data:
        return None
    rank = max(1, -(-len(data) * q // 100))  # ceil(len*q/100), at least 1
    return data[int(rank) - 1]


def slowest_percent(samples: list[T], key: Callable[[T], float]) -> list[T]:
    """The samples at or above their nearest-rank p99, slowest first: what the slowest 1 % is made of."""
    n = len(samples)
    return sorted(samples, key=key, reverse=True)[: n - -(-n * 99 // 100) + 1] if n else []


def median(values: Iterable[float | None]) -> float | None:
    data = [v for v in values if v is not None]
    return statistics.median(data) if data else None


class SlotLatency:
    """Time from a worker finishing, while work is left to start, to the next worker starting.

    Each such finish frees a slot that should be refilled at once; finishes are paired,
    first in first out, with the following starts. A finish counts even when fewer workers
    than the parallelism were active: a dispatcher that lags behind its slots is exactly
    what this must show. Finishes once every worker has started free nothing and are not counted.

    By path, a second pairing: a start takes the oldest slot its own Job freed, else the oldest
    another Job freed (a *hand-over*: for A, a chunk's slot passed on by the operator's raise of
    another Job, a retry Job or a resume). It says which path the slow refills take; the headline
    figures keep the first-in-first-out pairing, so the two need not split the same samples.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.started = 0
        self._freed: collections.deque[float] = collections.deque()
        # By Job: (time freed, how many of its pods had ended by then, that one included).
        self._freed_by: dict[str | None, collections.deque[tuple[float, int]]] = collections.defaultdict(
            collections.deque
        )
        self._ended_by: collections.Counter[str | None] = collections.Counter()
        self.samples: list[float] = []
        # The second pairing: (seconds, path), path "inside", "hand-over" or "unknown" (a pod without
        # its Job's name).
        self.by_path: list[tuple[float, str]] = []
        # Each hand-over as (time freed, Job that freed it, its pods ended by then, time of the start,
        # Job that started).
        self.hand_overs: list[tuple[float, str, int, float, str]] = []

    def start(self, t: float, job: str | None) -> None:
        self.started += 1
        if not self._freed:
            return
        self.samples.append(t - self._freed.popleft())
        own = self._freed_by.get(job)
        if own:
            self.by_path.append((t - own.popleft()[0], "inside" if job is not None else "unknown"))
            return
        other = min((k for k, q in self._freed_by.items() if q), key=lambda k: self._freed_by[k][0][0])
        freed, ended = self._freed_by[other].popleft()
        if job is not None and other is not None:
            self.by_path.append((t - freed, "hand-over"))
            self.hand_overs.append((freed, other, ended, t, job))
        else:
            self.by_path.append((t - freed, "unknown"))

    def finish(self, t: float, job: str | None) -> None:
        self._ended_by[job] += 1
        if self.started < self.total:
            self._freed.append(t)
            self._freed_by[job].append((t, self._ended_by[job]))

    def summary(self) -> dict[str, float | int | None]:
        out: dict[str, float | int | None] = {
            "samples": len(self.samples),
            "p50": percentile(self.samples, 50),
            "p99": percentile(self.samples, 99),
        }
        for path, key in (("inside", "inside"), ("hand-over", "hand_over"), ("unknown", "unknown")):
            taken = [s for s, p in self.by_path if p == path]
            out |= {
                f"{key}_samples": len(taken),
                f"{key}_p50": percentile(taken, 50),
                f"{key}_p99": percentile(taken, 99),
            }
        # What that pairing's slowest 1 % is made of: the samples at or above its p99 (nearest rank).
        slowest = slowest_percent(self.by_path, key=lambda sample: sample[0])
        out["slowest_hand_over_share"] = sum(p == "hand-over" for _, p in slowest) / len(slowest) if slowest else None
        return out


@dataclasses.dataclass
class JobHistory:
    """What a Job watch showed of one Job: its events as (time, pods it counted as ended: succeeded +
    failed), and when its parallelism rose (from 0 too)."""

    events: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    raises: list[float] = dataclasses.field(default_factory=list)
    parallelism: int | None = None


def hand_over_rounds(
    hand_overs: list[tuple[float, str, int, float, str]], jobs: Mapping[str, JobHistory]
) -> dict[str, float | int | None]:
    """Each hand-over's wait split into the round's three steps, as the watches saw them.

    *status*: from the pod's end to the first event of its Job that counts it (as many pods ended as
    the pod watch had seen end by then; an event seen before the pod's own, on the other watch, makes
    this 0); *raise*: from there to the last rise of the starting Job's parallelism before the pod's
    creation (the operator's pass and PATCH); *create*: from there to the creation (the Job
    controller's sync of that Job). A start with no rise between the count and itself took headroom an
    earlier raise left: its raise step is 0. A start before its freeing Job counted the pod counts
    wholly as status.
    The figures: each step's p50 and p99 over all hand-overs, and its p50 over the hand-overs at or
    above their own p99 (nearest rank): what the slowest ones wait on.
    """
    rounds: list[tuple[float, float, float, float]] = []  # (whole, status, raise, create)
    for freed, source, ended, start, target in hand_overs:
        history = jobs.get(source)
        counted = next((t for t, n in history.events if n >= ended), None) if history is not None else None
        seen = None if counted is None else max(counted, freed)
        if seen is None or seen > start:
            rounds.append((start - freed, start - freed, 0.0, 0.0))
            continue
        rises = [t for t in jobs[target].raises if seen <= t <= start] if target in jobs else []
        acted = rises[-1] if rises else seen
        rounds.append((start - freed, seen - freed, acted - seen, start - acted))
    out: dict[str, float | int | None] = {"hand_over_rounds": len(rounds)}
    slowest = slowest_percent(rounds, key=lambda r: r[0])
    for i, step in enumerate(("status", "raise", "create"), start=1):
        values = [r[i] for r in rounds]
        out[f"hand_over_{step}_p50"] = percentile(values, 50)
        out[f"hand_over_{step}_p99"] = percentile(values, 99)
        out[f"slowest_hand_over_{step}"] = percentile([r[i] for r in slowest], 50)
    return out


def _job_of(pod: Mapping[str, Any]) -> str | None:
    """The Job a worker pod belongs to: its job-name label, else its controlling owner (None: unknown)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    name = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
    if name:
        return str(name)
    owners = [o for o in meta.get("ownerReferences") or [] if o.get("kind") == "Job" and o.get("controller")]
    return str(owners[0]["name"]) if owners else None


def _finished(obj: Mapping[str, Any]) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return str(cond["type"])
    return None


TERMINAL = ("Succeeded", "Failed")


@dataclasses.dataclass
class Timeline:
    """One run as seen through watches: worker pods and the object under test.

    Times are seconds since ``t0`` (the moment the object was submitted), on the
    harness's monotonic clock, stamped when each event arrives.
    """

    total: int
    t0: float = 0.0
    first_pod: float | None = None
    completed: float | None = None
    outcome: str | None = None
    # The most finished (Succeeded or Failed) worker pod objects that existed at once: counted up
    # when a pod is seen entering a terminal phase, down when that pod is DELETED.
    held_peak: int = 0
    # (t, running pods, succeeded pods, finished pods held) at every change: the plots' data.
    series: list[tuple[float, int, int, int]] = dataclasses.field(default_factory=list)
    _pod_phase: dict[str, str] = dataclasses.field(default_factory=dict)
    _running: int = 0
    _succeeded: int = 0
    _ended: int = 0
    _held: set[str] = dataclasses.field(default_factory=set)
    jobs: dict[str, JobHistory] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pod_slots = SlotLatency(self.total)

    def on_pod(self, now: float, kind: str, pod: Mapping[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        t = now - self.t0
        old = self._pod_phase.get(uid)
        if old is None:
            if kind == "DELETED":
                return
            self._pod_phase[uid] = "Pending"
            old = "Pending"
            self.pod_slots.start(t, _job_of(pod))
            if self.first_pod is None:
                self.first_pod = t
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        if kind == "DELETED" and uid in self._held:
            self._held.discard(uid)
            self._point(t)
        if old in TERMINAL or phase == old:
            return
        if kind == "DELETED" and phase not in TERMINAL:
            phase = "Failed"  # deleted before it ended: its slot is free all the same
        self._pod_phase[uid] = phase
        self._running += (phase == "Running") - (old == "Running")
        if phase in TERMINAL:
            self._ended += 1
            self._succeeded += phase == "Succeeded"
            self.pod_slots.finish(t, _job_of(pod))
            if kind != "DELETED":  # a pod seen ending only as it went is not held
                self._held.add(uid)
                self.held_peak = max(self.held_peak, len(self._held))
        self._point(t)

    def on_job(self, now: float, kind: str, job: Mapping[str, Any]) -> None:
        """A Job watch event (A's chunk and retry Jobs): the hand-over rounds' timestamps."""
        name = str(job["metadata"]["name"])
        t = now - self.t0
        history = self.jobs.setdefault(name, JobHistory())
        status = job.get("status") or {}
        history.events.append((t, int(status.get("succeeded") or 0) + int(status.get("failed") or 0)))
        parallelism = (job.get("spec") or {}).get("parallelism")
        if isinstance(parallelism, int):
            if parallelism > (history.parallelism or 0):  # a Job created with slots counts as a raise
                history.raises.append(t)
            history.parallelism = parallelism

    def slot_summary(self) -> dict[str, float | int | None]:
        """The refill figures, with the hand-overs' rounds when Jobs were watched."""
        out = self.pod_slots.summary()
        if self.jobs:
            out |= hand_over_rounds(self.pod_slots.hand_overs, self.jobs)
        return out

    def _point(self, t: float) -> None:
        self.series.append((t, self._running, self._succeeded, len(self._held)))

    def on_subject(self, now: float, obj: Mapping[str, Any]) -> None:
        outcome = _finished(obj)
        if outcome and self.completed is None:
            self.completed, self.outcome = now - self.t0, outcome

    @property
    def pods_seen(self) -> int:
        return len(self._pod_phase)

    @property
    def pods_ended(self) -> int:
        """Worker pods seen ending (or deleted before they ended)."""
        return self._ended
