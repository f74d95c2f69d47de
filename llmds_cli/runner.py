"""The sweep runner: executes configurations and stores raw records in a run folder.

Where a configuration runs is the executor's business alone. :func:`execute_task` is a plain
top-level function of picklable arguments, so an executor may call it in this process
(:class:`LocalExecutor`) or ship it to another one; everything else — ordering, progress,
writing records as they arrive, summarising — is the same code path.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol

from llmds.errors import LlmdsError
from llmds_cli import registry
from llmds_cli.components.base import Config, RunOptions, Workload, WorkloadSpec


@dataclass(frozen=True)
class Task:
    workload: WorkloadSpec
    config: Config
    options: RunOptions = RunOptions()


@dataclass
class TaskResult:
    config_id: str
    records: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


_WORKLOADS: dict[WorkloadSpec, Workload] = {}


def load_workload(spec: WorkloadSpec) -> Workload:
    """Load a workload once per process; every configuration of a sweep shares it."""
    if spec not in _WORKLOADS:
        module = registry.get(spec.component).load()
        _WORKLOADS.clear()  # one dataset at a time keeps memory bounded
        _WORKLOADS[spec] = module.load_workload(spec)
    return _WORKLOADS[spec]


def _tag(records: Iterable[dict[str, Any]], config: Config) -> Iterator[dict[str, Any]]:
    for record in records:
        yield {"impl": config.impl, "config": config.id, **record}


def execute_task(task: Task) -> TaskResult:
    """Run one configuration through the adapter life cycle and return its raw records.

    A missing peer yields an ``unavailable`` record; an error in the adapter is returned as the
    result's ``error`` so that one failing configuration never loses the others.
    """
    started = time.perf_counter()
    config = task.config
    result = TaskResult(config.id)
    component = registry.get(task.workload.component)
    adapter_cls = component.load().ADAPTERS[config.impl]
    missing = adapter_cls.missing()
    if missing:
        result.records.append({
            "impl": config.impl, "config": config.id, "op": "unavailable",
            "reason": f"not installed: {', '.join(missing)} ({adapter_cls.install_hint})",
        })
        return result
    workload = load_workload(task.workload)
    adapter = adapter_cls(config.as_dict(), task.options)
    try:
        records = result.records
        t0 = time.perf_counter_ns()
        adapter.warmup(workload)
        records.append({"op": "warmup", "ns": time.perf_counter_ns() - t0})
        gc.collect()
        t0 = time.perf_counter_ns()
        adapter.build(workload)
        records.append({"op": "build", "ns": time.perf_counter_ns() - t0})
        records.extend(adapter.run(workload))
        records.append({"op": "memory", "structure_bytes": int(adapter.memory_bytes())})
        records.append({"op": "describe", **adapter.describe()})
        if task.options.trace_memory:
            build_peak, query_peak = _peak_bytes(adapter_cls, config, workload)
            records.append({"op": "memory", "peak_build_bytes": build_peak})
            records.append({"op": "memory", "peak_query_bytes": query_peak})
        result.records = list(_tag(records, config))
    except LlmdsError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a bug in one adapter must not lose the rest of the sweep
        result.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}"
    finally:
        adapter.close()
    result.seconds = time.perf_counter() - started
    return result


def _peak_bytes(adapter_cls: type, config: Config, workload: Workload) -> tuple[int, int]:
    """Peak traced bytes (tracemalloc) while building, and above the built structure while
    running the workload, in a separate untimed pass.

    Tracing slows allocation, so it never overlaps the timed pass. numpy registers its buffers
    with tracemalloc, so arrays are counted; memory a compiled kernel allocates outside
    Python's allocators is not (``llmds profile`` with ``--native`` sees it).
    """
    gc.collect()
    tracemalloc.start()
    try:
        adapter = adapter_cls(config.as_dict(), RunOptions(repeats=1, trace_memory=False))
        adapter.build(workload)
        held, build_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in adapter.run(workload):
            pass
        query_peak = tracemalloc.get_traced_memory()[1] - held
        adapter.close()
    finally:
        tracemalloc.stop()
    return int(build_peak), max(0, int(query_peak))


class Executor(Protocol):
    """Where configurations run. Yields results as they finish, in any order."""

    def map(self, tasks: list[Task]) -> Iterator[TaskResult]: ...

    def describe(self) -> dict[str, Any]: ...


class LocalExecutor:
    """In this process, one configuration at a time (honest single-threaded timing)."""

    def map(self, tasks: list[Task]) -> Iterator[TaskResult]:
        for task in tasks:
            yield execute_task(task)

    def describe(self) -> dict[str, Any]:
        return {"executor": "local"}


def run_tasks(
    tasks: list[Task],
    executor: Executor,
    on_result: Callable[[TaskResult], None],
) -> list[TaskResult]:
    """Hand tasks to the executor and pass each result on as soon as it arrives."""
    results = []
    for result in executor.map(tasks):
        on_result(result)
        results.append(result)
    return results
