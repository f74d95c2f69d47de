"""``bench`` and ``compare``: turn a component's configurations into a finished run folder.

The steps are the same for every component: load the workload once, run the configurations
through an executor (records are appended to ``raw.jsonl`` as each finishes), then summarise
the raw records, draw the charts and write ``results.json`` last. ``llmds report`` reuses
:func:`finish_run` on a stored folder, so tables and charts can always be redrawn.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmds.errors import InvalidInputError
from llmds_cli import envinfo, registry
from llmds_cli.components.base import RunOptions, WorkloadSpec
from llmds_cli.results import RAW, RESULTS, SCHEMA_VERSION, RunFolder, summary_table
from llmds_cli.runner import Executor, LocalExecutor, Task, TaskResult, load_workload, run_tasks


@dataclass
class SweepRequest:
    component: str
    mode: str  # "bench" or "compare"
    dataset: str | None = None
    data_dir: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    sweep: bool = False
    quick: bool = False
    seed: int = 0
    impls: list[str] | None = None  # compare: which implementations (default: ours + every peer)
    options: RunOptions = RunOptions()
    results_dir: str | None = None


@dataclass
class FinishedRun:
    folder: RunFolder
    rows: list[dict[str, Any]]
    charts: list[str]
    failures: dict[str, str]
    parity: list[dict[str, Any]]


def parse_params(component: str, pairs: list[str]) -> dict[str, Any]:
    """``["k1=1.2", "method=bm25l"]`` → typed values, using each parameter's default's type."""
    spec = registry.get(component)
    parsed: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise InvalidInputError(f"--param expects NAME=VALUE, got {pair!r}.")
        name, text = pair.split("=", 1)
        default = spec.param(name.strip()).default
        parsed[name.strip()] = _coerce(name, text.strip(), default)
    return parsed


def _coerce(name: str, text: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise InvalidInputError(f"--param {name}={text!r}: expected a {type(default).__name__}.") from None
    return text


def workload_spec(request: SweepRequest) -> WorkloadSpec:
    component = registry.require_ready(request.component)
    dataset = request.dataset
    if dataset is None and request.data_dir:
        dataset = real_workload(component.name, request.data_dir)
        if dataset is None:
            raise InvalidInputError(
                f"--data-dir {request.data_dir} holds none of {component.name}'s real datasets "
                f"({', '.join(w for w in component.workloads if not w.startswith('synthetic'))}); "
                "pass --dataset NAME with the folder that holds it."
            )
    dataset = dataset or component.default_workload
    if dataset not in component.workloads:
        raise InvalidInputError(
            f"{component.name} does not run on dataset {dataset!r}; it accepts: {', '.join(component.workloads)}."
        )
    options = {"queries": 100} if request.quick else {}
    return WorkloadSpec(component.name, dataset, request.data_dir, request.seed, tuple(sorted(options.items())))


def real_workload(component: str, data_dir: str | Path) -> str | None:
    """The first real (downloadable) dataset of a component found under ``data_dir``, if any."""
    from llmds.errors import DatasetError
    from llmds_cli import datasets

    for name in registry.get(component).workloads:
        if datasets.manifest(name).synthetic:
            continue
        try:
            datasets.locate(name, data_dir)
            return name
        except DatasetError:
            continue
    return None


def execute(request: SweepRequest, executor: Executor | None = None, progress=None) -> FinishedRun:
    """Run a bench or compare sweep end to end and return the finished run folder."""
    component = registry.require_ready(request.component)
    module = component.load()
    spec = workload_spec(request)
    if request.mode == "compare":
        impls = request.impls or ["llmds", *[p.name for p in component.peers if p.name in module.ADAPTERS]]
        unknown = [i for i in impls if i not in module.ADAPTERS]
        if unknown:
            raise InvalidInputError(f"unknown implementation(s) {unknown} for {component.name}; "
                                    f"available: {', '.join(module.ADAPTERS)}.")
    else:
        impls = ["llmds"]
    configs = module.configurations(request.mode, request.params, request.sweep, impls)
    workload = load_workload(spec)  # fail fast on a missing dataset, before a folder exists
    verified = _verify_local_copy(spec)
    executor = executor or LocalExecutor()
    folder = RunFolder.create(component.name, request.results_dir)
    folder.write_json("env.json", {**envinfo.collect(), **executor.describe()})
    folder.write_json("context.json", workload.context)
    failures: dict[str, str] = {}
    parity_records: list[dict[str, Any]] = []
    if request.mode == "compare" and hasattr(module, "parity"):
        parity_records = module.parity(workload, request.params)
        folder.append_records(parity_records)
    tasks = [Task(spec, config, request.options) for config in configs]

    def store(result: TaskResult) -> None:
        if result.records:
            folder.append_records(result.records)
        if result.error:
            failures[result.config_id] = result.error
            impl = result.config_id.split("(", 1)[0]
            folder.append_records([{"op": "failed", "impl": impl, "config": result.config_id, "error": result.error}])
        if progress:
            progress(result)

    run_tasks(tasks, executor, store)
    if failures and len(failures) == len(tasks):
        # nothing was measured: say why, and leave no run folder that looks like a result
        import shutil

        shutil.rmtree(folder.path, ignore_errors=True)
        first = next(iter(failures.values())).splitlines()[0]
        raise InvalidInputError(f"every configuration failed; the first: {first}")
    meta = {
        "schema_version": SCHEMA_VERSION,
        "component": component.name,
        "mode": request.mode,
        "command": " ".join(sys.argv),
        "params": request.params,
        "sweep": request.sweep,
        "quick": request.quick,
        "seed": request.seed,
        "dataset": {**workload.description, "name": workload.name, "checksum": workload.checksum,
                    "matches_manifest": verified},
        "configurations": [c.id for c in configs],
        "failures": failures,
    }
    return finish_run(folder, meta)


def _verify_local_copy(spec: WorkloadSpec) -> bool | None:
    """Whether a downloaded dataset's files match its manifest (None for generated data).

    A mismatch is not an error (a user may benchmark their own variant on purpose), but it is
    said on stderr and recorded, so nobody mistakes the figures for the reference dataset's.
    """
    from llmds_cli import datasets

    if datasets.manifest(spec.dataset).synthetic:
        return None
    folder = datasets.locate(spec.dataset, spec.data_dir)
    entry = datasets.manifest(spec.dataset)
    bad = [rel for rel, status in datasets.verify(spec.dataset, folder).items()
           if status == "mismatch" or (status == "missing" and rel in entry.files)]
    if bad:
        print(f"warning: {folder}: {', '.join(bad)} differ from the {spec.dataset} manifest's checksums; "
              "figures are for this copy, not the reference dataset.", file=sys.stderr)
    return not bad


def finish_run(folder: RunFolder, meta: dict[str, Any]) -> FinishedRun:
    """Summarise raw records, draw charts, write results.csv and (last) results.json."""
    component = registry.get(meta["component"])
    module = component.load()
    records = folder.records()
    context = folder.read_json("context.json")
    rows = module.summarize(records, context)
    rows += memory_rows(records, rows)
    parity = [r for r in records if r.get("op") == "parity"]
    unavailable = [r for r in records if r.get("op") == "unavailable"]
    chart_paths = [str(p.relative_to(folder.path)) for p in module.charts(rows, records, context, folder.path)]
    folder.write_rows(rows)
    failures = meta.get("failures", {})
    folder.write_json(RESULTS, {
        **meta,
        "summary": summary_table(rows),
        "parity": parity,
        "unavailable": unavailable,
        "charts": chart_paths,
        "files": {"raw": RAW, "csv": "results.csv", "env": "env.json", "context": "context.json"},
    })
    folder.mark_latest()
    return FinishedRun(folder, rows, chart_paths, failures, parity)


_MEMORY_FIGURES = {"structure_bytes": ("structure_mib", "build"), "peak_build_bytes": ("peak_build_mib", "build"),
                   "peak_query_bytes": ("peak_query_mib", "search")}


def memory_rows(records: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runner's memory records as rows, for every component, where its summary has none.

    Every configuration gets its structure's own bytes and the traced peaks of building and of
    running the workload; a component that reports them under its own names keeps its rows.
    """
    from llmds_cli import metrics

    present = {(r["config"], r["metric"]) for r in rows}
    extra = []
    for record in records:
        if record.get("op") != "memory" or "config" not in record:
            continue
        for key, (metric, op) in _MEMORY_FIGURES.items():
            if key in record and (record["config"], metric) not in present:
                extra.append(metrics.row(record["impl"], record["config"], op, metric, record[key] / 2**20, "MiB"))
    return extra


def parity_failed(run: FinishedRun) -> bool:
    return any(r.get("passed") is False for r in run.parity)
