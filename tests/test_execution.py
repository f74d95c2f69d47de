"""How a sweep runs, whatever the executor: grids of parameters, records that say who measured
them, --resume of an interrupted or partly failed run, and failed configurations kept apart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from llmds.errors import InvalidInputError
from llmds_cli import regress
from llmds_cli.app import app
from llmds_cli.results import RunFolder
from llmds_cli.runner import make_executor
from llmds_cli.sweep import grid_points, parse_params

runner = CliRunner()
# the count-min sketch on its generated Zipf stream: the quickest sweep with quality figures
CMS_SWEEP = ("bench", "cms", "--quick", "--no-sweep", "--repeats", "1")


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in (result.output or ""), result.output
    return result


def latest(results_dir: Path, component: str) -> Path:
    return results_dir / component / (results_dir / component / "LATEST").read_text().strip()


def measured_figures(summary: dict) -> dict:
    """Figures that depend only on the data and the configuration, not on how fast it ran."""
    return {(config, metric): value for config, figures in summary.items() for metric, value in figures.items()
            if metric != "impl" and not metric.startswith("compile")
            and regress.classify(metric) not in ("time", "throughput", "memory")}


def test_comma_separated_parameters_are_grid_axes():
    params = parse_params("hnsw", ["M=8,16", "ef_construction=100,200", "ef=40"])
    assert params == {"M": [8, 16], "ef_construction": [100, 200], "ef": 40}
    points = grid_points(params)
    assert len(points) == 4 and {(p["M"], p["ef_construction"]) for p in points} == {(8, 100), (8, 200), (16, 100), (16, 200)}
    assert all(p["ef"] == 40 for p in points)


@given(st.dictionaries(st.sampled_from("abcde"), st.lists(st.integers(), min_size=1, max_size=3) | st.integers(), max_size=4))
def test_grid_has_one_point_per_combination(params):
    points = grid_points(params)
    expected = 1
    for value in params.values():
        expected *= len(value) if isinstance(value, list) else 1
    assert len(points) == expected
    for point in points:
        assert all(point[k] in v if isinstance(v, list) else point[k] == v for k, v in params.items())


def test_a_bad_value_in_a_list_is_named():
    with pytest.raises(InvalidInputError, match="expected a int"):
        parse_params("hnsw", ["M=8,many"])


def test_grid_sweep_runs_every_combination_and_records_who_measured(results_dir):
    result = invoke(*CMS_SWEEP, "-p", "epsilon=0.001,0.002", "-p", "conservative=false,true", "--json")
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)
    assert len(meta["configurations"]) == 4 and meta["execution"]["ran"] == 4
    folder = latest(results_dir, "cms")
    records = RunFolder.open(folder).records()
    env = json.loads((folder / "env.json").read_text())
    fingerprints = set(env["worker_envs"])
    assert [w["configurations"] for w in env["workers"]] == [4]  # one local process measured all four
    for record in records:
        if "config" in record:
            assert record["host"] == env["workers"][0]["host"] and record["env"] in fingerprints
    assert sorted(r["config"] for r in records if r["op"] == "done") == sorted(meta["configurations"])


RESUMABLE = ("-p", "epsilon=0.001,0.002,0.004", "-p", "conservative=false")


@pytest.fixture(scope="module")
def _one_cms_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    result = invoke(*CMS_SWEEP, *RESUMABLE, "--results-dir", str(root), "--json")
    assert result.exit_code == 0, result.output
    return latest(root, "cms"), json.loads(result.stdout)


@pytest.fixture
def finished_cms_run(_one_cms_run, results_dir):
    """A copy of one finished three-configuration run, for a test to damage and resume."""
    folder, meta = _one_cms_run
    copy = results_dir / "cms" / folder.name
    shutil.copytree(folder, copy)
    return copy, meta


def _cut_short(folder: Path, config: str) -> None:
    """What a crash leaves: one configuration's records partly written, and no results.json."""
    lines = (folder / "raw.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line).get("config") != config]
    partial = [line for line in lines if json.loads(line).get("config") == config][:3]
    (folder / "raw.jsonl").write_text("\n".join(kept + partial) + "\n" + partial[-1][: len(partial[-1]) // 2])
    (folder / "results.json").unlink()


def test_resume_runs_only_what_did_not_finish_and_gives_the_same_figures(finished_cms_run):
    folder, before = finished_cms_run
    cut = before["configurations"][1]
    _cut_short(folder, cut)
    result = invoke(*CMS_SWEEP, *RESUMABLE, "--resume", str(folder), "--json")
    assert result.exit_code == 0, result.output
    after = json.loads(result.stdout)
    assert after["execution"]["ran"] == 1
    assert after["execution"]["skipped_finished"] == len(before["configurations"]) - 1
    assert measured_figures(after["summary"]) == measured_figures(before["summary"])
    records = RunFolder.open(folder).records()  # every line is whole JSON again
    assert [r["config"] for r in records if r["op"] == "done"].count(cut) == 1
    assert sum(1 for r in records if r.get("config") == cut and r["op"] == "describe") == 1


def test_resume_of_a_finished_run_runs_nothing(finished_cms_run):
    folder, before = finished_cms_run
    result = invoke(*CMS_SWEEP, *RESUMABLE, "--resume", str(folder), "--json")
    assert result.exit_code == 0, result.output
    after = json.loads(result.stdout)
    assert after["execution"]["ran"] == 0 and after["summary"] == before["summary"]


@pytest.mark.parametrize("change, named", [
    (("-p", "epsilon=0.001,0.002", "-p", "conservative=false"), "configurations: only there: llmds("),
    ((*RESUMABLE, "--seed", "3"), "seed"),
])
def test_resume_refuses_a_different_sweep(finished_cms_run, change, named):
    folder, _ = finished_cms_run
    result = invoke(*CMS_SWEEP, *change, "--resume", str(folder))
    assert result.exit_code == 2
    assert "holds a different sweep" in result.output and named in result.output


def test_resume_refuses_a_damaged_record_file(finished_cms_run):
    folder, _ = finished_cms_run
    lines = (folder / "raw.jsonl").read_text().splitlines()
    lines[2] = lines[2][:10]
    (folder / "raw.jsonl").write_text("\n".join(lines) + "\n")
    result = invoke(*CMS_SWEEP, *RESUMABLE, "--resume", str(folder))
    assert result.exit_code == 2 and "damaged" in result.output and ":3 " in result.output


def test_resume_needs_a_run_folder_of_a_sweep(tmp_path, results_dir):
    result = invoke(*CMS_SWEEP, "--resume", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "does not exist" in result.output
    result = invoke("bench", "all", "--resume", str(tmp_path))
    assert result.exit_code == 2 and "one component" in result.output


def test_a_failed_configuration_is_recorded_and_the_others_kept(results_dir):
    result = invoke("bench", "bm25", "--quick", "--no-sweep", "--repeats", "1", "-p", "k1=-1,1.2", "--json")
    assert result.exit_code == 1  # a failure is not success, but the run is written
    meta = json.loads(result.stdout)
    bad, good = "llmds(b=0.75,delta=0.5,k=10,k1=-1.0,method=lucene,stemmer=english,stopwords=en)", None
    assert list(meta["failures"]) == [bad] and "k1 must be" in meta["failures"][bad]
    assert [c for c in meta["summary"]] and bad not in meta["summary"]
    records = RunFolder.open(latest(results_dir, "bm25")).records()
    failed = [r for r in records if r["op"] == "failed"]
    assert len(failed) == 1 and failed[0]["config"] == bad and "k1 must be" in failed[0]["error"]
    assert {r["status"] for r in records if r["op"] == "done"} == {"ok", "failed"}
    # a resumed run tries the failed configuration again, and keeps one record of its failure
    again = invoke("bench", "bm25", "--quick", "--no-sweep", "--repeats", "1", "-p", "k1=-1,1.2",
                   "--resume", str(latest(results_dir, "bm25")), "--json")
    assert again.exit_code == 1 and json.loads(again.stdout)["execution"]["ran"] == 1
    records = RunFolder.open(latest(results_dir, "bm25")).records()
    assert sum(1 for r in records if r["op"] == "failed") == 1


def test_executor_options_are_checked():
    with pytest.raises(InvalidInputError, match="add --executor dask"):
        make_executor("local", workers=2)
    with pytest.raises(InvalidInputError, match="add --executor dask"):  # not silently ignored
        make_executor("local", ship="path")
    with pytest.raises(InvalidInputError, match="choose one of: local, dask"):
        make_executor("ray")


def test_dask_without_the_extra_names_the_extra(monkeypatch, results_dir):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "distributed" else real(name, *a))
    result = invoke(*CMS_SWEEP, "--executor", "dask", "--workers", "2")
    assert result.exit_code != 0 and "pip install 'llmds[dask]'" in result.output
    assert not results_dir.exists() or not any(results_dir.rglob("raw.jsonl"))


def test_compare_checks_parity_at_every_point_of_a_grid(results_dir):
    pytest.importorskip("bm25s")
    result = invoke("compare", "bm25", "--quick", "--repeats", "1", "--impl", "llmds", "--impl", "bm25s",
                    "-p", "k1=1.2,1.5", "--json")
    assert result.exit_code == 0, result.output
    meta = json.loads(result.stdout)
    checked = [r for r in meta["parity"] if r["impl"] == "bm25s"]
    assert [r["point"] for r in checked] == [{"k1": 1.2}, {"k1": 1.5}] and all(r["passed"] for r in checked)
    assert len(meta["configurations"]) == 4  # ours and bm25s, at each k1
