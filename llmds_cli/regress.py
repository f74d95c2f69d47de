"""``llmds compare --runs A B``: did B get slower, bigger or worse than A?

Works on two run folders of the same component (``llmds bench``/``compare`` runs: figures
from ``results.csv``) or two ``make bench`` folders (pytest-benchmark JSON: per-benchmark
median time). Each shared figure is classed by its name — time, throughput, memory or
quality — and flagged when it moved the wrong way by more than that class's threshold.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmds.errors import InvalidInputError
from llmds_cli.results import atomic_write_json, atomic_write_text, resolve_run_path

DEFAULT_THRESHOLDS = {"time": 0.10, "throughput": 0.10, "memory": 0.05, "quality": 0.005}
_QUALITY = ("recall", "ndcg", "hit_rate", "precision", "hh_", "goodput_share")
_THROUGHPUT = ("qps", "per_s", "throughput", "ops")
_MEMORY = ("bytes", "mib", "kib", "bits_per", "memory")
_TIME = ("_s", "_us", "_ns", "latency", "time", "median", "mean", "min", "max")


def classify(metric: str) -> str | None:
    """Which way is worse for a figure, from its name; None for figures with no direction."""
    # "qps_at_recall_0.95" is a throughput read at a recall level: the part before "_at_" says what it measures
    name = metric.lower().split("_at_")[0]
    if name.startswith("compile"):  # one-off JIT compilation, cached per machine: not a speed figure
        return None
    if any(key in name for key in _QUALITY):
        return "quality"
    if any(key in name for key in _THROUGHPUT):
        return "throughput"
    if any(key in name for key in _MEMORY):
        return "memory"
    if name.endswith(_TIME) or any(key in name for key in ("latency", "time")):
        return "time"
    return None


@dataclass
class RunFigures:
    path: Path
    component: str
    kind: str  # "run" or "pytest-benchmark"
    identity: dict[str, Any]  # dataset checksum and parameters: what must match to compare
    figures: dict[tuple[str, str], float]


def load(path: str | Path) -> RunFigures:
    folder = resolve_run_path(path)
    if not folder.is_dir():
        raise InvalidInputError(f"run folder {folder} does not exist.")
    bench_json = folder / "benchmark.json"
    if bench_json.is_file():
        try:
            data = json.loads(bench_json.read_text())
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{bench_json} is not valid JSON ({exc}); run `make bench` again.") from None
        figures = {}
        for bench in data.get("benchmarks", []):
            stats = bench["stats"]
            name = bench["fullname"]
            if bench.get("param") and "[" not in name:  # parametrised: small and large are two figures
                name = f"{name}[{bench['param']}]"
            figures[(name, "median_s")] = float(stats["median"])
            figures[(name, "min_s")] = float(stats["min"])
        return RunFigures(folder, "bench", "pytest-benchmark",
                          {"machine": data.get("machine_info", {}).get("cpu", {}).get("brand_raw")}, figures)
    results, table = folder / "results.json", folder / "results.csv"
    if not results.is_file() or not table.is_file():
        raise InvalidInputError(
            f"{folder} is not a complete run folder (results.json and results.csv are needed; "
            "an interrupted run has neither)."
        )
    meta = json.loads(results.read_text())
    if meta.get("mode") == "profile":
        raise InvalidInputError(f"{folder} is a memory profile; compare --runs takes bench or compare runs.")
    figures = {}
    with open(table, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            figures[(row["config"], row["metric"])] = float(row["value"])
    identity = {"dataset": meta.get("dataset", {}).get("checksum"), "params": meta.get("params"),
                "mode": meta.get("mode"), "quick": meta.get("quick")}
    return RunFigures(folder, meta.get("component", folder.parent.name), "run", identity, figures)


@dataclass
class Change:
    config: str
    metric: str
    before: float
    after: float
    kind: str | None
    change: float  # relative change for time/throughput/memory, absolute for quality
    regressed: bool


def compare_runs(a: RunFigures, b: RunFigures, thresholds: dict[str, float] | None = None,
                 force: bool = False) -> list[Change]:
    if a.component != b.component:
        raise InvalidInputError(f"cannot compare a {a.component} run with a {b.component} run; "
                                "pass two runs of the same component.")
    if a.identity != b.identity and not force:
        differences = [f"{key}: {a.identity.get(key)!r} vs {b.identity.get(key)!r}"
                       for key in sorted(set(a.identity) | set(b.identity)) if a.identity.get(key) != b.identity.get(key)]
        raise InvalidInputError(
            f"the runs differ ({'; '.join(differences)}), so their figures are not comparable. "
            "Pass --force to compare anyway."
        )
    limits = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    changes = []
    for key in sorted(set(a.figures) & set(b.figures)):
        before, after = a.figures[key], b.figures[key]
        kind = classify(key[1])
        if kind == "quality":
            change = after - before
            regressed = change < -limits["quality"]
        else:
            change = (after - before) / before if before else 0.0
            if kind in ("time", "memory"):
                regressed = change > limits[kind]
            elif kind == "throughput":
                regressed = change < -limits[kind]
            else:
                regressed = False
        changes.append(Change(key[0], key[1], before, after, kind, change, regressed))
    if not changes:
        raise InvalidInputError("the two runs share no figure (different configurations?).")
    return changes


def write_reports(changes: list[Change], a: RunFigures, b: RunFigures, folder: Path) -> list[Path]:
    """Write regression.json and regression.md into ``folder`` (B's run folder by default)."""
    payload = {
        "before": str(a.path), "after": str(b.path), "component": a.component,
        "regressions": sum(c.regressed for c in changes),
        "changes": [c.__dict__ for c in changes],
    }
    json_path, md_path = folder / "regression.json", folder / "regression.md"
    atomic_write_json(json_path, payload)
    lines = [f"# {a.component}: {a.path.name} → {b.path.name}", "",
             f"{payload['regressions']} regression(s) among {len(changes)} shared figures.", "",
             "| configuration | figure | before | after | change | verdict |", "|---|---|---:|---:|---:|---|"]
    for c in changes:
        lines.append(f"| {c.config} | {c.metric} | {c.before:.6g} | {c.after:.6g} | {format_change(c)} | "
                     f"{'REGRESSION' if c.regressed else ''} |")
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return [json_path, md_path]


def format_change(change: Change) -> str:
    if change.kind == "quality":
        return f"{change.change:+.4f}"
    return f"{change.change * 100:+.1f}%"


def table(changes: list[Change], a: RunFigures, b: RunFigures):
    from rich.table import Table

    out = Table(title=f"{a.component}: {a.path.name} → {b.path.name}", title_justify="left")
    for header in ("configuration", "figure", "before", "after", "change", ""):
        out.add_column(header, justify="right" if header in ("before", "after", "change") else "left",
                       overflow="fold")
    for c in changes:
        style = "red" if c.regressed else ""
        out.add_row(c.config, c.metric, f"{c.before:.4g}", f"{c.after:.4g}", format_change(c),
                    "REGRESSION" if c.regressed else "", style=style)
    return out
