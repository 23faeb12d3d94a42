"""The chaos tier (``make chaos``): faults while batches run, and what they cost.

Each scenario runs one JobBatch on a local control plane of its own while a fault is injected, with a
pod watch recording every worker pod (its shard, attempt and exit code). When the batch has finished
it reports, against the *truth* those pods give:
- shards lost: shards with no outcome, or recorded with an outcome no pod of theirs had;
- (shard, attempt) pairs run twice: more than one pod for one attempt of one shard;
- whether ``status.succeededShards``/``failedShards`` equal the truth.

Scenarios: ``kill`` (the operator SIGKILLed at random instants and restarted), ``handover`` (two
replicas with leader election; the leader killed, and the new one killed while it takes over),
``apiserver`` (kube-apiserver restarted mid-batch), ``etcd`` (etcd frozen for 10 s), ``pods`` (running
worker pods deleted by hand). Every batch injects failures: a tenth of its shards fail their first
two attempts and succeed on the third.

    python -m e2e.chaos [--scenarios kill,handover,...] [--kills 50] [--shards 2000] [--out docs/reliability]

writes ``report.json`` and the table of docs/reliability.md (``table.md``) to ``--out``. "Extra
attempts" counts attempts beyond those the injected failures need: what the fault cost in retries.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import platform
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config, watch

from e2e.cluster import SIMULATED_PLACEMENT, LocalCluster, Settings
from e2e.operator_process import OperatorProcess
from jobbatch import api
from jobbatch.ranges import IndexRanges

logger = logging.getLogger("chaos")

NAMESPACE = "chaos"
BATCH = "chaos"
RETRY_LIMIT = 6  # the injected failures take two; a worker pod deleted by hand takes one more
FAILING_ATTEMPTS = (0, 1)  # a tenth of the shards fail these attempts (exit code 7), then succeed
SCENARIOS = ("kill", "handover", "apiserver", "etcd", "pods")


# -- the truth, from the pods ---------------------------------------------------------------------------
@dataclasses.dataclass
class PodRecord:
    shard: int
    attempt: int
    exit_code: int | None = None  # None while it runs (or if it vanished before the watch saw it end)


@dataclasses.dataclass
class Truth:
    succeeded: IndexRanges
    failed: IndexRanges
    run_twice: list[tuple[int, int]]
    attempts: dict[int, list[int]]


def truth(pods: dict[str, PodRecord], total: int, retry_limit: int) -> Truth:
    """What the pods that ran say about each shard: succeeded (one attempt exited 0), failed (every
    attempt up to the retry limit exited non-zero), or neither. Pure, so it is unit-tested."""
    runs: dict[tuple[int, int], int] = {}
    codes: dict[tuple[int, int], list[int | None]] = {}
    for pod in pods.values():
        key = (pod.shard, pod.attempt)
        runs[key] = runs.get(key, 0) + 1
        codes.setdefault(key, []).append(pod.exit_code)
    attempts: dict[int, list[int]] = {}
    for shard, attempt in sorted(runs):
        attempts.setdefault(shard, []).append(attempt)
    succeeded, failed = [], []
    for shard in range(total):
        tried = attempts.get(shard, [])
        if any(0 in codes[(shard, a)] for a in tried):
            succeeded.append(shard)
        elif (
            tried
            and max(tried) >= retry_limit
            and all(all(c not in (None, 0) for c in codes[(shard, a)]) for a in tried)
        ):
            failed.append(shard)
    run_twice = sorted(key for key, n in runs.items() if n > 1)
    return Truth(IndexRanges.of(succeeded), IndexRanges.of(failed), run_twice, attempts)


def extra_attempts(attempts: dict[int, list[int]], failing: set[int]) -> int:
    """Attempts beyond the injected failures' own (a shard in ``failing`` needs three, any other one)."""
    planned = len(FAILING_ATTEMPTS) + 1
    return sum(max(0, len(tried) - (planned if shard in failing else 1)) for shard, tried in attempts.items())


