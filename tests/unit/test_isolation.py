"""Poison-item isolation (retry.isolate): the piece tree, one shard's state, and whole batches planned
pass after pass against a simulated Job controller (no cluster: the planner is a pure function)."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import math
from typing import Any

import pytest

from jobbatch import isolation, manifests, naming, planner
from jobbatch.api import JobBatchSpec, JobBatchStatus
from jobbatch.isolation import MAX_SPLITS_PER_LEVEL, assess, max_attempts, node_range
from jobbatch.observed import PodFailure, ShardJob, summarize, summarize_failed_pod
from jobbatch.planner import Acceptance, Batch, CreateJob, plan
from jobbatch.ranges import IndexRanges

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
UID = "uid-1"
GRACE = datetime.timedelta(seconds=planner.POD_GRACE_SECONDS)


def test_pieces_halve_the_shard_down_to_single_items() -> None:
    items = (1000, 2000)
    assert node_range(items, 1) == items
    assert node_range(items, 2) == (1000, 1500)
    assert node_range(items, 3) == (1500, 2000)
    assert node_range(items, 6) == (1500, 1750)
    assert node_range(items, 7) == (1750, 2000)
    # Every level partitions the shard; the deepest pieces are single items.
    for depth in range(1, 11):
        spans = [node_range(items, n) for n in range(2**depth, 2 ** (depth + 1))]
        assert spans[0][0] == 1000
        assert spans[-1][1] == 2000
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    leaves = {node_range((0, 1000), n) for n in range(2**10, 2**11)}
    assert all(hi - lo <= 1 for lo, hi in leaves)
    assert {lo for lo, hi in leaves if hi - lo == 1} == set(range(1000))
    assert max_attempts(1000, 2) == 40
    assert max_attempts(1, 5) == 0
    assert max_attempts(1000, 1000) == 2 * MAX_SPLITS_PER_LEVEL * 10


def piece(shard: int, node: int, *, attempt: int = 4, ok: bool | None = None, at: float = 0, **kw: Any) -> ShardJob:
    """Piece ``node`` of ``shard``: running (ok None), succeeded or failed ``at`` seconds after T0."""
    done = ok is not None
    return ShardJob(
        name=naming.piece_job_name("b", UID, shard, attempt, node),
        uid=f"u-{shard}-{node}",
        first=shard,
        count=1,
        attempt=attempt,
        parallelism=1,
        succeeded=IndexRanges.of([shard]) if ok else IndexRanges(),
        failed=IndexRanges.of([shard]) if ok is False else IndexRanges(),
        active=kw.pop("active", 0 if done else 1),
        finished=done,
        finished_at=T0 + datetime.timedelta(seconds=at) if done else None,
        node=node,
        **kw,
    )


def pod(shard: int, node: int, attempt: int = 4, code: int = 1, message: str = "bad record") -> PodFailure:
    return PodFailure(f"u-{shard}-{node}", shard, attempt, code, "Error", message, T0, node=node)


def test_a_failed_piece_is_split_and_its_missing_sibling_wanted() -> None:
    items = (0, 8)
    # Piece 2 failed (items 0-3), piece 3 was never made (its create failed): 3, 4 and 5 are wanted.
    state = assess(0, items, [piece(0, 2, ok=False)], {(0, 4, 2): pod(0, 2)}, T0, GRACE)
    assert state.wanted == [3, 4, 5]
    assert not state.finished
    assert state.causes == {2: ("Error", 1)}
    # A single item that failed is named; the pieces that succeeded are done.
    jobs = [piece(0, 2, ok=False), piece(0, 3, ok=True), piece(0, 4, ok=True), piece(0, 5, ok=False)]
    jobs += [piece(0, 10, ok=True), piece(0, 11, ok=False)]
    found = {(0, 4, n): pod(0, n, message=f"item of node {n}") for n in (2, 5, 11)}
    state = assess(0, items, jobs, found, T0, GRACE)
    assert state.finished
    assert state.wanted == []
    assert state.failed_items == IndexRanges.of([3])
    assert state.done == IndexRanges([(0, 2), (4, 7)])
    assert [(p.node, p.items, p.message) for p in state.failed] == [(11, (3, 4), "item of node 11")]


def test_an_undecided_piece_waits_for_its_pod_then_is_decided_without_it() -> None:
    jobs = [piece(0, 2, ok=False, at=0), piece(0, 3, ok=True)]
    state = assess(0, (0, 2), jobs, {}, T0, GRACE)
    assert state.busy == 1
    assert not state.finished
    assert state.look_again == T0 + GRACE
    later = assess(0, (0, 2), jobs, {}, T0 + GRACE, GRACE)
    assert later.finished
    assert later.failed_items == IndexRanges.of([0])
    assert later.failed[0].reason == "Failed"


def test_at_most_16_pieces_of_a_level_are_split() -> None:
    # Level 6 of a 256-item shard: 32 pieces of 8 items (nodes 32-63), every one failed. Those split
    # already (their halves exist) keep their place; the lowest others fill the rest of the 16.
    jobs = [piece(0, n, ok=False) for n in range(32, 64)]
    jobs += [piece(0, n) for n in (2 * 60, 2 * 60 + 1)]  # node 60 was split in an earlier pass
    failures = {(0, 4, n): pod(0, n) for n in range(32, 64)}
    state = assess(0, (0, 256), jobs, failures, T0, GRACE)
    assert set(state.causes) == set(range(32, 47))  # 15 more: 16 with node 60
    assert sorted(p.node for p in state.failed) == [n for n in range(47, 64) if n != 60]
    assert all(p.items[1] - p.items[0] == 8 for p in state.failed)


# -- whole batches, planned pass after pass ---------------------------------------------------------
@dataclasses.dataclass
class Cluster:
    """A Job controller in miniature: a created Job's pods finish at once (pieces in ``slow`` that many
    passes later); one fails if its items hold a bad one, saying which (or ``message``, if set: a
    broken image says the same thing every time)."""

    spec: JobBatchSpec
    items: int
    bad: set[int]
    message: str | None = None
    slow: dict[int, int] = dataclasses.field(default_factory=dict)  # piece node -> passes it runs
    jobs: dict[str, ShardJob] = dataclasses.field(default_factory=dict)
    failures: dict[tuple[int, int, int], PodFailure] = dataclasses.field(default_factory=dict)
    created: list[CreateJob] = dataclasses.field(default_factory=list)
    # Running slow pieces: name -> (passes left, the Job once finished, its pod failure if any).
    running: dict[str, tuple[int, ShardJob, PodFailure | None]] = dataclasses.field(default_factory=dict)

    def run(self, create: CreateJob, now: datetime.datetime) -> None:
        self.created.append(create)
        body = manifests.shard_job(
            name="b", namespace="ns", uid=UID, spec=self.spec, item_count=self.items, first_shard=create.first,
            count=create.count, attempt=create.attempt, parallelism=create.parallelism, node=create.node,
        )  # fmt: skip
        assert body["metadata"]["name"] == create.name
        env = {e["name"]: e["value"] for e in body["spec"]["template"]["spec"]["containers"][0]["env"]}
        ok: list[int] = []
        bad: list[int] = []
        pods: dict[tuple[int, int, int], PodFailure] = {}
        for index in range(create.count):
            shard = create.first + index
            lo, hi = planner.item_range(shard, self.spec.shard_size, self.items)
            if create.node:  # the pod's items, as the SDK reads them
                lo, hi = int(env["JOBBATCH_ITEM_START"]), int(env["JOBBATCH_ITEM_END"])
            (bad if self.bad & set(range(lo, hi)) else ok).append(shard)
            if self.bad & set(range(lo, hi)):
                first_bad = min(self.bad & set(range(lo, hi)))
                said = self.message or f"item {first_bad} is bad"
                pods[(shard, create.attempt, create.node)] = PodFailure(
                    f"uid-{create.name}", shard, create.attempt, 1, "Error", said, now, node=create.node
                )
        observed = summarize({**body, "metadata": {**body["metadata"], "uid": f"uid-{create.name}"}})
        assert observed is not None
        assert observed.node == create.node
        done = dataclasses.replace(
            observed, succeeded=IndexRanges.of(ok), failed=IndexRanges.of(bad), finished=True, finished_at=now
        )
        if self.slow.get(create.node):
            self.jobs[create.name] = dataclasses.replace(observed, active=1)
            self.running[create.name] = (self.slow[create.node], done, next(iter(pods.values()), None))
            return
        self.jobs[create.name] = done
        self.failures.update(pods)

    def apply(self, decision: planner.Plan, now: datetime.datetime) -> None:
        for name, (left, done, pod) in list(self.running.items()):
            if left > 1:
                self.running[name] = (left - 1, done, pod)
                continue
            del self.running[name]
            self.jobs[name] = dataclasses.replace(done, finished_at=now, finalizers=self.jobs[name].finalizers)
            if pod is not None:
                self.failures[(pod.shard, pod.attempt, pod.node)] = dataclasses.replace(pod, finished_at=now)
        for create in decision.create:
            self.run(create, now)
        for release in decision.release:
            self.jobs[release.name] = dataclasses.replace(self.jobs[release.name], finalizers=())
        for delete in decision.delete:
            self.jobs.pop(delete.name)
        for collect in decision.collect:
            self.jobs[collect.name] = dataclasses.replace(self.jobs[collect.name], pods_collected=True)


def run_batch(
    items: int,
    shard_size: int,
    bad: set[int],
    passes: int = 500,
    message: str | None = None,
    slow: dict[int, int] | None = None,
    **spec: Any,
) -> tuple[JobBatchStatus, Cluster, list[planner.Event]]:
    s = JobBatchSpec.model_validate(
        {
            "template": {"spec": {"containers": [{"name": "w", "image": "i"}]}},
            "payloads": {"count": items},
            "shardSize": shard_size,
            "parallelism": 50,
            **spec,
        }
    )
    cluster = Cluster(s, items, bad, message, slow or {})
    b = Batch(name="b", namespace="ns", uid=UID, generation=1, spec=s, status=JobBatchStatus())
    now, events = T0, []
    for _ in range(passes):
        acceptance = Acceptance(True, "Accepted", "", item_count=items)
        decision = plan(b, list(cluster.jobs.values()), now, failures=cluster.failures, acceptance=acceptance)
        events += decision.events
        cluster.apply(decision, now)
        b = dataclasses.replace(b, status=decision.status)
        if b.status.phase in ("Succeeded", "Failed") and not any(j.has_finalizer for j in cluster.jobs.values()):
            return b.status, cluster, events
        now += datetime.timedelta(seconds=planner.POD_GRACE_SECONDS + 1)  # past any backoff of retry.backoff
    raise AssertionError(f"not finished after {passes} passes: {b.status.phase}, {len(cluster.jobs)} Jobs")


def held(cluster: Cluster) -> list[str]:
    """Jobs still held by the operator's finalizer."""
    return [j.name for j in cluster.jobs.values() if j.has_finalizer]


