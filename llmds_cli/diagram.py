"""The architecture diagram, laid out from the registry (no hand-placed coordinates).

Layout works in a grid of monospace character cells: a box is as wide as its longest line
plus padding, so a label can never overflow its box, and boxes are packed left to right
(groups) and top to bottom (components within a group) with fixed gaps, so none overlap.
Groups, boxes, structures, complexities, features and arrows all come from
:mod:`llmds_cli.registry`; a test checks that the diagram's nodes are exactly its components.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmds.errors import InvalidInputError
from llmds_cli import registry

FONT_PT = 9.0
CELL_W_PT = 0.602 * FONT_PT  # advance width of DejaVu Sans Mono
CELL_H_PT = 1.55 * FONT_PT
GROUP_GAP = 10  # columns between groups: room for arrows and their labels
BOX_GAP_X = 3
ROW_GAP = 4  # lines between rows of boxes: room for an arrow label
READY_FILL, PLANNED_FILL = "#dbeafe", "#f3f4f6"
GROUP_FILLS = {"kv-system": "#fff7ed", "scheduling": "#f0fdf4", "retrieval": "#eef2ff"}


@dataclass
class Box:
    name: str
    lines: list[tuple[str, str]]  # (text, style): style in title, planned, structure, feature
    x: float = 0
    y: float = 0

    @property
    def width(self) -> int:
        return max(len(text) for text, _ in self.lines) + 4

    @property
    def height(self) -> int:
        return len(self.lines) + 1


@dataclass
class Group:
    key: str
    title: str
    boxes: list[Box] = field(default_factory=list)
    columns: list[list[Box]] = field(default_factory=list)  # rows of boxes, top to bottom
    x: float = 0
    y: float = 0
    width: float = 0
    height: float = 0


def _box_for(component: registry.Component) -> Box:
    lines = [(component.title, "title")]
    if not component.ready:
        lines.append((f"planned{f' (issue {component.issue})' if component.issue else ''}", "planned"))
    for structure in component.structures:
        lines.append((f"{structure.name}: {structure.complexity}", "structure"))
    for feature in component.features:
        lines.append((f"* {feature}", "feature"))
    return Box(component.name, lines)


def layout() -> tuple[list[Group], dict[str, Box], float, float]:
    """Place groups and boxes; returns them with the total width and height in cells.

    Within a group, components that depend on another member form the top row and the rest
    the row below, so internal arrows point down through a gap tall enough for their labels.
    Groups sit side by side, separated by a gap as wide as the longest arrow label between them.
    """
    groups = []
    boxes: dict[str, Box] = {}
    for key, title in registry.diagram_groups().items():
        members = [c for c in registry.COMPONENTS.values() if c.group == key]
        names = {c.name for c in members}
        top_row = [c for c in members if any(d in names for d in c.depends_on)]
        rest = [c for c in members if c not in top_row]
        group = Group(key, title)
        group.columns = [[_box_for(c) for c in row] for row in (top_row, rest) if row]  # rows
        group.boxes = [b for row in group.columns for b in row]
        groups.append(group)
        boxes.update({b.name: b for b in group.boxes})
    group_of = {b.name: g.key for g in groups for b in g.boxes}
    cross_labels = [len(f.label) for f in registry.FLOWS if group_of[f.source] != group_of[f.target]]
    group_gap = max([GROUP_GAP, *(n + 4 for n in cross_labels)])
    x = 1.0
    top = 3.0
    for group in groups:
        group.x, group.y = x, top
        rows = group.columns
        row_widths = [sum(b.width for b in row) + BOX_GAP_X * (len(row) - 1) for row in rows]
        inner = max(row_widths)
        group.width = max(inner + 4, len(group.title) + 4)
        cy = top + 2.5
        for row, row_width in zip(rows, row_widths):
            cx = x + (group.width - row_width) / 2
            for box in row:
                box.x, box.y = cx, cy
                cx += box.width + BOX_GAP_X
            cy += max(b.height for b in row) + ROW_GAP
        group.height = cy - ROW_GAP + 1 - top
        x += group.width + group_gap
    height = max(g.y + g.height for g in groups)
    for group in groups:
        group.height = height - group.y
    return groups, boxes, x - group_gap + 1, height


def _panels() -> tuple[list[str], list[str]]:
    features = []
    for component in registry.COMPONENTS.values():
        for feature in component.features:
            features.append(f"* {feature} ({component.name})")
    legend = [
        "[blue box]  component built",
        "[grey box]  component planned",
        "Name: O(.)  structure and its cost",
        "* text      key feature",
        "--label-->  data flow",
    ]
    return features, legend


def render(output: Path, both: bool = False) -> list[Path]:
    """Draw the diagram into ``output`` (.png or .svg); with ``both``, write both formats."""
    suffix = output.suffix.lower()
    if suffix not in (".png", ".svg"):
        raise InvalidInputError(f"--output {output}: the diagram is written as .png or .svg.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    groups, boxes, width, height = layout()
    features, legend = _panels()
    panel_top = height + 2
    panel_lines = max(len(features), len(legend)) + 2
    total_h = panel_top + panel_lines + 2
    total_w = max(width, 4 + max(map(len, features), default=0) + 8 + max(map(len, legend)) + 4)
    fig = plt.figure(figsize=(total_w * CELL_W_PT / 72, total_h * CELL_H_PT / 72), dpi=150)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, total_w)
    ax.set_ylim(total_h, 0)
    ax.axis("off")
    mono = {"family": "DejaVu Sans Mono", "size": FONT_PT}
    ax.text(1, 1.2, "llmds architecture (generated from the component registry)",
            fontdict={**mono, "size": FONT_PT + 2, "weight": "bold"}, va="center")
    for group in groups:
        ax.add_patch(FancyBboxPatch((group.x, group.y), group.width, group.height,
                                    boxstyle="round,pad=0,rounding_size=0.8",
                                    fc=GROUP_FILLS.get(group.key, "#f9fafb"), ec="#9ca3af", lw=1))
        ax.text(group.x + 1, group.y + 1.1, group.title, fontdict={**mono, "weight": "bold"}, va="center")
    patches = {}
    for name, box in boxes.items():
        ready = registry.get(name).ready
        patch = FancyBboxPatch((box.x, box.y), box.width, box.height,
                               boxstyle="round,pad=0,rounding_size=0.5",
                               fc=READY_FILL if ready else PLANNED_FILL,
                               ec="#1f6feb" if ready else "#9ca3af", lw=1.4 if ready else 1,
                               linestyle="-" if ready else "--")
        ax.add_patch(patch)
        patches[name] = patch
        for row, (text, style) in enumerate(box.lines):
            font = dict(mono)
            colour = "#111827"
            if style == "title":
                font["weight"] = "bold"
            elif style == "planned":
                colour = "#6b7280"
                font["style"] = "italic"
            elif style == "feature":
                colour = "#92400e"
            ax.text(box.x + 2, box.y + 1 + row, text, fontdict=font, color=colour, va="center")
    for flow in registry.FLOWS:
        ax.annotate("", xy=_centre(boxes[flow.target]), xytext=_centre(boxes[flow.source]),
                    arrowprops={"arrowstyle": "-|>", "color": "#374151", "lw": 1.2,
                                "patchA": patches[flow.source], "patchB": patches[flow.target],
                                "shrinkA": 2, "shrinkB": 2, "connectionstyle": "arc3,rad=0.08"})
        (sx, sy), (tx, ty) = _edge(boxes[flow.source], boxes[flow.target]), _edge(boxes[flow.target], boxes[flow.source])
        ax.text((sx + tx) / 2, (sy + ty) / 2, flow.label, fontdict={**mono, "size": FONT_PT - 1},
                ha="center", va="center", color="#374151",
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.9})
    ax.text(1, panel_top, "Key features", fontdict={**mono, "weight": "bold"}, va="center")
    for row, line in enumerate(features):
        ax.text(1, panel_top + 1.2 + row, line, fontdict=mono, color="#92400e", va="center")
    legend_x = 4 + max(map(len, features), default=0) + 8
    ax.text(legend_x, panel_top, "Legend", fontdict={**mono, "weight": "bold"}, va="center")
    for row, line in enumerate(legend):
        ax.text(legend_x, panel_top + 1.2 + row, line, fontdict=mono, va="center")
    targets = [output.with_suffix(".png"), output.with_suffix(".svg")] if both else [output]
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        for target in targets:
            tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
            fig.savefig(tmp, format=target.suffix[1:])
            tmp.replace(target)
    except OSError as exc:
        raise InvalidInputError(f"cannot write the diagram to {output}: {exc.strerror or exc}; choose a writable --output.") from None
    finally:
        plt.close(fig)
    return targets


def _centre(box: Box) -> tuple[float, float]:
    return box.x + box.width / 2, box.y + box.height / 2


def _edge(box: Box, towards: Box) -> tuple[float, float]:
    """Where the line from ``box``'s centre to ``towards``'s centre leaves ``box``."""
    (cx, cy), (tx, ty) = _centre(box), _centre(towards)
    dx, dy = tx - cx, ty - cy
    scale = min(box.width / 2 / abs(dx) if dx else float("inf"), box.height / 2 / abs(dy) if dy else float("inf"))
    return cx + dx * scale, cy + dy * scale
