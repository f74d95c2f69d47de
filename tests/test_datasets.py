"""Loaders and dataset resolution: every malformed input gets a message naming file, line and fix."""

from __future__ import annotations

import json
import urllib.error

import numpy as np
import pytest

from llmds.errors import DatasetError
from llmds_cli import datasets


def _beir(folder, docs, queries=(), qrels=""):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" if isinstance(d, dict) else d for d in docs))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return folder


def test_beir_loads_title_and_text(tmp_path):
    folder = _beir(tmp_path / "b", [{"_id": "1", "title": "T", "text": "body"}, {"_id": "2", "title": "", "text": ""}],
                   [{"_id": "q", "text": "body"}], "q\t1\t1\n")
    data = datasets.load_beir(folder)
    assert data.doc_texts == ["T body", ""]  # an empty document is allowed
    assert data.split_queries("test") == (["q"], ["body"])
    with pytest.raises(DatasetError, match="no relevance judgements for split 'train'"):
        data.split_queries("train")


def test_malformed_jsonl_line_names_the_line(tmp_path):
    folder = _beir(tmp_path / "b", [{"_id": "1", "text": "a"}, '{"_id": "2", "text": \n'])
    with pytest.raises(DatasetError, match=r"corpus.jsonl:2: malformed JSON"):
        datasets.load_beir(folder)


def test_duplicate_document_id_names_both_lines(tmp_path):
    folder = _beir(tmp_path / "b", [{"_id": "1", "text": "a"}, {"_id": "1", "text": "b"}])
    with pytest.raises(DatasetError, match=r"corpus.jsonl:2: duplicate document id '1' \(first on line 1\)"):
        datasets.load_beir(folder)


def test_empty_corpus_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="holds no documents"):
        datasets.load_beir(_beir(tmp_path / "b", []))


def test_bad_qrels_line(tmp_path):
    folder = _beir(tmp_path / "b", [{"_id": "1", "text": "a"}], qrels="q\t1\n")
    with pytest.raises(DatasetError, match=r"test.tsv:2: expected 3 tab-separated"):
        datasets.load_beir(folder)


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMDS_DATA_DIR", str(tmp_path / "cache"))
    with pytest.raises(DatasetError, match=r"llmds datasets fetch scifact.*--data-dir"):
        datasets.locate("scifact")
    with pytest.raises(DatasetError, match="missing corpus.jsonl"):
        datasets.locate("scifact", tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        datasets.manifest("nope")


def test_fetch_offline_fails_fast_with_local_copy_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMDS_DATA_DIR", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(datasets.urllib.request, "urlopen", offline)
    with pytest.raises(DatasetError, match="--data-dir PATH"):
        datasets.fetch("azure-conv")
    assert not (tmp_path / "cache" / "azure-conv").exists()  # nothing half-cached


def test_fetch_rejects_a_checksum_mismatch(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMDS_DATA_DIR", str(tmp_path / "cache"))

    class Response:
        length = 5

        def __init__(self):
            self.sent = False

        def read(self, n):
            if self.sent:
                return b""
            self.sent = True
            return b"a,b\n"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(datasets.urllib.request, "urlopen", lambda *a, **k: Response())
    with pytest.raises(DatasetError, match="does not match its manifest"):
        datasets.fetch("azure-code")
    assert not (tmp_path / "cache" / "azure-code").exists()


def test_azure_trace_errors(tmp_path):
    good = tmp_path / "a.csv"
    good.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,10,2\n2023-11-16 18:15:47.0,5,1\n")
    trace = datasets.load_azure_trace(good)
    assert list(trace.prompt_tokens) == [10, 5] and trace.arrival_s[1] == pytest.approx(0.31941, abs=1e-4)
    bad = tmp_path / "b.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,10,-2\n")
    with pytest.raises(DatasetError, match=r"b.csv:2: GeneratedTokens is negative"):
        datasets.load_azure_trace(bad)
    unsorted = tmp_path / "c.csv"
    unsorted.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,1,1\n2023-11-16 18:15:40,1,1\n")
    with pytest.raises(DatasetError, match="not sorted"):
        datasets.load_azure_trace(unsorted)
    wrong = tmp_path / "d.csv"
    wrong.write_text("time,a,b\n1,2,3\n")
    with pytest.raises(DatasetError, match="expected columns"):
        datasets.load_azure_trace(wrong)


def test_mooncake_line_without_hash_ids(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1, 2]}\n'
                    '{"timestamp": 3, "input_length": 5, "output_length": 1}\n')
    with pytest.raises(DatasetError, match=r"m.jsonl:2: the request has no 'hash_ids'"):
        datasets.load_mooncake_trace(path)


def test_vectors_npy_and_fvecs(tmp_path):
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "v.npy", vectors)
    assert np.array_equal(datasets.load_vectors(tmp_path / "v.npy"), vectors)
    fvecs = np.hstack([np.full((3, 1), 4, np.int32), vectors.view(np.int32)])
    fvecs.tofile(tmp_path / "v.fvecs")
    assert np.array_equal(datasets.load_vectors(tmp_path / "v.fvecs"), vectors)
    (tmp_path / "v.txt").write_text("1 2")
    with pytest.raises(DatasetError, match="unknown vector format"):
        datasets.load_vectors(tmp_path / "v.txt")


def test_real_files_match_their_manifests(shared_data):
    status = datasets.verify("scifact", shared_data / "scifact")
    assert all(s == "ok" for s in status.values()), status
    for name in ("azure-conv", "azure-code", "mooncake-conversation", "sharegpt-lengths"):
        folder = datasets.locate(name, shared_data / "traces")
        assert all(s == "ok" for s in datasets.verify(name, folder).values())


def test_real_traces_load(shared_data):
    conv = datasets.load_trace("azure-conv", shared_data / "traces")
    assert len(conv) == 19366
    mooncake = datasets.load_trace("mooncake-conversation", shared_data / "traces")
    assert sum(len(h) for h in mooncake.block_hashes) == 288500
    assert len(datasets.load_trace("sharegpt-lengths", shared_data / "traces")) == 30731