RETRY = {"limit": 1, "backoff": {"initialSeconds": 1, "maxSeconds": 1, "jitter": 0}, "isolate": True}


def test_a_1000_item_shard_with_2_bad_items_names_exactly_them() -> None:
    status, cluster, events = run_batch(1000, 1000, {17, 503}, retry=RETRY, maxFailedShards=1)
    assert status.phase == "Succeeded"  # the shard failed (2 bad items), maxFailedShards tolerates it
    assert status.failed_shards == "0"
    assert status.succeeded_shards == ""
    assert status.failed_items == "17,503"
    assert status.failed_item_count == 2
    assert [(f.items, f.message) for f in status.item_failures] == [
        ("17", "item 17 is bad"),
        ("503", "item 503 is bad"),
    ]
    assert status.failures[-1].reason == "ItemsFailed"
    assert "2 items failed" in status.failures[-1].message
    # Every good item ran in a piece that succeeded, exactly once; no piece ran twice.
    pieces = [c for c in cluster.created if c.node]
    assert len({c.name for c in pieces}) == len(pieces)
    done = IndexRanges()
    for c in pieces:
        span = node_range((0, 1000), c.node)
        if not {17, 503} & set(range(*span)):
            assert not done.intersection(IndexRanges([(span[0], span[1] - 1)]))
            done = done.union(IndexRanges([(span[0], span[1] - 1)]))
    assert len(done) == 998
    # The bound: 2 whole attempts (limit 1), then at most 2 * k * ceil(log2 S) pieces.
    assert len(cluster.created) - len(pieces) == 2
    assert len(pieces) <= max_attempts(1000, 2) == 2 * 2 * math.ceil(math.log2(1000))
    assert any(e.reason == "IsolatingItems" for e in events)
    assert any(e.reason == "ItemsFailed" for e in events)


