"""BM25Index: scores against a plain reference formula for every variant, exact top-k against
brute force, incremental add, save/load with damage detection, and every bad input."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.bm25 import METHODS, BM25Index
from llmds.errors import CorruptIndexError, InvalidInputError
from llmds.tokenizer import Tokenizer

# ----------------------------------------------------------------------------------------
# The reference: the formulas of Kamphuis et al. (ECIR 2020), written as plainly as possible.


def reference_scores(corpus, query, method, k1, b, delta):
    n = len(corpus)
    lengths = [len(doc) for doc in corpus]
    average = sum(lengths) / n
    counts = [Counter(doc) for doc in corpus]
    df = Counter(term for doc in counts for term in doc)
    scores = []
    for doc, length in zip(counts, lengths):
        total = 0.0
        for term in query:
            if term not in df:
                continue
            d = df[term]
            if method == "robertson":
                idf = max(0.0, math.log((n - d + 0.5) / (d + 0.5)))
            elif method == "lucene":
                idf = math.log(1 + (n - d + 0.5) / (d + 0.5))
            elif method == "atire":
                idf = math.log(n / d)
            elif method == "bm25l":
                idf = math.log((n + 1) / (d + 0.5))
            else:
                idf = math.log((n + 1) / d)
            tf = doc[term]
            norm = 1 - b + b * length / average
            if tf == 0:
                # Absent term: the variants' limit at tf = 0 (written out so that k1 = 0 or
                # delta = 0 cannot divide zero by zero).
                if method == "bm25l":
                    part = (k1 + 1) * delta / (k1 + delta) if delta > 0 else 0.0
                else:
                    part = delta if method == "bm25+" else 0.0
            elif method in ("robertson", "lucene"):
                part = tf / (k1 * norm + tf)
            elif method == "atire":
                part = (k1 + 1) * tf / (k1 * norm + tf)
            elif method == "bm25l":
                c = tf / norm
                part = (k1 + 1) * (c + delta) / (k1 + c + delta)
            else:
                part = (k1 + 1) * tf / (k1 * norm + tf) + delta
            total += idf * part
        scores.append(total)
    return np.array(scores)


def brute_force_top(index, corpus, query, k):
    """Best k documents holding a query term, by score then by position."""
    scores = index.get_scores(query)
    holding = [i for i, doc in enumerate(corpus) if set(query) & set(doc)]
    ranked = sorted(holding, key=lambda i: (-scores[i], i))[:k]
    return [str(i) for i in ranked], scores[ranked]


@st.composite
def corpora(draw, max_documents=60):
    """A Zipf-like corpus over a small vocabulary (so common terms become bitmaps and rare
    ones packed lists), some empty documents, and a query of known and unknown terms."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    documents = draw(st.integers(1, max_documents))
    vocabulary = [f"t{i}" for i in range(draw(st.integers(1, 40)))]
    weights = 1.0 / np.arange(1, len(vocabulary) + 1)
    weights /= weights.sum()
    corpus = []
    for _ in range(documents):
        length = int(rng.integers(0, 30)) if rng.random() > 0.1 else 0
        corpus.append([vocabulary[i] for i in rng.choice(len(vocabulary), size=length, p=weights)])
    query = [vocabulary[i] for i in rng.integers(0, len(vocabulary), size=draw(st.integers(0, 6)))]
    if draw(st.booleans()):
        query.append("unknown-term")
    return corpus, query


parameters = st.tuples(
    st.sampled_from(METHODS),
    st.floats(0.0, 3.0),
    st.floats(0.0, 1.0),
    st.floats(0.0, 2.0),
)


# ----------------------------------------------------------------------------------------
# Scores and ranking


@settings(max_examples=120, deadline=None)
@given(corpora(), parameters)
def test_scores_equal_the_reference_formula(case, params):
    corpus, query = case
    method, k1, b, delta = params
    index = BM25Index(method=method, k1=k1, b=b, delta=delta).index(corpus)
    expected = reference_scores(corpus, query, method, k1, b, delta)
    np.testing.assert_allclose(index.get_scores(query), expected, rtol=1e-9, atol=1e-9)


