"""``kubectl jobbatch``: look after batches from a terminal (installed as the ``kubectl-jobbatch`` script).

kubectl finds any ``kubectl-<name>`` on PATH and hands it the rest of the command line, so this is a
plain program that reads the kubeconfig itself and follows kubectl's conventions: ``-n``, ``-A``,
``-o json|yaml``, ``--kubeconfig``, ``--context``, colour only on a terminal (and never with
``NO_COLOR``). Everything it shows comes from the API server: the batch's bounded status, and for
running shards and logs the batch's pods (found by the labels the operator stamps).

The rendering is pure (``render_status``, ``shard_strip``, ``failure_rows``, ``wait_outcome``), so it is
unit-tested without a cluster; ``main`` only fetches, patches and prints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import aiohttp
import yaml
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from jobbatch import api
from jobbatch.ranges import IndexRanges
from jobbatch.version import __version__

# Exit codes of `wait` (and of every command on error), documented in docs/kubectl-plugin.md.
EXIT_OK = 0
EXIT_FAILED = 1  # wait: the batch ended Failed
EXIT_USAGE = 2  # argparse's own
EXIT_TIMEOUT = 3  # wait: still running at --timeout
EXIT_NOT_FOUND = 4  # no such batch (logs: no kept pod)
EXIT_ERROR = 5  # the API server could not be reached, or refused the call
# Long lists (failedShards at 100,000 shards) are cut to this many ranges.
MAX_RANGES_SHOWN = 10

# One cell of the strip per group of shards: the worst state in the group wins, so a single failed
# shard among 1,000 still shows.
CELLS = {"failed": "x", "running": ">", "partial": "+", "succeeded": "#", "pending": "."}
COLOURS = {"failed": "31", "running": "33", "partial": "32", "succeeded": "32", "pending": "2"}


# Passed as **kwargs: the generated signatures omit `_content_type`, which the client accepts.
MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
# Conditions worth a line of `status` when true (Accepted shows only when false).
SHOWN_CONDITIONS = ("Complete", "Failed", "Stalled", "Suspended")
# A false Rerunning condition worth a line: a rerun waiting, or refused.
RERUN_NEWS = ("WaitingForBatchToFinish", "NothingToRerun", "WouldFailAgain", "AttemptsExhausted", "InvalidShards")


class PluginError(Exception):
    """A failure the user can act on; printed without a traceback."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# -- pure rendering ---------------------------------------------------------------------------------


def _cell(lo: int, hi: int, succeeded: IndexRanges, failed: IndexRanges, running: IndexRanges) -> str:
    span = IndexRanges([(lo, hi)])
    if failed and span.difference(failed) != span:
        return "failed"
    if running and span.difference(running) != span:
        return "running"
    done = len(span) - len(span.difference(succeeded))
    if done == len(span):
        return "succeeded"
    return "partial" if done else "pending"


def shard_strip(
    total: int,
    succeeded: IndexRanges,
    failed: IndexRanges,
    running: IndexRanges,
    *,
    width: int = 60,
    rows: int = 3,
    colour: bool = False,
) -> list[str]:
    """At most ``rows`` rows of at most ``width`` cells covering every shard; each cell is a group of shards.

    So 100,000 shards take as much room as 100. Each cell shows the worst state in its group (failed,
    running, some done, all done, none done).
    """
    if total <= 0:
        return []
    cells = min(total, width * rows)
    per_cell = math.ceil(total / cells)
    cells = math.ceil(total / per_cell)
    out: list[str] = []
    for start in range(0, cells, width):
        row = []
        for c in range(start, min(start + width, cells)):
            lo, hi = c * per_cell, min(total, (c + 1) * per_cell) - 1
            state = _cell(lo, hi, succeeded, failed, running)
            mark = CELLS[state]
            row.append(f"\x1b[{COLOURS[state]}m{mark}\x1b[0m" if colour else mark)
        out.append("".join(row))
    return out


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _time(value: Any) -> datetime.datetime | None:
    if not value:
        return None
    if isinstance(value, datetime.datetime):
        return value
    return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def render_status(
    batch: dict[str, Any], running: IndexRanges, *, now: datetime.datetime, width: int = 60, colour: bool = False
) -> str:
    """What ``status NAME`` prints: phase, counts, times, the last condition, and the shard strip."""
    meta, spec, status = batch["metadata"], batch.get("spec", {}), batch.get("status") or {}
    shards = status.get("shards") or {}
    total = int(shards.get("total") or 0)
    lines = [
        f"Name:        {meta.get('namespace', '')}/{meta['name']}",
        f"Phase:       {status.get('phase', 'Pending')}"
        + ("  (suspended)" if spec.get("suspend") and status.get("phase") != "Suspended" else ""),
        f"Shards:      {total} total: {shards.get('succeeded', 0)} succeeded, {shards.get('failed', 0)} failed, "
        f"{shards.get('running', 0)} running, {shards.get('retrying', 0)} retrying, {shards.get('pending', 0)} pending",
        f"Parallelism: {spec.get('parallelism', 10)}"
        + (f"   Priority: {spec['priorityClassName']}" if spec.get("priorityClassName") else ""),
    ]
    start, end = _time(status.get("startTime")), _time(status.get("completionTime"))
    if start is not None:
        took = ((end or now) - start).total_seconds()
        lines.append(f"Started:     {start.isoformat()}   {'took' if end else 'running for'} {_duration(took)}")
    for cond in status.get("conditions") or []:
        shown = cond.get("type") in SHOWN_CONDITIONS and cond.get("status") == "True"
        refused = cond.get("type") == "Accepted" and cond.get("status") == "False"
        if shown or refused:
            label = "Not accepted" if refused else cond["type"]
            lines.append(f"{label + ':':<12} {cond.get('reason', '')}: {cond.get('message', '')}".rstrip(": "))
    strip = shard_strip(
        total,
        IndexRanges.parse(status.get("succeededShards")),
        IndexRanges.parse(status.get("failedShards")),
        running,
        width=width,
        colour=colour,
    )
    if strip:
        per_cell = math.ceil(total / min(total, width * 3))
        lines.append("")
        lines.append(f"Shards ({per_cell} per cell; # done, + some done, > running, x failed, . waiting):")
        lines.extend(f"  {row}" for row in strip)
    rerun = status.get("rerun") or {}
    if rerun.get("shards"):
        lines.insert(4, f"Rerun:       {rerun['id']}: {rerun['shards']} shards from attempt {rerun.get('firstAttempt')}"
                        f" (rerun {rerun.get('count', 1)} of this batch)")  # fmt: skip
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Rerunning" and cond.get("status") == "False" and cond.get("reason") in RERUN_NEWS:
            lines.insert(4, f"Rerun:       {cond['reason']}: {cond.get('message', '')}")
    if status.get("failedShards"):
        lines.append(
            f"Failed shards: {brief_ranges(status['failedShards'])}   (kubectl jobbatch failures {meta['name']})"
        )
    if status.get("failedItemCount"):
        lines.append(
            f"Failed items:  {status['failedItemCount']}: {brief_ranges(status.get('failedItems') or '')}   "
            f"(kubectl jobbatch failures {meta['name']} --items)"
        )
    return "\n".join(lines)