def test_maxfailedshards_counts_shards_with_a_bad_item() -> None:
    # Shards of 10; items 3 and 5 (shard 0) and 47 (shard 4) are bad: 2 failed shards, 3 failed items.
    status, _, _ = run_batch(100, 10, {3, 5, 47}, retry=RETRY, maxFailedShards=2)
    assert status.phase == "Succeeded"
    assert status.failed_shards == "0,4"
    assert status.failed_items == "3,5,47"
    assert status.failed_item_count == 3
    assert status.succeeded_shards == "1-3,5-9"
    # One tolerated shard fewer: the batch fails (as soon as the second shard has a failed item).
    status, _, _ = run_batch(100, 10, {3, 5, 47}, retry=RETRY, maxFailedShards=1)
    failed = status.condition("Failed")
    assert status.phase == "Failed"
    assert failed is not None
    assert failed.reason == "ShardsFailed"
    assert IndexRanges.parse(status.failed_shards) == IndexRanges.of([0, 4])


def test_without_isolate_a_shard_with_a_bad_item_fails_whole() -> None:
    status, cluster, _ = run_batch(100, 10, {3}, retry={**RETRY, "isolate": False}, maxFailedShards=1)
    assert status.failed_shards == "0"
    assert status.failed_items == ""
    assert status.failed_item_count == 0
    assert not any(c.node for c in cluster.created)


