"""``bench`` and ``compare``: turn a component's configurations into a finished run folder.

The steps are the same for every component and every executor: plan the configurations (a
grid such as ``-p M=8,16 -p ef_construction=100,200`` is expanded here), load the workload
once, run the configurations through an executor (records are appended to ``raw.jsonl`` as
each finishes), then summarise the raw records, draw the charts and write ``results.json``
last. ``llmds report`` reuses :func:`finish_run` on a stored folder, so tables and charts can
always be redrawn.

A run folder also holds ``sweep.json``, what the sweep was (dataset checksum, configurations,
measuring options). ``--resume FOLDER`` re-runs the same sweep into that folder: finished
configurations are skipped, cut-short or failed ones run again, and a different sweep is
refused rather than mixed in.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from llmds.errors import InvalidInputError
from llmds_cli import envinfo, registry
from llmds_cli.components.base import Config, RunOptions, WorkloadSpec
from llmds_cli.results import ENV, RAW, RESULTS, SCHEMA_VERSION, SWEEP, RunFolder, summary_table
from llmds_cli.runner import (
    Executor, LocalExecutor, Task, TaskResult, done_record, load_workload, run_tasks, worker_identity,
)


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
    resume: str | None = None  # a run folder of the same sweep to complete


@dataclass
class FinishedRun:
    folder: RunFolder
    rows: list[dict[str, Any]]
    charts: list[str]
    failures: dict[str, str]
    parity: list[dict[str, Any]]


def parse_params(component: str, pairs: list[str]) -> dict[str, Any]:
    """``["k1=1.2", "method=bm25l", "b=0.4,0.75"]`` → typed values, using each parameter's
    default's type; a comma-separated value becomes a list, one grid axis of the sweep."""
    spec = registry.get(component)
    parsed: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise InvalidInputError(f"--param expects NAME=VALUE, got {pair!r}.")
        name, text = pair.split("=", 1)
        default = spec.param(name.strip()).default
        values = [_coerce(name, part.strip(), default) for part in text.split(",")] if "," in text else None
        parsed[name.strip()] = values if values is not None else _coerce(name, text.strip(), default)
    return parsed


