"""The CLI through Typer's runner: listings, errors without tracebacks, run folders, report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmds_cli.app import app, main

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in (result.output or ""), result.output
    return result


def test_list_json_has_every_component_and_peer_status():
    result = invoke("list", "--json")
    assert result.exit_code == 0
    entries = {e["name"]: e for e in json.loads(result.output)}
    assert entries["bm25"]["status"] == "ready"
    assert entries["hnsw"]["status"] in ("ready", "planned")
    assert {p["name"] for p in entries["bm25"]["peers"]} == {"bm25s", "bm25s-numpy", "rank_bm25"}
    assert all(isinstance(p["installed"], bool) for p in entries["bm25"]["peers"])


def test_env_and_datasets_json():
    env = json.loads(invoke("env", "--json").output)
    assert env["python"].startswith("3.") and "numpy" in env["packages"]
    names = {d["name"] for d in json.loads(invoke("datasets", "list", "--json").output)}
    assert {"scifact", "azure-conv", "azure-code", "mooncake-conversation", "sharegpt-lengths", "synthetic-text"} <= names


@pytest.mark.parametrize("args, message", [
    (("bench", "nope"), "unknown component 'nope'"),
    (("bench", "bm25", "--dataset", "azure-conv"), "bm25 does not run on dataset 'azure-conv'"),
    (("bench", "bm25", "-p", "k2=1"), "has no parameter 'k2'"),
    (("bench", "bm25", "-p", "k1=fast"), "expected a float"),
    (("bench", "bm25", "-p", "k1"), "NAME=VALUE"),
    (("datasets", "info", "nope"), "unknown dataset 'nope'"),
    (("report", "/nonexistent/run"), "does not exist"),
    (("diagram", "-o", "x.pdf"), "written as .png or .svg"),
])
def test_bad_input_is_one_clear_line(args, message, results_dir):
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.output


def test_missing_dataset_says_how_to_fix(tmp_path, monkeypatch, results_dir):
    monkeypatch.setenv("LLMDS_DATA_DIR", str(tmp_path / "empty-cache"))
    result = invoke("bench", "bm25", "--dataset", "scifact")
    assert result.exit_code == 2
    assert "llmds datasets fetch scifact" in result.output and "--data-dir" in result.output
    assert not results_dir.exists() or not any(results_dir.rglob("results.json"))


def test_planned_component_says_so(monkeypatch):
    import dataclasses

    from llmds_cli import registry

    planned = dataclasses.replace(registry.get("hnsw"), status=registry.PLANNED)
    monkeypatch.setitem(registry.COMPONENTS, "hnsw", planned)
    result = invoke("bench", "hnsw")
    assert result.exit_code == 2 and "planned, not built yet (issue 3)" in result.output
    listed = {e["name"]: e["status"] for e in json.loads(invoke("list", "--json").stdout)}
    assert listed["hnsw"] == "planned"


def test_main_returns_exit_codes_instead_of_exiting():
    assert main(["list", "--json"]) == 0
    assert main(["bench", "nope"]) == 2


def test_diagram_writes_png_and_svg(tmp_path):
    png = tmp_path / "arch.png"
    assert invoke("diagram", "-o", str(png)).exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "arch.svg"
    assert invoke("diagram", "-o", str(svg)).exit_code == 0
    assert b"<svg" in svg.read_bytes()[:500]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One quick bench run on the built-in synthetic corpus, shared by the tests below."""
    root = tmp_path_factory.mktemp("results")
    result = runner.invoke(app, ["bench", "bm25", "--no-sweep", "--quick", "--repeats", "1",
                                 "--results-dir", str(root), "--json"])
    assert result.exit_code == 0, result.output
    return root, json.loads(result.stdout)


def test_bench_writes_a_complete_run_folder(bench_run):
    root, summary = bench_run
    latest = (root / "bm25" / "LATEST").read_text().strip()
    folder = root / "bm25" / latest
    for name in ("results.json", "results.csv", "raw.jsonl", "env.json", "context.json",
                 "throughput.png", "throughput.svg", "quality_vs_speed.png"):
        assert (folder / name).is_file(), name
    assert summary["dataset"]["name"] == "synthetic-text" and summary["dataset"]["queries"] == 100
    (config, figures), = summary["summary"].items()
    assert config.startswith("llmds(")
    assert 0.3 < figures["ndcg@10"] <= 1.0  # one relevant document per query; lexical match finds most
    assert figures["qps_batch"] > 0 and figures["bits_per_posting"] > 0
    # memory: the structure's own bytes and traced peaks of build and queries, for every run
    assert figures["structure_mib"] > 0 and figures["peak_build_mib"] > 0 and figures["peak_query_mib"] >= 0


