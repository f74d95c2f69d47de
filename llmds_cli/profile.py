"""``llmds profile``: our implementation's build and workload under memray's tracker.

The same workload also runs once without tracking, timed, so the tracker's overhead is visible
next to the memory figures. Output, in a run folder: ``memray/capture.bin``, ``memray/flamegraph.html``
and the summary (peak memory, total allocated, allocation count, top allocating call sites)
in ``results.json``.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from llmds.errors import InvalidInputError, NotAvailableError
from llmds_cli import envinfo, registry
from llmds_cli.components.base import Adapter, RunOptions, Workload
from llmds_cli.results import SCHEMA_VERSION, RunFolder

TOP_SITES = 10


@dataclass
class ProfileResult:
    folder: RunFolder
    summary: dict[str, Any]


def _exercise(adapter: Adapter, workload: Workload) -> None:
    adapter.build(workload)
    for _ in adapter.run(workload):
        pass
    adapter.close()


def profile_component(component: str, dataset: str | None, data_dir: str | None, param_pairs: list[str],
                      seed: int, native: bool, results_dir: str | None) -> ProfileResult:
    try:
        import memray
    except ImportError:
        raise NotAvailableError("memory profiles need memray: pip install memray (Linux and macOS).") from None
    from llmds_cli import sweep as sweeps
    from llmds_cli.runner import load_workload

    spec = registry.require_ready(component)
    module = spec.load()
    # a component may profile a configuration other than its defaults (kv: storage on)
    overrides = sweeps.parse_params(component, param_pairs)
    grid = [name for name, value in overrides.items() if isinstance(value, list)]
    if grid:
        raise InvalidInputError(f"profile measures one configuration; give one value for {', '.join(grid)} "
                                "(lists like NAME=1,2 are for bench and compare).")
    params = {**spec.defaults(), **getattr(module, "PROFILE_PARAMS", {}), **overrides}
    request = sweeps.SweepRequest(component, "profile", dataset, data_dir, params, seed=seed)
    workload = load_workload(sweeps.workload_spec(request))
    options = RunOptions(repeats=1, trace_memory=False)
    adapter_cls = module.ADAPTERS["llmds"]

    adapter_cls(params, options).warmup(workload)  # JIT compilation is not what we profile
    gc.collect()
    t0 = time.perf_counter_ns()
    _exercise(adapter_cls(params, options), workload)
    untracked_ns = time.perf_counter_ns() - t0

    folder = RunFolder.create(component, results_dir)
    memray_dir = folder.path / "memray"
    memray_dir.mkdir()
    capture = memray_dir / "capture.bin"
    adapter = adapter_cls(params, options)
    gc.collect()
    t0 = time.perf_counter_ns()
    with memray.Tracker(capture, native_traces=native):
        adapter.build(workload)
        for _ in adapter.run(workload):
            pass
        structure_bytes = int(adapter.memory_bytes())  # after the run: some structures grow in it
        adapter.close()
    tracked_ns = time.perf_counter_ns() - t0

    flamegraph = memray_dir / "flamegraph.html"
    done = subprocess.run([sys.executable, "-m", "memray", "flamegraph", "--force", "-o", str(flamegraph),
                           str(capture)], capture_output=True, text=True)
    reader = memray.FileReader(capture)
    sites = []
    for record in reader.get_high_watermark_allocation_records(merge_threads=True):
        frames = record.stack_trace()
        function, file, line = frames[0] if frames else ("?", "?", 0)
        sites.append({"bytes": int(record.size), "allocations": int(record.n_allocations),
                      "function": function, "location": f"{file}:{line}"})
    sites.sort(key=lambda s: -s["bytes"])
    meta = reader.metadata
    summary = {
        "schema_version": SCHEMA_VERSION, "component": component, "mode": "profile",
        "run_folder": str(folder.path),
        "command": " ".join(sys.argv), "params": params, "seed": seed,
        "dataset": {**workload.description, "name": workload.name, "checksum": workload.checksum},
        "peak_memory_bytes": int(meta.peak_memory),
        "total_allocations": int(meta.total_allocations),
        "structure_bytes": structure_bytes,
        "peak_over_structure": int(meta.peak_memory) / structure_bytes if structure_bytes else None,
        "untracked_s": untracked_ns / 1e9,
        "tracked_s": tracked_ns / 1e9,
        "tracker_overhead": tracked_ns / untracked_ns if untracked_ns else None,
        "top_sites": sites[:TOP_SITES],
        "files": {"capture": "memray/capture.bin",
                  "flamegraph": "memray/flamegraph.html" if done.returncode == 0 else None},
        "flamegraph_error": done.stderr.strip()[-500:] if done.returncode else None,
    }
    folder.append_records([{"op": "profile", "impl": "llmds", **{k: summary[k] for k in (
        "peak_memory_bytes", "total_allocations", "structure_bytes", "untracked_s", "tracked_s")}}])
    folder.write_json("env.json", envinfo.collect())
    folder.write_json("results.json", summary)  # LATEST stays with the newest bench/compare run
    return ProfileResult(folder, summary)


def summary_table(result: ProfileResult):
    from rich.table import Table

    s = result.summary
    table = Table(title=f"memory profile of {s['component']} — {result.folder.path}", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("peak memory (memray)", f"{s['peak_memory_bytes'] / 2**20:,.1f} MiB")
    table.add_row("structure's own bytes", f"{s['structure_bytes'] / 2**20:,.1f} MiB")
    if s.get("peak_over_structure"):
        table.add_row("peak / structure's bytes", f"{s['peak_over_structure']:.3f}")
    table.add_row("allocations", f"{s['total_allocations']:,}")
    table.add_row("time untracked / tracked", f"{s['untracked_s']:.2f} s / {s['tracked_s']:.2f} s")
    if s["tracker_overhead"]:
        table.add_row("tracker overhead", f"{s['tracker_overhead']:.2f}x")
    table.add_section()
    for site in s["top_sites"]:
        table.add_row(f"{site['function']} ({site['location']})", f"{site['bytes'] / 2**20:,.2f} MiB")
    flame = s["files"]["flamegraph"]
    table.caption = f"flame graph: {result.folder.path / flame}" if flame else f"flame graph failed: {s['flamegraph_error']}"
    return table
