"""BM25 on the real BEIR SciFact corpus: retrieval quality on the 300 test queries, index size,
and score parity with bm25s on the same tokens. Skipped when ../shared/data is absent."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from llmds.bm25 import BM25Index
from llmds.tokenizer import Tokenizer

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not SCIFACT.is_dir(), reason=f"SciFact not found at {SCIFACT}"),
]


def _ndcg_at_10(ranked: list[str], judged: dict[str, int]) -> float:
    dcg = sum(judged.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:10]))
    ideal = sorted(judged.values(), reverse=True)[:10]
    return dcg / sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))


@pytest.fixture(scope="module")
def scifact():
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as handle:
        documents = [json.loads(line) for line in handle]
    with open(SCIFACT / "queries.jsonl", encoding="utf-8") as handle:
        queries = {row["_id"]: row["text"] for row in map(json.loads, handle)}
    qrels: dict[str, dict[str, int]] = {}
    with open(SCIFACT / "qrels" / "test.tsv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(row["score"])
    query_ids = sorted(qrels)
    tokenizer = Tokenizer()
    return {
        "ids": [doc["_id"] for doc in documents],
        "tokens": tokenizer.tokenize_many(doc["title"] + " " + doc["text"] for doc in documents),
        "queries": tokenizer.tokenize_many(queries[q] for q in query_ids),
        "qrels": [qrels[q] for q in query_ids],
    }


@pytest.fixture(scope="module")
def index(scifact):
    return BM25Index(method="lucene", k1=1.5, b=0.75).index(scifact["tokens"], ids=scifact["ids"])


def test_ndcg_and_recall_match_the_reference_systems(scifact, index):
    results = index.search_batch(scifact["queries"], k=100)
    assert len(results) == 300
    ndcg = np.mean(
        [_ndcg_at_10(ids, judged) for (ids, _), judged in zip(results, scifact["qrels"])]
    )
    recall = np.mean(
        [
            len(set(ids) & {doc for doc, grade in judged.items() if grade > 0})
            / sum(grade > 0 for grade in judged.values())
            for (ids, _), judged in zip(results, scifact["qrels"])
        ]
    )
    assert ndcg >= 0.686, ndcg  # bm25s with the same settings: 0.686
    assert recall >= 0.91, recall  # bm25s: 0.913


def test_index_is_compact(index):
    assert index.num_postings > 400_000
    assert index.bits_per_posting <= 16


def test_scores_equal_bm25s_on_the_same_tokens(scifact, index):
    bm25s = pytest.importorskip("bm25s")
    theirs = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    theirs.index(scifact["tokens"], show_progress=False)
    for query in scifact["queries"][:60]:
        np.testing.assert_allclose(index.get_scores(query), theirs.get_scores(query), atol=1e-4)
