"""The ``llmds`` command line: thin argument handling over the registry, runner and run folders.

``main(argv) -> int`` turns the toolkit's own errors (:class:`llmds.errors.LlmdsError`) into a
one-line message and an exit code, so tests call it directly; anything else is a bug and keeps
its traceback. Heavy modules are imported inside the commands that need them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from llmds.errors import LlmdsError
from llmds_cli import registry


class _Group(TyperGroup):
    """Every sub-command's LlmdsError becomes ``error: <message>`` and its exit code."""

    def invoke(self, ctx) -> Any:
        try:
            return super().invoke(ctx)
        except LlmdsError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:
            # a sweep names its run folder; elsewhere say what an interrupted run leaves behind
            typer.echo(str(exc) or "interrupted: finished configurations are kept in the run folder's raw.jsonl "
                       "(complete the run with --resume FOLDER); no results.json was written for it.", err=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Group,
    help="Benchmark and profile the data structures inside LLM serving and RAG, side by side "
         "with the libraries you know. Results go to results/<component>/<run-id>/.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
datasets_app = typer.Typer(cls=_Group, help="List, inspect and download datasets.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")

ComponentArg = Annotated[str, typer.Argument(help=f"Component: {', '.join(registry.names())}.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset name (default: the component's built-in synthetic data). `llmds datasets list` shows them.")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Folder that already holds the dataset's files, e.g. ../shared/data/scifact.")]
ParamOpt = Annotated[Optional[list[str]], typer.Option("--param", "-p", help="Override a parameter: NAME=VALUE (repeatable). `llmds list` shows parameters.")]
ResultsOpt = Annotated[Optional[Path], typer.Option("--results-dir", help="Where run folders go (default: ./results or $LLMDS_RESULTS_DIR).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of synthetic data and randomised structures.")]
QuickOpt = Annotated[bool, typer.Option("--quick", help="A fast look, not a final figure: 100 queries (bm25, hnsw, pipeline: per split), 200k stream items (cms), 2,000 requests (sched); kv runs whole traces.")]
RepeatsOpt = Annotated[int, typer.Option("--repeats", min=1, help="Timed repetitions of batch operations (median reported).")]


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@app.command("list")
def list_components(as_json: JsonOpt = False) -> None:
    """Components, their status, parameters and peers (and whether each peer is installed)."""
    entries = []
    for c in registry.COMPONENTS.values():
        entries.append({
            "name": c.name, "title": c.title, "status": c.status, "summary": c.summary,
            "workloads": list(c.workloads), "depends_on": list(c.depends_on),
            "params": {p.name: p.default for p in c.params},
            "peers": [{"name": p.name, "package": p.package or None, "exact": p.exact,
                       "installed": p.available()} for p in c.peers],
        })
    if as_json:
        _print_json(entries)
        return
    from rich.table import Table

    from llmds_cli.render import console

    table = Table(title="llmds components", title_justify="left")
    for header in ("name", "status", "what", "datasets", "peers (✓ installed)"):
        table.add_column(header, overflow="fold")
    for e in entries:
        peers = ", ".join(f"{p['name']} {'✓' if p['installed'] else '✗'}" for p in e["peers"])
        status = "[green]ready[/]" if e["status"] == registry.READY else "[yellow]planned[/]"
        table.add_row(e["name"], status, e["title"], ", ".join(e["workloads"]), peers)
    console().print(table)


@app.command("env")
def show_env(as_json: JsonOpt = False) -> None:
    """The machine, Python and library versions that runs record in env.json."""
    from llmds_cli import envinfo

    info = envinfo.collect()
    if as_json:
        _print_json(info)
        return
    from llmds_cli.render import console, key_value_table

    packages = info.pop("packages")
    threads = info.pop("threads")
    out = console()
    out.print(key_value_table("machine", info))
    out.print(key_value_table("packages", {k: v or "not installed" for k, v in packages.items()}))
    out.print(key_value_table("thread settings", threads))


ExecutorOpt = Annotated[str, typer.Option("--executor", help="Where configurations run: local (this process, one at a time) or dask (one task per configuration; needs pip install 'llmds\\[dask]').", rich_help_panel="Execution")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="--executor dask: start a local cluster of N single-threaded worker processes (default: one per core).", rich_help_panel="Execution")]
SchedulerOpt = Annotated[Optional[str], typer.Option("--scheduler", help="--executor dask: use an existing cluster, e.g. tcp://10.0.0.5:8786 (workers started with --nthreads 1).", rich_help_panel="Execution")]
ShipOpt = Annotated[Optional[str], typer.Option("--ship", help="--executor dask: send the loaded dataset to every worker once (scatter, the default), or let workers read it from shared storage (path).", rich_help_panel="Execution")]
ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Complete an interrupted or partly failed run of the same sweep in this run folder: finished configurations are skipped.", rich_help_panel="Execution")]


def _executor(kind: str, workers: int | None, scheduler: str | None, ship: str | None):
    from llmds_cli.runner import make_executor

    return make_executor(kind, workers, scheduler, ship)


def _run_sweep(component: str, mode: str, dataset, data_dir, params, sweep, quick, seed, repeats,
               results_dir, as_json: bool, impls: list[str] | None = None, executor=None, resume=None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from llmds_cli import sweep as sweeps
    from llmds_cli.components.base import RunOptions
    from llmds_cli.render import console, results_table

    request = sweeps.SweepRequest(
        component=component, mode=mode, dataset=dataset, data_dir=str(data_dir) if data_dir else None,
        params=sweeps.parse_params(component, params or []), sweep=sweep, quick=quick, seed=seed,
        impls=impls, options=RunOptions(repeats=repeats), results_dir=str(results_dir) if results_dir else None,
        resume=str(resume) if resume else None,
    )
    module = registry.require_ready(component).load()
    out = console(stderr=as_json)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[last]}"), TimeElapsedColumn(), console=out, transient=False) as bar:
        task = bar.add_task(f"{mode} {component}", total=None, last="loading data")

        def start(total: int, finished: int) -> None:
            bar.update(task, total=total, completed=finished,
                       last=f"{finished} already finished, resuming" if finished else "running")

        def advance(result):
            state = "failed" if result.error else f"{result.seconds:.1f}s"
            bar.update(task, advance=1, last=f"{result.config_id} {state}")

        run = sweeps.execute(request, executor=executor, progress=advance, on_start=start)
    if as_json:
        _print_json(run.folder.read_json("results.json"))
    else:
        out.print(results_table(f"{mode} {component} — {run.folder.path}", run.rows, module.TABLE,
                                getattr(module, "HIGHER_IS_BETTER", None)))
        for record in run.parity:
            if "passed" in record:
                verdict = "[green]passed[/]" if record["passed"] else "[red]FAILED[/]"
                point = ", ".join(f"{k}={v}" for k, v in record.get("point", {}).items())
                out.print(f"parity with {record['impl']} ({record.get('config', '')}{', ' + point if point else ''}): max |Δscore| "
                          f"{record['max_abs_diff']:.2e} ≤ {record['tolerance']:.0e}: {verdict}")
            elif record.get("status"):
                out.print(f"parity with {record['impl']}: {record['status']}"
                          + (f" ({record['reason']})" if record.get("reason") else ""))
        for failed, error in run.failures.items():
            out.print(f"[red]failed[/] {failed}: {error.splitlines()[0]}")
        for path in run.charts:
            if path.endswith(".png"):
                out.print(f"chart: {run.folder.path / path}")
        out.print(_execution_line(run.folder.read_json("results.json").get("execution", {})))
    return run


def _execution_line(execution: dict[str, Any]) -> str:
    where = execution.get("executor", "local")
    if where == "dask":
        where = f"dask, {execution.get('workers')} workers ({execution.get('ship')})"
    skipped = execution.get("skipped_finished", 0)
    profiling = execution.get("workers_profiling")
    reruns = execution.get("run_again", [])
    return (f"{execution.get('ran', 0)} configurations in {execution.get('wall_s', 0):.1f} s on {where}"
            + (f"; {skipped} already finished were kept" if skipped else "")
            + "".join(f"\nrun again: {r['config']} ({r['reason']}, {r['worker']})" for r in reruns)
            + (f"\n[yellow]note:[/] {execution['workers']} workers on {execution['cores']} cores share cores, so "
               "their timings overlap; use --workers at most the number of cores"
               if execution.get("cores") and execution.get("workers", 0) > execution["cores"] else "")
            + (f"\n[yellow]note:[/] Dask's profiler samples tasks on {len(profiling)} worker(s), adding work to "
               "their timings; start them with DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False" if profiling else ""))


def _targets(target: str) -> list[str]:
    """A component name, or `all` = every ready component (planned ones are named on stderr)."""
    if target != "all":
        return [target]
    planned = [c.name for c in registry.COMPONENTS.values() if not c.ready]
    if planned:
        typer.echo(f"not built yet (planned): {', '.join(planned)}", err=True)
    return [c.name for c in registry.COMPONENTS.values() if c.ready]


def _check_resume(resume: Path | None, targets: list[str]) -> None:
    if resume is not None and len(targets) != 1:
        raise typer.BadParameter("--resume completes one component's run; name that component instead of `all`.")


@app.command("bench")
def bench(target: Annotated[str, typer.Argument(help="A component, or `all`.")],
          dataset: DatasetOpt = None, data_dir: DataDirOpt = None, param: ParamOpt = None,
          sweep: Annotated[bool, typer.Option("--sweep/--no-sweep", help="Sweep the component's parameters around the defaults.")] = True,
          quick: QuickOpt = False, seed: SeedOpt = 0, repeats: RepeatsOpt = 3,
          results_dir: ResultsOpt = None, as_json: JsonOpt = False,
          executor: ExecutorOpt = "local", workers: WorkersOpt = None, scheduler: SchedulerOpt = None,
          ship: ShipOpt = None, resume: ResumeOpt = None) -> None:
    """Benchmark our implementation over a parameter sweep; writes a run folder and charts.

    A parameter given as a list sweeps it: `-p M=8,16,32 -p ef_construction=100,200` runs all six builds. With `--executor dask --workers N` the configurations run in parallel on N single-threaded worker processes, with the same figures as a local run.
    """
    targets = _targets(target)
    _check_resume(resume, targets)
    failed = False
    with _executor(executor, workers, scheduler, ship) as where:
        for name in targets:
            run = _run_sweep(name, "bench", dataset, data_dir, param, sweep, quick, seed, repeats, results_dir,
                             as_json, executor=where, resume=resume)
            failed = failed or bool(run.failures)
    if failed:
        raise typer.Exit(1)


@app.command("compare")
def compare(target: Annotated[Optional[str], typer.Argument(help="A component, or `all`.")] = None,
            dataset: DatasetOpt = None, data_dir: DataDirOpt = None, param: ParamOpt = None,
            impl: Annotated[Optional[list[str]], typer.Option("--impl", help="Only these implementations (repeatable).")] = None,
            quick: QuickOpt = False, seed: SeedOpt = 0, repeats: RepeatsOpt = 3,
            results_dir: ResultsOpt = None, as_json: JsonOpt = False,
            runs: Annotated[Optional[tuple[Path, Path]], typer.Option("--runs", help="Instead: compare two stored runs A B (bench or component runs) and flag regressions.")] = None,
            time_threshold: Annotated[float, typer.Option("--time-threshold", help="--runs: relative slow-down that counts as a regression.")] = 0.10,
            memory_threshold: Annotated[float, typer.Option("--memory-threshold", help="--runs: relative growth that counts as a regression.")] = 0.05,
            quality_threshold: Annotated[float, typer.Option("--quality-threshold", help="--runs: absolute drop in recall/nDCG/hit rate that counts.")] = 0.005,
            force: Annotated[bool, typer.Option("--force", help="--runs: compare runs of different datasets or parameters.")] = False,
            full: Annotated[bool, typer.Option("--full", help="`all`: every query and item (default for `all` is the quick profile).")] = False,
            executor: ExecutorOpt = "local", workers: WorkersOpt = None, scheduler: SchedulerOpt = None,
            ship: ShipOpt = None, resume: ResumeOpt = None) -> None:
    """Run ours and every installed peer on the same data in the same run; check parity, report ratios.

    Exits 1 if a parity check fails (ours and a peer disagree where they must agree). `all` writes results/compare/<run-id>/report.md and report.html; with --data-dir DIR (e.g. ../shared/data) each component runs on its real dataset found there. With `--runs A B`, compares two stored runs instead and exits 1 if B regressed.
    """
    from llmds_cli import sweep as sweeps

    if runs:
        _compare_runs(runs, {"time": time_threshold, "throughput": time_threshold, "memory": memory_threshold,
                             "quality": quality_threshold}, force, as_json)
        return
    if target is None:
        raise typer.BadParameter("name a component (or `all`), or pass --runs A B.")
    targets = _targets(target)
    _check_resume(resume, targets)
    failed = False
    finished = []
    with _executor(executor, workers, scheduler, ship) as where:
        for name in targets:
            chosen = dataset
            if target == "all" and data_dir is not None and dataset is None:
                chosen = sweeps.real_workload(name, data_dir)
            run = _run_sweep(name, "compare", chosen, data_dir if chosen else None, param, False,
                             quick or (target == "all" and not full), seed, repeats, results_dir, as_json, impl,
                             executor=where, resume=resume)
            finished.append(run)
            failed = failed or sweeps.parity_failed(run) or bool(run.failures)
    if target == "all":
        from llmds_cli import report
        from llmds_cli.results import RunFolder

        folder = RunFolder.create("compare", results_dir)
        written = report.write([report.section_for(run) for run in finished], folder.path)
        folder.mark_latest()
        typer.echo(f"report: {written[0]}\nreport: {written[1]}", err=as_json)
    if failed:
        raise typer.Exit(1)


def _compare_runs(runs: tuple[Path, Path], thresholds: dict[str, float], force: bool, as_json: bool) -> None:
    from llmds_cli import regress
    from llmds_cli.render import console

    before, after = regress.load(runs[0]), regress.load(runs[1])
    changes = regress.compare_runs(before, after, thresholds, force)
    written = regress.write_reports(changes, before, after, after.path)
    if as_json:
        _print_json(json.loads(written[0].read_text()))
    else:
        out = console()
        out.print(regress.table(changes, before, after))
        out.print(f"written: {', '.join(str(p) for p in written)}")
    if any(c.regressed for c in changes):
        raise typer.Exit(1)


@app.command("report")
def report(run_dir: Annotated[Path, typer.Argument(help="A run folder, or a component folder (its LATEST run).")],
           as_json: JsonOpt = False) -> None:
    """Redraw the table and charts of a stored run from its raw records (no re-running)."""
    from llmds_cli import sweep as sweeps
    from llmds_cli.render import console, results_table
    from llmds_cli.results import RunFolder

    folder = RunFolder.open(run_dir)
    meta = folder.read_json("results.json")
    if meta.get("mode") == "profile":
        from llmds_cli import profile as profiling

        result = profiling.ProfileResult(folder, meta)
        if as_json:
            _print_json(meta)
        else:
            console().print(profiling.summary_table(result))
        return
    for key in ("summary", "parity", "unavailable", "charts", "files"):
        meta.pop(key, None)
    run = sweeps.finish_run(folder, meta)
    if as_json:
        _print_json(folder.read_json("results.json"))
        return
    module = registry.get(meta["component"]).load()
    console().print(results_table(f"report {meta['component']} — {folder.path}", run.rows, module.TABLE,
                                  getattr(module, "HIGHER_IS_BETTER", None)))


@app.command("profile")
def profile(component: ComponentArg, dataset: DatasetOpt = None, data_dir: DataDirOpt = None,
            param: ParamOpt = None, seed: SeedOpt = 0,
            native: Annotated[bool, typer.Option("--native", help="Record native (C) frames too.")] = False,
            results_dir: ResultsOpt = None, as_json: JsonOpt = False) -> None:
    """Memory profile of our implementation's build and workload under memray (flame graph + table)."""
    from llmds_cli import profile as profiling
    from llmds_cli.render import console

    result = profiling.profile_component(component, dataset, str(data_dir) if data_dir else None,
                                         param or [], seed, native, str(results_dir) if results_dir else None)
    if as_json:
        _print_json(result.summary)
        return
    console().print(profiling.summary_table(result))


@app.command("diagram")
def diagram(output: Annotated[Path, typer.Option("--output", "-o", help="Output file; .png or .svg (format follows the suffix). Both are written by default.")] = Path("results/ARCH_DIAGRAM.png")) -> None:
    """Render the architecture diagram from the registry."""
    from llmds_cli import diagram as diagrams

    written = diagrams.render(output, both=output == Path("results/ARCH_DIAGRAM.png"))
    for path in written:
        typer.echo(f"wrote {path}")


@datasets_app.command("list")
def datasets_list(as_json: JsonOpt = False) -> None:
    """Known datasets, their kind and whether a local copy is cached."""
    from llmds_cli import datasets

    entries = []
    for m in datasets.manifests().values():
        cached = (not m.synthetic) and all((datasets.cache_dir() / m.name / rel).is_file() for rel in m.files)
        entries.append({"name": m.name, "kind": m.kind, "title": m.title, "licence": m.licence,
                        "cached": cached if not m.synthetic else None})
    if as_json:
        _print_json(entries)
        return
    from rich.table import Table

    from llmds_cli.render import console

    table = Table(title="datasets", title_justify="left")
    for header in ("name", "kind", "title", "licence", "local copy"):
        table.add_column(header, overflow="fold")
    for e in entries:
        local = "generated" if e["cached"] is None else ("cached" if e["cached"] else "fetch or --data-dir")
        table.add_row(e["name"], e["kind"], e["title"], e["licence"], local)
    console().print(table)


@datasets_app.command("info")
def datasets_info(name: str, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """A dataset's manifest, and the checksum status of a local copy."""
    from llmds.errors import DatasetError
    from llmds_cli import datasets

    entry = datasets.manifest(name)
    info: dict[str, Any] = entry.as_dict()
    if not entry.synthetic:
        try:
            folder = datasets.locate(name, data_dir)
            info["local_copy"] = str(folder)
            info["checksums"] = datasets.verify(name, folder)
        except DatasetError as exc:
            info["local_copy"] = f"none ({exc})"
    if as_json:
        _print_json(info)
        return
    from llmds_cli.render import console, key_value_table

    console().print(key_value_table(f"dataset {name}", {k: v for k, v in info.items()}))


@datasets_app.command("fetch")
def datasets_fetch(name: str, force: Annotated[bool, typer.Option("--force", help="Download again even if cached.")] = False) -> None:
    """Download a dataset into the cache (datasets/cache or $LLMDS_DATA_DIR) and verify its checksums."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from llmds_cli import datasets
    from llmds_cli.render import console

    with Progress(BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console(stderr=True)) as bar:
        task = bar.add_task(name, total=None)
        folder = datasets.fetch(name, progress=lambda done, total: bar.update(task, completed=done, total=total), force=force)
    typer.echo(f"{name}: {folder}")


@datasets_app.command("path")
def datasets_path(name: str, data_dir: DataDirOpt = None) -> None:
    """Print the folder a dataset is read from (errors if there is no local copy)."""
    from llmds_cli import datasets

    typer.echo(str(datasets.locate(name, data_dir)))


def _component_command(component: registry.Component):
    """`llmds <component>`: what the component is and how to run it; planned ones say so."""

    def command(as_json: JsonOpt = False) -> None:
        info = {"name": component.name, "title": component.title, "status": component.status,
                "summary": component.summary, "datasets": list(component.workloads),
                "params": {p.name: {"default": p.default, "help": p.help} for p in component.params},
                "peers": [p.name for p in component.peers], "depends_on": list(component.depends_on)}
        if as_json:
            _print_json(info)
            return
        if not component.ready:
            typer.echo(f"{component.name}: {component.title} is planned, not built yet"
                       + (f" (issue {component.issue})." if component.issue else "."))
            return
        typer.echo(f"{component.name}: {component.title} — {component.summary}")
        typer.echo(f"  datasets: {', '.join(component.workloads)}")
        for p in component.params:
            typer.echo(f"  --param {p.name}={p.default!s:<10} {p.help}")
        typer.echo(f"  try: llmds bench {component.name} | llmds compare {component.name} | llmds profile {component.name}")

    command.__doc__ = f"{component.title}: {component.summary}" + ("" if component.ready else " [planned]")
    return command


for _component in registry.COMPONENTS.values():
    app.command(_component.name, rich_help_panel="Components")(_component_command(_component))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code instead of exiting (tests call this)."""
    try:
        app(args=argv if argv is not None else sys.argv[1:], prog_name="llmds")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        typer.echo(str(exc.code), err=True)
        return 1
    return 0


def run() -> None:
    sys.exit(main())
