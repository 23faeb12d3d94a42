"""Turn a benchmark's raw results into report.json, report.md and plots/*.png.

Medians are over the runs of a case; ratios are A over B (a JobBatch over a native
Indexed Job), as medians and pair by pair (run i of A against run i of B).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.measure import median, operator_writes

MiB = 1024 * 1024
SERIES_POINTS = 400  # points kept per run in report.json (plots use every point)
COMPONENTS = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok", "harness")

# The targets: (label, how a summary row yields the figure, limit, where it applies).
TARGETS: list[tuple[str, str, float]] = [
    ("A/B wall-time ratio at N=10,000, P=1,000 (raised limits)", "ratio", 1.15),
    ("dispatch latency p50 (s)", "dispatch_p50", 0.2),
    ("dispatch latency p99 (s)", "dispatch_p99", 1.0),
    ("operator API writes per shard", "operator_writes_per_shard", 4.0),
    ("operator CPU seconds per 1,000 shards", "cpu_per_1000", 2.0),
    ("operator peak RSS at 100,000 shards (MiB)", "peak_rss_mib", 200.0),
    ("JobBatch object in etcd at 100,000 shards (KiB)", "object_kib", 16.0),
]


def _case_key(r: dict[str, Any]) -> tuple[str, int, int, float]:
    return (r["plane"], r["shards"], r["parallelism"], r["duration"])


def _ok(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if "error" not in r and r.get("wall_seconds") is not None]


def _med(runs: list[dict[str, Any]], get: Callable[[dict[str, Any]], float | None]) -> float | None:
    return median(get(r) for r in runs)


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
        "writes_per_shard": _med(ok, lambda r: sum(r["writes"].values()) / n),
        "reads_per_shard": _med(ok, lambda r: sum(r.get("reads", {}).values()) / n),
        "teardown_writes_per_shard": _med(ok, lambda r: sum(r["teardown_writes"].values()) / n),
        "object_bytes": _med(ok, lambda r: r["object_bytes_in_etcd"]),
        "cpu_seconds": {c: median(r["cpu_seconds"].get(c) for r in ok) for c in COMPONENTS},
    }
    if ok and "dispatch_latency" in ok[0]:
        out.update(
            dispatch_p50=_med(ok, lambda r: r["dispatch_latency"]["p50"]),
            dispatch_p99=_med(ok, lambda r: r["dispatch_latency"]["p99"]),
            dispatch_samples=_med(ok, lambda r: r["dispatch_latency"]["samples"]),
            cpu_per_1000=_med(ok, lambda r: r["operator_cpu_seconds"] * 1000 / n),
            peak_rss_mib=max((r["operator_peak_rss_bytes"] / MiB for r in ok), default=None),
            operator_writes_per_shard=_med(ok, lambda r: operator_writes(r["writes"]) / n),
            status_writes=_med(ok, lambda r: r["operator_metrics"].get("jobbatch_status_writes_total")),
        )
    return out


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int, int, float], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(_case_key(r), []).append(r)
    rows = []
    for (plane, n, p, d), runs in groups.items():
        a = sorted((r for r in runs if r["system"] == "A"), key=lambda r: r["run"])
        b = sorted((r for r in runs if r["system"] == "B"), key=lambda r: r["run"])
        row: dict[str, Any] = {"plane": plane, "shards": n, "parallelism": p, "duration": d}
        row["A"], row["B"] = _aggregate(a), _aggregate(b)
        wa, wb = row["A"]["wall_seconds"], row["B"]["wall_seconds"]
        row["ratio"] = wa / wb if wa and wb else None
        row["pair_ratios"] = [
            ra["wall_seconds"] / rb["wall_seconds"]
            for ra, rb in zip(a, b, strict=False)
            if ra.get("wall_seconds") and rb.get("wall_seconds") and "error" not in ra and "error" not in rb
        ]
        # Per-shard writes by verb and resource: machine-independent, so the median run is enough.
        row["writes_by_resource"] = {
            system: _writes_by_resource(_ok(group), n) for system, group in (("A", a), ("B", b))
        }
        rows.append(row)
    return rows


def _writes_by_resource(runs: list[dict[str, Any]], n: int) -> dict[str, float]:
    keys = {k for r in runs for k in r["writes"]}
    found = {k: median(r["writes"].get(k, 0) / n for r in runs) for k in keys}
    return {k: v for k, v in sorted(found.items(), key=lambda kv: -(kv[1] or 0)) if v}


def evaluate_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with the worst measured value over the cases it applies to."""
    out = []
    for label, field, limit in TARGETS:
        values = []
        for row in rows:
            if field == "ratio":
                if row["shards"] == 10000 and row["parallelism"] == 1000 and row["plane"] == "raised":
                    values.append((row["ratio"], row))
            elif field in ("peak_rss_mib", "object_kib"):
                if row["shards"] >= 100000:
                    a = row["A"]
                    value = a.get("peak_rss_mib") if field == "peak_rss_mib" else (a["object_bytes"] or 0) / 1024
                    values.append((value, row))
            else:
                values.append((row["A"].get(field), row))
        measured = [(v, r) for v, r in values if v is not None]
        if not measured:
            out.append({"target": label, "limit": limit, "measured": None, "met": None, "case": None})
            continue
        worst, row = max(measured, key=lambda vr: vr[0])
        case = f"{row['plane']} N={row['shards']} P={row['parallelism']} D={row['duration']:g}s"
        out.append({"target": label, "limit": limit, "measured": worst, "met": worst <= limit, "case": case})
    return out


