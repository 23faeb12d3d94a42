"""The import pipeline end to end: records in object storage, real workers, PostgreSQL, and chaos.

What examples/06-import describes, run for real on this machine: a local cluster with a real node,
an S3 server (versitygw) holding a CSV of user records, a PostgreSQL server, the operator as a
process, and the example's JobBatch; while it runs, the operator is SIGKILLed and restarted (three
times by default) and running worker pods are deleted (three). It passes when the batch is Complete
and the table holds every record exactly once.

    python -m e2e.pipeline [--records 100000] [--shard-size 1000] [--parallelism 8] [--kills 3] [--deletions 3]

(``make e2e``.) Prints a JSON report: wall time, records per second, the chaos done, the rows.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from e2e import images, objectstore, postgres, tools
from e2e.cluster import LocalCluster, Settings, wait_until
from e2e.operator_process import OperatorProcess
from jobbatch.ranges import IndexRanges

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "06-import"
CRDS = ROOT / "crds"
BATCH = "import-users"
TIMEOUT = 900.0


@dataclasses.dataclass
class Report:
    records: int
    shards: int
    parallelism: int
    seconds: float  # from the JobBatch's creation to Complete
    rows: int
    content_matches: bool  # the table holds exactly the file's records (ids, names, emails)
    preloaded: int  # rows already in the table before the batch ran (a shard "committed before it died")
    operator_kills: int
    pods_deleted: list[str]  # deleted mid-shard, and their attempts were seen retried
    pods_deleted_late: list[str]  # deleted as their worker finished: the shard succeeded, another pod was deleted
    retries: int  # shard attempts after the first that got a pod (seen by polling the pods)
    cores: int
    wanted_kills: int
    wanted_deletions: int

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    def ok(self) -> bool:
        """Every record once, and every fault the run promised was done (and retried)."""
        chaos = self.operator_kills == self.wanted_kills and len(self.pods_deleted) == self.wanted_deletions
        return self.rows == self.records and self.content_matches and chaos and self.retries >= self.wanted_deletions


def users_csv(count: int) -> bytes:
    """The example's input, made by its own script (examples/06-import/make_users.py)."""
    script = EXAMPLE / "make_users.py"
    return subprocess.run([sys.executable, str(script), str(count)], capture_output=True, check=True).stdout


def table_digest(data: bytes) -> str:
    """What PostgreSQL's ``md5(string_agg(id || ',' || name || ',' || email, E'\\n' ORDER BY id))`` gives
    for a table holding exactly the records of ``data``."""
    rows = sorted((int(r["id"]), r["name"], r["email"]) for r in csv.DictReader(io.StringIO(data.decode())))
    return hashlib.md5(
        "\n".join(f"{i},{n},{e}" for i, n, e in rows).encode()
    ).hexdigest()  # a digest to compare, not security


def manifest(endpoint: str, shard_size: int, parallelism: int, work_ms: float) -> dict[str, Any]:
    """examples/06-import/jobbatch.yaml with its endpoint filled in (as envsubst does in the README)."""
    text = (EXAMPLE / "jobbatch.yaml").read_text().replace("${S3_ENDPOINT}", endpoint)
    body: dict[str, Any] = yaml.safe_load(text)
    body["spec"]["shardSize"] = shard_size
    body["spec"]["parallelism"] = parallelism
    (container,) = body["spec"]["template"]["spec"]["containers"]
    container["env"].append({"name": "WORK_MS_PER_RECORD", "value": str(work_ms)})
    return body


def secret(name: str, data: dict[str, str]) -> str:
    encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    return json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded})


