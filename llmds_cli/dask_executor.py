"""Run a sweep's configurations on Dask distributed: a local cluster of worker processes, or an
existing cluster named by its scheduler address.

Only *where* a configuration runs changes: each configuration is one Dask task calling the
same :func:`llmds_cli.runner.execute_task` the local executor calls, and the client writes the
records into the run folder as results arrive (:mod:`llmds_cli.sweep`). Timing stays honest
because every worker has one thread, so it runs one configuration at a time.

Failures. A configuration that raises is retried once on another attempt (``retries=1``); a
worker process that dies while running one has it rescheduled, and the scheduler gives up
after the second death (``distributed.scheduler.allowed-failures = 1`` on clusters we start).
Either way a configuration that fails twice comes back as a failed :class:`TaskResult` with
its error, and the rest of the sweep carries on.

Datasets reach workers in one of two ways (``ship``):

``scatter`` (default)
    The client, which has already loaded the dataset and computed its ground truth (exact
    neighbours, relevance judgements), sends the loaded workload to every worker once
    (``Client.scatter(..., broadcast=True)``); tasks refer to that copy.
``path``
    Tasks carry only the dataset's name and folder; each worker process loads it once from
    shared storage. Ground truth the client computed is read from the shared dataset cache
    (``$LLMDS_DATA_DIR``), so point workers at the same cache.
"""

from __future__ import annotations

import importlib.util
import logging
import uuid
from typing import Any, Callable, Iterator

from llmds.errors import InvalidInputError, NotAvailableError
from llmds_cli.components.base import Workload
from llmds_cli.runner import Task, TaskResult, execute_task

SHIP_MODES = ("scatter", "path")
ATTEMPTS = 2  # a configuration is recorded as failed after its second failed attempt


class ConfigurationFailed(Exception):
    """Raised on the worker so that Dask retries the configuration; carries its error text."""

    def __init__(self, error: str, worker: dict[str, Any]):
        super().__init__(error, worker)
        self.error = error
        self.worker = worker

    def __str__(self) -> str:
        return self.error


def run_configuration(task: Task, workload: Workload | None, function: Callable[..., TaskResult] = execute_task) -> TaskResult:
    """The Dask task: run one configuration, and raise its error so that Dask's retry sees it."""
    result = function(task, workload)
    if result.error:
        raise ConfigurationFailed(result.error, result.worker)
    return result


def require_distributed() -> None:
    if importlib.util.find_spec("distributed") is None:
        raise NotAvailableError(
            "--executor dask needs Dask distributed, an optional extra: pip install 'llmds[dask]' "
            "(or pip install 'dask[distributed]')."
        )


class DaskExecutor:
    """Hands each configuration of a sweep to a Dask worker, one task per configuration.

    Parameters
    ----------
    workers:
        Start a ``LocalCluster`` of this many single-threaded worker processes on this machine.
    scheduler:
        Instead, connect to an existing cluster (``tcp://HOST:PORT``). Its workers must have one
        thread each (``dask worker --nthreads 1``), or timings would overlap.
    ship:
        How the dataset reaches workers: ``scatter`` or ``path`` (see the module docstring).
    function:
        What a worker runs for a task; :func:`execute_task` unless a test substitutes one that
        misbehaves on purpose.
    """

    def __init__(self, workers: int | None = None, scheduler: str | None = None, ship: str = "scatter",
                 function: Callable[..., TaskResult] = execute_task):
        require_distributed()
        if workers is not None and scheduler is not None:
            raise InvalidInputError("give either --workers N (a local cluster) or --scheduler ADDRESS (an existing one), not both.")
        if workers is not None and workers < 1:
            raise InvalidInputError(f"--workers must be at least 1, got {workers}.")
        if ship not in SHIP_MODES:
            raise InvalidInputError(f"--ship must be one of {', '.join(SHIP_MODES)}, got {ship!r}.")
        self.ship = ship
        self.function = function
        self.cluster = None
        self.client = self._connect(workers, scheduler)

    def _connect(self, workers: int | None, scheduler: str | None):
        import dask
        from distributed import Client, LocalCluster

        if scheduler is not None:
            try:
                client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError) as exc:
                raise InvalidInputError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); "
                                        "check the address, or use --workers N for a local cluster.") from None
            self._check_single_threaded(client)
            return client
        import os

        count = workers or os.cpu_count() or 1
        with dask.config.set({"distributed.scheduler.allowed-failures": ATTEMPTS - 1}):
            self.cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                                        dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(self.cluster)
        client.wait_for_workers(count)
        return client

    def _check_single_threaded(self, client) -> None:
        workers = client.scheduler_info()["workers"]
        if not workers:
            raise InvalidInputError("the Dask cluster has no workers yet; start some (dask worker ADDRESS --nthreads 1).")
        threaded = [address for address, info in workers.items() if info.get("nthreads", 1) != 1]
        if threaded:
            raise InvalidInputError(
                f"Dask workers {', '.join(threaded)} run several threads, so configurations would share "
                "cores and their timings overlap; start workers with `dask worker ADDRESS --nthreads 1`."
            )

    def map(self, tasks: list[Task], workload: Workload) -> Iterator[TaskResult]:
        from distributed import as_completed

        payload = self.client.scatter(workload, broadcast=True, hash=False) if self.ship == "scatter" else None
        run = uuid.uuid4().hex[:8]
        futures = {}
        for task in tasks:
            future = self.client.submit(run_configuration, task, payload, self.function, retries=ATTEMPTS - 1,
                                        pure=False, key=f"llmds-{run}-{task.config.id}")
            futures[future] = task
        try:
            for future in as_completed(futures):
                yield self._result(future, futures[future])
        finally:
            for future in futures:
                future.cancel()
            if payload is not None:
                payload.release()

    @staticmethod
    def _result(future, task: Task) -> TaskResult:
        if future.status == "finished":
            return future.result()
        exc = future.exception()
        if isinstance(exc, ConfigurationFailed):
            return TaskResult(task.config.id, error=f"{exc.error} (failed on {ATTEMPTS} attempts)", worker=exc.worker)
        # KilledWorker: the configuration's worker died on each attempt
        return TaskResult(task.config.id, error=f"{type(exc).__name__}: {exc}")

    def describe(self) -> dict[str, Any]:
        workers = self.client.scheduler_info()["workers"]
        return {"executor": "dask", "scheduler": self.client.scheduler.address,
                "local_cluster": self.cluster is not None, "workers": len(workers),
                "threads_per_worker": sorted({info.get("nthreads") for info in workers.values()}),
                "ship": self.ship, "attempts": ATTEMPTS}

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> "DaskExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