@settings(max_examples=120, deadline=None)
@given(corpora(max_documents=200), parameters, st.integers(1, 250))
def test_top_k_equals_brute_force(case, params, k):
    corpus, query = case
    method, k1, b, delta = params
    index = BM25Index(method=method, k1=k1, b=b, delta=delta).index(corpus)
    ids, scores = index.search(query, k=k)
    expected_ids, expected_scores = brute_force_top(index, corpus, query, k)
    assert ids == expected_ids
    np.testing.assert_array_equal(scores, expected_scores)


@settings(max_examples=30, deadline=None)
@given(corpora(max_documents=120), st.integers(1, 20))
def test_batch_search_equals_one_by_one(case, k):
    corpus, query = case
    index = BM25Index().index(corpus)
    queries = [query, query[:1], [], ["unknown-term"], query[::-1]]
    batch = index.search_batch(queries, k=k)
    for (ids, scores), single in zip(batch, queries):
        expected_ids, expected_scores = index.search(single, k=k)
        assert ids == expected_ids
        np.testing.assert_array_equal(scores, expected_scores)


def test_many_documents_exercise_pruning_and_bitmaps():
    """A corpus large enough that top-k stops early and probes bitmap lists."""
    rng = np.random.default_rng(11)
    weights = 1.0 / np.arange(1, 501) ** 1.1
    weights /= weights.sum()
    corpus = [
        [f"w{i}" for i in rng.choice(500, size=int(rng.integers(5, 80)), p=weights)]
        for _ in range(3000)
    ]
    index = BM25Index().index(corpus)
    assert index.describe()["bitmap_terms"] > 0
    for _ in range(40):
        query = [f"w{i}" for i in rng.integers(0, 500, size=int(rng.integers(1, 12)))]
        for k in (1, 10, 100):
            ids, scores = index.search(query, k=k)
            expected_ids, expected_scores = brute_force_top(index, corpus, query, k)
            assert ids == expected_ids
            np.testing.assert_array_equal(scores, expected_scores)


def test_ties_are_broken_by_document_order():
    corpus = [["x", "y"], ["y", "x"], ["x", "y"], ["z"]]
    ids, scores = BM25Index().index(corpus, ids=["c", "a", "b", "d"]).search(["x"], k=3)
    assert ids == ["c", "a", "b"]
    assert scores[0] == scores[1] == scores[2]


def test_repeated_query_term_counts_as_often_as_it_appears():
    index = BM25Index().index([["a", "b"], ["a", "a", "c"], ["c"]])
    np.testing.assert_allclose(index.get_scores(["a", "a"]), 2 * index.get_scores(["a"]))


def test_raw_texts_are_tokenised_with_the_index_tokenizer():
    texts = ["Cats are running.", "A dog runs", "Nothing here"]
    index = BM25Index().index(texts)
    ids, _ = index.search("running cat", k=5)
    assert ids == ["0", "1"]
    tokens = Tokenizer().tokenize_many(texts)
    np.testing.assert_array_equal(
        BM25Index().index(tokens).get_scores(["run", "cat"]), index.get_scores("running cat")
    )


def test_fast_paths_agree_with_search():
    corpus = [["a", "b"], ["b", "c"], ["c", "a", "a"]]
    index = BM25Index().index(corpus, ids=["x", "y", "z"])
    token_ids = index.query_token_ids(["a", "zz", "c"])
    positions, scores = index.search_token_ids(token_ids, k=2)
    ids, expected_scores = index.search(["a", "c"], k=2)
    assert [index.doc_ids[p] for p in positions] == ids
    np.testing.assert_array_equal(scores, expected_scores)
    rows, row_scores, counts = index.search_batch_token_ids([token_ids, token_ids[:0]], k=2)
    assert counts.tolist() == [2, 0]
    np.testing.assert_array_equal(rows[0, :2], positions)
    np.testing.assert_array_equal(row_scores[0, :2], scores)


# ----------------------------------------------------------------------------------------
# Edge cases that must give a correct (possibly empty) answer


def test_query_without_known_terms_gives_an_empty_result():
    index = BM25Index().index([["a"], ["b"]])
    for query in (["zzz"], [], "", "the of and"):
        ids, scores = index.search(query, k=5)
        assert ids == [] and scores.shape == (0,)
    assert index.search_batch([["zzz"], ["a"]], k=1)[0][0] == []
    assert index.search_batch([], k=3) == []


def test_k_larger_than_the_corpus_returns_every_matching_document():
    index = BM25Index().index([["a"], ["b"], ["a", "b"], []])
    ids, scores = index.search(["a"], k=100)
    assert ids == ["0", "2"] or ids == ["2", "0"]
    assert len(scores) == 2


