"""Turn a benchmark's raw results into report.json, report.md and plots/*.png.

Medians are over the runs of a case; ratios are A over B (a JobBatch over a native
Indexed Job), as medians and pair by pair (run i of A against run i of B).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.measure import median, operator_writes
from jobbatch.planner import chunk_size

MiB = 1024 * 1024
SERIES_POINTS = 400  # points kept per run in report.json (plots use every point)
COMPONENTS = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok", "harness")
Row = dict[str, Any]


def _case_is(
    shards: int, parallelism: int, duration: float | None = None, plane: str | None = None
) -> Callable[[Row], bool]:
    def applies(row: Row) -> bool:
        return (
            row["shards"] == shards
            and row["parallelism"] == parallelism
            and (duration is None or row["duration"] == duration)
            and (plane is None or row["plane"] == plane)
        )

    return applies


@dataclasses.dataclass(frozen=True)
class Target:
    """A figure of ``_figures`` held to a limit (``None``: a figure reported against a stated bound)."""

    label: str
    figure: str
    limit: float | None
    limit_text: str
    applies: Callable[[Row], bool]


# A's figures are from medians per case (A/B from the medians of A and of B); the worst case is shown.
TARGETS: list[Target] = [
    Target(
        "all API writes per shard, A vs B (with teardown), raised and default planes",
        "all_writes_ratio", 1.10, "A ≤ 1.10 x B", lambda row: row["plane"] in ("raised", "default"),
    ),
    Target(
        "wall time A/B at N=10,000, P=1,000, raised plane",
        "wall_ratio", 1.10, "≤ 1.10", _case_is(10_000, 1_000, plane="raised"),
    ),
    Target(
        "wall time A/B at N=10,000, P=1,000, default plane",
        "wall_ratio", 1.10, "≤ 1.10", _case_is(10_000, 1_000, plane="default"),
    ),
    Target("wall time A/B at N=1,000, P=100, D=5 s", "wall_ratio", 1.05, "≤ 1.05", _case_is(1_000, 100, 5.0)),
    Target("operator CPU per 1,000 shards (CPU-s)", "cpu_per_1000", 0.5, "≤ 0.5 CPU-s", lambda row: True),
    Target(
        "slot refill p99 (A), A's p99 - B's p99 (s)",
        "refill_p99_diff", 0.2, "≤ B's p99 + 0.2 s", lambda row: True,
    ),
    Target(
        "N=100,000, P=1,000: operator peak RSS (MiB)",
        "peak_rss_mib", 200.0, "≤ 200 MiB", _case_is(100_000, 1_000),
    ),
    Target(
        "N=100,000, P=1,000: JobBatch object in etcd (KiB)",
        "object_kib", 16.0, "≤ 16 KiB", _case_is(100_000, 1_000),
    ),
    Target(
        "N=100,000, P=1,000: finished pods held at once (A)",
        "finished_pods_held", None,
        f"stated bound: two chunk Jobs' pods, 2 x {chunk_size(1_000):,} = {2 * chunk_size(1_000):,} (docs/design.md)",
        _case_is(100_000, 1_000),
    ),
]  # fmt: skip


def _case_key(r: dict[str, Any]) -> tuple[str, int, int, float]:
    return (r["plane"], r["shards"], r["parallelism"], r["duration"])


def b_variant(r: dict[str, Any]) -> str:
    """Which B a run of B was: a native Indexed Job, or one changed to take A's costs apart.

    ``like-a``: B ran A's pod template (``--b-pods like-a``); ``collect``: B's succeeded pods were
    deleted during the run (``--b-collect``). Only native B rows count towards the targets that compare
    A with B (``COMPARED_WITH_B``).
    """
    parts = [*(["like-a"] if r.get("b_pods") == "like-a" else []), *(["collect"] if r.get("b_collect") else [])]
    return "+".join(parts) or "native"


B_VARIANT_TEXT = {
    "like-a": "B with A's pod",
    "collect": "B collecting its pods",
    "like-a+collect": "B with A's pod, collecting",
}

HAND_OVER_STEPS = ("status", "raise", "create")  # measure.hand_over_rounds


def _ok(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if "error" not in r and r.get("wall_seconds") is not None]


def _med(runs: list[dict[str, Any]], get: Callable[[dict[str, Any]], float | None]) -> float | None:
    return median(get(r) for r in runs)


def _slot_figure(key: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda run: run["pod_slot_latency"].get(key)


def _percent(share: float | None) -> str:
    return _f(share * 100 if share is not None else None, 0, " %")


def _total(by_component: dict[str, float] | None) -> float | None:
    return sum(by_component.values()) if by_component else None


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = _ok(runs)
    n = runs[0]["shards"] if runs else 1
    out: dict[str, Any] = {
        "runs": len(runs),
        "errors": [r["error"] for r in runs if "error" in r],
        "wall_seconds": _med(ok, lambda r: r["wall_seconds"]),
        "first_pod_seconds": _med(ok, lambda r: r["first_pod_seconds"]),
        "pod_slot_p50": _med(ok, lambda r: r["pod_slot_latency"]["p50"]),
        "pod_slot_p99": _med(ok, lambda r: r["pod_slot_latency"]["p99"]),
        "pod_slot_samples": _med(ok, lambda r: r["pod_slot_latency"]["samples"]),
        # By path (absent from reports made before it was measured: n/a there).
        **{
            f"pod_slot_{key}": _med(ok, _slot_figure(key))
            for key in (
                "inside_samples",
                "inside_p50",
                "inside_p99",
                "hand_over_samples",
                "hand_over_p50",
                "hand_over_p99",
                "slowest_hand_over_share",
                "hand_over_rounds",
                *(f"hand_over_{step}_{p}" for step in HAND_OVER_STEPS for p in ("p50", "p99")),
                *(f"slowest_hand_over_{step}" for step in HAND_OVER_STEPS),
            )
        },
        # Absent from reports made before it was measured: n/a there.
        "finished_pods_held": _med(ok, lambda r: r.get("finished_pods_held_peak")),
        "writes_per_shard": _med(ok, lambda r: sum(r["writes"].values()) / n),
        "teardown_writes_per_shard": _med(ok, lambda r: sum(r["teardown_writes"].values()) / n),
        # The whole life of a shard: B leaves its N finished pods to the teardown, A deletes its own.
        "all_writes_per_shard": _med(
            ok, lambda r: (sum(r["writes"].values()) + sum(r["teardown_writes"].values())) / n
        ),
        "reads_per_shard": _med(ok, lambda r: sum(r.get("reads", {}).values()) / n),
        "object_bytes": _med(ok, lambda r: r["object_bytes_in_etcd"]),
        "cpu_seconds": {c: median(r["cpu_seconds"].get(c) for r in ok) for c in COMPONENTS},
        # Absent from reports made before it was measured: n/a there.
        "teardown_cpu_seconds": _med(ok, lambda r: _total(r.get("teardown_cpu_seconds"))),
    }
    if ok and "operator_cpu_seconds" in ok[0]:
        out.update(
            cpu_per_1000=_med(ok, lambda r: r["operator_cpu_seconds"] * 1000 / n),
            peak_rss_mib=_med(ok, lambda r: r["operator_peak_rss_bytes"] / MiB),
            operator_writes_per_shard=_med(ok, lambda r: operator_writes(r["writes"]) / n),
            status_writes=_med(ok, lambda r: r["operator_metrics"].get("jobbatch_status_writes_total")),
        )
    return out


COMPARED_WITH_B = frozenset({"wall_ratio", "writes_ratio", "all_writes_ratio", "refill_p99_diff"})


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _figures(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float | None]:
    """What the targets compare, from two aggregates (of all runs of a case, or of one pair)."""
    pa, pb = a["pod_slot_p99"], b["pod_slot_p99"]
    object_bytes = a["object_bytes"]
    return {
        "wall_ratio": _ratio(a["wall_seconds"], b["wall_seconds"]),
        "writes_ratio": _ratio(a["writes_per_shard"], b["writes_per_shard"]),
        "all_writes_ratio": _ratio(a["all_writes_per_shard"], b["all_writes_per_shard"]),
        "refill_p99_diff": pa - pb if pa is not None and pb is not None else None,
        "cpu_per_1000": a.get("cpu_per_1000"),
        "peak_rss_mib": a.get("peak_rss_mib"),
        "object_kib": object_bytes / 1024 if object_bytes is not None else None,
        "finished_pods_held": a["finished_pods_held"],
    }


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int, int, float], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(_case_key(r), []).append(r)
    rows = []
    for (plane, n, p, d), runs in groups.items():
        a = sorted((r for r in runs if r["system"] == "A"), key=lambda r: r["run"])
        # One row per kind of B that ran (native first), each against the same runs of A.
        kinds = dict.fromkeys(b_variant(r) for r in runs if r["system"] == "B")
        variants = sorted(kinds, key=lambda v: v != "native") or ["native"]  # A alone: one row, no B
        for variant in variants:
            b = sorted((r for r in runs if r["system"] == "B" and b_variant(r) == variant), key=lambda r: r["run"])
            # In a merged report, only the runs of A from the invocations this B ran in.
            invocations = {r.get("invocation") for r in b}
            rows.append(_row(plane, n, p, d, variant, [r for r in a if not b or r.get("invocation") in invocations], b))
    return rows


def _with_systems(rows: list[dict[str, Any]]) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    """Each row with the systems it shows: A only on the first row of its case (the rows of a changed B
    repeat the same runs of A), B on every row."""
    seen: set[tuple[str, int, int, float]] = set()
    out: list[tuple[dict[str, Any], tuple[str, ...]]] = []
    for r in rows:
        out.append((r, ("A", "B") if _case_key(r) not in seen else ("B",)))
        seen.add(_case_key(r))
    return out


def _run_key(r: dict[str, Any]) -> tuple[str, int]:
    """A run's place: its invocation of the harness (set by ``merge``) and its number there."""
    return (str(r.get("invocation") or ""), int(r["run"]))


