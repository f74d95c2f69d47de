"""Run a sweep's configurations on Dask distributed: a local cluster of worker processes, or an
existing cluster named by its scheduler address.

Only *where* a configuration runs changes: each configuration is one Dask task calling the
same :func:`llmds_cli.runner.execute_task` the local executor calls, and the client writes the
records into the run folder as results arrive (:mod:`llmds_cli.sweep`). Timing stays honest
because every worker has one thread and is given one configuration at a time.

Placement. The client hands each configuration to one idle single-threaded worker (a worker
restriction) and the next one only when that worker is free again, so a worker never holds a
queued configuration behind the one it runs. That is what makes failures attributable: Dask's
own accounting blames every task a dying worker holds, queued or running (and its queuing,
which would avoid that, is a heuristic that small sweeps do not trigger).

Failures. A configuration that raises is retried once (Dask's ``retries=1``) and then recorded
as failed with its error. A configuration whose worker process dies under it (a crash, the OOM
killer, ``kill -9``) is run again on another worker; if its worker dies a second time it is
recorded as failed. Either way the rest of the sweep carries on, and what finished is already
in the run folder.

Datasets reach workers in one of two ways (``ship``):

``scatter`` (default)
    The client, which has already loaded the dataset and computed its ground truth (exact
    neighbours, relevance judgements), sends the loaded workload to every worker once
    (``Client.scatter(..., broadcast=True)``); tasks refer to that copy, and a worker that
    joins later fetches it from a peer. If every worker holding it dies, it is scattered again.
``path``
    Tasks carry only the dataset's name and folder; each worker process loads it once from
    shared storage. Ground truth the client computed is read from the shared dataset cache
    (``$LLMDS_DATA_DIR``), so point workers at the same cache.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from llmds.errors import InvalidInputError, NotAvailableError
from llmds_cli.components.base import Workload
from llmds_cli.runner import Task, TaskResult, execute_task

SHIP_MODES = ("scatter", "path")
ATTEMPTS = 2  # a configuration is recorded as failed after its second failed attempt
POLL_S = 0.5  # how often the client looks for finished configurations and departed workers
NO_WORKERS_S = 120.0  # give up on the remaining configurations after this long with no worker
RESULT_TIMEOUT_S = 60.0  # a finished configuration's records are small; longer means they were lost
# A worker's background chores run in its process while a configuration is being timed, and on
# a small machine the scheduler and nannies share the workers' cores; clusters we start keep
# those chores to what a sweep needs. Dask's statistical profiler interrupts the running task
# every 10 ms to walk its stack while holding the GIL: off (an existing cluster's setting is
# recorded in the run's execution block). Work stealing rebalances queued tasks every 100 ms,
# but each configuration is pinned to an idle worker, so there is nothing to steal: off. The
# memory and system monitors sample every 100 ms and 500 ms by default; once a second still
# catches a runaway worker. On the 2-core test machine an 8-configuration HNSW sweep on two
# workers took 14.5 s with Dask's defaults and 12.6 s with these (means of 5 and 4 runs, each
# spread over about 3 s); two plain processes splitting the same sweep took 11.8 s.
CLUSTER_SETTINGS = {
    "distributed.worker.profile.enabled": False,
    "distributed.scheduler.work-stealing": False,
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.nanny.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "1s",
    # Ctrl-C reaches every process of the terminal's process group; the client stops the workers
    # it started, so they ignore it rather than each print a KeyboardInterrupt traceback
    "distributed.worker.preload": ["llmds_cli.dask_executor"],
}


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


def dask_setup(worker) -> None:
    """Preload hook of the workers we start (CLUSTER_SETTINGS): leave Ctrl-C to the client."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _profiler_enabled() -> bool:
    """Runs on a worker: is Dask's statistical profiler sampling its tasks (see CLUSTER_SETTINGS)?"""
    import dask

    return bool(dask.config.get("distributed.worker.profile.enabled", True))


def require_distributed() -> None:
    if importlib.util.find_spec("distributed") is None:
        raise NotAvailableError(
            "--executor dask needs Dask distributed, an optional extra: pip install 'llmds[dask]' "
            "(or pip install 'dask[distributed]')."
        )


