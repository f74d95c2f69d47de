"""Hybrid retrieval: end to end against independently fused lists, bad input, the hot-query
cache (admission, LRU, invalidation), stage timings, the embedder plug-in, and SciFact."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from llmds.bm25 import BM25Index
from llmds.errors import InvalidInputError, NotAvailableError
from llmds.fusion import convex, rrf
from llmds.hnsw import HNSWIndex
from llmds.pipeline import (
    STAGES,
    ExactDenseIndex,
    HotQueryCache,
    HybridRetriever,
    SearchResult,
    sentence_transformer_embedder,
)

DIM = 16
WORDS = ["protein", "cell", "gene", "virus", "cancer", "brain", "immune", "drug", "mouse",
         "blood", "heart", "lung", "tumour", "enzyme", "receptor", "neuron", "insulin", "liver"]


def _corpus(count=80, seed=1):
    rng = np.random.default_rng(seed)
    ids = [f"d{i}" for i in range(count)]
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) for _ in range(count)]
    vectors = rng.normal(size=(count, DIM)).astype(np.float32)
    return ids, texts, vectors


def _queries(count=12, seed=2):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=3)) for _ in range(count)]
    return texts, rng.normal(size=(count, DIM)).astype(np.float32)


def _exact_dense(vectors, query, depth):
    """Brute-force cosine ranking (positions, similarities), ties by position."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = (unit @ (query / np.linalg.norm(query))).astype(np.float64)
    order = np.lexsort((np.arange(len(similarity)), -similarity))[:depth]
    return order, similarity[order]


@pytest.fixture
def corpus():
    return _corpus()


@pytest.fixture
def exact_retriever(corpus):
    ids, texts, vectors = corpus
    return HybridRetriever(hnsw=ExactDenseIndex(DIM), depth=20).index(ids, texts, vectors)


# ------------------------------------------------------------------------- end to end


def test_hybrid_rrf_equals_independent_fusion(corpus, exact_retriever):
    ids, texts, vectors = corpus
    bm25 = BM25Index().index(texts, ids)
    for text, vector in zip(*_queries()):
        sparse_ids, _ = bm25.search(text, 20)
        dense_positions, _ = _exact_dense(vectors, vector, 20)
        expected = rrf([sparse_ids, [ids[p] for p in dense_positions]], k=60, limit=10)
        result = exact_retriever.search(text, vector, k=10)
        assert result.ids == [doc for doc, _ in expected]
        np.testing.assert_allclose(result.scores, [score for _, score in expected], rtol=1e-12)
        assert not result.cached


@pytest.mark.parametrize("normalisation", ["minmax", "zscore"])
def test_hybrid_convex_equals_independent_fusion(corpus, normalisation):
    ids, texts, vectors = corpus
    retriever = HybridRetriever(hnsw=ExactDenseIndex(DIM), fusion="convex", alpha=0.3, depth=15,
                                normalisation=normalisation).index(ids, texts, vectors)
    bm25 = BM25Index().index(texts, ids)
    for text, vector in zip(*_queries()):
        sparse_ids, sparse_scores = bm25.search(text, 15)
        positions, similarities = _exact_dense(vectors, vector, 15)
        expected = convex(list(zip(sparse_ids, sparse_scores)),
                          list(zip([ids[p] for p in positions], similarities)),
                          0.3, normalisation, limit=7)
        result = retriever.search(text, vector, k=7)
        assert result.ids == [doc for doc, _ in expected]
        np.testing.assert_allclose(result.scores, [s for _, s in expected], rtol=1e-5, atol=1e-6)


def test_candidates_and_fuse_reproduce_search(corpus):
    ids, texts, vectors = corpus
    retriever = HybridRetriever(hnsw=ExactDenseIndex(DIM), depth=12).index(ids, texts, vectors)
    for text, vector in zip(*_queries(4)):
        found = retriever.candidates(text, vector)
        assert len(found.sparse_positions) <= 12 and len(found.dense_positions) == 12
        assert retriever.fuse(found, 6)[0] == retriever.search(text, vector, 6).ids
        for alpha in (0.0, 0.35, 1.0):
            fused_ids, fused_scores = retriever.fuse(found, 6, fusion="convex", alpha=alpha)
            retriever.configure(fusion="convex", alpha=alpha)
            result = retriever.search(text, vector, 6)
            assert fused_ids == result.ids and np.array_equal(fused_scores, result.scores)
            retriever.configure(fusion="rrf")
    with pytest.raises(InvalidInputError, match="alpha"):
        retriever.fuse(found, 5, fusion="convex", alpha=2.0)
    with pytest.raises(InvalidInputError, match="candidates"):
        retriever.fuse((found.sparse_positions, found.dense_positions), 5)