def test_a_shard_of_one_item_is_not_split() -> None:
    status, cluster, _ = run_batch(5, 1, {2}, retry=RETRY, maxFailedShards=1)
    assert status.failed_shards == "2"
    assert not any(c.node for c in cluster.created)
    assert status.failures[-1].reason == "RetriesExhausted"


@pytest.mark.parametrize("slow", [{}, {15: 3}, {15: 10, 8: 2}], ids=["together", "one-late", "two-late"])
def test_a_broken_worker_stops_at_the_eighths_whenever_they_end(slow: dict[int, int]) -> None:
    """A broken image fails every piece the same way: 14 pieces, not 2 * S, in whatever order they end."""
    status, cluster, _ = run_batch(
        256, 256, set(range(256)), passes=2000, message="exec format error", slow=slow, retry=RETRY, maxFailedShards=1
    )
    pieces = [c for c in cluster.created if c.node]
    assert sorted(c.node for c in pieces) == list(range(2, 16))
    assert status.failed_shards == "0"
    assert status.failed_item_count == 256
    assert IndexRanges.parse(status.failed_items) == IndexRanges([(0, 255)])
    assert [f.items for f in status.item_failures] == [f"{lo}-{lo + 31}" for lo in range(0, 256, 32)]
    assert status.failures[-1].reason == "NotItemSpecific"
    assert "every eighth of its items failed the same way" in status.failures[-1].message


def test_bad_data_in_every_eighth_is_still_isolated() -> None:
    """Eight bad items, one per eighth, each saying which it is: no breaker, each named alone."""
    bad = set(range(10, 1000, 125))
    status, cluster, _ = run_batch(1000, 1000, bad, passes=2000, retry=RETRY, maxFailedShards=1)
    assert IndexRanges.parse(status.failed_items) == IndexRanges.of(bad)
    assert status.failures[-1].reason == "ItemsFailed"
    assert len([c for c in cluster.created if c.node]) <= max_attempts(1000, len(bad))


def test_every_item_bad_and_saying_so_is_bounded_by_the_per_level_limit() -> None:
    status, cluster, _ = run_batch(256, 256, set(range(256)), passes=2000, retry=RETRY, maxFailedShards=1)
    assert len([c for c in cluster.created if c.node]) <= max_attempts(256, 256)
    assert status.failed_item_count == 256
    assert len([lo for lo, hi in IndexRanges.parse(status.failed_items).intervals]) == 1  # 0-255, in pieces