def _row(
    plane: str, n: int, p: int, d: float, variant: str, a: list[dict[str, Any]], b: list[dict[str, Any]]
) -> dict[str, Any]:
    row: dict[str, Any] = {"plane": plane, "shards": n, "parallelism": p, "duration": d, "b_variant": variant}
    row["A"], row["B"] = _aggregate(a), _aggregate(b)
    row["figures"] = _figures(row["A"], row["B"])
    row["ratio"] = row["figures"]["wall_ratio"]
    # Run i of A against run i of B of the same invocation, both finished: the spread of every figure.
    b_runs = {_run_key(rb): rb for rb in b}
    pairs = [(ra, b_runs[_run_key(ra)]) for ra in a if _run_key(ra) in b_runs]
    pairs = [(ra, rb) for ra, rb in pairs if _ok([ra]) and _ok([rb])]
    row["pairs"] = [_figures(_aggregate([ra]), _aggregate([rb])) for ra, rb in pairs]
    row["pair_ratios"] = [pair["wall_ratio"] for pair in row["pairs"] if pair["wall_ratio"] is not None]
    # Per-shard writes by verb and resource: machine-independent, so the median run is enough.
    row["writes_by_resource"] = {system: _writes_by_resource(_ok(group), n) for system, group in (("A", a), ("B", b))}
    return row


