"""Run-to-run comparison on synthetic run folders: thresholds, refusals, exit codes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from llmds.errors import InvalidInputError
from llmds_cli import regress
from llmds_cli.app import app
from llmds_cli.results import RunFolder, rows_to_csv


def make_run(root, component, figures, dataset="abc", params=None):
    folder = RunFolder.create(component, root)
    folder.append_records([])
    rows = [{"impl": "llmds", "config": "llmds(x=1)", "op": "search", "metric": m, "value": v, "unit": ""}
            for m, v in figures.items()]
    (folder.path / "results.csv").write_text(rows_to_csv(rows))
    folder.write_json("results.json", {"component": component, "mode": "bench", "params": params or {},
                                       "dataset": {"checksum": dataset}, "quick": False})
    return folder.path


BASE = {"qps_single": 1000.0, "build_s": 2.0, "index_mib": 10.0, "ndcg@10": 0.686}


def test_classification():
    assert regress.classify("qps_batch") == "throughput"
    assert regress.classify("build_s") == "time"
    assert regress.classify("latency_p99_us") == "time"
    assert regress.classify("index_mib") == "memory"
    assert regress.classify("ndcg@10") == "quality"
    assert regress.classify("recall@10") == "quality"
    assert regress.classify("qps_at_recall_0.95") == "throughput"  # a speed, read at a recall level


def test_noise_within_thresholds_is_not_a_regression(tmp_path):
    a = regress.load(make_run(tmp_path, "bm25", BASE))
    b = regress.load(make_run(tmp_path, "bm25", {**BASE, "qps_single": 960.0, "build_s": 2.1, "ndcg@10": 0.684}))
    assert not any(c.regressed for c in regress.compare_runs(a, b))


@pytest.mark.parametrize("metric, value", [("qps_single", 850.0), ("build_s", 2.3), ("index_mib", 10.6), ("ndcg@10", 0.68)])
def test_each_kind_of_regression_is_flagged(tmp_path, metric, value):
    a = regress.load(make_run(tmp_path, "bm25", BASE))
    b = regress.load(make_run(tmp_path, "bm25", {**BASE, metric: value}))
    flagged = [c.metric for c in regress.compare_runs(a, b) if c.regressed]
    assert flagged == [metric]


def test_improvements_are_not_flagged(tmp_path):
    a = regress.load(make_run(tmp_path, "bm25", BASE))
    b = regress.load(make_run(tmp_path, "bm25", {"qps_single": 2000.0, "build_s": 1.0, "index_mib": 5.0, "ndcg@10": 0.7}))
    assert not any(c.regressed for c in regress.compare_runs(a, b))


def test_refuses_different_components_and_datasets(tmp_path):
    a = regress.load(make_run(tmp_path, "bm25", BASE))
    with pytest.raises(InvalidInputError, match="same component"):
        regress.compare_runs(a, regress.load(make_run(tmp_path, "hnsw", BASE)))
    other = regress.load(make_run(tmp_path, "bm25", BASE, dataset="other"))
    with pytest.raises(InvalidInputError, match="--force"):
        regress.compare_runs(a, other)
    assert regress.compare_runs(a, other, force=True)


def test_incomplete_or_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        regress.load(tmp_path / "nope")
    folder = RunFolder.create("bm25", tmp_path)
    with pytest.raises(InvalidInputError, match="not a complete run folder"):
        regress.load(folder.path)


def test_pytest_benchmark_folders(tmp_path):
    def bench(folder, median):
        folder.mkdir(parents=True)
        (folder / "benchmark.json").write_text(json.dumps({"machine_info": {"cpu": {"brand_raw": "x"}}, "benchmarks": [
            {"fullname": "bench/test_bm25.py::test_query[small]", "stats": {"median": median, "min": median * 0.9}}]}))
        return folder

    a = regress.load(bench(tmp_path / "a", 1e-4))
    b = regress.load(bench(tmp_path / "b", 1.3e-4))
    assert [c.metric for c in regress.compare_runs(a, b) if c.regressed] == ["median_s", "min_s"]


def test_cli_exit_code_and_reports(tmp_path):
    a = make_run(tmp_path, "bm25", BASE)
    b = make_run(tmp_path, "bm25", {**BASE, "qps_single": 500.0})
    result = CliRunner().invoke(app, ["compare", "--runs", str(a), str(b), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["regressions"] == 1
    assert (b / "regression.md").read_text().count("REGRESSION") == 1
    same = CliRunner().invoke(app, ["compare", "--runs", str(a), str(a)])
    assert same.exit_code == 0


def test_a_deliberately_slowed_operation_is_flagged(tmp_path, monkeypatch):
    """Two real bench runs; in the second, BM25 search is slowed through a fixture."""
    import time

    from llmds.bm25 import BM25Index

    runner = CliRunner()
    args = ["bench", "bm25", "--no-sweep", "--quick", "--repeats", "1", "--results-dir", str(tmp_path), "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    baseline = tmp_path / "bm25" / (tmp_path / "bm25" / "LATEST").read_text().strip()

    original = BM25Index.search

    def slowed(self, *a, **k):
        time.sleep(0.002)  # ~2 ms per query: far beyond any noise threshold
        return original(self, *a, **k)

    monkeypatch.setattr(BM25Index, "search", slowed)
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    slowed_run = tmp_path / "bm25" / (tmp_path / "bm25" / "LATEST").read_text().strip()
    assert slowed_run != baseline
    result = runner.invoke(app, ["compare", "--runs", str(baseline), str(slowed_run), "--json"])
    assert result.exit_code == 1
    flagged = {c["metric"] for c in json.loads(result.stdout)["changes"] if c["regressed"]}
    assert "qps_single" in flagged
