"""What every component module provides, and the adapter life cycle every implementation follows.

A component module ``llmds_cli/components/<name>.py`` defines:

``ADAPTERS: dict[str, type[Adapter]]``
    Our implementation under the key ``"llmds"`` and one adapter per peer of the registry entry.
``load_workload(spec: WorkloadSpec) -> Workload``
    Reads (or generates) the dataset named by the spec.
``configurations(mode, params, sweep, impls) -> list[Config]``
    The configurations a ``bench`` (``mode="bench"``) or ``compare`` (``mode="compare"``) run
    executes. ``params`` are the user's overrides, ``sweep`` asks for the parameter sweep.
``summarize(records, context) -> list[dict]``
    Tidy rows ``{impl, config, op, metric, value, unit}`` computed from the raw records only (plus
    the workload's JSON ``context``), so that ``llmds report`` can redo it from a run folder.
``TABLE: tuple[Column, ...]``
    The metrics shown in the closing rich table, in order.
``charts(rows, records, context, folder) -> list[Path]``
    Writes the component's charts (PNG and SVG) into the run folder.
and optionally ``parity(workload) -> list[dict]``: records of ``op="parity"`` checking that ours
and a peer compute the same thing before any ratio is reported (DESIGN.md, "Measuring honestly"),
and ``relative_cost(config) -> float``: a rough guess of how long a configuration takes next to
the others of its sweep. Executors start the costliest first, so that parallel workers finish
together instead of one running the longest configuration alone at the end.

Adapters follow one life cycle, in the manner of ann-benchmarks: ``warmup`` (compile, untimed
for build/query figures, timed apart) → ``build`` → ``run`` yielding raw records →
``memory_bytes`` → ``describe`` → ``close``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything needed to (re)load a workload in any process: plain, picklable values."""

    component: str
    dataset: str
    data_dir: str | None = None
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = ()  # sorted (key, value) pairs, e.g. ("queries", 300)

    def option(self, key: str, default: Any = None) -> Any:
        return dict(self.options).get(key, default)


@dataclass
class Workload:
    """A loaded dataset, ready for adapters.

    ``data`` is the component-specific payload; ``context`` is the JSON-able ground truth that
    ``summarize`` needs (relevance judgements, exact neighbours, ...); ``checksum`` identifies
    the input so two runs can be told apart; ``description`` is shown and stored.
    """

    name: str
    data: Any
    checksum: str
    description: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """One configuration of a sweep: which implementation, with which parameters."""

    impl: str
    params: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, impl: str, params: dict[str, Any]) -> "Config":
        return cls(impl, tuple(sorted(params.items())))

    @property
    def id(self) -> str:
        inner = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.impl}({inner})"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class RunOptions:
    """Options that change how a configuration is measured, not what it computes."""

    repeats: int = 3
    trace_memory: bool = True


@dataclass(frozen=True)
class Column:
    """A metric shown in the closing table: its header and number format."""

    metric: str
    header: str
    fmt: str = "{:.3f}"


@dataclass(frozen=True)
class Goal:
    """A target from the component's issue, checked in `compare` reports (never in tests).

    With ``peer`` set, the figure checked is the ratio ours / peer of ``metric`` (rows at the
    same search setting); without, ours' value itself. ``datasets`` limits the goal to runs on
    those datasets (empty: any).
    """

    text: str
    metric: str
    peer: str | None = None
    peer_metric: str | None = None  # the peer's figure to divide by, when named differently
    at_least: float | None = None
    at_most: float | None = None
    datasets: tuple[str, ...] = ()

    def met(self, value: float) -> bool:
        return ((self.at_least is None or value >= self.at_least)
                and (self.at_most is None or value <= self.at_most))


class Adapter:
    """One implementation (ours or a peer) behind the fixed benchmark life cycle.

    Subclasses set ``impl`` (the name shown in tables) and ``requires`` (import names that
    must be present; a missing one makes the implementation *unavailable*, never a crash).
    """

    impl: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    install_hint: ClassVar[str] = "pip install 'llmds[refs]'"

    def __init__(self, params: dict[str, Any], options: RunOptions = RunOptions()):
        self.params = params
        self.options = options

    @classmethod
    def missing(cls) -> list[str]:
        return [name for name in cls.requires if importlib.util.find_spec(name) is None]

    def warmup(self, workload: Workload) -> None:
        """Pay one-off costs (JIT compilation) on a small slice; timed apart from build."""

    def build(self, workload: Workload) -> None:
        raise NotImplementedError

    def run(self, workload: Workload) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def memory_bytes(self) -> int:
        return 0

    def describe(self) -> dict[str, Any]:
        return {"impl": self.impl, **self.params}

    def close(self) -> None:
        """Release what the implementation holds."""


def checksum_of_files(paths: list[Path]) -> str:
    """SHA-256 over the bytes of several files, in order: identifies a dataset version."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def checksum_of_params(**params: Any) -> str:
    """Identifies a generated dataset by its generator parameters."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