def _writes_by_resource(runs: list[dict[str, Any]], n: int) -> dict[str, float]:
    keys = {k for r in runs for k in r["writes"]}
    found = {k: median(r["writes"].get(k, 0) / n for r in runs) for k in keys}
    return {k: v for k, v in sorted(found.items(), key=lambda kv: -(kv[1] or 0)) if v}


def evaluate_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with the worst value (from medians) over the cases it applies to.

    ``spread`` is that case's [min, max] pair by pair when it ran more than once; ``met`` is None
    when no case was measured or the target only states a bound.
    """
    out = []
    for target in TARGETS:
        entry: dict[str, Any] = {
            "target": target.label,
            "limit": target.limit,
            "limit_text": target.limit_text,
            "measured": None,
            "met": None,
            "case": None,
            "spread": None,
        }
        measured = [
            (row["figures"][target.figure], row)
            for row in rows
            # A changed B is a diagnosis, not the baseline: it counts only for A's own figures.
            if (row.get("b_variant", "native") == "native" or target.figure not in COMPARED_WITH_B)
            and target.applies(row)
            and row["figures"].get(target.figure) is not None
        ]
        if measured:
            worst, row = max(measured, key=lambda vr: vr[0])
            per_pair = [p[target.figure] for p in row["pairs"] if p.get(target.figure) is not None]
            entry.update(
                measured=worst,
                met=None if target.limit is None else worst <= target.limit,
                case=f"{row['plane']} N={row['shards']} P={row['parallelism']} D={row['duration']:g}s",
                spread=[min(per_pair), max(per_pair)] if len(per_pair) > 1 else None,
            )
        out.append(entry)
    return out


# -- rendering ---------------------------------------------------------------------------------
def _f(value: float | None, digits: int = 2, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms"


def _case(row: dict[str, Any]) -> str:
    variant = row.get("b_variant", "native")
    suffix = "" if variant == "native" else f" ({B_VARIANT_TEXT[variant]})"
    return f"N={row['shards']:,} P={row['parallelism']:,} D={row['duration']:g}s{suffix}"


def render_markdown(data: dict[str, Any], rows: list[dict[str, Any]], targets: list[dict[str, Any]]) -> str:
    m = data["machine"]
    lines = [
        "# Benchmark report: JobBatch (A) against a native Indexed Job (B)",
        "",
        f"- run: {data['started']} to {data['finished']} (UTC), `{data['command']}`",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()),
        f"- {data['runs']} run(s) of A and of B per case, alternating; figures are medians over the runs",
        *(
            [
                "- **B ran A's pod template** (`--b-pods like-a`) in the rows marked \"B with A's pod\": "
                "they compare A with B running A's pod, not with a native Indexed Job, and count towards "
                "no Target that compares A with B"
            ]
            if any(r.get("b_pods") == "like-a" for r in data["results"])
            else []
        ),
        *(
            [
                "- **B's succeeded pods were deleted during its run** (`--b-collect`), a chunk's worth at a "
                'time, as A\'s bound does, in the rows marked "collecting": they count towards no Target '
                "comparing A with B"
            ]
            if any(r.get("b_collect") for r in data["results"])
            else []
        ),
        "",
        "| plane | controller-manager `--kube-api-qps` | `--kube-api-burst` | `--concurrent-job-syncs` "
        "| scheduler `--kube-api-qps` | `--kube-api-burst` |",
        "|---|---|---|---|---|---|",
    ]
    for plane in data["planes"]:
        s = plane["settings"]
        lines.append(
            f"| {plane['name']} | {s['kcm_api_qps']} | {s['kcm_api_burst']} | {s['concurrent_job_syncs']} "
            # Reports made before the scheduler's limits were settable ran at its defaults.
            f"| {s.get('scheduler_api_qps', 50)} | {s.get('scheduler_api_burst', 100)} |"
        )
    lines += [
        "",
        "## Targets",
        "",
        "Each figure from the medians of a case (A/B: median of A over median of B), the worst case shown; "
        "spread: that case's lowest and highest pair by pair, when it ran more than once.",
        "",
        "| target | limit | measured (worst case) | spread | case | met |",
        "|---|---|---|---|---|---|",
    ]
    for t in targets:
        if t["measured"] is None:
            met = "not measured"
        elif t["met"] is None:
            met = "figure reported"
        else:
            met = "yes" if t["met"] else "**no**"
        spread = "" if t["spread"] is None else f"{t['spread'][0]:.3f} to {t['spread'][1]:.3f}"
        lines.append(
            f"| {t['target']} | {t['limit_text']} | {_f(t['measured'], 3)} | {spread} | {t['case'] or ''} | {met} |"
        )
    for plane in data["planes"]:
        prows = [r for r in rows if r["plane"] == plane["name"]]
        if not prows:
            continue
        lines += [
            "",
            f"## Plane `{plane['name']}`",
            "",
            "### Wall time, apply to Complete",
            "",
            "| case | A | B | A/B | A/B pair by pair | first pod A | first pod B |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in prows:
            pairs = ", ".join(f"{x:.2f}" for x in r["pair_ratios"]) or "n/a"
            lines.append(
                f"| {_case(r)} | {_f(r['A']['wall_seconds'], 1, ' s')} | {_f(r['B']['wall_seconds'], 1, ' s')} "
                f"| {_f(r['ratio'])} | {pairs} | {_f(r['A']['first_pod_seconds'], 2, ' s')} "
                f"| {_f(r['B']['first_pod_seconds'], 2, ' s')} |"
            )
        lines += [
            "",
            "### Slot refill while saturated",
            "",
            "A worker pod finishing (while shards are left to start) to the next worker pod created, paired "
            "first in first out; the same measure for A and B.",
            "",
            "| case | A p50 | A p99 | samples A | B p50 | B p99 | samples B | A p99 - B p99 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in prows:
            a, b = r["A"], r["B"]
            lines.append(
                f"| {_case(r)} | {_ms(a['pod_slot_p50'])} | {_ms(a['pod_slot_p99'])} "
                f"| {_f(a['pod_slot_samples'], 0)} | {_ms(b['pod_slot_p50'])} | {_ms(b['pod_slot_p99'])} "
                f"| {_f(b['pod_slot_samples'], 0)} | {_ms(r['figures']['refill_p99_diff'])} |"
            )
        lines += [
            "",
            "A's refills by path, paired apart from the above (a start takes the oldest slot its own Job "
            "freed, else the oldest another Job freed): *inside* a Job, or *handed over* from another Job "
            "(the operator's raise of a chunk's parallelism, a retry Job or a resume). B has one Job: every "
            "refill is inside it. *Slowest 1 %*: the share of hand-overs among that pairing's refills at or "
            "above its p99, next to their share of all refills.",
            "",
            "| case | inside: samples | p50 | p99 | handed over: samples | p50 | p99 "
            "| hand-overs: of all | of the slowest 1 % |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in prows:
            a = r["A"]
            inside, across = a.get("pod_slot_inside_samples"), a.get("pod_slot_hand_over_samples")
            share = a.get("pod_slot_slowest_hand_over_share")
            base = across / (inside + across) if inside is not None and across is not None and inside + across else None
            lines.append(
                f"| {_case(r)} | {_f(inside, 0)} | {_ms(a.get('pod_slot_inside_p50'))} "
                f"| {_ms(a.get('pod_slot_inside_p99'))} | {_f(across, 0)} "
                f"| {_ms(a.get('pod_slot_hand_over_p50'))} | {_ms(a.get('pod_slot_hand_over_p99'))} "
                f"| {_percent(base)} | {_percent(share)} |"
            )
        lines += [
            "",
            "A's hand-overs step by step (a Job watch beside the pod watch): *status*, from the pod's end "
            "to the first event of its Job that counts it (the Job controller; 0 when that event came "
            "before the pod's own); *raise*, from there to the last rise of the starting Job's parallelism "
            "(or its creation) before the pod (the operator's pass and write; 0 when an earlier raise left "
            "the headroom); *create*, from there to the pod's creation (the Job controller's sync). "
            "*Slowest 1 %*: each step's p50 over the hand-overs at or above their p99.",
            "",
            "| case | hand-overs | status p50 / p99 | raise p50 / p99 | create p50 / p99 "
            "| slowest 1 %: status | raise | create |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in prows:
            a = r["A"]
            steps = [
                f"{_ms(a.get(f'pod_slot_hand_over_{s}_p50'))} / {_ms(a.get(f'pod_slot_hand_over_{s}_p99'))}"
                for s in HAND_OVER_STEPS
            ]
            slowest = [_ms(a.get(f"pod_slot_slowest_hand_over_{s}")) for s in HAND_OVER_STEPS]
            lines.append(
                f"| {_case(r)} | {_f(a.get('pod_slot_hand_over_rounds'), 0)} | " + " | ".join(steps + slowest) + " |"
            )
        stale = [r for r in prows if _above(r["A"].get("pod_slot_hand_over_p50"), r["A"].get("pod_slot_p99"))]
        if stale:
            lines += [
                "",
                "Where the hand-overs' p50 is above the p99 of all refills ("
                + ", ".join(_case(r) for r in stale)
                + "), the pairing by path took slots a Job freed after its own starts were over, long "
                "after, for a start of another Job: pods were created far slower than slots freed (fewer pods "
                "running than the parallelism). Those hand-overs, and their steps, are no refill's wait.",
            ]
        lines += [
            "",
            "### API requests per shard",
            "",
            "API server requests (`apiserver_request_total`, every client) per shard. *Run*: from apply to "
            "Complete. *Teardown*: from Complete until the namespace is gone (the object under test deleted "
            "first, then the namespace). *All*: the two together, the whole life of a shard (B leaves its N "
            "finished pods for the teardown to delete; A deletes its finished pods during the run).",
            "",
            "| case | run writes A | B | A/B | all writes A | B | A/B | teardown writes A | B | reads A | B |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in prows:
            a, b, fig = r["A"], r["B"], r["figures"]
            lines.append(
                f"| {_case(r)} | {_f(a['writes_per_shard'])} | {_f(b['writes_per_shard'])} "
                f"| {_f(fig['writes_ratio'])} | {_f(a['all_writes_per_shard'])} | {_f(b['all_writes_per_shard'])} "
                f"| {_f(fig['all_writes_ratio'])} "
                f"| {_f(a['teardown_writes_per_shard'])} | {_f(b['teardown_writes_per_shard'])} "
                f"| {_f(a['reads_per_shard'])} | {_f(b['reads_per_shard'])} |"
            )
        lines += [
            "",
            "### Operator and objects",
            "",
            "*Operator writes* count jobs, jobbatches and configmaps, which only the operator writes. *Finished "
            "pods held*: the most worker pods in phase Succeeded or Failed that existed at once.",
            "",
            "| case | operator CPU s / 1,000 shards | operator peak RSS | operator writes / shard "
            "| status writes | finished pods held A | B | object in etcd A | B |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in prows:
            a, b = r["A"], r["B"]
            lines.append(
                f"| {_case(r)} | {_f(a.get('cpu_per_1000'))} | {_f(a.get('peak_rss_mib'), 0, ' MiB')} "
                f"| {_f(a.get('operator_writes_per_shard'))} | {_f(a.get('status_writes'), 0)} "
                f"| {_f(a['finished_pods_held'], 0)} | {_f(b['finished_pods_held'], 0)} "
                f"| {_f(a['object_bytes'], 0, ' B')} | {_f(b['object_bytes'], 0, ' B')} |"
            )
        lines += [
            "",
            "### CPU seconds per run, by process (median)",
            "",
            "*Teardown*: the CPU of every process but the harness (control plane, kwok and, for A, the "
            "operator) from Complete (with the pod watch's catch-up of at most 30 s) until the namespace is "
            "gone; B's finished pods are all deleted there, A's mostly during the run.",
            "",
            "| case | system | operator | " + " | ".join(COMPONENTS) + " | teardown |",
            "|---|---|---|" + "---|" * (len(COMPONENTS) + 1),
        ]
        for r, systems in _with_systems(prows):
            for system in systems:
                agg = r[system]
                op = agg["cpu_per_1000"] * r["shards"] / 1000 if agg.get("cpu_per_1000") is not None else None
                cells = " | ".join(_f(agg["cpu_seconds"].get(c), 1) for c in COMPONENTS)
                case = _case(r if system == "B" else {**r, "b_variant": "native"})  # A: the case alone
                lines.append(f"| {case} | {system} | {_f(op, 1)} | {cells} | {_f(agg['teardown_cpu_seconds'], 1)} |")
        biggest = max(
            prows, key=lambda r: (r["shards"], r["parallelism"], r["duration"], r.get("b_variant") == "native")
        )
        lines += [
            "",
            f"### Writes per shard by verb and resource ({_case(biggest)})",
            "",
            "| request | A | B |",
            "|---|---|---|",
        ]
        wa, wb = biggest["writes_by_resource"]["A"], biggest["writes_by_resource"]["B"]
        for key in sorted(set(wa) | set(wb), key=lambda k: -(wa.get(k, 0) + wb.get(k, 0))):
            lines.append(f"| `{key}` | {_f(wa.get(key), 3)} | {_f(wb.get(key), 3)} |")
        lines += ["", "### Running, succeeded and finished-held pods over time", ""]
        for r in prows:
            lines.append(f"![{plane['name']} {_case(r)}](plots/{_plot_name(r)})")
    errors = [(r, e) for r, systems in _with_systems(rows) for s in systems for e in r[s]["errors"]]
    if errors:
        lines += ["", "## Errors", ""] + [f"- {r['plane']} {_case(r)}: {e}" for r, e in errors]
    return "\n".join(lines) + "\n"


def _plot_name(row: dict[str, Any]) -> str:
    variant = row.get("b_variant", "native")
    suffix = "" if variant == "native" else f"-b-{variant}"
    return f"{row['plane']}-n{row['shards']}-p{row['parallelism']}-d{row['duration']:g}{suffix}.png"


def plot(results: list[dict[str, Any]], rows: list[dict[str, Any]], out: Path) -> None:
    """Running, succeeded and held finished pods over time, A against B, from each case's first good run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "plots").mkdir(exist_ok=True)
    for row in rows:
        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=90)
        for system, color in (("A", "tab:blue"), ("B", "tab:orange")):
            runs = [
                r
                for r in _ok(results)
                if _case_key(r) == _case_key(row)
                and r["system"] == system
                and (system == "A" or b_variant(r) == row.get("b_variant", "native"))
            ]
            if not runs or not runs[0]["series"]:
                continue
            series = runs[0]["series"]
            t = [0.0] + [s[0] for s in series]
            label = "JobBatch" if system == "A" else "Indexed Job"
            ax.step(t, [0] + [s[2] for s in series], where="post", color=color, label=f"{label}: succeeded")
            ax.step(t, [0] + [s[1] for s in series], where="post", color=color, ls="--", label=f"{label}: running")
            if len(series[0]) > 3:  # reports made before finished pods were counted have three columns
                held = [0] + [s[3] for s in series]
                ax.step(t, held, where="post", color=color, ls=":", label=f"{label}: finished pods held")
        ax.set_title(f"{row['plane']}: {_case(row)}", fontsize=10)
        ax.set_xlabel("seconds since apply")
        ax.set_ylabel("pods")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        fig.savefig(out / "plots" / _plot_name(row))
        plt.close(fig)