def test_single_retriever_modes(corpus, exact_retriever):
    ids, texts, vectors = corpus
    bm25 = BM25Index().index(texts, ids)
    for text, vector in zip(*_queries()):
        sparse = exact_retriever.search(text, k=5, mode="sparse")  # no vector needed
        expected_ids, expected_scores = bm25.search(text, 5)
        assert sparse.ids == expected_ids
        np.testing.assert_allclose(sparse.scores, expected_scores)
        dense = exact_retriever.search(text, vector, k=5, mode="dense")
        positions, similarities = _exact_dense(vectors, vector, 5)
        assert dense.ids == [ids[p] for p in positions]
        np.testing.assert_allclose(dense.scores, similarities, atol=1e-5)
        assert dense.stage_ns["sparse"] == 0 and sparse.stage_ns["dense"] == 0


def test_default_hnsw_retriever_finds_each_documents_own_vector(corpus):
    ids, texts, vectors = corpus
    retriever = HybridRetriever().index(ids, texts, vectors)
    assert isinstance(retriever.hnsw, HNSWIndex) and retriever.hnsw.metric == "cosine"
    assert len(retriever) == len(ids) and retriever.dim == DIM
    for position in range(0, len(ids), 7):
        own = retriever.search(texts[position], vectors[position], 1, mode="dense")
        assert own.ids == [ids[position]]
        hybrid = retriever.search(texts[position], vectors[position], 10)
        assert len(hybrid.ids) == 10 and len(set(hybrid.ids)) == 10
        assert np.all(np.diff(hybrid.scores) <= 0)
    description = retriever.describe()
    json.dumps(description)
    assert description["memory_bytes"] == retriever.memory_bytes() > 0


def test_depth_limits_candidates_and_k_above_depth_is_served(corpus):
    ids, texts, vectors = corpus
    retriever = HybridRetriever(hnsw=ExactDenseIndex(DIM), depth=3).index(ids, texts, vectors)
    text, vector = _queries(1)[0][0], _queries(1)[1][0]
    assert len(retriever.search(text, vector, k=3).ids) <= 6
    # k above depth: max(depth, k) candidates from each list.
    assert len(retriever.search(text, vector, k=30).ids) >= 30


def test_prebuilt_indexes_are_used_as_they_are(corpus):
    ids, texts, vectors = corpus
    bm25 = BM25Index().index(texts, ids)
    dense = ExactDenseIndex(DIM)
    dense.add(vectors, np.arange(len(ids)))
    retriever = HybridRetriever(bm25=bm25, hnsw=dense).index(ids, None, None)
    fresh = HybridRetriever(hnsw=ExactDenseIndex(DIM)).index(ids, texts, vectors)
    text, vector = _queries(1)[0][0], _queries(1)[1][0]
    assert retriever.search(text, vector).ids == fresh.search(text, vector).ids
    with pytest.raises(InvalidInputError, match="texts=None"):
        HybridRetriever(bm25=bm25).index(ids, texts, vectors)
    with pytest.raises(InvalidInputError, match="order"):
        HybridRetriever(bm25=bm25).index(ids[::-1], None, vectors)
    with pytest.raises(InvalidInputError, match="embeddings=None"):
        HybridRetriever(hnsw=dense).index(ids, texts, vectors)
    with pytest.raises(InvalidInputError, match="0..9"):
        HybridRetriever(hnsw=dense).index(ids[:10], texts[:10], None)


def test_add_makes_new_documents_searchable(corpus):
    ids, texts, vectors = corpus
    retriever = HybridRetriever(hnsw=ExactDenseIndex(DIM), depth=10).index(ids, texts, vectors)
    query_vector = np.ones(DIM, dtype=np.float32)
    retriever.add(["new"], ["zebrafish zebrafish"], query_vector[None, :])
    assert len(retriever) == len(ids) + 1 and retriever.doc_ids[-1] == "new"
    assert retriever.search("zebrafish", query_vector, 1).ids == ["new"]
    assert retriever.search("zebrafish", k=1, mode="sparse").ids == ["new"]


# ------------------------------------------------------------------------- bad input