def test_empty_documents_are_allowed_and_never_match():
    index = BM25Index().index([[], ["a", "b"], [], ["b"]])
    assert len(index) == 4 and index.num_postings == 3
    ids, _ = index.search(["a", "b"], k=10)
    assert sorted(ids) == ["1", "3"]
    assert np.all(np.isfinite(index.get_scores(["b"])))


def test_corpus_of_empty_documents_has_no_division_by_zero():
    index = BM25Index().index([[], [""][:0], []])
    assert index.search(["a"], k=3) == ([], pytest.approx(np.zeros(0)))
    assert index.bits_per_posting == 0.0
    np.testing.assert_array_equal(index.get_scores(["a"]), np.zeros(3))


def test_unbuilt_index_answers_with_empty_results():
    index = BM25Index()
    assert len(index) == 0
    ids, scores = index.search("anything", k=3)
    assert ids == [] and len(scores) == 0


def test_robertson_idf_is_floored_at_zero_but_documents_still_match():
    # "a" is in every document: Robertson's idf would be negative, the floor makes it 0.
    index = BM25Index(method="robertson").index([["a", "b"], ["a"], ["a", "c"]])
    scores = index.get_scores(["a"])
    np.testing.assert_array_equal(scores, np.zeros(3))
    ids, _ = index.search(["a"], k=5)
    assert ids == ["0", "1", "2"]


# ----------------------------------------------------------------------------------------
# Incremental add


@settings(max_examples=30, deadline=None)
@given(corpora(max_documents=120), st.sampled_from(METHODS), st.integers(1, 5))
def test_incremental_add_equals_a_fresh_build(case, method, parts):
    corpus, query = case
    fresh = BM25Index(method=method).index(corpus)
    grown = BM25Index(method=method)
    bounds = np.linspace(0, len(corpus), parts + 1).astype(int)
    for start, end in itertools.pairwise(bounds):
        grown.add(corpus[start:end])
    assert len(grown) == len(fresh)
    np.testing.assert_array_equal(grown.get_scores(query), fresh.get_scores(query))
    assert grown.search(query, k=7)[0] == fresh.search(query, k=7)[0]
    assert grown.bits_per_posting == fresh.bits_per_posting


def test_add_rejects_ids_already_indexed():
    index = BM25Index().index([["a"]], ids=["doc-1"])
    with pytest.raises(InvalidInputError, match="doc-1"):
        index.add([["b"]], ids=["doc-1"])
    with pytest.raises(InvalidInputError, match="'0'"):
        BM25Index().index([["a"]], ids=["0"]).add([["b"]], ids=["0"])
    assert len(index) == 1
    index.add([["b"]])  # default ids continue from the position: "1"
    assert index.doc_ids == ["doc-1", "1"]


# ----------------------------------------------------------------------------------------
# Persistence


def test_save_load_round_trip(tmp_path):
    corpus = [["a", "b", "b"], ["c"], [], ["a", "c", "d"], ["é", "日本"]]
    index = BM25Index(method="bm25l", k1=1.2, b=0.5, delta=0.3).index(
        corpus, ids=["x", "y", "z", "w", "ü"]
    )
    index.save(tmp_path / "idx")
    loaded = BM25Index.load(tmp_path / "idx")
    assert loaded.describe() == index.describe()
    for query in (["a"], ["c", "d"], ["日本", "b"], "a c"):
        assert loaded.search(query, k=4)[0] == index.search(query, k=4)[0]
        np.testing.assert_array_equal(loaded.get_scores(query), index.get_scores(query))
    loaded.add([["a"]])
    assert len(loaded) == 6


def _saved(tmp_path):
    rng = np.random.default_rng(5)
    corpus = [[f"t{i}" for i in rng.integers(0, 30, size=20)] for _ in range(200)]
    path = tmp_path / "idx"
    BM25Index().index(corpus).save(path)
    return path


def test_damaged_array_file_is_reported(tmp_path):
    path = _saved(tmp_path)
    data = bytearray((path / "words.npy").read_bytes())
    data[-3] ^= 0xFF
    (path / "words.npy").write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match="checksum"):
        BM25Index.load(path)


