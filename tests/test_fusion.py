"""Score fusion: hand-computed cases, tie order, bad input, and properties against an exact
reference (fractions) and between the id and array versions."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.errors import InvalidInputError
from llmds.fusion import convex, convex_positions, normalise, rrf, rrf_positions


def _ids(pairs):
    return [doc_id for doc_id, _ in pairs]


# ---------------------------------------------------------------------------------- rrf


def test_rrf_hand_computed():
    fused = rrf([["a", "b", "c"], ["c", "a", "d"]], k=60)
    assert _ids(fused) == ["a", "c", "b", "d"]
    expected = {"a": 1 / 61 + 1 / 62, "c": 1 / 63 + 1 / 61, "b": 1 / 62, "d": 1 / 63}
    for doc_id, score in fused:
        assert score == pytest.approx(expected[doc_id], rel=1e-15)


def test_rrf_weights_rank_constant_and_limit():
    fused = rrf([["a", "b"], ["b", "a"]], k=0, weights=[2.0, 1.0])
    # a: 2/1 + 1/2 = 2.5, b: 2/2 + 1/1 = 2
    assert fused == [("a", 2.5), ("b", 2.0)]
    assert rrf([["a", "b", "c"], ["c"]], limit=1) == [("c", 1 / 63 + 1 / 61)]
    # A zero-weight list contributes nothing but its documents are still listed.
    assert rrf([["a"], ["b"]], weights=[1, 0]) == [("a", 1 / 61), ("b", 0.0)]


def test_rrf_ties_follow_round_robin_first_appearance():
    # Equal scores: the better best rank wins, then the earlier list.
    assert _ids(rrf([["a", "b"], ["b", "a"]])) == ["a", "b"]
    assert _ids(rrf([["x", "p"], ["y", "q"]])) == ["x", "y", "p", "q"]
    # Ranks that are permutations of each other give bit-identical scores (summed by rank).
    fused = rrf([["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]])
    assert _ids(fused) == ["a", "b", "c"]
    assert fused[0][1] == fused[1][1] == fused[2][1]


def test_rrf_empty_inputs():
    assert rrf([]) == []
    assert rrf([[], []]) == []
    assert rrf([[], ["a"]]) == [("a", 1 / 61)]


@pytest.mark.parametrize(
    "call",
    [
        lambda: rrf([["a", "b", "a"]]),
        lambda: rrf([["a"]], k=-1),
        lambda: rrf([["a"]], k=math.nan),
        lambda: rrf([["a"], ["b"]], weights=[1.0]),
        lambda: rrf([["a"], ["b"]], weights=[1.0, -1.0]),
        lambda: rrf([["a"]], limit=0),
        lambda: rrf("ab"),
        lambda: rrf([5]),
        lambda: rrf([[["unhashable"]]]),
    ],
)
def test_rrf_rejects_bad_input(call):
    with pytest.raises(InvalidInputError):
        call()


def _reference_rrf(rankings, k):
    """Plain-Python RRF: lists read rank by rank, round robin; each document's terms summed
    in that order; ties by first appearance."""
    score, first = {}, {}
    for rank in range(max(map(len, rankings), default=0)):
        for ranking in rankings:
            if rank < len(ranking):
                doc = ranking[rank]
                score[doc] = score.get(doc, 0.0) + 1.0 / (k + rank + 1)
                first.setdefault(doc, len(first))
    return sorted(score, key=lambda doc: (-score[doc], first[doc]))


# Small id ranges make documents shared between lists; long lists exceed the 64 results up
# to which the top is selected in a buffer rather than by a full sort.
_rankings = st.integers(5, 150).flatmap(
    lambda ids: st.lists(
        st.lists(st.integers(0, ids), max_size=90, unique=True), min_size=1, max_size=4
    )
)


@settings(max_examples=150, deadline=None)
@given(_rankings, st.integers(0, 100))
def test_rrf_matches_reference_and_exact_rational_order(rankings, k):
    fused = rrf(rankings, k=k)
    assert _ids(fused) == _reference_rrf(rankings, k)
    exact = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking):
            exact[doc] = exact.get(doc, Fraction(0)) + Fraction(1, k + rank + 1)
    for (doc, score), (next_doc, _) in itertools.pairwise(fused):
        assert score == pytest.approx(float(exact[doc]), rel=1e-14)
        # Never out of order by more than float rounding of the sums.
        assert exact[doc] - exact[next_doc] > -1e-12
    docs, scores = rrf_positions([np.array(r, dtype=np.int64) for r in rankings], k)
    assert docs.tolist() == _ids(fused)
    assert scores.tolist() == [score for _, score in fused]


@settings(max_examples=60, deadline=None)
@given(_rankings, st.integers(1, 100))
def test_rrf_order_does_not_depend_on_document_numbers(rankings, limit):
    # An injective map to large, negative and colliding-looking int64 numbers.
    def number(doc):
        return (doc * 0x9E3779B97F4A7C15 % 2**64) - 2**63

    fused = rrf(rankings, limit=limit)
    docs, _ = rrf_positions(
        [np.array([number(doc) for doc in r], dtype=np.int64) for r in rankings], limit=limit
    )
    assert docs.tolist() == [number(doc) for doc in _ids(fused)]


# ---------------------------------------------------------------------------- normalise


def test_normalise_hand_computed():
    np.testing.assert_allclose(normalise([1, 2, 3, 5]), [0.0, 0.25, 0.5, 1.0])
    root = math.sqrt(1.5)  # population standard deviation of (1, 2, 3) is sqrt(2/3)
    np.testing.assert_allclose(normalise([1, 2, 3], "zscore"), [-root, 0.0, root])
    z = normalise([4.0, 9.0, -2.0, 0.5], "zscore")
    assert z.mean() == pytest.approx(0.0, abs=1e-12) and z.std() == pytest.approx(1.0)


def test_normalise_constant_and_empty():
    assert normalise([7.0, 7.0]).tolist() == [0.0, 0.0]
    assert normalise([7.0], "zscore").tolist() == [0.0]
    assert normalise([]).shape == (0,)


@pytest.mark.parametrize(
    "scores, method",
    [([1.0, math.nan], "minmax"), ([1.0, math.inf], "zscore"), ([[1.0, 2.0]], "minmax"),
     ([1.0, 2.0], "softmax"), (["a", "b"], "minmax")],
)
def test_normalise_rejects_bad_input(scores, method):
    with pytest.raises(InvalidInputError):
        normalise(scores, method)


# ------------------------------------------------------------------------------- convex


def test_convex_minmax_with_missing_documents():
    sparse = {"a": 3.0, "b": 2.0, "c": 1.0}
    dense = {"c": 0.9, "d": 0.5, "a": 0.1}
    fused = convex(sparse, dense, alpha=0.3)
    # sparse normalised a 1, b .5, c 0; dense c 1, d .5, a 0; missing -> that list's minimum 0.
    assert _ids(fused) == ["a", "b", "c", "d"]
    np.testing.assert_allclose([s for _, s in fused], [0.7, 0.35, 0.3, 0.15])


def test_convex_zscore_missing_documents_get_the_list_minimum():
    fused = dict(convex({"a": 3.0, "b": 1.0}, {"c": 2.0, "d": 0.0, "a": 1.0}, 0.5, "zscore"))
    low_dense = -math.sqrt(1.5)  # z-scores of (2, 0, 1): sqrt(1.5), -sqrt(1.5), 0
    assert fused["a"] == pytest.approx(0.5 * 1 + 0.5 * 0)
    assert fused["c"] == pytest.approx(0.5 * -1 + 0.5 * math.sqrt(1.5))
    assert fused["b"] == pytest.approx(0.5 * -1 + 0.5 * low_dense)
    assert fused["d"] == pytest.approx(0.5 * -1 + 0.5 * low_dense)


def test_convex_tie_order_and_pairs_input():
    # b (sparse rank 2) and d (dense rank 2) tie exactly: the sparse list is read first.
    fused = convex([("a", 3.0), ("b", 1.0)], [("c", 2.0), ("d", 0.0), ("a", 1.0)], 0.5, "zscore")
    assert _ids(fused) == ["a", "c", "b", "d"]
    assert fused[2][1] == fused[3][1]
    assert fused == convex({"a": 3.0, "b": 1.0}, {"c": 2.0, "d": 0.0, "a": 1.0}, 0.5, "zscore")
    assert convex({"a": 1.0}, {}, 0.5) == [("a", 0.0)]
    assert convex({}, {}, 0.5) == []


@pytest.mark.parametrize("alpha", [-0.1, 1.1, math.nan, math.inf, True, "0.5", None])
def test_convex_rejects_alpha_outside_unit_interval(alpha):
    with pytest.raises(InvalidInputError, match="alpha"):
        convex({"a": 1.0}, {"a": 1.0}, alpha)


@pytest.mark.parametrize(
    "sparse, dense",
    [({"a": math.nan}, {}), ([("a", 1.0), ("a", 2.0)], {}), ("ab", {}), ([1, 2], {})],
)
def test_convex_rejects_bad_lists(sparse, dense):
    with pytest.raises(InvalidInputError):
        convex(sparse, dense, 0.5)


_scored = st.lists(st.integers(0, 40), min_size=2, max_size=20, unique=True)


@settings(max_examples=100, deadline=None)
@given(_scored, _scored, st.data())
def test_convex_alpha_0_and_1_give_the_single_retrievers_orders(sparse_docs, dense_docs, data):
    def scored(docs):
        values = data.draw(st.lists(st.integers(-1000, 1000), min_size=len(docs),
                                    max_size=len(docs), unique=True))
        return sorted(zip(docs, map(float, values)), key=lambda pair: -pair[1])

    for normalisation in ("minmax", "zscore"):
        for alpha, ranked in ((0.0, scored(sparse_docs)), (1.0, scored(dense_docs))):
            other = scored(dense_docs if alpha == 0.0 else sparse_docs)
            sparse, dense = (ranked, other) if alpha == 0.0 else (other, ranked)
            fused = _ids(convex(sparse, dense, alpha, normalisation))
            order = _ids(ranked)
            assert [doc for doc in fused if doc in set(order)] == order
            # Documents only in the other list tie with the last one of this list at most.
            assert fused[: len(order) - 1] == order[:-1]


@settings(max_examples=60, deadline=None)
@given(_scored, _scored, st.floats(0, 1), st.sampled_from(["minmax", "zscore"]), st.data())
def test_convex_positions_equal_convex(sparse_docs, dense_docs, alpha, normalisation, data):
    sparse_scores = sorted(data.draw(st.lists(st.floats(-50, 50), min_size=len(sparse_docs),
                                              max_size=len(sparse_docs))), reverse=True)
    dense_scores = sorted(data.draw(st.lists(st.floats(-1, 1), min_size=len(dense_docs),
                                             max_size=len(dense_docs))), reverse=True)
    fused = convex(list(zip(sparse_docs, sparse_scores)), list(zip(dense_docs, dense_scores)),
                   alpha, normalisation)
    docs, scores = convex_positions(np.array(sparse_docs), np.array(sparse_scores),
                                    np.array(dense_docs), np.array(dense_scores), alpha,
                                    normalisation)
    assert docs.tolist() == _ids(fused)
    np.testing.assert_allclose(scores, [s for _, s in fused])
    # The reported score is the convex combination with missing -> list minimum.
    s_norm = dict(zip(sparse_docs, normalise(sparse_scores, normalisation)))
    d_norm = dict(zip(dense_docs, normalise(dense_scores, normalisation)))
    low_s, low_d = min(s_norm.values()), min(d_norm.values())
    for doc, score in fused:
        expected = (1 - alpha) * s_norm.get(doc, low_s) + alpha * d_norm.get(doc, low_d)
        assert score == pytest.approx(expected, abs=1e-9)
    # And the order is the exact order of those scores (ties aside).
    assert all(a[1] >= b[1] for a, b in itertools.pairwise(fused))
