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


def scheduler_settings() -> dict[str, Any]:
    """Dask settings of the clusters we start.

    ``allowed-failures``: a task whose worker died ``ATTEMPTS`` times is given up on.
    ``worker-saturation`` 1.0: a single-threaded worker holds exactly one task, the one it is
    running, so when it dies only that configuration is blamed (with Dask's default of 1.1 a
    queued innocent one would be counted too).
    """
    return {"distributed.scheduler.allowed-failures": ATTEMPTS - 1,
            "distributed.scheduler.worker-saturation": 1.0}


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
        thread each (``dask worker --nthreads 1``), or timings would overlap; give its scheduler
        :func:`scheduler_settings` to have failures handled as on a cluster we start.
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
        with dask.config.set(scheduler_settings()):
            self.cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                                        dashboard_address=":0", silence_logs=logging.ERROR)
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
        from concurrent.futures import CancelledError

        from distributed import as_completed

        self._workload = workload
        self._payload, self._generation = None, 0
        self._run = uuid.uuid4().hex[:8]
        if self.ship == "scatter":
            self._scatter()
        pending = {self._submit(task, 0): (task, 0, self._generation) for task in tasks}
        finished = as_completed(list(pending))
        try:
            for future in finished:
                task, lost, generation = pending.pop(future)
                try:
                    # waits if the result was lost with its worker before we fetched it
                    yield future.result()
                except ConfigurationFailed as exc:
                    yield TaskResult(task.config.id, error=f"{exc.error} (failed on {ATTEMPTS} attempts)", worker=exc.worker)
                except CancelledError:
                    if lost >= ATTEMPTS:
                        yield TaskResult(task.config.id, error="the dataset scattered to the workers was lost again "
                                                               "and again with every worker that held it; try --ship path")
                        continue
                    # The scattered dataset died with every worker that held it (each killed
                    # mid-task), which cancels the tasks that needed it: scatter it once more
                    # and resubmit them. Bounded, so a sweep that keeps losing it still ends.
                    if self.ship == "scatter" and generation == self._generation:
                        self._scatter()
                    retry = self._submit(task, lost + 1)
                    pending[retry] = (task, lost + 1, self._generation)
                    finished.add(retry)
                except Exception as exc:  # KilledWorker: its worker died on every attempt
                    yield TaskResult(task.config.id, error=f"{type(exc).__name__}: {exc}")
        finally:
            for future in pending:
                future.cancel()
            if self._payload is not None:
                self._payload.release()
            self._payload = self._workload = None

    def _scatter(self) -> None:
        self._payload = self.client.scatter(self._workload, broadcast=True, hash=False)
        self._generation += 1

    def _submit(self, task: Task, attempt: int):
        return self.client.submit(run_configuration, task, self._payload, self.function, retries=ATTEMPTS - 1,
                                  pure=False, key=f"llmds-{self._run}-{attempt}-{task.config.id}")

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