def grid_points(params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the list-valued parameters (in the order given), others fixed."""
    axes = [(name, value) for name, value in params.items() if isinstance(value, list)]
    if not axes:
        return [params]
    points = []
    for combination in itertools.product(*(values for _, values in axes)):
        points.append({**params, **dict(zip((name for name, _ in axes), combination))})
    return points


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
    # absolute, so that a worker process started elsewhere (--ship path) finds the same folder
    data_dir = str(Path(request.data_dir).resolve()) if request.data_dir else None
    return WorkloadSpec(component.name, dataset, data_dir, request.seed, tuple(sorted(options.items())))


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


@dataclass
class Plan:
    """What a sweep will run: the workload and the configurations, in order."""

    component: registry.Component
    module: Any
    spec: WorkloadSpec
    impls: list[str]
    configs: list[Config]


def plan(request: SweepRequest) -> Plan:
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
    configs: dict[str, Config] = {}
    for point in grid_points(request.params):
        for config in module.configurations(request.mode, point, request.sweep, impls):
            configs.setdefault(config.id, config)
    return Plan(component, module, spec, impls, list(configs.values()))


def _sweep_identity(request: SweepRequest, sweep_plan: Plan, checksum: str) -> dict[str, Any]:
    """What makes two invocations the same sweep (stored as sweep.json, checked by --resume)."""
    spec = sweep_plan.spec
    return {"component": spec.component, "mode": request.mode, "dataset": spec.dataset, "seed": spec.seed,
            "workload_options": dict(spec.options), "checksum": checksum,
            "run_options": asdict(request.options), "configurations": [c.id for c in sweep_plan.configs]}


def _resume_folder(path: str, identity: dict[str, Any]) -> tuple[RunFolder, set[str]]:
    folder = RunFolder.open(path)
    if not (folder.path / SWEEP).is_file():
        raise InvalidInputError(f"{folder.path} has no {SWEEP}, so it cannot be resumed (a profile run, or one "
                                "written by an older llmds); start a new run without --resume.")
    stored = folder.read_json(SWEEP)
    differences = [key for key in identity if stored.get(key) != identity[key]]
    if differences:
        shown = "; ".join(_difference(key, stored.get(key), identity[key]) for key in differences)
        raise InvalidInputError(f"--resume {folder.path} holds a different sweep ({shown}); repeat the command "
                                "that started it, or run without --resume for a new folder.")
    return folder, folder.keep_finished()


def _difference(key: str, there: Any, now: Any) -> str:
    """One differing item of two sweeps' identities; lists (the configurations) by what one has and the other lacks."""
    if isinstance(there, list) and isinstance(now, list):
        only_there = [item for item in there if item not in now]
        only_now = [item for item in now if item not in there]
        parts = ([f"only there: {_short(', '.join(map(str, only_there)), 200)}"] if only_there else []) + \
                ([f"only now: {_short(', '.join(map(str, only_now)), 200)}"] if only_now else [])
        return f"{key}: {'; '.join(parts) or 'same items in another order'}"
    return f"{key}: {_short(there)} there, {_short(now)} now"


def _short(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Workers:
    """Which processes measured the run: their host, pid, environment and how many configurations."""

    def __init__(self, previous: list[dict[str, Any]] | None = None, envs: dict[str, Any] | None = None):
        self.seen: dict[tuple[str, int], dict[str, Any]] = {(w["host"], w["pid"]): dict(w) for w in previous or []}
        self.envs: dict[str, Any] = dict(envs or {})

    def add(self, result: TaskResult) -> None:
        worker = result.worker
        if not worker:
            return
        entry = self.seen.setdefault((worker["host"], worker["pid"]), {
            "host": worker["host"], "pid": worker["pid"], "env": worker["env_fingerprint"], "configurations": 0})
        entry["configurations"] += 1
        self.envs.setdefault(worker["env_fingerprint"], worker["env"])

    def as_json(self) -> dict[str, Any]:
        return {"workers": list(self.seen.values()), "worker_envs": self.envs}


def execute(request: SweepRequest, executor: Executor | None = None,
            progress: Callable[[TaskResult], None] | None = None,
            on_start: Callable[[int, int], None] | None = None) -> FinishedRun:
    """Run a bench or compare sweep end to end and return the finished run folder.

    ``on_start(total, already_finished)`` is called once the plan (and, with ``--resume``, the
    finished configurations) is known; ``progress(result)`` after each configuration.
    """
    sweep_plan = plan(request)
    component, module, spec, configs = sweep_plan.component, sweep_plan.module, sweep_plan.spec, sweep_plan.configs
    workload = load_workload(spec)  # fail fast on a missing dataset, before a folder exists
    verified = _verify_local_copy(spec)
    executor = executor or LocalExecutor()
    identity = _sweep_identity(request, sweep_plan, workload.checksum)
    if request.resume:
        folder, finished = _resume_folder(request.resume, identity)
        previous_env = folder.read_json(ENV) if (folder.path / ENV).is_file() else {}
        (folder.path / RESULTS).unlink(missing_ok=True)  # in progress again until finish_run
    else:
        folder, finished, previous_env = RunFolder.create(component.name, request.results_dir), set(), {}
        folder.write_json(SWEEP, identity)
    workers = _Workers(previous_env.get("workers"), previous_env.get("worker_envs"))
    # described again after the run (re-runs, scatters, late workers); not per configuration, as
    # asking a Dask worker for its settings would run code beside the one being timed
    client_env = {**envinfo.collect(), **executor.describe()}

    def write_env() -> None:  # after every configuration, so an interrupted run still names who measured what
        folder.write_json(ENV, {**client_env, **workers.as_json()})

    write_env()
    folder.write_json("context.json", workload.context)
    failures: dict[str, str] = {}
    parity_records: list[dict[str, Any]] = []
    if request.mode == "compare" and hasattr(module, "parity"):
        parity_records = [r for r in folder.records() if r.get("op") == "parity"] if request.resume else []
        if not parity_records:
            here = worker_identity()  # parity is checked in this process, at every point of a grid
            points = grid_points(request.params)
            axes = [name for name, value in request.params.items() if isinstance(value, list)]
            for point in points:
                where = {"host": here["host"], "env": here["env_fingerprint"],
                         **({"point": {name: point[name] for name in axes}} if axes else {})}
                parity_records += [{**r, **where} for r in module.parity(workload, point)]
            folder.append_records(parity_records)
    tasks = [Task(spec, config, request.options) for config in configs if config.id not in finished]
    if hasattr(module, "relative_cost"):  # costliest first: parallel workers then finish together
        tasks.sort(key=lambda task: -module.relative_cost(task.config))
    if on_start:
        on_start(len(configs), len(configs) - len(tasks))

    def store(result: TaskResult) -> None:
        records = list(result.records)
        if result.error:
            failures[result.config_id] = result.error
            impl = result.config_id.split("(", 1)[0]
            records.append({"op": "failed", "impl": impl, "config": result.config_id, "error": result.error})
        records.append(done_record(result))  # one append per configuration: all of it, or (cut short) none
        folder.append_records(records)
        workers.add(result)
        write_env()
        if progress:
            progress(result)

    started = time.perf_counter()
    try:
        run_tasks(tasks, workload, executor, store)
    except KeyboardInterrupt:
        raise _interrupted(folder) from None
    wall = time.perf_counter() - started
    execution = executor.describe()  # after the run: re-runs, scatters and workers that joined
    folder.write_json(ENV, {**client_env, **execution, **workers.as_json()})
    if tasks and failures and len(failures) == len(tasks) and not finished:
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
        "execution": {**execution, "ran": len(tasks), "skipped_finished": len(configs) - len(tasks),
                      "wall_s": round(wall, 3)},
    }
    try:
        return finish_run(folder, meta)
    except KeyboardInterrupt:
        raise _interrupted(folder) from None


def _interrupted(folder: RunFolder) -> KeyboardInterrupt:
    """Ctrl-C during a sweep, carrying the message the CLI prints: where the finished configurations are."""
    return KeyboardInterrupt(f"\ninterrupted: finished configurations are kept in {folder.path}; complete the run "
                             f"with the same command and --resume {folder.path}")


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
    # configuration order, whatever order they finished in, so every executor's run reads the same
    order = {config: i for i, config in enumerate(meta.get("configurations", []))}
    records = sorted(folder.records(), key=lambda r: order.get(r.get("config"), -1))
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
