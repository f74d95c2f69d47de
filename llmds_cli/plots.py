"""Chart helpers shared by every component: one look, PNG + SVG, headless.

matplotlib is imported inside the functions (it costs ~0.3 s), never at module import, so
that ``llmds --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

# One colour per implementation, stable across charts: ours first and always the same.
_PALETTE = ("#1f6feb", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d6a9f", "#2e4057", "#8c8c8c")


def figure(width: float = 7.5, height: float = 4.5):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    ax.grid(True, alpha=0.3)
    return fig, ax


def colour(index: int) -> str:
    return _PALETTE[index % len(_PALETTE)]


def save(fig, folder: Path, name: str) -> list[Path]:
    """Write ``name.png`` and ``name.svg`` into ``folder`` and close the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    paths = []
    for suffix in ("png", "svg"):
        path = folder / f"{name}.{suffix}"
        tmp = folder / f".{name}.tmp.{suffix}"
        fig.savefig(tmp, format=suffix)
        tmp.replace(path)
        paths.append(path)
    plt.close(fig)
    return paths


def grouped_bars(folder: Path, name: str, title: str, groups: Sequence[str],
                 series: dict[str, Sequence[float]], ylabel: str, log: bool = False,
                 annotate: str = "{:,.0f}") -> list[Path]:
    """Bars per group (e.g. operation) and series (e.g. implementation), values written on top."""
    import numpy as np

    fig, ax = figure()
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for index, (label, values) in enumerate(series.items()):
        positions = x + (index - (len(series) - 1) / 2) * width
        bars = ax.bar(positions, values, width, label=label, color=colour(index))
        for bar, value in zip(bars, values):
            if value == value and value > 0:  # skip NaN (unavailable) and zero
                ax.annotate(annotate.format(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    return save(fig, folder, name)


def scatter_tradeoff(folder: Path, name: str, title: str,
                     points: dict[str, Sequence[tuple[float, float, str]]],
                     xlabel: str, ylabel: str, logx: bool = False, logy: bool = False,
                     connect: bool = False) -> list[Path]:
    """Quality/speed trade-off: one marker series per implementation, points labelled."""
    fig, ax = figure()
    for index, (label, values) in enumerate(points.items()):
        if not values:
            continue
        ordered = sorted(values)
        xs = [p[0] for p in ordered]
        ys = [p[1] for p in ordered]
        ax.plot(xs, ys, marker="o", linestyle="-" if connect else "none", label=label, color=colour(index))
        for x, y, text in ordered:
            if text:
                ax.annotate(text, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    return save(fig, folder, name)