def _above(value: Any, bound: Any) -> bool:
    return isinstance(value, (int, float)) and isinstance(bound, (int, float)) and value > bound


def _thin(series: list[Any]) -> list[Any]:
    if len(series) <= SERIES_POINTS:
        return series
    step = len(series) / SERIES_POINTS
    return [series[int(i * step)] for i in range(SERIES_POINTS)] + [series[-1]]


def write(data: dict[str, Any], out: Path) -> None:
    rows = summarize(data["results"])
    targets = evaluate_targets(rows)
    plot(data["results"], rows, out)
    stored = {**data, "results": [{**r, "series": _thin(r.get("series", []))} for r in data["results"]]}
    stored["summary"], stored["targets"] = rows, targets
    (out / "report.json").write_text(json.dumps(stored, indent=1))
    (out / "report.md").write_text(render_markdown(data, rows, targets))


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several runs of the harness (e.g. different run counts for N=1,000 and 10,000)."""
    planes: dict[str, dict[str, Any]] = {}
    for data in reports:
        for plane in data["planes"]:
            planes.setdefault(plane["name"], plane)
    cpus = list(dict.fromkeys(str(d["machine"].get("cpu")) for d in reports))  # each once, in order
    return {
        "started": min(d["started"] for d in reports),
        "finished": max(d["finished"] for d in reports),
        "command": "; ".join(d["command"] for d in reports),
        # Runs from machines of the same size but other CPUs say so (their commands say which is which).
        "machine": {**reports[0]["machine"], "cpu": " and ".join(cpus)},
        "versions": reports[0]["versions"],
        # A merged report merged again keeps one "1/2", not "1/1/2".
        "runs": "/".join(sorted({n for d in reports for n in str(d["runs"]).split("/")}, key=int)),
        "planes": list(planes.values()),
        # Each run keeps the invocation it came from, so that pairs never mix invocations.
        "results": [{"invocation": d["started"], **r} for d in reports for r in d["results"]],
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.report", description="Merge reports into one.")
    parser.add_argument("reports", type=Path, nargs="+", help="report.json files of earlier runs")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    write(merge([json.loads(p.read_text()) for p in args.reports]), args.out)
    print(f"report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