def test_wrong_embedding_count_or_dimension_is_a_clear_error(corpus):
    ids, texts, vectors = corpus
    with pytest.raises(InvalidInputError, match="rows for 80 documents"):
        HybridRetriever().index(ids, texts, vectors[:-1])
    with pytest.raises(InvalidInputError, match="texts"):
        HybridRetriever().index(ids, texts[:-1], vectors)
    retriever = HybridRetriever(hnsw=ExactDenseIndex(DIM)).index(ids, texts, vectors)
    with pytest.raises(InvalidInputError, match="holds 16-d vectors"):
        retriever.search("gene", np.ones(DIM + 1, dtype=np.float32))
    with pytest.raises(InvalidInputError, match="holds 16-d vectors"):
        retriever.search("gene", np.ones((2, DIM), dtype=np.float32))
    with pytest.raises(InvalidInputError, match="16-d"):
        retriever.add(["x"], ["gene"], np.ones((1, DIM + 1)))
    with pytest.raises(InvalidInputError, match="rows for 1 documents"):
        retriever.add(["x"], ["gene"], np.ones((2, DIM)))
    with pytest.raises(InvalidInputError, match="NaN"):
        retriever.add(["x"], ["gene"], np.full((1, DIM), np.nan))
    with pytest.raises(InvalidInputError, match="duplicate"):
        retriever.add([ids[0]], ["gene"], np.ones((1, DIM)))
    assert len(retriever) == len(ids)  # nothing was added by the failed calls


@pytest.mark.parametrize("alpha", [-0.01, 1.5, float("nan"), True])
def test_alpha_outside_unit_interval_is_rejected(alpha, exact_retriever):
    with pytest.raises(InvalidInputError, match="alpha"):
        HybridRetriever(fusion="convex", alpha=alpha)
    with pytest.raises(InvalidInputError, match="alpha"):
        exact_retriever.configure(alpha=alpha)


@pytest.mark.parametrize(
    "settings",
    [{"fusion": "borda"}, {"rrf_k": -1}, {"depth": 0}, {"normalisation": "l1"}, {"ef": 0},
     {"cache": object()}, {"embedder": 3}, {"bm25": object()}, {"hnsw": object()}],
)
def test_bad_settings_are_rejected(settings):
    with pytest.raises(InvalidInputError):
        HybridRetriever(**settings)


def test_bad_calls_are_rejected(corpus, exact_retriever):
    ids, texts, vectors = corpus
    with pytest.raises(InvalidInputError, match="index\\(\\)"):
        HybridRetriever().search("gene", vectors[0])
    with pytest.raises(InvalidInputError, match="index\\(\\) first"):
        HybridRetriever().add(ids, texts, vectors)
    with pytest.raises(InvalidInputError, match="already indexed"):
        exact_retriever.index(ids, texts, vectors)
    with pytest.raises(InvalidInputError, match="query_vector is required"):
        exact_retriever.search("gene")
    with pytest.raises(InvalidInputError, match="mode"):
        exact_retriever.search("gene", vectors[0], mode="both")
    with pytest.raises(InvalidInputError, match="k must"):
        exact_retriever.search("gene", vectors[0], k=0)
    with pytest.raises(InvalidInputError, match="str"):
        exact_retriever.search(["gene"], vectors[0])
    with pytest.raises(InvalidInputError, match="duplicate"):
        HybridRetriever().index(["a", "a"], ["x", "y"], vectors[:2])
    with pytest.raises(InvalidInputError, match="empty"):
        HybridRetriever().index([], [], np.zeros((0, DIM)))


# ------------------------------------------------------------------------- cache


def test_cache_admits_a_query_only_once_it_is_hot(corpus):
    ids, texts, vectors = corpus
    cache = HotQueryCache(capacity=4, threshold=3)
    retriever = HybridRetriever(hnsw=ExactDenseIndex(DIM), cache=cache).index(ids, texts, vectors)
    text, vector = _queries(1)[0][0], _queries(1)[1][0]
    first = retriever.search(text, vector)
    second = retriever.search(text, vector)
    assert not first.cached and not second.cached and len(cache) == 0
    third = retriever.search(text, vector)  # third sighting: estimate 3 >= threshold, admitted
    assert not third.cached and len(cache) == 1 and cache.admissions == 1
    fourth = retriever.search(text, vector)
    assert fourth.cached and fourth.ids == first.ids
    np.testing.assert_array_equal(fourth.scores, first.scores)
    assert (cache.hits, cache.misses) == (1, 3) and cache.hit_rate == 0.25
    assert fourth.stage_ns["sparse"] == fourth.stage_ns["dense"] == 0 < fourth.stage_ns["cache"]
    with pytest.raises(ValueError):
        fourth.scores[0] = 1.0  # the cached answer is shared: read-only
    # Another k, mode or vector is another query.
    assert not retriever.search(text, vector, k=5).cached
    assert not retriever.search(text, vector, mode="dense").cached
    assert not retriever.search(text, vector + 1).cached


