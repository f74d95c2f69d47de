"""Rich tables for the terminal: the closing table of every run, listings, environment."""

from __future__ import annotations

import math
import sys
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table

from llmds_cli.components.base import Column


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def results_table(title: str, rows: list[dict[str, Any]], columns: Sequence[Column],
                  higher_is_better: dict[str, bool] | None = None, baseline_impl: str = "llmds") -> Table:
    """One line per configuration, the component's columns, and ratios against our first config.

    A ratio is ours / peer for higher-is-better figures and peer / ours otherwise, so a ratio
    above 1 always means ours is better.
    """
    values: dict[str, dict[str, Any]] = {}
    for r in rows:
        values.setdefault(r["config"], {"impl": r["impl"]})[r["metric"]] = r["value"]
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("implementation / configuration", overflow="fold", max_width=60)
    shown = [c for c in columns if any(c.metric in v for v in values.values())]
    for column in shown:
        table.add_column(column.header, justify="right")
    for config, v in values.items():
        if not any(c.metric in v for c in shown):
            continue  # rows that only carry figures for goals or other tables
        style = "bold cyan" if v["impl"] == baseline_impl else ""
        table.add_row(config, *[_fmt(v.get(c.metric), c.fmt) for c in shown], style=style)
    ours_rows = {c: v for c, v in values.items() if v["impl"] == baseline_impl}
    if ours_rows and higher_is_better and any(v["impl"] != baseline_impl for v in values.values()):
        table.add_section()
        for config, v in values.items():
            if v["impl"] == baseline_impl:
                continue
            ours = ours_rows[closest_config(config, list(ours_rows))]
            cells = []
            for c in shown:
                better = higher_is_better.get(c.metric)
                a, b = ours.get(c.metric), v.get(c.metric)
                if better is None or not a or not b:
                    cells.append("")
                    continue
                ratio = a / b if better else b / a
                cells.append(f"[{'green' if ratio >= 1 else 'red'}]{ratio:.2f}x[/]")
            if any(cells):
                table.add_row(f"{baseline_impl} vs {config}", *cells, style="italic")
    return table


def _params(config: str) -> set[str]:
    inside = config[config.find("(") + 1:config.rfind(")")] if "(" in config else ""
    return {p for p in inside.split(",") if p}


def closest_config(config: str, candidates: list[str]) -> str:
    """The candidate measured most like ``config``: same search setting (the suffix after the
    parameters, e.g. " ef=20"), then the most parameters in common; ties go to the first."""
    return max(candidates, key=lambda c: (_suffix(c) == _suffix(config), len(_params(c) & _params(config)),
                                          -candidates.index(c)))


def _suffix(config: str) -> str:
    """What follows the implementation's parameters in a row name, e.g. " ef=20"."""
    return config[config.rfind(")") + 1:] if ")" in config else ""


def key_value_table(title: str, pairs: dict[str, Any]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in pairs.items():
        table.add_row(str(key), "—" if value is None else str(value))
    return table


def console(stderr: bool = False) -> Console:
    # piped output (CI logs, `| tee`) would otherwise wrap wide tables at 80 columns
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 160)