def fault_points(shards: int, deletions: int, kills: int) -> tuple[list[int], list[int]]:
    """Shards done at which to delete a running worker pod (spread over the first half of the run) and
    to SIGKILL the operator (over the second half): deletions first, while pods are plenty."""
    half = shards // 2
    delete_at = [max(1, half * (i + 1) // (deletions + 1)) for i in range(deletions)]
    kill_at = [half + (shards - half) * (i + 1) // (kills + 1) for i in range(kills)]
    return delete_at, kill_at


WorkerPod = tuple[tuple[int, int], str, str | None]  # ((shard, attempt), name, when it started if running)


@dataclasses.dataclass
class PodDeletions:
    """Worker pods deleted mid-shard, each counted once its attempt is seen retried.

    A pod the API server shows running may have finished its work already: the kubelet reports a
    second or so late, and the poll between takes time. Its SIGTERM then finds nothing to stop, the
    shard succeeds and nothing is retried; such a deletion is set aside and another pod deleted, so
    the run does the chaos it promised instead of failing on a timing it cannot control.
    """

    due: list[int]  # shards done at which to delete the next pod
    confirmed: list[str] = dataclasses.field(default_factory=list)
    late: list[str] = dataclasses.field(default_factory=list)
    pending: tuple[str, tuple[int, int]] | None = None  # (pod, (shard, attempt)) whose outcome is unknown

    def want(self, done: int) -> bool:
        """One deletion at a time, once its point in the run is reached."""
        return self.pending is None and bool(self.due) and done >= self.due[0]

    def deleted(self, name: str, key: tuple[int, int]) -> None:
        self.due.pop(0)
        self.pending = (name, key)

    def observe(self, pods: list[WorkerPod], succeeded: IndexRanges) -> None:
        """Settle the pending deletion: its shard retried (counted), or succeeded without (deleted too late)."""
        if self.pending is None:
            return
        name, (shard, attempt) = self.pending
        if any(key[0] == shard and key[1] > attempt for key, _, _ in pods):
            self.confirmed.append(name)
            self.pending = None
        elif shard in succeeded:
            self.late.append(name)
            self.due.insert(0, 0)  # delete another now
            self.pending = None


async def run(
    kubeconfig: Path,
    namespace: str,
    workdir: Path,
    *,
    records: int,
    shard_size: int,
    parallelism: int,
    kills: int,
    deletions: int,
    work_ms: float = 2.0,
) -> Report:
    """Run the pipeline in ``namespace`` of a cluster that has a real node; the caller owns the cluster."""

    def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
        command = [str(tools.bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}", "--request-timeout=30s",
                   "-n", namespace, *args]  # fmt: skip
        done = subprocess.run(command, input=input, capture_output=True, text=True, check=check, timeout=60)
        return done.stdout

    data = users_csv(records)
    shards = -(-records // shard_size)
    with (
        objectstore.serving(workdir / "s3", workdir / "versitygw.log") as endpoint,
        postgres.serving(workdir / "postgres.log") as db,
    ):
        objectstore.create_bucket(endpoint, "imports")
        objectstore.put_object(endpoint, "imports", "users.csv", data)
        db.psql((EXAMPLE / "schema.sql").read_text() + f"ALTER TABLE users OWNER TO {postgres.USER};")
        # Shard 0's rows are there already, as if an attempt had committed them and died before it
        # exited: its run must add nothing and fail nothing (ON CONFLICT DO NOTHING is what this proves).
        preload = list(csv.DictReader(io.StringIO(data.decode())))[:shard_size]
        values = ",".join(f"({int(r['id'])}, $${r['name']}$$, $${r['email']}$$)" for r in preload)
        db.psql(f"INSERT INTO users (id, name, email) VALUES {values}")
        kubectl("apply", "-f", "-", input=secret("import-db", {"url": db.dsn}))
        keys = {"AWS_ACCESS_KEY_ID": objectstore.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": objectstore.SECRET_KEY}
        kubectl("apply", "-f", "-", input=secret("import-s3", keys))

        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        started_operators: list[OperatorProcess] = []

        async def operator() -> OperatorProcess:
            proc = OperatorProcess(args=["--namespace", namespace], env=env, log=workdir / "operator.log")
            started_operators.append(proc)
            await proc.start()
            return proc

        killed = 0
        delete_at, kill_at = fault_points(shards, deletions, kills)
        chaos = PodDeletions(delete_at)
        retried: set[tuple[int, int]] = set()  # (shard, attempt >= 1) seen with a pod
        try:
            current = await operator()
            live_since = time.monotonic()
            kubectl("apply", "-f", "-", input=json.dumps(manifest(endpoint, shard_size, parallelism, work_ms)))
            started = time.monotonic()
            while True:
                if time.monotonic() - started > TIMEOUT:
                    raise TimeoutError(f"{BATCH} not Complete after {TIMEOUT:.0f}s (logs in {workdir})")
                status = json.loads(kubectl("get", "jobbatch", BATCH, "-o", "json")).get("status") or {}
                done = (status.get("shards") or {}).get("succeeded", 0)
                conditions = {c["type"]: c for c in status.get("conditions") or []}
                if conditions.get("Complete", {}).get("status") == "True":
                    break
                if conditions.get("Failed", {}).get("status") == "True" or (
                    conditions.get("Accepted", {}).get("status") == "False"
                ):
                    raise RuntimeError(f"{BATCH} did not run: {json.dumps(status)[:2000]}")
                pods = _worker_pods(kubectl)
                retried |= {key for key, _, _ in pods if key[1] >= 1}
                chaos.observe(pods, IndexRanges.parse(status.get("succeededShards")))
                target = _newest_running(pods) if chaos.want(done) else None
                # SIGTERM mid-shard, as an eviction or a drained node would send; counted once its
                # attempt is seen retried.
                if target is not None:
                    key, pod = target
                    if "deleted" in kubectl("delete", "pod", pod, "--wait=false", "--ignore-not-found"):
                        chaos.deleted(pod, key)
                # A kill only once the last operator has run a while: faults spread, not piled up.
                if kill_at and done >= kill_at[0] and time.monotonic() - live_since > 5:
                    kill_at.pop(0)
                    await current.kill()  # SIGKILL: no goodbye, as when its node dies
                    killed += 1
                    current = await operator()
                    live_since = time.monotonic()
                await asyncio.sleep(0.2)
            seconds = time.monotonic() - started
        finally:
            # Deleted while an operator runs, so it releases every finalizer (the namespace can go).
            if any(p.proc is not None and p.proc.returncode is None for p in started_operators):
                kubectl("delete", "jobbatch", BATCH, "--ignore-not-found", "--timeout=120s", check=False)
            for proc in started_operators:
                await proc.stop()
        rows = int(db.psql("SELECT count(*) FROM users"))
        digest = db.psql("SELECT md5(string_agg(id || ',' || name || ',' || email, E'\\n' ORDER BY id)) FROM users")
    return Report(
        records=records, shards=shards, parallelism=parallelism, seconds=round(seconds, 1), rows=rows,
        content_matches=digest == table_digest(data), preloaded=len(preload), operator_kills=killed,
        pods_deleted=chaos.confirmed, pods_deleted_late=chaos.late, retries=len(retried),
        cores=os.cpu_count() or 0, wanted_kills=kills,
        wanted_deletions=deletions,
    )  # fmt: skip


def _worker_pods(kubectl: Any) -> list[WorkerPod]:
    """((shard, attempt), name, when its container started if it runs now) of every worker pod."""
    pods = json.loads(kubectl("get", "pods", "-l", f"jobbatch.io/batch={BATCH}", "-o", "json"))["items"]
    out = []
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        index = labels.get("batch.kubernetes.io/job-completion-index")
        if index is None:
            continue
        key = (int(labels["jobbatch.io/first-shard"]) + int(index), int(labels["jobbatch.io/attempt"]))
        states = [s.get("state") or {} for s in (pod.get("status") or {}).get("containerStatuses") or []]
        running = not pod["metadata"].get("deletionTimestamp") and states and all("running" in s for s in states)
        started = str(states[0]["running"].get("startedAt") or "") if running else None
        out.append((key, str(pod["metadata"]["name"]), started))
    return out


def _newest_running(pods: list[WorkerPod]) -> tuple[tuple[int, int], str] | None:
    """The worker pod whose container started last and still runs: mid-shard, most of its work ahead."""
    running = [(started, key, name) for key, name, started in pods if started is not None]
    if not running:
        return None
    _, key, name = max(running)
    return key, name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--shard-size", type=int, default=1_000)
    parser.add_argument("--parallelism", type=int, default=8)
    parser.add_argument("--kills", type=int, default=3, help="operator SIGKILLs during the run")
    parser.add_argument("--deletions", type=int, default=3, help="running worker pods deleted during the run")
    parser.add_argument(
        "--work-ms", type=float, default=2.0, help="simulated work per record, in ms (WORK_MS_PER_RECORD)"
    )
    parser.add_argument("--keep", action="store_true", help="leave the cluster up afterwards")
    args = parser.parse_args(argv)
    images.build_all()
    cluster = LocalCluster(Settings(name="pipeline", nodes=1, real_nodes=1))
    cluster.up()
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(CRDS))
        wait_until(
            lambda: cluster.kubectl("get", "jobbatches,cronjobbatches", check=False).returncode == 0,
            timeout=60,
            what="CRD",
        )
        namespace = cluster.kubectl("create", "namespace", "import", "--dry-run=client", "-o", "json").stdout
        cluster.kubectl("apply", "-f", "-", input=namespace)
        # Logs of the operator, versitygw and PostgreSQL stay here for a look afterwards.
        workdir = tools.cache_dir() / "logs" / "pipeline" / time.strftime("%Y%m%d-%H%M%S")
        workdir.mkdir(parents=True)
        report = asyncio.run(
            run(
                cluster.kubeconfig, "import", workdir, records=args.records, shard_size=args.shard_size,
                parallelism=args.parallelism, kills=args.kills, deletions=args.deletions, work_ms=args.work_ms,
            )
        )  # fmt: skip
    finally:
        if not args.keep:
            cluster.down()
    print(json.dumps({**dataclasses.asdict(report), "records_per_second": round(report.records_per_second)}, indent=2))
    if not report.ok():
        print(f"FAILED: {report.rows} rows for {report.records} records, or chaos missing (above)", file=sys.stderr)
        return 1
    print(f"OK: {report.rows} rows, each record once, in {report.seconds:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
