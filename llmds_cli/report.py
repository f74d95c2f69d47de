"""The one report of `llmds compare all`: every component against its peers, with goals.

Writes ``results/compare/<run-id>/report.md`` and a self-contained ``report.html`` (tables and
charts embedded as base64 PNG). Each component's section lists its figures per implementation,
the ratio against each peer, parity checks, and every goal of its issue with the value
measured and whether it is met. Components not built yet are listed as such.
"""

from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmds_cli import registry
from llmds_cli.components.base import Goal
from llmds_cli.results import RunFolder, atomic_write_json, atomic_write_text
from llmds_cli.render import closest_config


@dataclass
class GoalResult:
    goal: Goal
    value: float | None
    met: bool | None  # None: not measurable in this run (peer missing, other dataset)


def _values(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    values: dict[str, dict[str, Any]] = {}
    for r in rows:
        values.setdefault(r["config"], {"impl": r["impl"]})[r["metric"]] = r["value"]
    return values


def evaluate_goals(goals: tuple[Goal, ...], rows: list[dict[str, Any]], dataset: str) -> list[GoalResult]:
    values = _values(rows)
    ours = [(c, v) for c, v in values.items() if v["impl"] == "llmds"]
    results = []
    for goal in goals:
        if goal.datasets and dataset not in goal.datasets:
            continue
        value = None
        if goal.peer is None:
            measured = [v[goal.metric] for _, v in ours if goal.metric in v]
            if measured:
                # the best configuration of ours is what a user would pick
                value = max(measured) if goal.at_least is not None else min(measured)
        else:
            peer_metric = goal.peer_metric or goal.metric
            peers = [pc for pc, pv in values.items() if pv["impl"] == goal.peer and peer_metric in pv]
            for config, v in ours:
                if goal.metric in v and peers:
                    peer = values[closest_config(config, peers)]
                    if peer[peer_metric]:
                        value = v[goal.metric] / peer[peer_metric]
                        break
        results.append(GoalResult(goal, value, None if value is None or math.isnan(value) else goal.met(value)))
    return results


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _verdict(result: GoalResult, quick: bool = False) -> str:
    verdict = {True: "met", False: "NOT met", None: "not measured"}[result.met]
    return f"{verdict} (quick)" if quick and result.met is not None else verdict


@dataclass
class Section:
    component: str
    folder: RunFolder | None
    rows: list[dict[str, Any]]
    parity: list[dict[str, Any]]
    goals: list[GoalResult]
    charts: list[str]
    dataset: str
    quick: bool = False
    note: str = ""


def section_for(run) -> Section:
    meta = run.folder.read_json("results.json")
    module = registry.get(meta["component"]).load()
    dataset = meta["dataset"]["name"]
    goals = evaluate_goals(getattr(module, "GOALS", ()), run.rows, dataset)
    return Section(meta["component"], run.folder, run.rows, run.parity, goals,
                   [c for c in run.charts if c.endswith(".png")], dataset, bool(meta.get("quick")))


def _table_rows(section: Section) -> tuple[list[str], list[list[str]]]:
    module = registry.get(section.component).load()
    columns = [c for c in module.TABLE if any(r["metric"] == c.metric for r in section.rows)]
    values = _values(section.rows)
    header = ["implementation / configuration", *[c.header for c in columns]]
    body = [[config, *[_fmt(v.get(c.metric)) for c in columns]] for config, v in values.items()
            if any(c.metric in v for c in columns)]
    return header, body


def write(sections: list[Section], folder: Path) -> list[Path]:
    planned = [c for c in registry.COMPONENTS.values() if not c.ready]
    summary_rows = []
    for s in sections:
        met = sum(g.met is True for g in s.goals)
        failed = sum(g.met is False for g in s.goals)
        parity_failed = any(p.get("passed") is False for p in s.parity)
        summary_rows.append([s.component, s.dataset, f"{met}/{len(s.goals)}", str(failed),
                             "FAILED" if parity_failed else ("passed" if any("passed" in p for p in s.parity) else "—"),
                             str(s.folder.path) if s.folder else s.note])
    quick = any(s.quick for s in sections)
    profile_line = ("**Quick profile**: subsets of queries, requests and stream items; verdicts are indicative. "
                    "Run `llmds compare all --full` for figures that count." if quick else
                    "Full profile: every query, request and stream item.")
    md = ["# llmds compare report", "",
          "Every figure below was measured in this run, ours and each peer on the same data, one thread.", "",
          profile_line, "",
          "| component | dataset | goals met | goals not met | parity | run folder |", "|---|---|---|---|---|---|"]
    md += ["| " + " | ".join(r) + " |" for r in summary_rows]
    for c in planned:
        md.append(f"| {c.name} | — | — | — | — | planned, not built yet (issue {c.issue}) |")
    for s in sections:
        header, body = _table_rows(s)
        md += ["", f"## {s.component} — {registry.get(s.component).title} ({s.dataset})", "",
               "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(row) + " |" for row in body]
        if s.parity:
            md += ["", "Parity:"]
            for p in s.parity:
                if "passed" in p:
                    md.append(f"- {p['impl']} ({p.get('config', '')}): max |difference| {p['max_abs_diff']:.2e}, "
                              f"tolerance {p['tolerance']:.0e}: {'passed' if p['passed'] else 'FAILED'}")
                else:
                    md.append(f"- {p['impl']}: {p.get('status', '')} {p.get('reason', '')}".rstrip())
        if s.goals:
            md += ["", "| goal | measured | verdict |", "|---|---|---|"]
            md += [f"| {g.goal.text} | {_fmt(g.value)} | {_verdict(g, s.quick)} |" for g in s.goals]
        for chart in s.charts:
            md.append(f"\n![{chart}]({os.path.relpath(s.folder.path / chart, folder)})")
    md_path = folder / "report.md"
    atomic_write_text(md_path, "\n".join(md) + "\n")
    html_path = folder / "report.html"
    atomic_write_text(html_path, _html(sections, summary_rows, planned))
    atomic_write_json(folder / "report.json", {
        "sections": [{"component": s.component, "dataset": s.dataset,
                      "run": str(s.folder.path) if s.folder else None,
                      "goals": [{"goal": g.goal.text, "value": g.value, "met": g.met} for g in s.goals],
                      "parity": s.parity} for s in sections],
        "planned": [c.name for c in planned],
    })
    return [md_path, html_path]


def _html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _html(sections: list[Section], summary_rows: list[list[str]], planned) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>llmds compare report</title><style>",
             "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}th{background:#f3f4f6}"
             ".met{color:#15803d}.not{color:#b91c1c;font-weight:bold}img{max-width:100%;border:1px solid #eee}</style></head><body>",
             "<h1>llmds compare report</h1><p>Every figure was measured in this run, ours and each peer on the same data, one thread.</p>"]
    if any(s.quick for s in sections):
        parts.append("<p class='not'>Quick profile: subsets of queries, requests and stream items; verdicts are indicative. "
                     "Run <code>llmds compare all --full</code> for figures that count.</p>")
    summary = summary_rows + [[c.name, "—", "—", "—", "—", f"planned, not built yet (issue {c.issue})"] for c in planned]
    parts.append(_html_table(["component", "dataset", "goals met", "goals not met", "parity", "run folder"], summary))
    for s in sections:
        header, body = _table_rows(s)
        parts.append(f"<h2>{html.escape(s.component)} — {html.escape(registry.get(s.component).title)} ({html.escape(s.dataset)})</h2>")
        parts.append(_html_table(header, body))
        for p in s.parity:
            if "passed" in p:
                cls = "met" if p["passed"] else "not"
                parts.append(f"<p class='{cls}'>parity with {html.escape(p['impl'])}: max |difference| "
                             f"{p['max_abs_diff']:.2e} (tolerance {p['tolerance']:.0e}): {'passed' if p['passed'] else 'FAILED'}</p>")
            else:
                parts.append(f"<p>parity with {html.escape(p['impl'])}: {html.escape(p.get('status', ''))} "
                             f"{html.escape(p.get('reason', ''))}</p>")
        if s.goals:
            goal_rows = [[g.goal.text, _fmt(g.value), _verdict(g, s.quick)] for g in s.goals]
            table = _html_table(["goal", "measured", "verdict"], goal_rows)
            table = table.replace("<td>NOT met</td>", "<td class='not'>NOT met</td>").replace("<td>met</td>", "<td class='met'>met</td>")
            parts.append(table)
        for chart in s.charts:
            data = base64.b64encode((s.folder.path / chart).read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(chart)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(chart)}</figcaption></figure>")
    parts.append("</body></html>")
    return "".join(parts)