def test_sixteen_bad_items_per_level_are_named_alone_and_the_cost_stays_bounded() -> None:
    # 40 bad items, none in the last eighth (so the failure is the items'): pieces stay within the bound.
    bad = set(range(0, 1000, 25)) - set(range(875, 1000))
    status, cluster, _ = run_batch(1000, 1000, bad, passes=2000, retry=RETRY, maxFailedShards=1)
    pieces = [c for c in cluster.created if c.node]
    assert len(pieces) <= max_attempts(1000, len(bad))
    named = IndexRanges.parse(status.failed_items)
    assert bad <= set(named)  # every bad item is named, alone or in a range failed whole
    assert status.failed_item_count == len(named)
    assert len([lo for lo, hi in named.intervals if lo == hi]) >= 16


def test_a_skip_retry_shard_is_split_at_once() -> None:
    """A non-retryable failure needs no retries to know the shard is bad: its pieces start at once."""
    status, cluster, _ = run_batch(
        16, 16, {9}, retry={**RETRY, "limit": 3, "nonRetryableExitCodes": [1]}, maxFailedShards=1
    )
    assert len([c for c in cluster.created if not c.node]) == 1
    assert status.failed_items == "9"


def test_a_rerun_forgets_the_failed_items_of_the_shards_it_runs() -> None:
    status, _, _ = run_batch(100, 10, {3, 47}, retry=RETRY, maxFailedShards=2)
    assert status.failed_items == "3,47"
    s = JobBatchSpec.model_validate(
        {
            "template": {"spec": {"containers": [{"name": "w", "image": "i"}]}},
            "payloads": {"count": 100},
            "shardSize": 10,
            "retry": RETRY,
            "maxFailedShards": 2,
            "rerun": {"id": "r1", "shards": "4"},
        }
    )
    b = Batch(name="b", namespace="ns", uid=UID, generation=2, spec=s, status=status)
    decision = plan(b, [], T0 + datetime.timedelta(hours=1))
    assert decision.status.rerun is not None
    assert decision.status.rerun.shards == 1
    assert decision.status.failed_items == "3"
    assert decision.status.failed_item_count == 1
    assert [f.shard for f in decision.status.item_failures] == [0]