def brief_ranges(text: str, most: int = MAX_RANGES_SHOWN) -> str:
    """``"0-3,7,9"`` cut to its first ``most`` ranges, saying how many more there are."""
    parts = [p for p in text.split(",") if p]
    if len(parts) <= most:
        return ",".join(parts)
    return f"{','.join(parts[:most])} ... ({len(parts) - most} more ranges)"


def item_failure_rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """The first failed items' pieces (retry.isolate), as plain rows."""
    return [
        {key: f.get(key, "" if key in ("reason", "message") else None) for key in ITEM_COLUMNS}
        for f in (batch.get("status") or {}).get("itemFailures") or []
    ]


ITEM_COLUMNS = ["items", "shard", "attempt", "exitCode", "reason", "message"]


def failure_rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """The batch's recorded permanent failures (the last ten), as plain rows."""
    rows = []
    for failure in (batch.get("status") or {}).get("failures") or []:
        rows.append(
            {
                "shard": failure.get("shard"),
                "attempt": failure.get("attempt"),
                "exitCode": failure.get("exitCode"),
                "reason": failure.get("reason", ""),
                "message": failure.get("message", ""),
            }
        )
    return rows


def render_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """A kubectl-style table: upper-case headers, columns padded by three spaces."""
    header = [c.upper().replace("EXITCODE", "EXIT CODE") for c in columns]
    cells = [["" if row.get(c) is None else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = ["   ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


# Of each running pod's log, `progress` reads at most the last lines and bytes: a report further back
# (a worker logging much more than once a second between reports) is not found.
PROGRESS_TAIL_LINES = 500
PROGRESS_LOG_BYTES = 256 * 1024
PROGRESS_PODS = 50  # pods whose logs `progress` reads by default (the batch's running ones, shard order)


def last_progress(log: str) -> tuple[dict[str, int], datetime.datetime | None] | None:
    """The last ``worker.progress`` report in a log read with timestamps, and when it was written."""
    for line in reversed(log.splitlines()):
        stamp, _, text = line.partition(" ")
        # Anywhere in the line: another thread's print may have put its text before the report.
        at = text.rfind(api.PROGRESS_PREFIX)
        if at < 0:
            continue
        try:
            report = json.loads(text[at + len(api.PROGRESS_PREFIX) :])
            done = int(report["done"])
            total = int(report["total"]) if report.get("total") is not None else None
        except (ValueError, KeyError, TypeError, OverflowError, AttributeError):  # not a report (or Infinity)
            continue
        try:
            when = _time(stamp)
        except ValueError:
            when = None
        return ({"done": done} if total is None else {"done": done, "total": total}), when
    return None


def progress_row(pod: client.V1Pod, found: tuple[dict[str, int], datetime.datetime | None] | None,
                 now: datetime.datetime) -> dict[str, Any]:  # fmt: skip
    """One line of ``progress``: the pod's shard, attempt and items, and its latest report (if any)."""
    items = items_of(pod)
    row: dict[str, Any] = {
        "shard": shard_of(pod),
        "attempt": attempt_of(pod),
        "items": f"{items.start}-{items.stop - 1}" if items else "",
        "done": None,
        "total": None,
        "percent": None,
        "updated": None,
        "pod": pod.metadata.name,
    }
    if found is not None:
        report, when = found
        row["done"], row["total"] = report["done"], report.get("total")
        if row["total"]:
            row["percent"] = f"{min(100.0, 100 * row['done'] / row['total']):.0f}%"
        if when is not None:
            row["updated"] = f"{_duration((now - when).total_seconds())} ago"
    return row


def rerun_pending(batch: dict[str, Any]) -> bool:
    """spec.rerun asks for a rerun the operator has not answered yet (neither started nor refused)."""
    wanted = (batch.get("spec") or {}).get("rerun") or {}
    answered = ((batch.get("status") or {}).get("rerun") or {}).get("id")
    return bool(wanted.get("id")) and wanted.get("id") != answered


def wait_outcome(batch: dict[str, Any]) -> int | None:
    """EXIT_OK once Succeeded, EXIT_FAILED once Failed, None while neither.

    A finished batch stays finished unless a rerun starts it again, so its phase is the verdict
    whatever generation its conditions were written at -- unless a rerun is asked for and not yet
    answered (``rerun`` then ``wait`` must not take the old outcome for the rerun's).
    """
    phase = (batch.get("status") or {}).get("phase")
    if rerun_pending(batch):
        return None
    if phase == "Succeeded":
        return EXIT_OK
    if phase == "Failed":
        return EXIT_FAILED
    return None


def rerun_answer(batch: dict[str, Any], rerun_id: str) -> tuple[int, str] | None:
    """(exit code, what to say) once the operator has answered rerun ``rerun_id``; None before."""
    status = batch.get("status") or {}
    cond: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == "Rerunning"), {})
    done = status.get("rerun") or {}
    if done.get("id") == rerun_id:
        if done.get("shards"):
            return EXIT_OK, cond.get("message") or f"rerun {rerun_id} started"
        return EXIT_FAILED, f"refused ({cond.get('reason', '')}): {cond.get('message', '')}"
    if cond.get("reason") == "WaitingForBatchToFinish" and rerun_id in cond.get("message", "").split():
        return EXIT_OK, cond["message"]
    return None


def refusal(batch: dict[str, Any]) -> str:
    """Why the batch is not accepted (``Accepted=False``), or ""."""
    for cond in (batch.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Accepted" and cond.get("status") == "False":
            return f"{cond.get('reason', '')}: {cond.get('message', '')}"
    return ""


# -- talking to the cluster -------------------------------------------------------------------------


def first_current_context(paths: str) -> str | None:
    """The context kubectl would use: the first ``current-context`` set among the kubeconfig files.

    (The client library merges several files keeping the last one's, and would act on another cluster.)
    """
    for path in paths.split(os.pathsep):
        if not path:
            continue
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as f:
                current = (yaml.safe_load(f) or {}).get("current-context")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if current:
            return str(current)
    return None


class Cluster:
    """The API calls the plugin makes, on one kubeconfig context."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    @classmethod
    async def connect(cls, kubeconfig: str | None, context: str | None, namespace: str | None) -> Cluster:
        paths = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        configuration = client.Configuration()
        try:
            loader = await config.load_kube_config(
                config_file=paths,
                context=context or first_current_context(paths),
                client_configuration=configuration,
                persist_config=False,
            )
        except (config.ConfigException, OSError, yaml.YAMLError) as exc:
            raise PluginError(f"cannot load the kubeconfig: {exc}") from None
        current = loader.current_context or {}
        default_ns = (current.get("context") or {}).get("namespace") or "default"
        return cls(client.ApiClient(configuration), namespace or default_ns)

    async def close(self) -> None:
        await self.api_client.close()

    async def get(self, name: str) -> dict[str, Any]:
        try:
            body: dict[str, Any] = await self.custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, self.namespace, api.PLURAL, name
            )
        except ApiException as exc:
            if exc.status == 404:
                raise self._not_found(name) from None
            raise
        return body

    def _not_found(self, name: str) -> PluginError:
        return PluginError(f'jobbatch "{name}" not found in namespace "{self.namespace}"', EXIT_NOT_FOUND)

    async def list_batches(self, all_namespaces: bool) -> list[dict[str, Any]]:
        if all_namespaces:
            body = await self.custom.list_cluster_custom_object(api.GROUP, api.VERSION, api.PLURAL)
        else:
            body = await self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.PLURAL)
        return list(body["items"])

    async def patch_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        try:
            body: dict[str, Any] = await self.custom.patch_namespaced_custom_object(
                api.GROUP, api.VERSION, self.namespace, api.PLURAL, name, {"spec": spec}, **MERGE_PATCH
            )
        except ApiException as exc:
            if exc.status == 404:
                raise self._not_found(name) from None
            raise
        return body

    async def pods(self, batch: dict[str, Any], *, running_only: bool = False) -> list[client.V1Pod]:
        """The batch's pods, by its UID label (exact, whatever the batch's name)."""
        selector = f"{api.LABEL_BATCH_UID}={batch['metadata']['uid']}"
        phase = "status.phase=Running" if running_only else ""  # empty selects every pod
        namespace = batch["metadata"]["namespace"]
        pods: Any = await self.core.list_namespaced_pod(namespace, label_selector=selector, field_selector=phase)
        return [p for p in pods.items if not p.metadata.deletion_timestamp]  # going: not the attempt to show

    async def running_shards(self, batch: dict[str, Any]) -> IndexRanges | None:
        """Shards with a running pod (at most the batch's parallelism of them); None if pods cannot be read."""
        try:
            pods = await self.pods(batch, running_only=True)
        except ApiException as exc:
            if exc.status == 403:  # a user who may read batches but not pods: the strip without them
                return None
            raise
        return IndexRanges.of(s for s in (shard_of(p) for p in pods) if s >= 0)


def shard_of(pod: client.V1Pod) -> int:
    """The shard a pod runs: its Job's first shard plus its completion index (-1 if unlabelled)."""
    labels = pod.metadata.labels or {}
    try:
        return int(labels[api.LABEL_FIRST_SHARD]) + int(labels[api.LABEL_COMPLETION_INDEX])
    except (KeyError, ValueError):
        return -1


def container_of(pod: client.V1Pod, wanted: str | None = None) -> str:
    """The container to read: the one asked for, else the pod's default (as kubectl: the annotation
    ``kubectl.kubernetes.io/default-container``, which puts a worker before a mesh's proxy), else the first."""
    if wanted:
        return wanted
    default = (pod.metadata.annotations or {}).get("kubectl.kubernetes.io/default-container")
    names = [c.name for c in pod.spec.containers]
    return default if default in names else names[0]


def items_of(pod: client.V1Pod) -> range:
    """The items a pod ran: a piece's JOBBATCH_ITEM_START..END (retry.isolate), else its shard's."""
    env = {e.name: e.value for c in pod.spec.containers for e in c.env or [] if e.value is not None}
    try:
        if "JOBBATCH_ITEM_START" in env:
            return range(int(env["JOBBATCH_ITEM_START"]), int(env["JOBBATCH_ITEM_END"]))
        shard, size = shard_of(pod), int(env["JOBBATCH_SHARD_SIZE"])
        return range(shard * size, min((shard + 1) * size, int(env["JOBBATCH_ITEM_COUNT"])))
    except (KeyError, ValueError):
        return range(0)


def attempt_of(pod: client.V1Pod) -> int:
    try:
        return int((pod.metadata.labels or {})[api.LABEL_ATTEMPT])
    except (KeyError, ValueError):
        return -1


# -- commands ---------------------------------------------------------------------------------------


def _dump(value: Any, output: str, out: TextIO) -> None:
    if output == "json":
        out.write(json.dumps(value, indent=2, default=str) + "\n")
    else:
        out.write(yaml.safe_dump(value, sort_keys=False, default_flow_style=False))


def _colour(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR")  # no-color.org: any non-empty value


async def cmd_status(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    now = datetime.datetime.now(datetime.UTC)
    width = max(20, min(100, shutil.get_terminal_size((80, 24)).columns - 4))
    if args.name is None:
        batches = await cluster.list_batches(args.all_namespaces)
        if args.output:
            _dump({"apiVersion": "v1", "kind": "List", "items": batches}, args.output, out)
            return EXIT_OK
        rows = []
        for b in batches:
            status = b.get("status") or {}
            shards = status.get("shards") or {}
            strip = shard_strip(
                int(shards.get("total") or 0),
                IndexRanges.parse(status.get("succeededShards")),
                IndexRanges.parse(status.get("failedShards")),
                IndexRanges(),
                width=20,
                rows=1,
            )
            rows.append(
                {
                    "namespace": b["metadata"]["namespace"],
                    "name": b["metadata"]["name"],
                    "phase": status.get("phase", "Pending"),
                    "progress": status.get("progress", ""),
                    "failed": shards.get("failed", 0),
                    "shards": strip[0] if strip else "",
                }
            )
        columns = ["namespace", "name", "phase", "progress", "failed", "shards"]
        if not args.all_namespaces:
            columns.remove("namespace")
        if not rows:
            where = "any namespace" if args.all_namespaces else f"{cluster.namespace} namespace"
            print(f"No resources found in {where}.", file=sys.stderr)  # as kubectl says it
            return EXIT_OK
        out.write(render_table(rows, columns) + "\n")
        return EXIT_OK
    batch = await cluster.get(args.name)
    if args.output:
        _dump(batch, args.output, out)
        return EXIT_OK
    running = await cluster.running_shards(batch)
    text = render_status(batch, running or IndexRanges(), now=now, width=width, colour=_colour(out))
    out.write(text + "\n")
    if running is None:
        out.write("(running shards not shown: you may not list pods in this namespace)\n")
    return EXIT_OK


async def cmd_failures(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    batch = await cluster.get(args.name)
    if args.items:
        return _item_failures(batch, args, out)
    rows = failure_rows(batch)
    if not _print_rows(rows, ["shard", "attempt", "exitCode", "reason", "message"], args, out, "failed shards"):
        return EXIT_OK
    failed = IndexRanges.parse((batch.get("status") or {}).get("failedShards"))
    if len(failed) > len(rows):
        out.write(f"({len(rows)} most recent shown; all failed shards: {brief_ranges(str(failed))})\n")
    if (batch.get("status") or {}).get("failedItemCount"):
        out.write(f"(failed items: kubectl jobbatch failures {args.name} --items)\n")
    return EXIT_OK


def _print_rows(
    rows: list[dict[str, Any]], columns: list[str], args: argparse.Namespace, out: TextIO, what: str
) -> bool:
    """Print rows as ``-o`` asks, else as a table; True when a table was printed (notes may follow)."""
    if args.output:
        _dump(rows, args.output, out)
        return False
    if not rows:
        out.write(f"No {what} in jobbatch {args.name}\n")
        return False
    out.write(render_table(rows, columns) + "\n")
    return True


def _item_failures(batch: dict[str, Any], args: argparse.Namespace, out: TextIO) -> int:
    """``failures NAME --items``: the items that failed when run apart (retry.isolate)."""
    status = batch.get("status") or {}
    rows = item_failure_rows(batch)
    if args.output:
        data = {"failedItems": status.get("failedItems", ""), "failedItemCount": status.get("failedItemCount", 0)}
        _dump({**data, "itemFailures": rows}, args.output, out)
        return EXIT_OK
    count = int(status.get("failedItemCount") or 0)
    if not count:
        isolating = ((batch.get("spec") or {}).get("retry") or {}).get("isolate")
        out.write(f"No failed items in jobbatch {args.name}" + ("" if isolating else " (retry.isolate is off)") + "\n")
        return EXIT_OK
    out.write(render_table(rows, ITEM_COLUMNS) + "\n")
    out.write(f"{count} failed items: {brief_ranges(status.get('failedItems') or '')}\n")
    return EXIT_OK


async def read_progress(
    cluster: Cluster, pod: client.V1Pod, container: str | None
) -> tuple[dict[str, int], datetime.datetime | None] | None:
    """The last progress report of a pod's log (its last PROGRESS_TAIL_LINES lines, at most
    PROGRESS_LOG_BYTES of their end kept); None without one. Raises ApiException, OSError, TimeoutError."""
    response: Any = await cluster.core.read_namespaced_pod_log(
        pod.metadata.name, pod.metadata.namespace, container=container_of(pod, container),
        timestamps=True, tail_lines=PROGRESS_TAIL_LINES, _preload_content=False,
    )  # fmt: skip
    kept = bytearray()
    try:
        async for chunk in response.content.iter_chunked(64 * 1024):
            kept += chunk
            del kept[: max(0, len(kept) - PROGRESS_LOG_BYTES)]  # the newest bytes: reports are at the end
    finally:
        response.release()
    return last_progress(kept.decode("utf-8", errors="replace"))  # a worker's log need not be UTF-8


async def cmd_progress(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    """How far each running shard has got: the last ``worker.progress`` line of its pod's log."""
    batch = await cluster.get(args.name)
    pods = sorted(await cluster.pods(batch, running_only=True), key=lambda p: (shard_of(p), attempt_of(p)))
    shown = pods[: args.max_pods]
    gate = asyncio.Semaphore(10)  # a few log reads at a time: the kubelets serve them
    unreadable: list[str] = []

    async def read(pod: client.V1Pod) -> tuple[dict[str, int], datetime.datetime | None] | None:
        async with gate:
            try:
                return await read_progress(cluster, pod, args.container)
            except ApiException as exc:  # one pod's log refused (403) or not there (yet): the others still count
                unreadable.append(f"{pod.metadata.name}: {exc.status} {exc.reason}")
            except (OSError, TimeoutError, aiohttp.ClientError) as exc:
                unreadable.append(f"{pod.metadata.name}: {exc}")
            return None

    found = await asyncio.gather(*(read(p) for p in shown))
    if unreadable:
        print(f"kubectl-jobbatch: {len(unreadable)} of {len(shown)} pods' logs could not be read "
              f"(first: {unreadable[0]})", file=sys.stderr)  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    rows = [progress_row(p, f, now) for p, f in zip(shown, found, strict=True)]
    columns = ["shard", "attempt", "items", "done", "total", "percent", "updated", "pod"]
    if not _print_rows(rows, columns, args, out, "running shards"):
        return EXIT_ERROR if shown and len(unreadable) == len(shown) else EXIT_OK
    if len(pods) > len(shown):
        out.write(f"({len(shown)} of {len(pods)} running pods shown: --max-pods)\n")
    if not any(f is not None for f in found) and not unreadable:
        out.write("(no progress reports: workers report with worker.progress(done, total))\n")
    return EXIT_ERROR if len(unreadable) == len(shown) else EXIT_OK


async def cmd_logs(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    batch = await cluster.get(args.name)
    if args.shard is None and args.item is None:
        raise PluginError("logs needs --shard N or --item N", EXIT_USAGE)
    if args.item is not None:
        size = int((batch.get("spec") or {}).get("shardSize") or 1)
        args.shard = args.item // size
    pods = [p for p in await cluster.pods(batch) if shard_of(p) == args.shard]
    if args.attempt is not None:
        pods = [p for p in pods if attempt_of(p) == args.attempt]
    if args.item is not None:
        # The pods that ran the item: its shard's whole attempts and the pieces holding it (retry.isolate);
        # the smallest piece says most about it.
        pods = [p for p in pods if args.item in items_of(p)]
        pods = [p for p in pods if len(items_of(p)) == min(len(items_of(q)) for q in pods)]
    if not pods:
        which = f"item {args.item}" if args.item is not None else f"shard {args.shard}"
        which += f" attempt {args.attempt}" if args.attempt is not None else ""
        raise PluginError(
            f"no pod of {which} of jobbatch {args.name} is kept: finished attempts' Jobs are deleted "
            "(the batch's failedJobsHistoryLimit keeps the last failed ones, successfulJobsHistoryLimit the last "
            "successful ones)",
            EXIT_NOT_FOUND,
        )
    pod = max(pods, key=lambda p: (attempt_of(p), p.metadata.creation_timestamp))
    name, namespace = pod.metadata.name, pod.metadata.namespace
    ran = items_of(pod)
    piece = f", items {ran.start}-{ran.stop - 1}" if api.LABEL_ITEM_NODE in (pod.metadata.labels or {}) and ran else ""
    out.write(f"# pod {name} (shard {args.shard}, attempt {attempt_of(pod)}{piece})\n")
    out.flush()
    container = container_of(pod, args.container)
    response: Any = await cluster.core.read_namespaced_pod_log(
        name, namespace, container=container, follow=args.follow, _preload_content=False
    )
    # The log's bytes as they are (kubectl does the same): a character split between two chunks, or
    # bytes that are not UTF-8, come out whole.
    sink = getattr(out, "buffer", None)
    async for chunk in response.content.iter_any():
        if sink is not None:
            sink.write(chunk)
            sink.flush()
        else:
            out.write(chunk.decode("utf-8", errors="replace"))
    response.release()
    return EXIT_OK


async def cmd_suspend(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    await cluster.patch_spec(args.name, {"suspend": args.command == "suspend"})
    out.write(f"jobbatch.jobbatch.io/{args.name} {'suspended' if args.command == 'suspend' else 'resumed'}\n")
    return EXIT_OK


async def cmd_scale(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    if args.parallelism < 0:
        raise PluginError("--parallelism must be 0 or more", EXIT_USAGE)
    await cluster.patch_spec(args.name, {"parallelism": args.parallelism})
    out.write(f"jobbatch.jobbatch.io/{args.name} scaled to parallelism {args.parallelism}\n")
    return EXIT_OK


async def cmd_rerun(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    """Ask for a rerun (spec.rerun with a new id, as GitOps would) and report the operator's answer."""
    if args.shards is not None and not re.fullmatch(api.RANGES_PATTERN.strip("^$"), args.shards):
        raise PluginError(f"--shards: not index ranges: {args.shards!r} (e.g. 3,7-9)", EXIT_USAGE)
    if args.shards is not None:
        try:
            IndexRanges.parse(args.shards)
        except ValueError:
            raise PluginError(f"--shards: {args.shards!r} has a range that ends before it starts", EXIT_USAGE) from None
    rerun_id = args.id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)
    if args.id:
        current = await cluster.get(args.name)
        used = {((current.get(k) or {}).get("rerun") or {}).get("id") for k in ("spec", "status")}
        if rerun_id in used:
            raise PluginError(f"rerun id {rerun_id!r} was used already: give a new one (or none)", EXIT_USAGE)
    batch = await cluster.patch_spec(args.name, {"rerun": {"id": rerun_id, "shards": args.shards}})
    if ((batch.get("spec") or {}).get("rerun") or {}).get("id") != rerun_id:
        raise PluginError(
            "the API server dropped spec.rerun: its JobBatch CRD predates reruns (apply crds/ of this version)"
        )
    out.write(f"jobbatch.jobbatch.io/{args.name} rerun {rerun_id} requested\n")
    try:
        async with asyncio.timeout(args.timeout):
            while (answer := rerun_answer(batch, rerun_id)) is None:
                batch = await _watch_until_changed(cluster, args.name, batch)
    except TimeoutError:
        out.write(f"no answer from the operator within {args.timeout:g}s; see kubectl jobbatch status {args.name}\n")
        return EXIT_TIMEOUT
    code, said = answer
    out.write(said + "\n")
    return code


async def cmd_wait(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    """Watch the batch until it Succeeded (exit 0) or Failed (exit 1), or --timeout passes (exit 3)."""
    batch: dict[str, Any] = {}
    try:
        async with asyncio.timeout(args.timeout):  # every call below, reads and watches, within it
            batch = await cluster.get(args.name)
            while (outcome := wait_outcome(batch)) is None:
                batch = await _watch_until_changed(cluster, args.name, batch)
    except TimeoutError:
        phase = (batch.get("status") or {}).get("phase", "Pending") if batch else "unread"
        why = refusal(batch) if batch else ""
        out.write(f"jobbatch.jobbatch.io/{args.name} still {phase} after {args.timeout:g}s"
                  + (f" (not accepted: {why})" if why else "") + "\n")  # fmt: skip
        return EXIT_TIMEOUT
    out.write(f"jobbatch.jobbatch.io/{args.name} {'Complete' if outcome == EXIT_OK else 'Failed'}\n")
    return outcome


async def _watch_until_changed(cluster: Cluster, name: str, batch: dict[str, Any]) -> dict[str, Any]:
    """The batch after its next change (or a fresh read when the watch ends or drops)."""
    # From the version seen, so no change between the read and the watch is missed.
    stream = watch.Watch()
    try:
        async for event in stream.stream(
            cluster.custom.list_namespaced_custom_object,
            api.GROUP,
            api.VERSION,
            cluster.namespace,
            api.PLURAL,
            field_selector=f"metadata.name={name}",
            resource_version=batch["metadata"]["resourceVersion"],
            timeout_seconds=300,
        ):
            if event["type"] == "DELETED":
                raise PluginError(f"jobbatch {name} was deleted while waiting", EXIT_NOT_FOUND)
            if event["type"] in ("ADDED", "MODIFIED"):
                return dict(event["object"])
    except ApiException as exc:
        if exc.status != 410:  # 410: the version expired; read again below
            raise
    except (aiohttp.ClientError, OSError):
        await asyncio.sleep(1)  # a dropped connection: read again and watch on, until the deadline
    finally:
        await stream.close()
    return await cluster.get(name)


def result_pages(status: dict[str, Any], wanted: IndexRanges | None) -> list[tuple[str, IndexRanges]]:
    """(ConfigMap name, shards to print from it) of each result page holding a wanted succeeded shard, in order.

    One pass over the ranges, split at page boundaries: fast however scattered the shards are.
    """
    results = status.get("results") or {}
    prefix, per_page = results.get("configMapPrefix"), int(results.get("shardsPerPage") or 0)
    if not prefix or per_page < 1:
        return []
    shards = IndexRanges.parse(status.get("succeededShards"))
    if wanted is not None:
        shards = shards.intersection(wanted)
    by_page: dict[int, list[tuple[int, int]]] = {}
    for lo, hi in shards.intervals:
        while lo <= hi:
            page = lo // per_page
            end = min(hi, (page + 1) * per_page - 1)
            by_page.setdefault(page, []).append((lo, end))
            lo = end + 1
    return [(f"{prefix}{page}", IndexRanges(parts)) for page, parts in sorted(by_page.items())]


async def cmd_results(cluster: Cluster, args: argparse.Namespace, out: TextIO) -> int:
    batch = await cluster.get(args.name)
    status = batch.get("status") or {}
    if not status.get("results"):
        raise PluginError(f"jobbatch {args.name} keeps no results (spec.results is not set, or it is not accepted yet)")
    try:
        wanted = IndexRanges.parse(args.shards) if args.shards else None
    except ValueError:
        raise PluginError(f"--shards {args.shards!r} is not index ranges (3,7-9)", EXIT_USAGE) from None
    uid = batch["metadata"]["uid"]
    results = status["results"]
    missing = IndexRanges.parse(results.get("missingShards"))
    printed = 0
    if args.output == "json":
        out.write("[")
    pages = result_pages(status, wanted)
    for name, shards in pages:  # one page (at most about 1 MB) in memory at a time
        try:
            page: Any = await cluster.core.read_namespaced_config_map(name, cluster.namespace)
        except ApiException as exc:
            if exc.status == 404:  # no result of these shards was stored
                continue
            raise
        owners = [o.uid for o in page.metadata.owner_references or [] if o.controller]
        if owners != [uid]:
            print(f"warning: ConfigMap {name} is not this batch's; its shards are skipped", file=sys.stderr)
            continue
        data = page.data or {}
        for shard in shards:
            text = data.get(str(shard))
            if text is None or shard in missing:
                continue
            try:
                value = json.loads(text)
            except ValueError:
                continue  # not what the operator writes
            line = json.dumps({"shard": shard, "result": value}, ensure_ascii=False)
            if args.output == "json":
                out.write(("," if printed else "") + "\n  " + line)
            else:
                out.write(line + "\n")
            printed += 1
    if args.output == "json":
        out.write("\n]\n" if printed else "]\n")
    succeeded = sum(len(shards) for _, shards in pages)
    total = (status.get("shards") or {}).get("total", 0)
    note = f"{printed} results of {succeeded} succeeded shards (of {total})"
    if wanted is not None:
        missing = missing.intersection(wanted)
    count = int(results.get("missing") or 0) if wanted is None else len(missing)
    if count:
        note += (
            f"; {count} without a result (first: {brief_ranges(str(missing))}; kubectl describe jobbatch {args.name})"
        )
    print(note, file=sys.stderr)
    return EXIT_OK


COMMANDS = {
    "results": cmd_results,
    "status": cmd_status,
    "failures": cmd_failures,
    "logs": cmd_logs,
    "progress": cmd_progress,
    "suspend": cmd_suspend,
    "resume": cmd_suspend,
    "scale": cmd_scale,
    "wait": cmd_wait,
    "rerun": cmd_rerun,
}


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _duration_arg(text: str) -> float:
    """kubectl-style durations: 90, 90s, 5m, 1h30m."""
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 5m, 1h30m)")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def _connection_flags(default: Any) -> argparse.ArgumentParser:
    """-n, --kubeconfig, --context: accepted before the command (as kubectl passes them) and after it."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("-n", "--namespace", default=default, help="the namespace (default: the context's)")
    flags.add_argument("--kubeconfig", default=default, help="the kubeconfig (default: $KUBECONFIG, ~/.kube/config)")
    flags.add_argument("--context", default=default, help="the kubeconfig context to use")
    return flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl jobbatch",
        description="Look after JobBatches: status, failures, logs, results, rerun, suspend/resume/scale, wait.",
        parents=[_connection_flags(None)],
    )
    # A subcommand's own defaults would overwrite values given before it: it has none.
    common = _connection_flags(argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"kubectl-jobbatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", choices=["json", "yaml"], help="print the data instead of the summary")

    p = sub.add_parser("status", parents=[common, output], help="phase, counts, times and a picture of the shards")
    p.add_argument("name", nargs="?", help="a batch (default: every batch, one line each)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace (without NAME)")
    p = sub.add_parser("failures", parents=[common, output], help="failed shards: attempt, exit code, reason")
    p.add_argument("name")
    p.add_argument("--items", action="store_true", help="the items that failed when run apart (retry.isolate)")
    p = sub.add_parser("progress", parents=[common, output], help="how far each running shard has got")
    p.add_argument("name")
    p.add_argument(
        "--max-pods", type=_positive, default=PROGRESS_PODS, help="read this many running pods' logs at most"
    )
    p.add_argument("-c", "--container", help="the container (default: the pod's default container, else the first)")
    p = sub.add_parser("logs", parents=[common], help="a shard's worker logs (its latest kept attempt)")
    p.add_argument("name")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--shard", type=int)
    target.add_argument("--item", type=int, help="the pod that ran this item (the smallest piece, retry.isolate)")
    p.add_argument("--attempt", type=int, help="this attempt (default: the latest kept)")
    p.add_argument("-c", "--container", help="the container (default: the first)")
    p.add_argument("-f", "--follow", action="store_true", help="stream the logs")
    for verb, text in (("suspend", "stop launching and stop running attempts"), ("resume", "undo suspend")):
        sub.add_parser(verb, parents=[common], help=text).add_argument("name")
    p = sub.add_parser("scale", parents=[common], help="set parallelism (0 stops every attempt)")
    p.add_argument("name")
    p.add_argument("--parallelism", type=int, required=True)
    p = sub.add_parser("rerun", parents=[common], help="run a finished batch's failed shards again")
    p.add_argument("name")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--failed", action="store_true", help="every failed shard (the default)")
    which.add_argument("--shards", help="only these failed shards, as index ranges (3,7-9)")
    p.add_argument("--id", help="the rerun's id (default: the time and a random suffix)")
    p.add_argument("--timeout", type=_duration_arg, default=30.0, help="wait this long for the operator's answer")
    p = sub.add_parser("results", parents=[common], help="succeeded shards' results in shard order (spec.results)")
    p.add_argument("name")
    p.add_argument(
        "-o", "--output", choices=["jsonl", "json"], default="jsonl", help="JSON Lines (default) or one array"
    )
    p.add_argument("--shards", help="only these shards, as index ranges (3,7-9)")
    p = sub.add_parser("wait", parents=[common], help="wait until Complete (exit 0) or Failed (exit 1)")
    p.add_argument("name")
    p.add_argument("--timeout", type=_duration_arg, default=_duration_arg("30m"), help="give up after this (exit 3)")
    return parser


async def run(args: argparse.Namespace, out: TextIO) -> int:
    if getattr(args, "all_namespaces", False) and getattr(args, "name", None):
        raise PluginError("-A lists batches; give no NAME with it", EXIT_USAGE)
    cluster = await Cluster.connect(args.kubeconfig, args.context, args.namespace)
    try:
        return await COMMANDS[args.command](cluster, args, out)
    except ApiException as exc:
        reason = exc.reason or ""
        with contextlib.suppress(ValueError, AttributeError):
            reason = json.loads(exc.body or "{}").get("message") or reason
        raise PluginError(f"the API server refused: {exc.status} {reason}") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise PluginError(f"cannot reach the API server: {exc}") from None
    finally:
        await cluster.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run(args, sys.stdout))
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