def judge(status: dict[str, Any], seen: Truth, total: int) -> dict[str, Any]:
    """The figures of one scenario: the batch's recorded outcome against the pods' truth."""
    recorded_ok = IndexRanges.parse(status.get("succeededShards") or "")
    recorded_bad = IndexRanges.parse(status.get("failedShards") or "")
    outcome = seen.succeeded.union(seen.failed)
    no_outcome = total - len(outcome)
    wrong = len(recorded_ok.difference(seen.succeeded)) + len(recorded_bad.difference(seen.failed))
    return {
        "shards": total,
        "shards_lost": no_outcome + wrong,
        "pairs_run_twice": len(seen.run_twice),
        "run_twice_examples": seen.run_twice[:5],
        "status_equals_truth": recorded_ok == seen.succeeded and recorded_bad == seen.failed,
        "recorded_not_seen": str(recorded_ok.difference(seen.succeeded).union(recorded_bad.difference(seen.failed))),
        "seen_not_recorded": str(seen.succeeded.difference(recorded_ok).union(seen.failed.difference(recorded_bad))),
        "phase": status.get("phase"),
        "attempts_beyond_plan": 0,  # filled in by the caller, who knows the injected failures
    }


# -- watching pods ----------------------------------------------------------------------------------------
class PodLedger:
    """Every worker pod of a namespace, by UID, from a list+watch that lists again after any break."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.pods: dict[str, PodRecord] = {}
        self.relists = 0
        self._task: asyncio.Task[None] | None = None

    def _see(self, pod: Any) -> None:
        labels = pod.metadata.labels or {}
        if api.LABEL_FIRST_SHARD not in labels or api.LABEL_COMPLETION_INDEX not in labels:
            return
        shard = int(labels[api.LABEL_FIRST_SHARD]) + int(labels[api.LABEL_COMPLETION_INDEX])
        record = self.pods.setdefault(pod.metadata.uid, PodRecord(shard, int(labels[api.LABEL_ATTEMPT])))
        if pod.status and pod.status.phase == "Succeeded":
            record.exit_code = 0
        elif pod.status and pod.status.phase == "Failed":
            for status in pod.status.container_statuses or []:
                terminated = status.state.terminated if status.state else None
                if terminated is not None and terminated.exit_code:
                    record.exit_code = int(terminated.exit_code)
                    break
            else:
                record.exit_code = record.exit_code or -1

    async def _run(self) -> None:
        while True:
            try:
                listed = await self.core.list_namespaced_pod(self.namespace)
                for pod in listed.items:
                    self._see(pod)
                version = listed.metadata.resource_version
                async with watch.Watch() as w:
                    async for event in w.stream(
                        self.core.list_namespaced_pod, self.namespace, resource_version=version, timeout_seconds=60
                    ):
                        self._see(event["object"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 -- an API server restart, a 410: list again
                logger.info("pod watch broke (%s: %s); listing again", type(exc).__name__, str(exc)[:100])
                self.relists += 1
                await asyncio.sleep(0.5)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# -- one scenario ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Scenario:
    name: str
    shards: int
    parallelism: int
    kills: int = 50
    duration: str = "1s"  # how long each worker pod runs


def batch_spec(shards: int, parallelism: int, seed: int, duration: str = "1s") -> tuple[dict[str, Any], set[int]]:
    failing = set(random.Random(seed).sample(range(shards), shards // 10))
    annotations = {
        "sim.jobbatch.io/duration": duration,
        "sim.jobbatch.io/exit-code": "7",
        "sim.jobbatch.io/fail-shards": ",".join(map(str, sorted(failing))),
        "sim.jobbatch.io/fail-attempts": ",".join(map(str, FAILING_ATTEMPTS)),
    }
    spec = {
        "template": {
            "metadata": {"annotations": annotations},
            "spec": {**SIMULATED_PLACEMENT, "containers": [{"name": "worker", "image": "example.invalid/worker:1"}]},
        },
        "payloads": {"count": shards},
        "parallelism": parallelism,
        "retry": {"limit": RETRY_LIMIT, "backoff": {"initialSeconds": 1, "multiplier": 2, "maxSeconds": 5}},
    }
    return spec, failing


class Run:
    """One scenario's cluster, operator processes, pod ledger and batch."""

    def __init__(self, scenario: Scenario, workdir: Path, seed: int) -> None:
        self.scenario, self.workdir, self.rng = scenario, workdir, random.Random(seed)
        self.seed = seed
        self.cluster = LocalCluster(
            Settings(name=f"chaos-{scenario.name}", kcm_api_qps=200, kcm_api_burst=400, concurrent_job_syncs=50)
        )
        self.operators: list[OperatorProcess] = []
        self.faults: list[str] = []

    async def operator(self, *flags: str) -> OperatorProcess:
        proc = OperatorProcess(
            args=["--namespace", NAMESPACE, *flags],
            env=self.cluster.env(),
            log=self.workdir / f"{self.scenario.name}-operator-{len(self.operators)}.log",
        )
        self.operators.append(proc)
        await proc.start()
        return proc

    async def status(self, custom: client.CustomObjectsApi) -> dict[str, Any]:
        body = await custom.get_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, BATCH)
        return dict(body.get("status") or {})

    async def finished(self, custom: client.CustomObjectsApi) -> bool:
        try:
            return (await self.status(custom)).get("phase") in ("Succeeded", "Failed")
        except Exception:  # noqa: BLE001 -- the API server may be down mid-fault
            return False

    async def execute(self, fault: Callable[[Run, client.ApiClient], Awaitable[None]]) -> dict[str, Any]:
        await asyncio.to_thread(self.cluster.up)
        try:
            return await self._execute(fault)
        finally:
            for proc in self.operators:
                await proc.stop()
            await asyncio.to_thread(self.cluster.down)

    async def _execute(self, fault: Callable[[Run, client.ApiClient], Awaitable[None]]) -> dict[str, Any]:
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(self.cluster.kubeconfig), client_configuration=configuration)
        async with client.ApiClient(configuration) as api_client:
            core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
            self.cluster.kubectl("apply", "-f", str(Path(__file__).parents[1] / "crds"))
            self.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/jobbatches.jobbatch.io")
            await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
            ledger = PodLedger(api_client, NAMESPACE)
            ledger.start()
            spec, _ = batch_spec(self.scenario.shards, self.scenario.parallelism, self.seed, self.scenario.duration)
            body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": BATCH}, "spec": spec}
            started = time.monotonic()
            await custom.create_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.PLURAL, body)
            await fault(self, api_client)
            deadline = time.monotonic() + 900
            while not await self.finished(custom):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.scenario.name}: the batch did not finish in 15 minutes")
                await asyncio.sleep(0.5)
            wall = time.monotonic() - started
            status = await self.status(custom)
            # Let the watch catch up with the last pods' ends before judging.
            await asyncio.sleep(3)
            await ledger.stop()
            seen = truth(ledger.pods, self.scenario.shards, RETRY_LIMIT)
            result = judge(status, seen, self.scenario.shards)
            _, failing = batch_spec(self.scenario.shards, self.scenario.parallelism, self.seed, self.scenario.duration)
            result["attempts_beyond_plan"] = extra_attempts(seen.attempts, failing)
            result.update(
                scenario=self.scenario.name, wall_seconds=round(wall, 1), faults=self.faults,
                pods=len(ledger.pods), watch_relists=ledger.relists,
            )  # fmt: skip
            return result