# -- rendering ---------------------------------------------------------------------------------
def _f(value: float | None, digits: int = 2, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms"


def _case(row: dict[str, Any]) -> str:
    return f"N={row['shards']:,} P={row['parallelism']:,} D={row['duration']:g}s"


def render_markdown(data: dict[str, Any], rows: list[dict[str, Any]], targets: list[dict[str, Any]]) -> str:
    m = data["machine"]
    lines = [
        "# Benchmark report: JobBatch (A) against a native Indexed Job (B)",
        "",
        f"- run: {data['started']} to {data['finished']} (UTC), `{data['command']}`",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()),
        f"- {data['runs']} run(s) of A and of B per case, alternating; figures are medians over the runs",
        "",
        "| plane | controller-manager `--kube-api-qps` | `--kube-api-burst` | `--concurrent-job-syncs` |",
        "|---|---|---|---|",
    ]
    for plane in data["planes"]:
        s = plane["settings"]
        lines.append(f"| {plane['name']} | {s['kcm_api_qps']} | {s['kcm_api_burst']} | {s['concurrent_job_syncs']} |")
    lines += ["", "## Targets", "", "| target | limit | measured (worst case) | case | met |", "|---|---|---|---|---|"]
    for t in targets:
        met = "not measured" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['limit']:g} | {_f(t['measured'], 3)} | {t['case'] or ''} | {met} |")
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
            "### Latency while saturated",
            "",
            "Dispatch: a shard Job finishing to the next shard Job created (A). Slot refill: a worker pod "
            "finishing to the next worker pod created (A and B).",
            "",
            "| case | dispatch p50 | dispatch p99 | samples "
            "| refill A p50 | refill A p99 | refill B p50 | refill B p99 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in prows:
            a, b = r["A"], r["B"]
            lines.append(
                f"| {_case(r)} | {_ms(a.get('dispatch_p50'))} | {_ms(a.get('dispatch_p99'))} "
                f"| {_f(a.get('dispatch_samples'), 0)} | {_ms(a['pod_slot_p50'])} | {_ms(a['pod_slot_p99'])} "
                f"| {_ms(b['pod_slot_p50'])} | {_ms(b['pod_slot_p99'])} |"
            )
        lines += [
            "",
            "### Cost",
            "",
            "Writes are API server write requests (`apiserver_request_total`, every client) per shard, from "
            "apply to Complete; *operator* counts jobs, jobbatches and configmaps, which only the operator "
            "writes. Teardown: deleting the namespace afterwards.",
            "",
            "| case | operator CPU s / 1,000 shards | operator peak RSS | operator writes / shard "
            "| status writes | all writes / shard A | B | teardown writes / shard A | B "
            "| reads / shard A | B | object in etcd A | B |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in prows:
            a, b = r["A"], r["B"]
            lines.append(
                f"| {_case(r)} | {_f(a.get('cpu_per_1000'))} | {_f(a.get('peak_rss_mib'), 0, ' MiB')} "
                f"| {_f(a.get('operator_writes_per_shard'))} | {_f(a.get('status_writes'), 0)} "
                f"| {_f(a['writes_per_shard'])} | {_f(b['writes_per_shard'])} "
                f"| {_f(a['teardown_writes_per_shard'])} | {_f(b['teardown_writes_per_shard'])} "
                f"| {_f(a['reads_per_shard'])} | {_f(b['reads_per_shard'])} "
                f"| {_f(a['object_bytes'], 0, ' B')} | {_f(b['object_bytes'], 0, ' B')} |"
            )
        lines += [
            "",
            "### CPU seconds per run, by process (median)",
            "",
            "| case | system | operator | " + " | ".join(COMPONENTS) + " |",
            "|---|---|---|" + "---|" * len(COMPONENTS),
        ]
        for r in prows:
            for system in ("A", "B"):
                agg = r[system]
                op = agg["cpu_per_1000"] * r["shards"] / 1000 if agg.get("cpu_per_1000") is not None else None
                cells = " | ".join(_f(agg["cpu_seconds"].get(c), 1) for c in COMPONENTS)
                lines.append(f"| {_case(r)} | {system} | {_f(op, 1)} | {cells} |")
        biggest = max(prows, key=lambda r: (r["shards"], r["parallelism"], r["duration"]))
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
        lines += ["", "### Running and succeeded pods over time", ""]
        for r in prows:
            lines.append(f"![{plane['name']} {_case(r)}](plots/{_plot_name(r)})")
    errors = [(r, e) for r in rows for s in ("A", "B") for e in r[s]["errors"]]
    if errors:
        lines += ["", "## Errors", ""] + [f"- {r['plane']} {_case(r)}: {e}" for r, e in errors]
    return "\n".join(lines) + "\n"


def _plot_name(row: dict[str, Any]) -> str:
    return f"{row['plane']}-n{row['shards']}-p{row['parallelism']}-d{row['duration']:g}.png"


def plot(results: list[dict[str, Any]], rows: list[dict[str, Any]], out: Path) -> None:
    """Running and succeeded pods over time, A against B, from each case's first successful run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "plots").mkdir(exist_ok=True)
    for row in rows:
        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=90)
        for system, color in (("A", "tab:blue"), ("B", "tab:orange")):
            runs = [r for r in _ok(results) if _case_key(r) == _case_key(row) and r["system"] == system]
            if not runs or not runs[0]["series"]:
                continue
            series = runs[0]["series"]
            t = [0.0] + [s[0] for s in series]
            label = "JobBatch" if system == "A" else "Indexed Job"
            ax.step(t, [0] + [s[2] for s in series], where="post", color=color, label=f"{label}: succeeded")
            ax.step(t, [0] + [s[1] for s in series], where="post", color=color, ls="--", label=f"{label}: running")
        ax.set_title(f"{row['plane']}: {_case(row)}", fontsize=10)
        ax.set_xlabel("seconds since apply")
        ax.set_ylabel("pods")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center right")
        fig.tight_layout()
        fig.savefig(out / "plots" / _plot_name(row))
        plt.close(fig)


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
    return {
        "started": min(d["started"] for d in reports),
        "finished": max(d["finished"] for d in reports),
        "command": "; ".join(d["command"] for d in reports),
        "machine": reports[0]["machine"],
        "versions": reports[0]["versions"],
        "runs": "/".join(sorted({str(d["runs"]) for d in reports})),
        "planes": list(planes.values()),
        "results": [r for d in reports for r in d["results"]],
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
