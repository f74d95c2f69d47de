"""Sweeps on Dask distributed: a LocalCluster of two single-threaded worker processes gives the
same figures as a local run, survives a worker killed mid-sweep, and records a configuration
that fails twice without losing the others. Skipped without the optional extra."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="the dask extra is not installed (pip install 'llmds[dask]')")

from distributed import LocalCluster  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from llmds_cli import sweep as sweeps  # noqa: E402
from llmds_cli.app import app  # noqa: E402
from llmds_cli.components.base import RunOptions  # noqa: E402
from llmds_cli.dask_executor import ATTEMPTS, DaskExecutor  # noqa: E402
from llmds_cli.results import RunFolder  # noqa: E402
from llmds_cli.runner import LocalExecutor, execute_task  # noqa: E402

from test_execution import measured_figures  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes with one thread each, with Dask's default settings (as on a cluster
    someone else started: llmds must not rely on scheduler options of its own)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=50) as local:
        yield local


def cms_request(results_dir: Path, epsilons: str = "0.001,0.002,0.004", **extra) -> sweeps.SweepRequest:
    params = sweeps.parse_params("cms", [f"epsilon={epsilons}", "conservative=false,true"])
    return sweeps.SweepRequest("cms", "bench", params=params, quick=True, options=RunOptions(repeats=1),
                               results_dir=str(results_dir), **extra)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    return sweeps.execute(cms_request(tmp_path_factory.mktemp("local")), LocalExecutor())


def summary(run) -> dict:
    return run.folder.read_json("results.json")["summary"]


@pytest.mark.parametrize("ship", ["scatter", "path"])
def test_dask_gives_the_local_figures_configuration_by_configuration(cluster, local_run, tmp_path, ship):
    with DaskExecutor(scheduler=cluster.scheduler_address, ship=ship) as executor:
        run = sweeps.execute(cms_request(tmp_path), executor)
    assert not run.failures
    assert measured_figures(summary(run)) == measured_figures(summary(local_run))
    meta = run.folder.read_json("results.json")
    assert meta["execution"]["executor"] == "dask" and meta["execution"]["ran"] == 6
    assert meta["execution"]["threads_per_worker"] == [1] and meta["execution"]["ship"] == ship
    assert len(meta["execution"]["workers_profiling"]) == 2  # a cluster with Dask's defaults: reported
    env = run.folder.read_json("env.json")
    assert env["executor"] == "dask"
    assert sum(w["configurations"] for w in env["workers"]) == 6
    assert all(w["env"] in env["worker_envs"] for w in env["workers"])
    pids = {r["pid"] for r in run.folder.records() if r["op"] == "done"}
    assert pids <= {w["pid"] for w in env["workers"]} and os.getpid() not in pids


def die_first_time(task, workload, marker: str, victims: tuple[str, ...]):
    """Kill this worker process the first time one of ``victims`` reaches it, then run normally."""
    flag = Path(marker) / str(victims.index(task.config.id)) if task.config.id in victims else None
    if flag is not None and not flag.exists():
        flag.touch()
        os._exit(1)
    return execute_task(task, workload)


def always_die(task, workload, victim: str):
    if task.config.id == victim:
        os._exit(1)
    return execute_task(task, workload)


def count_attempts(task, workload, marker: str):
    with open(Path(marker) / "attempts", "a") as handle:
        handle.write(task.config.id + "\n")
    return execute_task(task, workload)


@pytest.mark.parametrize("killed", [1, 2], ids=["one worker", "both workers, losing the scattered data"])
def test_killed_workers_lose_nothing_and_the_sweep_completes(cluster, local_run, tmp_path, killed):
    marker = tmp_path / "killed"
    marker.mkdir()
    victims = tuple(local_run.folder.read_json("results.json")["configurations"][:killed])
    function = functools.partial(die_first_time, marker=str(marker), victims=victims)
    with DaskExecutor(scheduler=cluster.scheduler_address, function=function) as executor:
        run = sweeps.execute(cms_request(tmp_path / "results"), executor)
    assert not run.failures and len(list(marker.iterdir())) == killed  # each victim did kill a worker
    assert measured_figures(summary(run)) == measured_figures(summary(local_run))
    done = [r["config"] for r in run.folder.records() if r["op"] == "done"]
    assert sorted(done) == sorted(run.folder.read_json("results.json")["configurations"])
    reruns = run.folder.read_json("results.json")["execution"]["run_again"]
    again = sorted(r["config"] for r in reruns)
    if killed == 1:
        assert again == list(victims)  # said which one ran twice, and only that one
    else:  # losing the scattered data also cancels whatever a restarted worker had just begun
        assert set(victims) <= set(again)


def test_a_configuration_whose_worker_dies_twice_is_recorded_as_failed(cluster, local_run, tmp_path):
    victim = local_run.folder.read_json("results.json")["configurations"][2]
    function = functools.partial(always_die, victim=victim)
    with DaskExecutor(scheduler=cluster.scheduler_address, function=function) as executor:
        run = sweeps.execute(cms_request(tmp_path), executor)
    assert list(run.failures) == [victim] and "worker process running it died" in run.failures[victim], run.failures
    failed = [r for r in run.folder.records() if r["op"] == "failed"]
    assert [r["config"] for r in failed] == [victim]
    assert len(summary(run)) == len(summary(local_run)) - 1  # the other five are all there


def test_a_configuration_that_raises_is_tried_twice_then_recorded(cluster, tmp_path):
    function = functools.partial(count_attempts, marker=str(tmp_path))
    with DaskExecutor(scheduler=cluster.scheduler_address, function=function) as executor:
        run = sweeps.execute(cms_request(tmp_path, epsilons="-1,0.002"), executor)
    bad = [config for config in run.failures]
    assert len(bad) == 2 and all("conservative" in c and "epsilon=-1" in c for c in bad)
    assert all(f"failed on {ATTEMPTS} attempts" in run.failures[c] for c in bad)
    attempts = (tmp_path / "attempts").read_text().splitlines()
    assert all(attempts.count(c) == ATTEMPTS for c in bad)
    assert len(summary(run)) == 2  # epsilon=0.002, plain and conservative


def test_resume_on_dask_skips_what_a_local_run_finished(cluster, tmp_path):
    first = sweeps.execute(cms_request(tmp_path, epsilons="0.001,0.002"), LocalExecutor())
    folder = first.folder.path
    keep = first.folder.read_json("results.json")["configurations"][:2]
    lines = [line for line in (folder / "raw.jsonl").read_text().splitlines()
             if json.loads(line).get("config") in keep]
    (folder / "raw.jsonl").write_text("\n".join(lines) + "\n")
    with DaskExecutor(scheduler=cluster.scheduler_address) as executor:
        run = sweeps.execute(cms_request(tmp_path, epsilons="0.001,0.002", resume=str(folder)), executor)
    execution = run.folder.read_json("results.json")["execution"]
    assert execution["ran"] == 2 and execution["skipped_finished"] == 2
    assert measured_figures(summary(run)) == measured_figures(summary(first))
    workers = run.folder.read_json("env.json")["workers"]
    assert os.getpid() in {w["pid"] for w in workers} and len(workers) >= 2  # this process and a worker


def test_cli_starts_its_own_local_cluster(results_dir):
    result = CliRunner().invoke(app, ["bench", "cms", "--quick", "--no-sweep", "--repeats", "1",
                                      "--executor", "dask", "--workers", "2", "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)
    assert meta["execution"]["local_cluster"] is True and meta["execution"]["workers"] == 2
    assert meta["execution"]["workers_profiling"] == []  # Dask's sampler is off on the workers we start
    assert RunFolder.open(results_dir / "cms").complete


def test_a_restarted_worker_keeps_the_settings_of_the_clusters_we_start():
    """A nanny restarts a worker that died (a crash, kill -9); it must come back without Dask's
    profiler, or the configurations it runs next are timed with the sampler interrupting them."""
    import signal
    import time

    from llmds_cli.dask_executor import _profiler_enabled

    with DaskExecutor(workers=1) as executor:
        client = executor.client
        (address, pid), = client.run(os.getpid).items()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while set(client.nthreads()) in (set(), {address}) and time.monotonic() < deadline:
            time.sleep(0.2)
        client.wait_for_workers(1, timeout=60)
        restarted = client.run(lambda: (os.getpid(), _profiler_enabled()))
        assert [p for p, _ in restarted.values()] != [pid]  # a new worker process answered
        assert [on for _, on in restarted.values()] == [False]


def test_an_unreachable_scheduler_is_a_clear_error(results_dir):
    result = CliRunner().invoke(app, ["bench", "cms", "--quick", "--executor", "dask",
                                      "--scheduler", "tcp://127.0.0.1:1"])
    assert result.exit_code == 2 and "cannot reach the Dask scheduler" in result.output
    for garbage in ("garbage", "tcp://host:notaport"):  # not an address at all: the same clear error, no traceback
        result = CliRunner().invoke(app, ["bench", "cms", "--quick", "--executor", "dask", "--scheduler", garbage])
        assert result.exit_code == 2 and f"cannot reach the Dask scheduler at {garbage}" in result.output


def test_a_cluster_of_multi_threaded_workers_is_refused():
    """Two configurations on one two-thread worker would share its cores and overlap their timings."""
    from llmds.errors import InvalidInputError

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0",
                      silence_logs=50) as threaded:
        with pytest.raises(InvalidInputError, match="--nthreads 1"):
            DaskExecutor(scheduler=threaded.scheduler_address)