def test_piece_jobs_and_pods_are_trusted_only_with_their_name_and_label() -> None:
    s = JobBatchSpec.model_validate(
        {
            "template": {"spec": {"containers": [{"name": "w", "image": "i"}]}},
            "payloads": {"count": 100},
            "shardSize": 10,
        }
    )
    body = manifests.shard_job(
        name="b", namespace="ns", uid=UID, spec=s, item_count=100, first_shard=4, count=1, attempt=2,
        parallelism=1, node=5,
    )  # fmt: skip
    env = {e["name"]: e["value"] for e in body["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["JOBBATCH_ITEM_START"], env["JOBBATCH_ITEM_END"]) == ("42", "45")  # node 5: 2nd quarter of 40-49
    assert len(body["metadata"]["name"]) + 2 <= 63  # the pod's hostname "<job>-0"
    observed = summarize(body)
    assert observed is not None
    assert observed.node == 5
    relabelled = {**body, "metadata": {**body["metadata"], "labels": {**body["metadata"]["labels"]}}}
    relabelled["metadata"]["labels"]["jobbatch.io/item-node"] = "6"  # the name says 5
    assert summarize(relabelled) is None
    relabelled["metadata"]["labels"]["jobbatch.io/item-node"] = "1"  # the root is no piece
    assert summarize(relabelled) is None
    failed_pod = {
        "metadata": {
            "name": "p",
            "labels": {
                **body["spec"]["template"]["metadata"]["labels"],
                "batch.kubernetes.io/job-completion-index": "0",
            },
            "ownerReferences": [{"controller": True, "kind": "Job", "name": "j", "uid": "ju"}],
        },
        "status": {"phase": "Failed", "containerStatuses": [{"name": "w", "state": {"terminated": {"exitCode": 1}}}]},
    }
    got = summarize_failed_pod(failed_pod)
    assert got is not None
    assert (got.shard, got.attempt, got.node) == (4, 2, 5)


def test_a_long_batch_name_still_fits_a_pod_hostname() -> None:
    long = "x" * 253
    # The deepest piece of the largest shard (1,000,000 items): 20 levels below the root, a node below 2**21.
    assert (1_000_000 - 1).bit_length() + 1 == 21
    name = naming.piece_job_name(long, UID, 9_999_999, 999, 2**21 - 1)
    assert len(name) + 2 <= 63


@pytest.mark.parametrize("size", [2, 3, 7, 1000, 65_537])
def test_every_piece_ever_made_is_nonempty_and_the_single_items_cover_the_shard(size: int) -> None:
    """Only pieces of two or more items are split, so every half made holds an item."""
    items = (5, 5 + size)
    frontier, singles, depth = [isolation.ROOT], [], 0
    while frontier:
        depth = max(depth, frontier[0].bit_length())
        children: list[int] = []
        for node in frontier:
            lo, hi = node_range(items, node)
            assert hi - lo >= 1
            if hi - lo == 1:
                singles.append(lo)
            else:
                children += isolation.halves(node)
        frontier = children
    assert sorted(singles) == list(range(5, 5 + size))
    assert depth - 1 == (size - 1).bit_length()  # ceil(log2 S) levels below the whole shard


# -- the review's cases: the end of a batch, Events, counts, labels ---------------------------------
def isolating_spec(**kw: Any) -> JobBatchSpec:
    return JobBatchSpec.model_validate(
        {
            "template": {"spec": {"containers": [{"name": "w", "image": "i"}]}},
            "payloads": {"count": 40},
            "shardSize": 10,
            "parallelism": 4,
            "maxFailedShards": 4,
            "retry": {**RETRY, "limit": 0},
            **kw,
        }
    )


def started(s: JobBatchSpec, items: int = 40, **status: Any) -> Batch:
    """A running batch (shards of 10 items) whose acceptance and start are persisted."""
    b = Batch(name="b", namespace="ns", uid=UID, generation=1, spec=s, status=JobBatchStatus())
    first = plan(b, [], T0, acceptance=Acceptance(True, "Accepted", "", item_count=items), launch_budget=0)
    return dataclasses.replace(b, status=first.status.model_copy(update={"start_time": T0, **status}))


def chunk(failed: str = "", succeeded: str = "", at: float = 0) -> ShardJob:
    ok, bad = IndexRanges.parse(succeeded), IndexRanges.parse(failed)
    done = len(ok) + len(bad) == 4
    return ShardJob(
        name=naming.job_name("b", UID, 0, 0), uid="chunk", first=0, count=4, attempt=0, parallelism=4,
        succeeded=ok, failed=bad, active=4 - len(ok) - len(bad), finished=done,
        finished_at=T0 + datetime.timedelta(seconds=at) if done else None,
    )  # fmt: skip


def whole_failure(shard: int) -> PodFailure:
    return PodFailure("chunk", shard, 0, 1, "Error", "boom", T0)


def test_a_failure_seen_after_the_batch_ended_is_recorded_whole() -> None:
    s = isolating_spec(activeDeadlineSeconds=60)
    b = started(s, phase="Failed", completion_time=T0)
    decision = plan(b, [chunk(failed="1", succeeded="0,2,3")], T0 + datetime.timedelta(minutes=2),
                    failures={(1, 0, 0): whole_failure(1)})  # fmt: skip
    assert decision.status.failed_shards == "1"
    assert decision.status.failures[-1].reason == "RetriesExhausted"
    assert not decision.create
    assert not [e for e in decision.events if e.reason == "IsolatingItems"]


def test_a_split_in_the_pass_the_batch_ends_is_recorded_whole() -> None:
    # Shard 1 fails for good in the very pass the deadline passes: no piece starts, the failure is kept.
    s = isolating_spec(activeDeadlineSeconds=60)
    b = started(s, phase="Running")
    decision = plan(b, [chunk(failed="1", succeeded="0")], T0 + datetime.timedelta(minutes=2),
                    failures={(1, 0, 0): whole_failure(1)})  # fmt: skip
    assert decision.status.phase == "Failed"
    assert decision.status.failed_shards == "1"
    assert not [c for c in decision.create if c.node]


def test_a_bad_item_found_after_the_end_is_recorded_before_its_pieces_go() -> None:
    s = isolating_spec()
    b = started(s, phase="Failed", completion_time=T0, failed_shards="", succeeded_shards="0,2,3")
    pieces = [piece(1, 2, attempt=1, ok=False), piece(1, 3, attempt=1, suspended=True, active=0)]
    observed = [chunk(failed="1", succeeded="0,2,3"), *pieces]
    failures = {(1, 1, 2): pod(1, 2, attempt=1)}
    decision = plan(b, observed, T0 + datetime.timedelta(minutes=1), failures=failures)
    assert decision.status.failed_shards == "1"
    assert decision.status.failed_items == "10-14"  # piece 2 of shard 1, failed whole: the batch has ended
    assert not {r.name for r in decision.release} & {p.name for p in pieces}  # kept until that is persisted
    after = plan(dataclasses.replace(b, status=decision.status), observed, T0 + datetime.timedelta(minutes=1),
                 failures=failures)  # fmt: skip
    assert {p.name for p in pieces} <= {r.name for r in after.release}
    assert after.status.failed_items == "10-14"
    assert after.status.failed_item_count == 1 * 5


def test_isolating_items_is_posted_when_a_piece_starts_and_bounded_per_pass() -> None:
    s = isolating_spec(payloads={"count": 400}, parallelism=40, maxFailedShards=40)
    b = started(s, items=400)
    jobs = [dataclasses.replace(chunk(failed="0-39"), count=40, parallelism=40, active=0)]
    failures = {(n, 0, 0): whole_failure(n) for n in range(40)}
    held = plan(b, jobs, T0, failures=failures, launch_budget=0)
    assert not held.create
    assert not [e for e in held.events if e.reason == "IsolatingItems"]
    assert held.status.shards.retrying == 40  # one per shard, not one per wanted piece
    going = plan(b, jobs, T0, failures=failures)
    assert len([c for c in going.create if c.node]) == 40  # 20 shards' halves in 40 slots
    assert len([e for e in going.events if e.reason == "IsolatingItems"]) == planner.MAX_SHARD_EVENTS_PER_PASS
    counts = going.status.shards
    assert counts.total == counts.pending + counts.running + counts.retrying + counts.succeeded + counts.failed
    assert (counts.running, counts.retrying) == (20, 20)


def test_a_template_cannot_make_a_whole_shard_look_like_a_piece() -> None:
    s = isolating_spec(template={"metadata": {"labels": {"jobbatch.io/item-node": "2", "team": "a"}},
                                 "spec": {"containers": [{"name": "w", "image": "i"}]}})  # fmt: skip
    body = manifests.shard_job(name="b", namespace="ns", uid=UID, spec=s, item_count=40, first_shard=0, count=4,
                               attempt=0, parallelism=4)  # fmt: skip
    labels = body["spec"]["template"]["metadata"]["labels"]
    assert "jobbatch.io/item-node" not in labels
    assert labels["team"] == "a"


def test_resumed_pieces_count_their_shard_once() -> None:
    s = isolating_spec()
    b = started(s, succeeded_shards="0,2,3")
    pieces = [piece(1, n, attempt=1, suspended=True, active=0) for n in (2, 3)]
    decision = plan(b, [chunk(failed="1", succeeded="0,2,3"), *pieces], T0, failures={(1, 0, 0): whole_failure(1)})
    assert {r.name for r in decision.resume} == {p.name for p in pieces}
    counts = decision.status.shards
    assert (counts.running, counts.retrying, counts.succeeded, counts.pending) == (1, 0, 3, 0)


def test_a_piece_failing_after_the_end_waits_for_its_pod_before_it_goes() -> None:
    s = isolating_spec(failedJobsHistoryLimit=0)
    b = started(s, phase="Failed", completion_time=T0, succeeded_shards="0,2,3")
    failing = piece(1, 2, attempt=1, ok=False, at=0)
    observed = [chunk(failed="1", succeeded="0,2,3"), failing, piece(1, 3, attempt=1, ok=True)]
    early = plan(b, observed, T0 + datetime.timedelta(seconds=1))  # its pod is not seen yet
    assert failing.name not in {r.name for r in early.release}
    assert early.status.failed_shards == ""
    late = plan(b, observed, T0 + GRACE)  # decided without it: failed whole, the batch having ended
    assert late.status.failed_shards == "1"
    assert late.status.failed_items == "10-14"
    assert failing.name not in {r.name for r in late.release}
    gone = plan(dataclasses.replace(b, status=late.status), observed, T0 + GRACE)
    assert failing.name in {r.name for r in gone.release}
