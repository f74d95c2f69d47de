from __future__ import annotations

import json

import pytest

from llmds.errors import DatasetError
from llmds_cli.results import RunFolder, atomic_write_json, new_run_id, rows_to_csv


def test_run_id_sorts_by_time_and_names_commit():
    from datetime import datetime, timezone

    early = new_run_id(datetime(2026, 1, 1, tzinfo=timezone.utc))
    late = new_run_id(datetime(2026, 6, 1, tzinfo=timezone.utc))
    assert early < late
    assert early.startswith("20260101T000000Z_")


def test_records_round_trip_and_latest_only_when_marked(tmp_path):
    folder = RunFolder.create("bm25", tmp_path)
    folder.append_records([{"op": "build", "ns": 5}])
    folder.append_records([{"op": "search", "ns": 7}])
    assert [r["ns"] for r in folder.records()] == [5, 7]
    assert not (tmp_path / "bm25" / "LATEST").exists()
    assert not folder.complete
    folder.write_json("results.json", {"ok": True})
    folder.mark_latest()
    assert RunFolder.open(tmp_path / "bm25").path == folder.path


def test_a_resumed_older_run_does_not_take_latest_from_a_newer_one(tmp_path):
    newer = RunFolder.create("bm25", tmp_path)
    newer.append_records([{"op": "build", "ns": 5}])
    newer.write_json("results.json", {"ok": True})
    newer.mark_latest()
    (tmp_path / "bm25" / "20200101T000000Z_0000000").mkdir()
    older = RunFolder(tmp_path / "bm25" / "20200101T000000Z_0000000")
    older.append_records([{"op": "build", "ns": 5}])
    older.write_json("results.json", {"ok": True})
    older.mark_latest()  # it finished last (--resume), but it is the older run
    assert RunFolder.open(tmp_path / "bm25").path == newer.path
    (newer.path / "results.json").unlink()  # the newer one is no longer complete: the older one is latest
    older.mark_latest()
    assert RunFolder.open(tmp_path / "bm25").path == older.path


def test_two_runs_in_the_same_second_get_distinct_folders(tmp_path):
    assert RunFolder.create("bm25", tmp_path).path != RunFolder.create("bm25", tmp_path).path


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_open_errors_are_clear(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        RunFolder.open(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="is a file; give a run folder"):
        RunFolder.open(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a run folder"):
        RunFolder.open(tmp_path / "empty")


def test_truncated_raw_line_is_reported(tmp_path):
    folder = RunFolder.create("bm25", tmp_path)
    folder.append_records([{"op": "a"}])
    with open(folder.path / "raw.jsonl", "a") as handle:
        handle.write('{"op": "b", "ns"')
    with pytest.raises(DatasetError, match="raw.jsonl:2"):
        folder.records()


def test_csv_has_tidy_columns():
    text = rows_to_csv([{"impl": "llmds", "config": "c", "op": "search", "metric": "qps", "value": 1.0, "unit": "1/s"}])
    assert text.splitlines()[0] == "impl,config,op,metric,value,unit"