def test_cache_evicts_least_recently_used_among_admitted():
    cache = HotQueryCache(capacity=2, threshold=1, compare_with_victim=False)
    for key in ("a", "b"):
        assert cache.get(key) is None and cache.put(key, key.upper())
    assert cache.get("a") == "A"  # a is now more recent than b
    assert cache.get("c") is None and cache.put("c", "C")
    assert "b" not in cache and "a" in cache and "c" in cache and cache.evictions == 1
    assert cache.get("b") is None and cache.put("b", "B")
    assert "a" not in cache and len(cache) == 2


def test_cache_full_admits_only_queries_hotter_than_the_victim():
    cache = HotQueryCache(capacity=2, threshold=1)
    for key in ("a", "b", "a", "b", "b"):
        if cache.get(key) is None:
            cache.put(key, key)
    # Full; LRU victim is a (seen twice). c (once) and d (once) lose, ties keep the incumbent.
    assert cache.get("c") is None and not cache.put("c", "c")
    cache.get("d")
    cache.get("d")
    assert not cache.put("d", "d")
    cache.get("d")  # d now seen three times, more than a
    assert cache.put("d", "d") and "a" not in cache and "b" in cache and cache.evictions == 1
    # Without the comparison, recency alone decides.
    plain = HotQueryCache(capacity=1, threshold=1, compare_with_victim=False)
    for key in ("a", "a", "a", "c"):
        if plain.get(key) is None:
            plain.put(key, key)
    assert "c" in plain and "a" not in plain


def test_cache_threshold_window_and_memory():
    cache = HotQueryCache(capacity=8, threshold=2)
    cache.get("cold")
    assert not cache.put("cold", 1) and "cold" not in cache
    cache.get("cold")
    base = cache.memory_bytes()
    assert cache.put("cold", 1, nbytes=1000) and cache.memory_bytes() >= base + 1000
    # With a window of 2 lookups the counts restart: the third lookup opens a fresh sketch.
    windowed = HotQueryCache(capacity=8, threshold=2, window=2)
    windowed.get("q")
    windowed.get("other")
    windowed.get("q")
    assert not windowed.put("q", 1)
    plain = HotQueryCache(capacity=8, threshold=2)
    for key in ("q", "other", "q"):
        plain.get(key)
    assert plain.put("q", 1)
    json.dumps(plain.describe())
    for bad in ({"capacity": 0}, {"threshold": 0}, {"window": 0}, {"sketch": "cms"},
                {"compare_with_victim": 1}):
        with pytest.raises(InvalidInputError):
            HotQueryCache(**bad)


def test_cache_is_invalidated_when_documents_are_added(corpus):
    ids, texts, vectors = corpus
    cache = HotQueryCache(threshold=1)
    retriever = HybridRetriever(hnsw=ExactDenseIndex(DIM), cache=cache).index(ids, texts, vectors)
    query_vector = np.ones(DIM, dtype=np.float32)
    before = retriever.search("zebrafish gene", query_vector, 3)
    assert retriever.search("zebrafish gene", query_vector, 3).cached
    invalidations = cache.invalidations
    retriever.add(["new"], ["zebrafish zebrafish"], query_vector[None, :])
    assert len(cache) == 0 and cache.invalidations == invalidations + 1
    after = retriever.search("zebrafish gene", query_vector, 3)
    assert not after.cached and after.ids[0] == "new" and "new" not in before.ids
    # Changing the fusion settings also drops answers computed with the old ones.
    assert retriever.search("zebrafish gene", query_vector, 3).cached
    retriever.configure(fusion="convex", alpha=0.2)
    assert not retriever.search("zebrafish gene", query_vector, 3).cached


# ------------------------------------------------------------------------- timing


def test_every_search_reports_non_negative_stage_latencies(corpus):
    ids, texts, vectors = corpus
    retriever = HybridRetriever(hnsw=ExactDenseIndex(DIM), cache=HotQueryCache())
    retriever.index(ids, texts, vectors)
    for mode in ("hybrid", "sparse", "dense"):
        for text, vector in zip(*_queries(4)):
            result = retriever.search(text, vector, 5, mode=mode)
            assert isinstance(result, SearchResult)
            assert set(result.stage_ns) == set(STAGES)
            assert all(isinstance(ns, int) and ns >= 0 for ns in result.stage_ns.values())
            assert result.total_ns >= sum(result.stage_ns.values())
            assert result.stage_ns["embed"] == 0  # the vector was given
            if mode != "dense":
                assert result.stage_ns["sparse"] > 0
            if mode != "sparse":
                assert result.stage_ns["dense"] > 0
            assert result.stage_ns["fusion"] > 0 and result.stage_ns["cache"] > 0


