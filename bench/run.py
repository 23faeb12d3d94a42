"""Benchmark: a JobBatch (A) against a native Indexed Job (B) on the same local control plane.

    python -m bench.run [--shards 1000,10000] [--parallelism 100,1000] [--durations 0,5]
                        [--runs 3] [--planes default,raised] [--out bench/results/latest]
    python -m bench.run --cluster pytest ...   # one already-running local cluster, as it is

For each control plane (controller-manager limits at Kubernetes' defaults, then raised)
and each case (N shards of one item, parallelism P, pods lasting D seconds), A and B run
alternately, ``--runs`` times each, in fresh namespaces; the report (JSON, Markdown, PNG
plots) goes to ``--out``. Method and latest results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import datetime
import logging
import os
import platform
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Literal, cast

from bench import measure, report
from bench.kubeapi import ApiError, LocalApi
from e2e import tools
from e2e.cluster import SIMULATED_PLACEMENT, LocalCluster, Settings, free_port
from e2e.operator_process import OperatorProcess
from jobbatch import api, manifests
from jobbatch.planner import chunk_size
from jobbatch.version import __version__

logger = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "crds"
System = Literal["A", "B"]

# Control planes compared: the controller-manager as Kubernetes ships it, and with its
# client limits and Job workers raised, so the report shows whose limits bind.
PLANES = {
    "default": Settings(name="bench-default", kcm_api_qps=20, kcm_api_burst=30, concurrent_job_syncs=5),
    "raised": Settings(name="bench-raised", kcm_api_qps=200, kcm_api_burst=400, concurrent_job_syncs=50),
    # The scheduler's limits raised too (it binds at most 50 pods/s at its defaults, which bounds A and
    # B alike on the raised plane at N=10,000): what is left to bound both is the machine.
    "uncapped": Settings(
        name="bench-uncapped", kcm_api_qps=200, kcm_api_burst=400, concurrent_job_syncs=50,
        scheduler_api_qps=500, scheduler_api_burst=1000,
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Case:
    shards: int
    parallelism: int
    duration: float  # seconds each simulated pod runs

    @property
    def slug(self) -> str:
        return f"n{self.shards}-p{self.parallelism}-d{self.duration:g}"

    def timeout(self) -> float:
        """Generous: the slowest plane (20 qps for pods) plus the pods' own running time."""
        waves = -(-self.shards // self.parallelism)
        return 300 + self.shards * 0.25 + waves * self.duration * 3


def pod_template(case: Case) -> dict[str, Any]:
    """The same simulated worker for A and B (kwok runs it, even beside a real node; see docs/testing.md)."""
    return {
        "metadata": {"annotations": {"sim.jobbatch.io/duration": f"{case.duration:g}s"}},
        "spec": {
            **SIMULATED_PLACEMENT,
            "restartPolicy": "Never",
            "containers": [{"name": "worker", "image": "example.invalid/worker:1"}],
        },
    }


BPods = Literal["native", "like-a"]


def batch_spec(case: Case) -> dict[str, Any]:
    """The JobBatch spec A runs."""
    return {
        "template": pod_template(case),
        "payloads": {"count": case.shards},
        "shardSize": 1,
        "parallelism": case.parallelism,
    }


def pod_template_like_a(case: Case) -> dict[str, Any]:
    """A's pod template in B's Job: the pod of A's first chunk Job, as the operator renders it.

    Everything the operator adds to a pod (the worker contract's environment, its labels, the
    termination message policy) with none of A's Jobs, operator or planning: running B with it
    measures what the pod's content alone costs the control plane.
    """
    spec = api.JobBatchSpec.model_validate(batch_spec(case))
    uid = "00000000-0000-4000-8000-000000000000"  # a UID's length; no object has it
    job = manifests.shard_job(
        name="bench", namespace="bench", uid=uid, spec=spec, item_count=case.shards,
        first_shard=0, count=case.shards, attempt=0, parallelism=case.parallelism,
    )  # fmt: skip
    template: dict[str, Any] = job["spec"]["template"]
    return template


def subject(system: System, case: Case, b_pods: BPods = "native") -> tuple[str, dict[str, Any]]:
    """(collection path suffix, manifest) of the object a run submits."""
    if system == "A":
        return "/apis/jobbatch.io/v1alpha1/namespaces/{ns}/jobbatches", {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": {"name": "bench"},
            "spec": batch_spec(case),
        }
    return "/apis/batch/v1/namespaces/{ns}/jobs", {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "bench"},
        "spec": {
            "completionMode": "Indexed",
            "completions": case.shards,
            "parallelism": case.parallelism,
            "backoffLimit": 0,
            "template": pod_template_like_a(case) if b_pods == "like-a" else pod_template(case),
        },
    }


