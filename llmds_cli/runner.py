"""The sweep runner: executes configurations and stores raw records in a run folder.

Where a configuration runs is the executor's business alone. :func:`execute_task` is a plain
top-level function of picklable arguments, so an executor may call it in this process
(:class:`LocalExecutor`) or ship it to a worker process (``llmds_cli.dask_executor``);
everything else — planning, resuming, progress, writing records as they arrive, summarising —
is the same code path in :mod:`llmds_cli.sweep`.

Every record a configuration produces carries the ``host`` and the ``env`` fingerprint of the
process that measured it, and its records end with one ``op="done"`` record: a configuration
whose records lack it did not finish (``--resume`` runs it again).
"""

from __future__ import annotations

import gc
import os
import socket
import time
import tracemalloc
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol

from llmds.errors import InvalidInputError, LlmdsError
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
    worker: dict[str, Any] = field(default_factory=dict)  # host, pid, env fingerprint and env


_IDENTITY: dict[str, Any] = {}


def worker_identity() -> dict[str, Any]:
    """This process's host, pid and environment (``envinfo.collect``) with a short fingerprint.

    Two processes with the same fingerprint ran the same Python, packages, commit, CPU model
    and thread settings, so their timings may be set side by side.
    """
    if not _IDENTITY or _IDENTITY["pid"] != os.getpid():
        from llmds_cli import envinfo

        env = envinfo.collect()
        _IDENTITY.clear()
        _IDENTITY.update(host=socket.gethostname(), pid=os.getpid(), env_fingerprint=envinfo.fingerprint(env), env=env)
    return dict(_IDENTITY)


_WORKLOADS: dict[WorkloadSpec, Workload] = {}


def load_workload(spec: WorkloadSpec) -> Workload:
    """Load a workload once per process; every configuration of a sweep shares it."""
    if spec not in _WORKLOADS:
        module = registry.get(spec.component).load()
        _WORKLOADS.clear()  # one dataset at a time keeps memory bounded
        _WORKLOADS[spec] = module.load_workload(spec)
    return _WORKLOADS[spec]


def _tag(records: Iterable[dict[str, Any]], config: Config, worker: dict[str, Any]) -> Iterator[dict[str, Any]]:
    where = {"host": worker["host"], "env": worker["env_fingerprint"]}
    for record in records:
        yield {"impl": config.impl, "config": config.id, **record, **where}


def done_record(result: "TaskResult") -> dict[str, Any]:
    """The last record of a configuration that ran to the end (successfully or not)."""
    config = result.config_id
    return {"impl": config.split("(", 1)[0], "config": config, "op": "done", "seconds": round(result.seconds, 3),
            "status": "failed" if result.error else "ok", "host": result.worker.get("host"),
            "env": result.worker.get("env_fingerprint"), "pid": result.worker.get("pid")}


def execute_task(task: Task, workload: Workload | None = None) -> TaskResult:
    """Run one configuration through the adapter life cycle and return its raw records.

    ``workload`` is the loaded dataset when the caller has it at hand (in this process, or
    scattered once to a worker); without it the worker loads it from ``task.workload`` (by
    path, once per process). A missing peer yields an ``unavailable`` record; an error in the
    adapter is returned as the result's ``error`` so that one failing configuration never
    loses the others.
    """
    started = time.perf_counter()
    config = task.config
    result = TaskResult(config.id, worker=worker_identity())
    component = registry.get(task.workload.component)
    adapter_cls = component.load().ADAPTERS[config.impl]
    missing = adapter_cls.missing()
    if missing:
        result.records = list(_tag([{
            "op": "unavailable", "reason": f"not installed: {', '.join(missing)} ({adapter_cls.install_hint})",
        }], config, result.worker))
        return result
    workload = workload if workload is not None else load_workload(task.workload)
    adapter = adapter_cls(config.as_dict(), task.options)
    try:
        records: list[dict[str, Any]] = []  # kept only if the configuration runs to the end
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
        result.records = list(_tag(records, config, result.worker))
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
    """Where configurations run: the one piece that differs between local and distributed runs.

    ``map`` receives the tasks of one sweep and the workload the client has already loaded
    (all tasks share it) and yields results as they finish, in any order. ``close`` releases
    what the executor started (processes, a cluster); executors are context managers.
    """

    def map(self, tasks: list[Task], workload: Workload) -> Iterator[TaskResult]: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """In this process, one configuration at a time (honest single-threaded timing)."""

    def map(self, tasks: list[Task], workload: Workload) -> Iterator[TaskResult]:
        for task in tasks:
            yield execute_task(task, workload)

    def describe(self) -> dict[str, Any]:
        return {"executor": "local"}

    def close(self) -> None:
        pass

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_tasks(
    tasks: list[Task],
    workload: Workload,
    executor: Executor,
    on_result: Callable[[TaskResult], None],
) -> list[TaskResult]:
    """Hand tasks to the executor and pass each result on as soon as it arrives."""
    results = []
    if not tasks:
        return results
    for result in executor.map(tasks, workload):
        on_result(result)
        results.append(result)
    return results


EXECUTORS = ("local", "dask")


def make_executor(kind: str = "local", workers: int | None = None, scheduler: str | None = None,
                  ship: str | None = None) -> Executor:
    """The executor named on the command line (``--executor``, ``--workers``, ``--scheduler``, ``--ship``)."""
    if kind == "local":
        if workers is not None or scheduler is not None or ship is not None:
            raise InvalidInputError("--workers, --scheduler and --ship say where and how Dask runs configurations; "
                                    "add --executor dask.")
        return LocalExecutor()
    if kind == "dask":
        from llmds_cli.dask_executor import DaskExecutor

        return DaskExecutor(workers=workers, scheduler=scheduler, ship=ship or "scatter")
    raise InvalidInputError(f"unknown executor {kind!r}; choose one of: {', '.join(EXECUTORS)}.")