# ------------------------------------------------------------------------- embedder


def _hashing_embedder(texts):
    """A deterministic stand-in for a sentence embedding model: a bag of hashed words."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.split():
            out[row, sum(map(ord, word)) % DIM] += 1.0
        out[row, -1] += 0.5  # never the zero vector
    return out


def test_embedder_plug_in_embeds_documents_and_queries(corpus):
    ids, texts, _ = corpus
    retriever = HybridRetriever(hnsw=ExactDenseIndex(DIM), embedder=_hashing_embedder)
    retriever.index(ids, texts, None)
    text = "gene cell virus"
    embedded = retriever.search(text, k=5)
    given = retriever.search(text, _hashing_embedder([text])[0], k=5)
    assert embedded.ids == given.ids and embedded.stage_ns["embed"] > 0 == given.stage_ns["embed"]
    retriever.add(["new"], ["zebrafish"], None)
    assert retriever.search("zebrafish", k=1).ids == ["new"]

    def wrong_dimension(texts):
        return np.ones((len(texts), DIM + 1))

    wrong = HybridRetriever(hnsw=ExactDenseIndex(DIM), embedder=wrong_dimension)
    with pytest.raises(InvalidInputError, match="embedder"):
        wrong.index(ids, texts, None)


def test_sentence_transformer_embedder_reports_a_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import now fails
    with pytest.raises(NotAvailableError, match="pip install sentence-transformers"):
        sentence_transformer_embedder()


# ------------------------------------------------------------------------- exact index


def test_exact_dense_index_metrics_and_ties():
    vectors = np.array([[1, 0], [0, 1], [1, 0], [2, 0]], dtype=np.float32)
    # Query (0.5, 0): cosine distances 0, 1, 0, 0; 1 - ip .5, 1, .5, 0; l2 .25, 1.25, .25, 2.25.
    expected = {"cosine": [0, 2, 3, 1], "ip": [3, 0, 2, 1], "l2": [0, 2, 1, 3]}
    for metric, expected_ids in expected.items():
        index = ExactDenseIndex(2, metric=metric)
        index.add(vectors)
        found, distances = index.search(np.array([0.5, 0], dtype=np.float32), 4)
        assert index.search(np.array([0.5, 0]), 2)[0].tolist() == expected_ids[:2]
        assert found.tolist() == expected_ids and np.all(np.diff(distances) >= 0)
    with pytest.raises(InvalidInputError):
        index.add(vectors[:1], [0])  # id 0 already present
    with pytest.raises(InvalidInputError):
        ExactDenseIndex(2).add(np.zeros((1, 2)))  # zero vector under cosine


# ------------------------------------------------------------------------- SciFact


@pytest.mark.realdata
def test_scifact_hybrid_beats_both_retrievers(shared_data):
    from llmds_cli import datasets, metrics

    folder = shared_data / "scifact"
    beir = datasets.load_beir(folder)
    corpus_vectors = np.load(folder / "embeddings" / "corpus.npy")
    assert json.loads((folder / "embeddings" / "corpus_ids.json").read_text()) == beir.doc_ids
    query_vectors = np.load(folder / "embeddings" / "queries.npy")
    query_rows = json.loads((folder / "embeddings" / "query_ids.json").read_text())
    row_of = {q: i for i, q in enumerate(query_rows)}
    query_ids, query_texts = beir.split_queries("test")
    qrels = beir.qrels["test"]

    retriever = HybridRetriever(hnsw=ExactDenseIndex(corpus_vectors.shape[1]))
    retriever.index(beir.doc_ids, beir.doc_texts, corpus_vectors)

    def ndcg(**search):
        return np.mean([
            metrics.ndcg_at_k(
                retriever.search(text, query_vectors[row_of[q]], 10, **search).ids, qrels[q], 10
            )
            for q, text in zip(query_ids, query_texts)
        ])

    sparse, dense, hybrid = ndcg(mode="sparse"), ndcg(mode="dense"), ndcg()
    assert sparse == pytest.approx(0.686, abs=0.005)  # stop words + Snowball, Lucene BM25
    assert dense == pytest.approx(0.649, abs=0.002)  # MiniLM, exact cosine
    assert hybrid >= 0.72 and hybrid > max(sparse, dense) + 0.03  # RRF k=60, top 100 each
    retriever.configure(fusion="convex", alpha=0.5)
    assert ndcg() >= 0.73