class FinishedPodCollector:
    """B with A's bound on finished pods: the harness deletes B's succeeded pods during the run.

    A deletes a chunk Job once all its shards are recorded, and the garbage collector then deletes
    its pods one DELETE each, while the run goes on (at most two chunks' pods are held). B leaves all
    N to its teardown, after Complete, where its wall time does not count them. This does A's
    deleting for B, the same way: once a chunk's worth of succeeded pods (``planner.chunk_size(P)``)
    is held, all of them, one DELETE each, at most 20 at a time (the controller-manager's
    garbage-collector workers). What the run costs then is B's with A's bound.
    """

    WORKERS = 20

    def __init__(self, api: LocalApi, namespace: str, parallelism: int) -> None:
        self.api, self.namespace, self.batch = api, namespace, chunk_size(parallelism)
        self.held: list[str] = []
        self.deleted = 0
        self.errors: list[str] = []  # deletes refused (other than 404): reported with the run
        self._slots = asyncio.Semaphore(self.WORKERS)
        self._tasks: set[asyncio.Task[None]] = set()
        self._seen: set[str] = set()

    def on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        if kind == "DELETED" or name in self._seen or (pod.get("status") or {}).get("phase") != "Succeeded":
            return
        self._seen.add(name)
        self.held.append(name)
        if len(self.held) >= self.batch:
            for held in self.held:
                task = asyncio.create_task(self._delete(held))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self.held = []

    async def _delete(self, name: str) -> None:
        async with self._slots:
            try:
                await self.api.request("DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{name}")
                self.deleted += 1
            except ApiError as exc:
                if exc.status != 404:
                    self.errors.append(f"DELETE pod {name}: {exc}")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each process spent between two readings (those alive at both)."""
    return {k: round(after[k] - before[k], 2) for k in after if k in before}


def etcd_key(system: System, namespace: str) -> str:
    if system == "A":
        return f"/registry/{api.GROUP}/{api.PLURAL}/{namespace}/bench"
    return f"/registry/jobs/{namespace}/bench"


@dataclasses.dataclass
class Bench:
    cluster: LocalCluster
    api: LocalApi
    workdir: Path
    profile: bool = False  # sample the operator with py-spy (collapsed stacks in workdir)
    b_collect: bool = False  # delete B's succeeded pods during the run, as A's bound does (FinishedPodCollector)

    async def prepare(self) -> None:
        """The CRDs, served (idempotent: server-side apply)."""
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
        await self.api.wait_for(f"/apis/{api.GROUP}/{api.VERSION}/{api.PLURAL}", exists=True, timeout=60)

    async def _namespace(self, name: str) -> None:
        await self.api.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
        # Pods cannot be created before the controller-manager made the default ServiceAccount.
        await self.api.wait_for(f"/api/v1/namespaces/{name}/serviceaccounts/default", exists=True, timeout=60)

    def _cpu(self) -> dict[str, float]:
        out = {}
        for component, pid in self.cluster.pids().items():
            try:
                out[component] = measure.cpu_seconds(pid)
            except FileNotFoundError:
                continue
        out["harness"] = measure.cpu_seconds(os.getpid())
        return out

    async def run_once(self, system: System, case: Case, run: int, b_pods: BPods = "native") -> dict[str, Any]:
        """One measured run in a fresh namespace, torn down afterwards.

        ``b_pods``: B's pod template, the bench's own or A's as the operator renders it.
        """
        ns = f"bench-{system.lower()}-{case.slug.replace('.', '-')}-r{run}-{uuid.uuid4().hex[:4]}"
        result: dict[str, Any] = {"system": system, "run": run, "namespace": ns, **dataclasses.asdict(case)}
        await self._namespace(ns)
        operator = None
        if system == "A":
            operator = OperatorProcess(
                args=["--namespace", ns],
                env={**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)},
                log=self.workdir / f"operator-{ns}.log",
                metrics_port=free_port(),
            )
            await operator.start()
        profiler = None
        if operator is not None and self.profile:
            stacks = self.workdir / f"profile-{ns}.txt"
            profiler = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(operator.pid),
                "--format", "raw", "--rate", "200", "--output", str(stacks),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        timeline = measure.Timeline(total=case.shards)
        done = asyncio.Event()
        pods_ended = asyncio.Event()  # at least one pod end per shard seen
        loop = asyncio.get_running_loop()

        collector = FinishedPodCollector(self.api, ns, case.parallelism) if system == "B" and self.b_collect else None

        def on_pod(kind: str, obj: dict[str, Any]) -> None:
            timeline.on_pod(loop.time(), kind, obj)
            if collector is not None and timeline.completed is None:
                collector.on_pod(kind, obj)
            if timeline.pods_ended >= case.shards:
                pods_ended.set()

        def on_job(kind: str, obj: dict[str, Any]) -> None:
            timeline.on_job(loop.time(), kind, obj)

        def on_subject(kind: str, obj: dict[str, Any]) -> None:
            if obj["metadata"]["name"] != "bench":
                return  # A's chunk and retry Jobs are seen through their pods
            timeline.on_subject(loop.time(), obj)
            if timeline.completed is not None:
                done.set()

        # A and B are watched alike: their worker pods, and the one object under test.
        collection, manifest = subject(system, case, b_pods)
        if system == "B":
            result["b_pods"] = b_pods
            result["b_collect"] = self.b_collect
        ready = [asyncio.Event() for _ in range(3 if system == "A" else 2)]
        requests_after: collections.Counter[str] | None = None
        cpu_after: dict[str, float] | None = None
        watches = [
            asyncio.create_task(self.api.watch(f"/api/v1/namespaces/{ns}/pods", on_pod, ready[0])),
            asyncio.create_task(self.api.watch(collection.format(ns=ns), on_subject, ready[1])),
        ]
        if system == "A":  # its chunk and retry Jobs: when each hand-over's steps happened
            watches.append(
                asyncio.create_task(self.api.watch(f"/apis/batch/v1/namespaces/{ns}/jobs", on_job, ready[2]))
            )
        try:
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), timeout=60)
            requests_before = measure.request_totals(await self.api.metrics_text())
            cpu_before = self._cpu()
            op_cpu_before = measure.cpu_seconds(operator.pid) if operator else 0.0
            timeline.t0 = loop.time()
            await self.api.request("POST", collection.format(ns=ns), manifest)
            try:
                await asyncio.wait_for(done.wait(), timeout=case.timeout())
            except TimeoutError:
                result["error"] = f"not finished after {case.timeout():.0f}s; {timeline.pods_seen} pods seen"
            requests_after = measure.request_totals(await self.api.metrics_text())
            cpu_after = self._cpu()
            op_cpu_after = measure.cpu_seconds(operator.pid) if operator else 0.0
            if timeline.outcome == "Complete":
                # Complete is seen on another watch than the pods: let the pod watch catch up with
                # it (a complete run has had one pod end per shard at least; B keeps all N) before
                # reading the pod figures, rather than read them while it lags by a few events.
                try:
                    await asyncio.wait_for(pods_ended.wait(), timeout=30)
                except TimeoutError:
                    logger.warning("pod watch saw %d of %d pods end", timeline.pods_ended, case.shards)
            result["wall_seconds"] = timeline.completed
            result["outcome"] = timeline.outcome
            result["first_pod_seconds"] = timeline.first_pod
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                await profiler.wait()
            if operator is not None:
                result["operator_cpu_seconds"] = op_cpu_after - op_cpu_before
                result["operator_peak_rss_bytes"] = measure.peak_rss_bytes(operator.pid)
                result["operator_metrics"] = await self._operator_metrics(operator.metrics_port)
            result["object_bytes_in_etcd"] = await self.api.etcd_value_size(etcd_key(system, ns))
            result["cpu_seconds"] = _cpu_spent(cpu_before, cpu_after)
            result["writes"] = measure.writes_between(requests_before, requests_after)
            result["reads"] = measure.reads_between(requests_before, requests_after)
            result["pod_slot_latency"] = timeline.slot_summary()
            result["finished_pods_held_peak"] = timeline.held_peak
            result["series"] = timeline.series
            if collector is not None:
                result["b_collected_pods"] = collector.deleted
                if collector.errors:
                    failed = f"{len(collector.errors)} pod deletes failed, e.g. {collector.errors[0]}"
                    result["error"] = f"{result['error']}; {failed}" if "error" in result else failed
        finally:
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)
            if collector is not None:
                await collector.stop()
            # Tear down while the operator runs: it releases its finalizers as the batch goes. The
            # object under test goes first, as a user (or a TTL) would delete it: the garbage collector
            # then deletes what it owns one by one, for A and B alike, rather than the namespace
            # controller's one delete-collection request taking whatever pods are left (a race with
            # the garbage collector; which one wins changed B's teardown writes by one per shard).
            # Teardown writes count from the reading at Complete: with the run's, they are all writes.
            if requests_after is None:
                requests_after = measure.request_totals(await self.api.metrics_text())
            started = time.monotonic()
            try:
                await self.api.request("DELETE", f"{collection.format(ns=ns)}/bench", propagationPolicy="Background")
            except ApiError as exc:
                if exc.status != 404:  # never created: the run failed before its POST
                    raise
            await self.api.wait_until_empty(f"/api/v1/namespaces/{ns}/pods", timeout=case.timeout())
            await self.api.request("DELETE", f"/api/v1/namespaces/{ns}")
            await self.api.wait_for(f"/api/v1/namespaces/{ns}", exists=False, timeout=case.timeout())
            result["teardown_seconds"] = round(time.monotonic() - started, 2)
            if cpu_after is not None:  # what the teardown costs the cluster (B's pods all go here)
                cpu_end = self._cpu()
                result["teardown_cpu_seconds"] = _cpu_spent(cpu_after, cpu_end)
                result["teardown_cpu_seconds"].pop("harness", None)  # the harness is not the cluster
                if operator is not None:  # it releases its finalizers as the batch goes
                    result["teardown_cpu_seconds"]["operator"] = round(
                        measure.cpu_seconds(operator.pid) - op_cpu_after, 2
                    )
            after_teardown = measure.request_totals(await self.api.metrics_text())
            result["teardown_writes"] = measure.writes_between(requests_after, after_teardown)
            if operator is not None:
                await operator.stop()
        return result

    async def _operator_metrics(self, port: int) -> dict[str, float]:
        async with self.api.session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
        wanted = (
            "jobbatch_status_writes_total",
            "jobbatch_reconcile_duration_seconds_count",
            "jobbatch_reconcile_duration_seconds_sum",
        )
        out: dict[str, float] = {}
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in wanted:
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return out


def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def plane_of(settings: Settings) -> str:
    """The plane a running cluster is (``--cluster``): a bench plane's name when it is one in all but its
    name, so that its figures count towards that plane's targets; else the cluster's own name."""
    for plane, known in PLANES.items():
        if dataclasses.replace(known, name=settings.name) == settings:
            return plane
    return settings.name


def run_order(systems: tuple[System, ...], b_pods: tuple[BPods, ...], run: int) -> list[tuple[System, BPods]]:
    """What runs in run ``run`` of a case, in order: odd runs as given, even runs reversed.

    B runs once per pod template asked for: with both, B with A's pod alternates with A and B in one
    invocation, so that the pod's share of the gap is measured, not pieced together across invocations.
    """
    subjects = [(s, pods) for s in systems for pods in (b_pods if s == "B" else ("native",))]
    return subjects if run % 2 else subjects[::-1]


async def bench_plane(
    cluster: LocalCluster,
    plane: str,
    cases: list[Case],
    runs: int,
    workdir: Path,
    warmup: bool,
    profile: bool,
    systems: tuple[System, ...] = ("A", "B"),
    b_pods: tuple[BPods, ...] = ("native",),
    b_collect: bool = False,
) -> list[dict[str, Any]]:
    results = []
    async with LocalApi(cluster) as local:
        bench = Bench(cluster, local, workdir, profile, b_collect)
        await bench.prepare()
        if warmup:  # first-use costs (caches, connections, imports) stay out of the figures
            for system, pods in run_order(systems, b_pods, 1):
                await bench.run_once(system, Case(50, 10, 0), 0, pods)
        for case in cases:
            for run in range(1, runs + 1):
                for system, pods in run_order(systems, b_pods, run):
                    label = f"{system} with A's pod" if pods == "like-a" else system
                    logger.info("%s %s run %d/%d: %s", plane, case.slug, run, runs, label)
                    result = await bench.run_once(system, case, run, pods)
                    result["plane"] = plane
                    logger.info(
                        "  wall %s s, first pod %s s%s",
                        result.get("wall_seconds"),
                        result.get("first_pod_seconds"),
                        f", ERROR {result['error']}" if "error" in result else "",
                    )
                    results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=_ints, default=[1000, 10000], help="N values, comma-separated")
    parser.add_argument("--parallelism", type=_ints, default=[100, 1000], help="P values")
    parser.add_argument("--durations", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 5.0])
    parser.add_argument("--runs", type=int, default=3, help="runs of A and of B per case")
    parser.add_argument("--planes", default="default,raised", help=f"of {', '.join(PLANES)}")
    parser.add_argument("--cluster", help="use this running local cluster as the only plane (left running)")
    parser.add_argument("--keep", action="store_true", help="leave the planes the harness started running")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--profile", action="store_true", help="py-spy the operator (stacks in OUT/logs)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest")
    parser.add_argument(
        "--systems", default="A,B", choices=["A,B", "A", "B"],
        help="run only A or only B (e.g. A alone at N=100,000, for its memory and objects); A/B figures then read n/a",
    )  # fmt: skip
    parser.add_argument(
        "--b-pods", default="native", choices=["native", "like-a", "native,like-a"],
        help="B's pod template: the bench's own, or A's pod as the operator renders it (what the pod's content "
        "costs); both: B runs twice per run, alternating with A",
    )  # fmt: skip
    parser.add_argument(
        "--b-collect", action="store_true",
        help="delete B's succeeded pods during the run, a chunk's worth at a time, as A's bound on finished pods does",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cases = [Case(n, p, d) for n in args.shards for p in args.parallelism for d in args.durations]
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.out / "logs"
    workdir.mkdir(exist_ok=True)
    planes: list[tuple[str, LocalCluster, bool]] = []
    if args.cluster:
        cluster = LocalCluster(Settings(name=args.cluster))
        recorded = cluster.recorded_settings()
        if not cluster.is_up() or recorded is None:
            parser.error(f"local cluster {args.cluster!r} is not running")
        planes.append((plane_of(recorded), LocalCluster(recorded), False))
    else:
        for plane in args.planes.split(","):
            cluster = LocalCluster(PLANES[plane])
            reused = cluster.is_up() and cluster.recorded_settings() == cluster.settings
            planes.append((plane, cluster, not (args.keep or reused)))  # stop only what this run started
    started = datetime.datetime.now(datetime.UTC)
    results: list[dict[str, Any]] = []
    plane_info = []
    for plane, cluster, stop in planes:
        logger.info("control plane %s (%s): starting or reusing", plane, cluster.settings.name)
        cluster.up()
        try:
            systems = cast(tuple[System, ...], tuple(args.systems.split(",")))
            results += asyncio.run(
                bench_plane(
                    cluster,
                    plane,
                    cases,
                    args.runs,
                    workdir,
                    args.warmup,
                    args.profile,
                    systems,
                    cast(tuple[BPods, ...], tuple(args.b_pods.split(","))),
                    args.b_collect,
                )
            )
        finally:
            if stop:
                cluster.down()
        plane_info.append(
            {"name": plane, "cluster": cluster.settings.name, "settings": dataclasses.asdict(cluster.settings)}
        )
    data = {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "versions": {"jobbatch": __version__, **{t.key: t.version for t in tools.TOOLS}},
        "runs": args.runs,
        "planes": plane_info,
        "results": results,
    }
    report.write(data, args.out)
    print(f"report: {args.out / 'report.md'}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