def test_missing_files_and_wrong_version_are_reported(tmp_path):
    path = _saved(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["version"] = 999
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="version"):
        BM25Index.load(path)
    with pytest.raises(CorruptIndexError):
        BM25Index.load(tmp_path / "does-not-exist")


def _rewrite_array(path, name, array):
    """Replace an array and its checksum, as an editing mistake or a buggy writer would."""
    import hashlib

    np.save(path / f"{name}.npy", array, allow_pickle=False)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["arrays"][name] = hashlib.sha256((path / f"{name}.npy").read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "name, damage",
    [
        ("words", lambda a: a[: len(a) // 2]),
        ("term_offsets", lambda a: a[::-1].copy()),
        ("term_df", lambda a: a + 1),
        ("term_df", lambda a: np.where(np.arange(len(a)) == 0, 0, a).astype(a.dtype)),
        ("doc_lengths", lambda a: a + 1),
        ("doc_lengths", lambda a: a[:-1]),
        ("vocabulary_offsets", lambda a: a[:-1]),
        ("id_bytes", lambda a: np.full_like(a, 0xFF)),
        ("words", lambda a: a.astype(np.float64)),
    ],
)
def test_inconsistent_arrays_with_valid_checksums_are_reported(tmp_path, name, damage):
    path = _saved(tmp_path)
    _rewrite_array(path, name, damage(np.load(path / f"{name}.npy")))
    with pytest.raises(CorruptIndexError):
        BM25Index.load(path)


def test_bad_metadata_is_reported(tmp_path):
    path = _saved(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["meta"]["method"] = "bm99"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError):
        BM25Index.load(path)


# ----------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3", None])
def test_bad_k_is_rejected(k):
    index = BM25Index().index([["a"]])
    with pytest.raises(InvalidInputError):
        index.search(["a"], k=k)
    with pytest.raises(InvalidInputError):
        index.search_batch([["a"]], k=k)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "bm26"},
        {"k1": -0.1},
        {"k1": float("nan")},
        {"k1": float("inf")},
        {"b": 1.5},
        {"b": -0.1},
        {"delta": -1},
        {"k1": "1.2"},
        {"tokenizer": "english"},
    ],
)
def test_bad_parameters_are_rejected(kwargs):
    with pytest.raises(InvalidInputError):
        BM25Index(**kwargs)


def test_empty_corpus_is_rejected_by_index_but_add_of_nothing_is_a_no_op():
    with pytest.raises(InvalidInputError, match="empty"):
        BM25Index().index([])
    index = BM25Index()
    index.add([])
    assert len(index) == 0


def test_duplicate_ids_are_rejected_with_the_id_named():
    with pytest.raises(InvalidInputError, match="'d1'"):
        BM25Index().index([["a"], ["b"], ["c"]], ids=["d1", "d2", "d1"])


@pytest.mark.parametrize(
    "documents, ids",
    [
        ("a single string", None),
        ([["a"], "text"], None),
        ([["a", 3]], None),
        ([1, 2], None),
        ([["a"], ["b"]], ["only-one"]),
        ([["a"]], [7]),
        ([["a"]], "x"),
    ],
)
def test_bad_documents_and_ids_are_rejected(documents, ids):
    with pytest.raises(InvalidInputError):
        BM25Index().index(documents, ids=ids)


def test_bad_queries_are_rejected():
    index = BM25Index().index([["a"], ["b"]])
    for query in (3, [1, 2], None, [["a"]]):
        with pytest.raises(InvalidInputError):
            index.search(query)
    with pytest.raises(InvalidInputError):
        index.search_batch("a")
    with pytest.raises(InvalidInputError):
        index.search_token_ids(np.array([5]))
    with pytest.raises(InvalidInputError):
        index.search_token_ids(np.array([-1]))
    with pytest.raises(InvalidInputError):
        index.search_token_ids(np.array([0.5]))
    with pytest.raises(InvalidInputError):
        index.search_batch_token_ids(np.array([0, 1]))


def test_describe_is_json_and_sizes_add_up():
    index = BM25Index().index([["a", "b"], ["b", "c", "c"]])
    description = json.loads(json.dumps(index.describe()))
    assert description["num_documents"] == 2 and description["num_postings"] == 4
    assert description["memory_bytes"] == sum(description["array_bytes"].values())
    assert index.memory_bytes() == description["memory_bytes"] > 0
    assert index.bits_per_posting > 0