@dataclass
class _Attempt:
    """One configuration handed to one worker."""

    task: Task
    address: str
    deaths: int  # how many workers died under this configuration before this attempt
    lost_data: int  # how many times the scattered dataset was lost before this attempt
    generation: int  # which scatter of the dataset the attempt refers to


class DaskExecutor:
    """Hands each configuration of a sweep to a Dask worker, one task per configuration.

    Parameters
    ----------
    workers:
        Start a ``LocalCluster`` of this many single-threaded worker processes on this machine.
    scheduler:
        Instead, connect to an existing cluster (``tcp://HOST:PORT``). Its workers must have one
        thread each (``dask worker ADDRESS --nthreads 1``), or timings would overlap.
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
        self._generation = 0  # how many times the dataset was scattered (more than once: it was lost)
        self.run_again: list[dict[str, str]] = []  # configurations started again, and why
        self.client = self._connect(workers, scheduler)

    def _connect(self, workers: int | None, scheduler: str | None):
        from distributed import Client, LocalCluster

        if scheduler is not None:
            try:
                client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError, ValueError, TypeError) as exc:  # unreachable, or not an address
                raise InvalidInputError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); "
                                        "check the address, or use --workers N for a local cluster.") from None
            self._check_single_threaded(client)
            return client
        import dask

        count = workers or os.cpu_count() or 1
        with dask.config.set(CLUSTER_SETTINGS):
            # Each nanny hands its configuration to every worker process it starts, including one
            # it restarts after a crash. Without a deep copy it keeps a shallow merge of the global
            # configuration, whose nested dicts leaving this block restores in place: a restarted
            # worker would come back with Dask's defaults (profiler on). Dask's ERROR logs (a task
            # that raised, data lost with a worker) tell what llmds records and reports itself.
            self.cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True,
                                        dashboard_address=":0", silence_logs=logging.CRITICAL,
                                        config=copy.deepcopy(dask.config.config))
        client = Client(self.cluster)
        client.wait_for_workers(count)
        return client

    def _check_single_threaded(self, client) -> None:
        nthreads = client.nthreads()
        if not nthreads:
            client.close()
            raise InvalidInputError("the Dask cluster has no workers yet; start some (dask worker ADDRESS --nthreads 1).")
        threaded = [address for address, n in nthreads.items() if n != 1]
        if threaded:
            client.close()
            raise InvalidInputError(
                f"Dask workers {', '.join(threaded)} run several threads, so configurations would share "
                "cores and their timings overlap; start workers with `dask worker ADDRESS --nthreads 1`."
            )

    def _workers(self) -> list[str]:
        """Addresses of the live single-threaded workers (a multi-threaded one that joins later is never used)."""
        return sorted(address for address, n in self.client.nthreads().items() if n == 1)

    def map(self, tasks: list[Task], workload: Workload) -> Iterator[TaskResult]:
        import queue as queues

        self._workload = workload
        self._payload, self._generation = None, 0
        self._run = uuid.uuid4().hex[:8]
        self._submitted = 0
        self.run_again = []
        self._wake: queues.SimpleQueue = queues.SimpleQueue()  # done callbacks (a Dask thread) put here
        if self.ship == "scatter":
            self._scatter()
        waiting: deque[_Attempt] = deque(_Attempt(task, "", 0, 0, 0) for task in tasks)
        running: dict[Any, _Attempt] = {}
        no_worker_since: float | None = None
        workers = self._workers()
        try:
            while waiting or running:
                if waiting and not workers and not running:
                    no_worker_since = no_worker_since or time.monotonic()
                    if time.monotonic() - no_worker_since > NO_WORKERS_S:
                        while waiting:
                            yield TaskResult(waiting.popleft().task.config.id,
                                             error=f"the Dask cluster had no single-threaded worker for {NO_WORKERS_S:.0f} s")
                        break
                else:
                    no_worker_since = None
                busy = {attempt.address for attempt in running.values()}
                idle = [address for address in workers if address not in busy][:len(waiting)]
                if idle and self.ship == "scatter" and self._payload.status != "finished":
                    self._scatter()  # every worker that held the dataset died
                for address in idle:
                    attempt = waiting.popleft()
                    running[self._submit(attempt, address)] = attempt
                try:  # until a configuration finishes, or POLL_S to look for departed workers
                    self._wake.get(timeout=POLL_S)
                except queues.Empty:
                    pass
                workers = self._workers()
                for future, attempt in list(running.items()):
                    if future.done() or attempt.address not in workers:
                        del running[future]
                        yield from self._settle(future, attempt, waiting, worker_gone=attempt.address not in workers)
        finally:
            for future in running:
                future.cancel()
            if self._payload is not None:
                self._payload.release()
            self._payload = self._workload = None

    def _settle(self, future, attempt: _Attempt, queue: deque[_Attempt], worker_gone: bool) -> Iterator[TaskResult]:
        """What became of one attempt: a result, a failure, or a place back in the queue."""
        from concurrent.futures import CancelledError

        from distributed import KilledWorker

        config = attempt.task.config.id
        # Its worker died under it: still pending on a departed worker, given up on by the scheduler,
        # or cancelled because the scattered dataset died with that same worker (its last holder).
        died = (not future.done() or (future.status == "error" and isinstance(future.exception(), KilledWorker))
                or (future.cancelled() and worker_gone))
        if not died:
            try:
                result = future.result(timeout=RESULT_TIMEOUT_S)
            except TimeoutError:  # finished, but the result was lost with its worker before we fetched it
                died = True
            except ConfigurationFailed as exc:
                yield TaskResult(config, error=f"{exc.error} (failed on {ATTEMPTS} attempts)", worker=exc.worker)
                return
            except CancelledError:
                yield from self._lost_dataset(attempt, queue)
                return
            except Exception as exc:  # noqa: BLE001 - anything else Dask reports ends this configuration
                yield TaskResult(config, error=f"{type(exc).__name__}: {exc}")
                return
        if died:  # its worker died under it (the scheduler may or may not have said so yet)
            future.cancel()
            deaths = attempt.deaths + 1
            if deaths >= ATTEMPTS:
                yield TaskResult(config, error=f"WorkerDied: the worker process running it died on each of "
                                               f"{ATTEMPTS} attempts (last {attempt.address})")
            else:
                self.run_again.append({"config": config, "worker": attempt.address, "reason": "its worker died"})
                queue.appendleft(_Attempt(attempt.task, "", deaths, attempt.lost_data, self._generation))
            return
        yield result

    def _lost_dataset(self, attempt: _Attempt, queue: deque[_Attempt]) -> Iterator[TaskResult]:
        """The scattered dataset died with every worker that held it, which cancels the tasks
        that needed it: scatter it once more and queue them again. Bounded, so a sweep that
        keeps losing it still ends."""
        lost = attempt.lost_data + 1
        if lost > ATTEMPTS:
            yield TaskResult(attempt.task.config.id, error="the dataset scattered to the workers was lost again "
                                                          "and again with every worker that held it; try --ship path")
            return
        if self.ship == "scatter" and attempt.generation == self._generation:
            self._scatter()
        self.run_again.append({"config": attempt.task.config.id, "worker": attempt.address,
                               "reason": "the scattered dataset died with every worker holding it"})
        queue.appendleft(_Attempt(attempt.task, "", attempt.deaths, lost, self._generation))

    def _scatter(self) -> None:
        if self._payload is not None:
            self._payload.release()
        self._payload = self.client.scatter(self._workload, broadcast=True, hash=False)
        self._generation += 1

    def _submit(self, attempt: _Attempt, address: str):
        attempt.address, attempt.generation = address, self._generation
        self._submitted += 1
        future = self.client.submit(run_configuration, attempt.task, self._payload, self.function,
                                    retries=ATTEMPTS - 1, pure=False, workers=[address], allow_other_workers=False,
                                    key=f"llmds-{self._run}-{self._submitted}-{attempt.task.config.id}")
        future.add_done_callback(self._wake.put)
        return future

    def describe(self) -> dict[str, Any]:
        nthreads = self.client.nthreads()
        profiling = self.client.run(_profiler_enabled)
        return {"executor": "dask", "scheduler": self.client.scheduler.address,
                "local_cluster": self.cluster is not None, "workers": len(nthreads),
                **({"cores": os.cpu_count()} if self.cluster is not None else {}),
                "threads_per_worker": sorted(set(nthreads.values())),
                "workers_profiling": sorted(address for address, on in profiling.items() if on),
                "ship": self.ship, "attempts": ATTEMPTS, "run_again": self.run_again,
                **({"dataset_scatters": self._generation} if self.ship == "scatter" else {})}

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> "DaskExecutor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