# -- the faults ------------------------------------------------------------------------------------------
async def poll(probe: Callable[[], Awaitable[str | None]], *, what: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        found = await probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def kill_operator(run: Run, api_client: client.ApiClient) -> None:
    """SIGKILL the operator at random instants (0.3 to 3 s after it is live), restarting it each time."""
    custom = client.CustomObjectsApi(api_client)
    proc = await run.operator()
    for _ in range(run.scenario.kills):
        await asyncio.sleep(run.rng.uniform(0.3, 3.0))
        if await run.finished(custom):
            break
        await proc.kill()
        run.faults.append(f"SIGKILL at +{time.monotonic():.1f}")
        proc = await run.operator()
    run.faults = [f"{len(run.faults)} SIGKILLs"]


async def hand_over(run: Run, api_client: client.ApiClient) -> None:
    """Two replicas; the leader is killed, and then its successor while it takes over, five times."""
    flags = ("--leader-elect", "--leader-election-namespace", NAMESPACE, "--lease-duration", "4")
    replicas = [await run.operator(*flags), await run.operator(*flags)]
    custom, coordination = client.CustomObjectsApi(api_client), client.CoordinationV1Api(api_client)

    async def holder() -> str | None:
        try:
            lease = await coordination.read_namespaced_lease("jobbatch-operator", NAMESPACE)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return str(lease.spec.holder_identity or "") or None

    def holding(identity: str) -> OperatorProcess | None:
        return next((r for r in replicas if r.proc is not None and f"-{r.pid}-" in identity), None)

    kills = 0
    for _ in range(5):
        if await run.finished(custom):
            break
        await asyncio.sleep(run.rng.uniform(1.0, 3.0))

        async def live_holder() -> str | None:  # a killed leader holds the Lease until it expires
            identity = await holder()
            return identity if identity and holding(identity) is not None else None

        current = await poll(live_holder, what="a live replica holding the Lease")
        leader = holding(current)
        assert leader is not None, current
        await leader.kill()
        kills += 1
        replicas = [r for r in replicas if r is not leader] + [await run.operator(*flags)]

        async def successor_identity(current: str = current) -> str | None:
            identity = await holder()
            return identity if identity and identity != current else None

        # The standby takes the Lease once it expires; kill it within a second of doing so.
        new = await poll(successor_identity, what="the standby taking the Lease")
        await asyncio.sleep(run.rng.uniform(0.0, 1.0))
        successor = holding(new)
        assert successor is not None, new
        await successor.kill()
        kills += 1
        replicas = [r for r in replicas if r is not successor] + [await run.operator(*flags)]
    run.faults = [f"{kills} leaders killed, half of them while taking over"]


async def restart_apiserver(run: Run, api_client: client.ApiClient) -> None:
    await run.operator()
    for _ in range(2):
        await asyncio.sleep(run.rng.uniform(3.0, 6.0))
        await asyncio.to_thread(run.cluster.restart, "kube-apiserver")
    run.faults = ["kube-apiserver restarted twice mid-batch"]


async def freeze_etcd(run: Run, api_client: client.ApiClient) -> None:
    await run.operator()
    await asyncio.sleep(run.rng.uniform(3.0, 6.0))
    run.cluster.pause("etcd")
    await asyncio.sleep(10)
    run.cluster.resume("etcd")
    run.faults = ["etcd frozen (SIGSTOP) for 10 s mid-batch"]


async def delete_pods(run: Run, api_client: client.ApiClient) -> None:
    await run.operator()
    core = client.CoreV1Api(api_client)
    deleted = 0
    for _ in range(20):
        await asyncio.sleep(run.rng.uniform(0.5, 1.5))
        pods = await core.list_namespaced_pod(NAMESPACE, field_selector="status.phase=Running")
        if not pods.items:
            continue
        for pod in run.rng.sample(pods.items, min(3, len(pods.items))):
            try:
                await core.delete_namespaced_pod(pod.metadata.name, NAMESPACE)
                deleted += 1
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
    run.faults = [f"{deleted} running worker pods deleted by hand"]


FAULTS: dict[str, Callable[[Run, client.ApiClient], Awaitable[None]]] = {
    "kill": kill_operator,
    "handover": hand_over,
    "apiserver": restart_apiserver,
    "etcd": freeze_etcd,
    "pods": delete_pods,
}


# -- the report -------------------------------------------------------------------------------------------
def render(results: list[dict[str, Any]], machine: str) -> str:
    lines = [
        "| scenario | faults | shards | wall (s) | shards lost | (shard, attempt) run twice | status = truth | "
        "extra attempts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['scenario']} | {'; '.join(r['faults'])} | {r['shards']} | {r['wall_seconds']} | "
            f"{r['shards_lost']} | {r['pairs_run_twice']} | {'yes' if r['status_equals_truth'] else 'NO'} | "
            f"{r['attempts_beyond_plan']} |"
        )
    return f"Machine: {machine}.\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--shards", type=int, default=2000, help="shards of the kill scenario's batch")
    parser.add_argument("--other-shards", type=int, default=500, help="shards of the other scenarios' batches")
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("docs/reliability"))
    parser.add_argument("--logs", type=Path, default=Path("/tmp/jobbatch-chaos"), help="operator logs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    args.logs.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.scenarios.split(","):
        shards = args.shards if name == "kill" else args.other_shards
        # The kill scenario's pods run 8 s, so the batch outlasts 50 kills and restarts.
        scenario = Scenario(
            name, shards=shards, parallelism=100 if name == "kill" else 50, kills=args.kills,
            duration="8s" if name == "kill" else "1s",
        )  # fmt: skip
        logger.info("scenario %s: %d shards", name, shards)
        result = asyncio.run(Run(scenario, args.logs, args.seed).execute(FAULTS[name]))
        logger.info("%s: %s", name, json.dumps(result))
        results.append(result)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    (args.out / "report.json").write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    (args.out / "table.md").write_text(render(results, machine))
    print(render(results, machine))
    bad = [r for r in results if r["shards_lost"] or r["pairs_run_twice"] or not r["status_equals_truth"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