def test_report_redraws_from_raw_records(bench_run):
    root, summary = bench_run
    folder = root / "bm25" / (root / "bm25" / "LATEST").read_text().strip()
    (folder / "results.csv").unlink()
    (folder / "throughput.png").unlink()
    result = invoke("report", str(folder), "--json")
    assert result.exit_code == 0, result.output
    assert (folder / "results.csv").is_file() and (folder / "throughput.png").is_file()
    assert json.loads(result.output)["summary"] == summary["summary"]


def test_report_on_an_interrupted_run_is_a_clear_error(bench_run, tmp_path):
    root, _ = bench_run
    folder = root / "bm25" / (root / "bm25" / "LATEST").read_text().strip()
    broken = tmp_path / "bm25" / "interrupted"
    shutil.copytree(folder, broken)
    (broken / "results.json").unlink()
    result = invoke("report", str(broken))
    assert result.exit_code == 2 and "interrupted" in result.output


def test_compare_runs_peers_and_checks_parity(results_dir):
    pytest.importorskip("bm25s")
    result = invoke("compare", "bm25", "--quick", "--repeats", "1", "--impl", "llmds", "--impl", "bm25s", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {v["impl"] for v in summary["summary"].values()} == {"llmds", "bm25s"}
    parity = [p for p in summary["parity"] if p["impl"] == "bm25s"][0]
    assert parity["passed"] is True and parity["max_abs_diff"] <= 1e-4


def test_unavailable_peer_is_reported_not_a_crash(results_dir, monkeypatch):
    from llmds_cli.components import bm25

    monkeypatch.setattr(bm25.RankBm25Adapter, "requires", ("a_module_that_is_not_installed",))
    result = invoke("compare", "bm25", "--quick", "--repeats", "1", "--impl", "llmds", "--impl", "rank_bm25", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["unavailable"][0]["impl"] == "rank_bm25"
    assert "not installed" in summary["unavailable"][0]["reason"]


def test_profile_kv_peak_matches_the_block_pool(results_dir):
    pytest.importorskip("memray")
    result = invoke("profile", "kv", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    folder = Path(summary["run_folder"])
    assert (folder / "memray" / "capture.bin").is_file()
    assert summary["files"]["flamegraph"] and (folder / summary["files"]["flamegraph"]).is_file()
    assert summary["structure_bytes"] > 0
    # the storage array dominates: what memray saw at the peak is the pool, within 10%
    assert 0.9 <= summary["peak_over_structure"] <= 1.1
    assert summary["top_sites"][0]["bytes"] > 0.5 * summary["structure_bytes"]
    again = invoke("report", str(folder), "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["peak_memory_bytes"] == summary["peak_memory_bytes"]


def test_pipeline_bench_on_generated_hybrid_data(results_dir):
    result = invoke("bench", "pipeline", "--quick", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["summary"]
    ndcg = {config.split(") ", 1)[1]: v["ndcg@10"] for config, v in summary.items()
            if ") " in config and "ndcg@10" in v}
    # fusion must beat both single retrievers on data built so that each misses what the other finds
    assert ndcg["rrf_hnsw"] > max(ndcg["sparse"], ndcg["dense_hnsw"])
    assert abs(ndcg["dense_hnsw"] - ndcg["dense_exact"]) <= 0.02
    alpha = [v["alpha"] for c, v in summary.items() if "convex_hnsw" in c and "alpha" in v]
    assert alpha and 0.0 <= alpha[0] <= 1.0


def test_a_run_where_every_configuration_fails_is_an_error_and_leaves_nothing(results_dir):
    result = invoke("bench", "bm25", "--no-sweep", "--quick", "-p", "k1=-1")
    assert result.exit_code == 2
    assert "every configuration failed" in result.output and "k1 must be" in result.output
    assert not any(results_dir.rglob("results.json")) and not any(results_dir.rglob("LATEST"))


def test_data_dir_without_dataset_uses_the_real_dataset_there(tmp_path, results_dir):
    result = invoke("bench", "bm25", "--data-dir", str(tmp_path))
    assert result.exit_code == 2 and "holds none of bm25's real datasets" in result.output
