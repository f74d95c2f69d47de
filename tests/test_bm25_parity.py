"""Parity with the peer libraries on identical tokens, where their formulas are ours.

bm25s implements the same five variants (same idf, same tf parts, and for BM25L/BM25+ the
same tf = 0 share for absent terms), so every variant must match it to float32 precision.

rank_bm25 matches where its formula is the same:
* ``BM25Plus`` is our ``bm25+`` exactly;
* ``BM25Okapi`` is (k1 + 1) times our ``robertson`` as long as no query term is in more than
  half of the documents (it replaces negative idf by a fraction of the average idf, we floor
  it at 0), so the test queries only use such terms;
* its ``BM25L`` multiplies each term's part by the term frequency and so gives absent terms
  nothing, unlike the published formula; it is therefore not compared.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmds.bm25 import METHODS, BM25Index


def _corpus(seed=0, documents=400, vocabulary=300):
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, vocabulary + 1)
    weights /= weights.sum()
    corpus = [
        [f"w{i}" for i in rng.choice(vocabulary, size=int(rng.integers(1, 60)), p=weights)]
        for _ in range(documents)
    ]
    queries = [
        [f"w{i}" for i in rng.integers(0, vocabulary, size=int(rng.integers(1, 8)))]
        for _ in range(30)
    ]
    return corpus, queries


@pytest.mark.parametrize("method", METHODS)
def test_scores_and_top_k_equal_bm25s(method):
    bm25s = pytest.importorskip("bm25s")
    corpus, queries = _corpus()
    k1, b, delta = 1.2, 0.7, 0.6
    theirs = bm25s.BM25(method=method, k1=k1, b=b, delta=delta)
    theirs.index(corpus, show_progress=False)
    ours = BM25Index(method=method, k1=k1, b=b, delta=delta).index(corpus)
    for query in queries:
        np.testing.assert_allclose(ours.get_scores(query), theirs.get_scores(query), atol=1e-4)
        # bm25s fills its top 10 with documents holding no query term when fewer match; we
        # return only the documents that hold one.
        _, their_scores = theirs.retrieve([query], k=10, show_progress=False, n_threads=1)
        _, our_scores = ours.search(query, k=10)
        matching = sum(1 for doc in corpus if set(doc) & set(query))
        assert len(our_scores) == min(10, matching)
        np.testing.assert_allclose(our_scores, their_scores[0][: len(our_scores)], atol=1e-4)


def _rank_bm25_queries(corpus, queries):
    """Queries restricted to terms held by fewer than half of the documents."""
    df = {}
    for doc in corpus:
        for term in set(doc):
            df[term] = df.get(term, 0) + 1
    kept = [[term for term in query if df.get(term, 0) < len(corpus) / 2] for query in queries]
    return [query for query in kept if query]


def test_okapi_scores_equal_rank_bm25():
    rank_bm25 = pytest.importorskip("rank_bm25")
    corpus, queries = _corpus(seed=1)
    k1, b = 1.5, 0.75
    theirs = rank_bm25.BM25Okapi(corpus, k1=k1, b=b)
    ours = BM25Index(method="robertson", k1=k1, b=b).index(corpus)
    for query in _rank_bm25_queries(corpus, queries):
        np.testing.assert_allclose(
            (k1 + 1) * ours.get_scores(query), theirs.get_scores(query), rtol=1e-9
        )


def test_bm25_plus_scores_and_ranking_equal_rank_bm25():
    rank_bm25 = pytest.importorskip("rank_bm25")
    corpus, queries = _corpus(seed=2)
    k1, b, delta = 1.5, 0.75, 1.0
    theirs = rank_bm25.BM25Plus(corpus, k1=k1, b=b, delta=delta)
    ours = BM25Index(method="bm25+", k1=k1, b=b, delta=delta).index(corpus)
    for query in queries:
        expected = theirs.get_scores(query)
        np.testing.assert_allclose(ours.get_scores(query), expected, rtol=1e-9)
        _, scores = ours.search(query, k=5)
        np.testing.assert_allclose(scores, np.sort(expected)[::-1][: len(scores)], rtol=1e-9)
