"""Score fusion for hybrid retrieval: reciprocal rank fusion and convex combinations.

Two ranked lists (for instance BM25 and a dense retriever) are merged into one:

- Reciprocal rank fusion (RRF; Cormack, Clarke & Büttcher, "Reciprocal Rank Fusion
  outperforms Condorcet and individual Rank Learning Methods", SIGIR 2009): a document at
  1-based rank ``r`` of list ``i`` receives ``w_i / (k + r)``, summed over the lists that hold
  it. Only ranks matter, so the lists' scores need not be comparable. ``k = 60`` is the
  paper's constant; it damps the weight of the very first ranks.
- Convex combination (Bruch, Gai & Ingber, "An Analysis of Fusion Functions for Hybrid
  Retrieval", ACM TOIS 42(1), 2023): ``(1 - alpha) * sparse + alpha * dense`` over scores
  normalised per list (min-max or z-score), so that the two scales can be added. The paper
  finds a tuned convex combination at least as good as RRF and more sample-efficient to tune.

Both fuse the *candidate lists* they are given (each retriever's top ``depth``), and return
the exact order of the fused scores over the union of the candidates.

Ties are broken the same way everywhere, so results are deterministic and do not depend on
how documents are numbered: among equal fused scores, the document with the better (smaller)
best rank in any list comes first, and at equal best rank the one from the earlier list
(sparse before dense). This is the order in which the documents first appear when the lists
are read rank by rank, round robin. Contributions are summed in that same order, so for RRF
with equal weights two documents whose ranks are permutations of each other get bit-identical
scores.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from numba import njit

from llmds.errors import InvalidInputError

NORMALISATIONS = ("minmax", "zscore")
"""Score normalisations accepted by :func:`normalise` and :func:`convex`."""

DEFAULT_RRF_K = 60
"""The rank constant of Cormack, Clarke & Büttcher (2009)."""


# ----------------------------------------------------------------------------------------
# Public functions on arbitrary ids


def rrf(
    rankings: Sequence[Sequence[Hashable]],
    k: float = DEFAULT_RRF_K,
    weights: Sequence[float] | None = None,
    *,
    limit: int | None = None,
) -> list[tuple[Hashable, float]]:
    """Reciprocal rank fusion of ranked lists of ids, best first.

    Parameters
    ----------
    rankings:
        One sequence of ids per retriever, best first. An id may appear in any number of
        lists but at most once per list (a repeated id has no single rank).
    k:
        Rank constant (default 60, the paper's value); must be >= 0. Larger values flatten
        the difference between the top ranks and the rest.
    weights:
        Optional non-negative weight per list (default 1 each): list ``i`` contributes
        ``weights[i] / (k + rank)``.
    limit:
        Keep only the best ``limit`` documents (default: all of them).

    Returns ``[(id, fused score), ...]`` sorted by decreasing score, ties broken as in the
    module docstring.
    """
    lists = _check_rankings(rankings)
    k = _check_real("k", k, low=0.0)
    weights = _check_weights(weights, len(lists))
    limit = _check_limit(limit)
    id_of, positions = _number_ids(lists)
    docs, scores = rrf_positions(positions, k, weights, limit)
    return [(id_of[doc], score) for doc, score in zip(docs.tolist(), scores.tolist())]


def normalise(scores: Sequence[float] | np.ndarray, method: str = "minmax") -> np.ndarray:
    """Scores rescaled so that lists from different retrievers can be combined.

    ``"minmax"`` (default) maps the list onto [0, 1]: ``(s - min) / (max - min)``.
    ``"zscore"`` centres and scales it: ``(s - mean) / std`` (population standard deviation).
    Both are computed over the scores given, i.e. over the retrieved candidates, as in Bruch,
    Gai & Ingber (2023). A list whose scores are all equal carries no ranking information and
    normalises to zeros (instead of dividing by zero). Returns a new float64 array.
    """
    method = _check_normalisation(method)
    checked = _check_scores("scores", scores)
    out = np.empty(len(checked), dtype=np.float64)
    _normalise_kernel(checked, NORMALISATIONS.index(method), out)
    return out


def convex(
    sparse: Mapping[Hashable, float] | Sequence[tuple[Hashable, float]],
    dense: Mapping[Hashable, float] | Sequence[tuple[Hashable, float]],
    alpha: float,
    normalisation: str = "minmax",
    *,
    limit: int | None = None,
) -> list[tuple[Hashable, float]]:
    """Convex combination ``(1 - alpha) * sparse + alpha * dense`` of normalised scores.

    Parameters
    ----------
    sparse, dense:
        Each retriever's candidates as ``{id: score}`` or ``[(id, score), ...]``, higher
        scores better (for a distance, pass its negation or ``1 - distance``). Give them best
        first, as retrievers return them: the order is used only to break ties.
    alpha:
        Weight of the dense list, in [0, 1]: 0 ranks by the sparse scores alone, 1 by the
        dense scores alone (Bruch et al. tune it on held-out queries).
    normalisation:
        ``"minmax"`` (default) or ``"zscore"``, applied to each list separately (see
        :func:`normalise`).
    limit:
        Keep only the best ``limit`` documents (default: all of them).

    A document missing from one list receives that list's *minimum* normalised score (0 under
    min-max): it ranked below every candidate the list returned, so the lowest score seen is
    the tightest guess that does not reward it over any returned document (a missing list is
    treated as all-missing, contributing 0). Returns ``[(id, fused score), ...]`` best first,
    ties broken as in the module docstring.
    """
    alpha = check_alpha(alpha)
    normalisation = _check_normalisation(normalisation)
    limit = _check_limit(limit)
    sparse_ids, sparse_scores = _check_scored("sparse", sparse)
    dense_ids, dense_scores = _check_scored("dense", dense)
    id_of, (sparse_docs, dense_docs) = _number_ids([sparse_ids, dense_ids])
    docs, scores = convex_positions(
        sparse_docs, sparse_scores, dense_docs, dense_scores, alpha, normalisation, limit
    )
    return [(id_of[doc], score) for doc, score in zip(docs.tolist(), scores.tolist())]


def check_alpha(alpha: Any) -> float:
    """``alpha`` as a float in [0, 1], else :class:`~llmds.errors.InvalidInputError`."""
    return _check_real(
        "alpha", alpha, low=0.0, high=1.0,
        hint="it is the weight of the dense score (0 = sparse only, 1 = dense only)",
    )


# ----------------------------------------------------------------------------------------
# Array versions on integer document numbers (used by the pipeline's hot path)


def rrf_positions(
    rankings: Sequence[np.ndarray],
    k: float = DEFAULT_RRF_K,
    weights: Sequence[float] | None = None,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rrf` over lists of integer document numbers (unchecked: each list holds
    distinct integers). Returns ``(documents int64, scores float64)`` best first."""
    if len(rankings) == 2 and weights is None:
        first, second = (np.asarray(ranking, dtype=np.int64) for ranking in rankings)
        limit = len(first) + len(second) if limit is None else limit
        return _rrf_pair(first, second, float(k), limit)
    offsets = [0]
    for ranking in rankings:
        offsets.append(offsets[-1] + len(ranking))
    docs = (
        np.concatenate(rankings).astype(np.int64, copy=False)
        if rankings else np.zeros(0, dtype=np.int64)
    )
    list_weights = (
        np.ones(len(rankings)) if weights is None else np.asarray(weights, dtype=np.float64)
    )
    limit = len(docs) if limit is None else limit
    return _rrf_kernel(docs, np.array(offsets, dtype=np.int64), float(k), list_weights, limit)


def convex_positions(
    sparse_docs: np.ndarray,
    sparse_scores: np.ndarray,
    dense_docs: np.ndarray,
    dense_scores: np.ndarray,
    alpha: float,
    normalisation: str = "minmax",
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`convex` over integer document numbers (unchecked: lists best first, distinct
    numbers per list, finite scores, alpha in [0, 1]). Returns ``(documents, scores)``."""
    sparse_docs = np.asarray(sparse_docs, dtype=np.int64)
    dense_docs = np.asarray(dense_docs, dtype=np.int64)
    return _convex_pair(
        sparse_docs, np.asarray(sparse_scores, dtype=np.float64),
        dense_docs, np.asarray(dense_scores, dtype=np.float64),
        1.0 - alpha, alpha, NORMALISATIONS.index(normalisation),
        len(sparse_docs) + len(dense_docs) if limit is None else limit,
    )


@njit(cache=True)
def _rrf_kernel(docs, starts, k, weights, limit):
    """RRF of the lists ``docs[starts[i]:starts[i + 1]]``: ``weights[i] / (k + rank)`` per
    entry (rank 1-based), fused."""
    contributions = np.empty(starts[-1], dtype=np.float64)
    for i in range(len(starts) - 1):
        for position in range(starts[i], starts[i + 1]):
            contributions[position] = weights[i] / (k + (position - starts[i] + 1))
    return _fuse(docs, starts, contributions, limit)


@njit(cache=True)
def _rrf_pair(first, second, k, limit):
    """Two equally weighted lists (the pipeline's case) in one compiled call: building the
    flat arrays in Python cost as much as the fusion itself."""
    docs = np.concatenate((first, second))
    starts = np.array([0, len(first), len(first) + len(second)], dtype=np.int64)
    return _rrf_kernel(docs, starts, k, np.ones(2), limit)


@njit(cache=True)
def _convex_pair(
    sparse_docs, sparse_scores, dense_docs, dense_scores, sparse_weight, dense_weight, method,
    limit,
):
    """Convex combination in one compiled call. Ranking uses each entry's gain over its list's
    minimum; the reported score adds those minima back, so that it equals
    ``(1 - alpha) * sparse + alpha * dense`` with missing documents at the list minimum."""
    docs = np.concatenate((sparse_docs, dense_docs))
    starts = np.array([0, len(sparse_docs), len(docs)], dtype=np.int64)
    scores = np.concatenate((sparse_scores, dense_scores))
    gains, floor = _convex_gains(scores, starts, np.array([sparse_weight, dense_weight]), method)
    fused_docs, fused_gains = _fuse(docs, starts, gains, limit)
    return fused_docs, fused_gains + floor


@njit(cache=True)
def _normalise_kernel(scores, method, out):
    """Min-max (method 0) or z-score (method 1) of ``scores`` into ``out``; a constant list
    gives zeros."""
    n = len(scores)
    if n == 0:
        return
    if method == 0:
        low = scores.min()
        spread = scores.max() - low
        for i in range(n):
            out[i] = (scores[i] - low) / spread if spread > 0 else 0.0
        return
    mean = scores.mean()
    squares = 0.0
    for i in range(n):
        squares += (scores[i] - mean) ** 2
    spread = math.sqrt(squares / n)
    for i in range(n):
        out[i] = (scores[i] - mean) / spread if spread > 0 else 0.0


@njit(cache=True)
def _convex_gains(scores, starts, weights, method):
    """Per entry, ``weight * (normalised score - list minimum)``; and the sum over lists of
    ``weight * list minimum``, which is what a document missing from every list would get."""
    gains = np.empty(len(scores), dtype=np.float64)
    floor = 0.0
    for i in range(len(starts) - 1):
        start, stop = starts[i], starts[i + 1]
        if stop == start:
            continue
        normalised = gains[start:stop]
        _normalise_kernel(scores[start:stop], method, normalised)
        lowest = normalised.min()
        for position in range(start, stop):
            gains[position] = weights[i] * (gains[position] - lowest)
        floor += weights[i] * lowest
    return gains, floor


@njit(cache=True)
def _fuse(docs, starts, contributions, limit):
    """Sum each document's contributions over the lists; return the best ``limit`` documents
    and their totals, ties by first appearance in round-robin rank order (module docstring).

    Documents are numbered in that reading order through a small open-addressing hash table,
    so the work is proportional to the number of candidates, not to the corpus size.
    """
    lists = len(starts) - 1
    entries = starts[-1]
    capacity = 16
    while capacity < 2 * entries:
        capacity *= 2
    mask = capacity - 1
    slot_doc = np.empty(capacity, dtype=np.int64)
    slot_number = np.full(capacity, -1, dtype=np.int64)
    unique_docs = np.empty(entries, dtype=np.int64)
    totals = np.zeros(entries, dtype=np.float64)
    distinct = 0
    longest = 0
    for i in range(lists):
        longest = max(longest, starts[i + 1] - starts[i])
    for rank in range(longest):
        for i in range(lists):
            position = starts[i] + rank
            if position >= starts[i + 1]:
                continue
            doc = docs[position]
            # Fibonacci hashing: document numbers are often consecutive; the multiply spreads
            # them over the table, the shift keeps the well-mixed high bits.
            slot = ((doc * -7046029254386353131) >> 24) & mask
            while slot_number[slot] >= 0 and slot_doc[slot] != doc:
                slot = (slot + 1) & mask
            if slot_number[slot] < 0:
                slot_number[slot] = distinct
                slot_doc[slot] = doc
                unique_docs[distinct] = doc
                distinct += 1
            totals[slot_number[slot]] += contributions[position]
    order = _best_first(totals[:distinct], min(limit, distinct))
    return unique_docs[order], totals[order]


_SELECTION_LIMIT = 64
"""Up to this many results, :func:`_best_first` keeps a small sorted buffer instead of
sorting every candidate (a query wants ~10 of ~200)."""


@njit(cache=True)
def _best_first(totals, count):
    """Indices of the ``count`` largest totals, largest first; equal totals keep index order
    (which is first-appearance order)."""
    if count > _SELECTION_LIMIT:
        # A stable sort of the negated totals keeps equal totals in index order.
        return np.argsort(-totals, kind="mergesort")[:count]
    kept = np.empty(count, dtype=np.int64)
    size = 0
    for index in range(len(totals)):
        value = totals[index]
        if size == count and value <= totals[kept[size - 1]]:
            continue  # not better than the worst kept; a tie loses to the earlier index
        slot = size if size < count else count - 1
        # Shift worse entries down; stop behind any entry >= value, so ties stay in order.
        while slot > 0 and totals[kept[slot - 1]] < value:
            kept[slot] = kept[slot - 1]
            slot -= 1
        kept[slot] = index
        size = min(size + 1, count)
    return kept


# ----------------------------------------------------------------------------------------
# Input checks


def _number_ids(lists: Sequence[Sequence[Hashable]]) -> tuple[list[Hashable], list[np.ndarray]]:
    """Give every distinct id a number; return the ids by number and each list as numbers.
    A repeated id within one list is an error."""
    number_of: dict[Hashable, int] = {}
    numbered = []
    for list_index, ids in enumerate(lists):
        numbers_here = np.empty(len(ids), dtype=np.int64)
        for rank, doc_id in enumerate(ids):
            try:
                number = number_of.setdefault(doc_id, len(number_of))
            except TypeError:
                raise InvalidInputError(
                    f"list {list_index}, rank {rank + 1}: id {doc_id!r} is not hashable; "
                    "use str or int ids."
                ) from None
            numbers_here[rank] = number
        if len(np.unique(numbers_here)) != len(numbers_here):
            values, counts = np.unique(numbers_here, return_counts=True)
            repeated = list(number_of)[int(values[counts > 1][0])]
            raise InvalidInputError(
                f"list {list_index} holds id {repeated!r} more than once; a ranked list must "
                "hold each id at most once (deduplicate it, keeping the best rank)."
            )
        numbered.append(numbers_here)
    return list(number_of), numbered


def _check_rankings(rankings: Any) -> list[Sequence[Hashable]]:
    if isinstance(rankings, (str, bytes)) or not isinstance(rankings, Sequence):
        raise InvalidInputError(
            "rankings must be a list of ranked id lists, e.g. [bm25_ids, dense_ids]."
        )
    lists = list(rankings)
    for i, ranking in enumerate(lists):
        if isinstance(ranking, (str, bytes)) or not isinstance(ranking, (Sequence, np.ndarray)):
            raise InvalidInputError(
                f"ranking {i} is a {type(ranking).__name__}, not a sequence of ids; "
                "pass each ranked list as a list of ids, best first."
            )
    return lists


def _check_scored(name: str, items: Any) -> tuple[list[Hashable], np.ndarray]:
    """``{id: score}`` or ``[(id, score), ...]`` as (ids, finite float64 scores)."""
    if isinstance(items, Mapping):
        ids, scores = list(items.keys()), list(items.values())
    elif isinstance(items, Sequence) and not isinstance(items, (str, bytes)):
        try:
            ids = [doc_id for doc_id, _ in items]
            scores = [score for _, score in items]
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"{name} must be a dict {{id: score}} or a list of (id, score) pairs."
            ) from None
    else:
        raise InvalidInputError(
            f"{name} must be a dict {{id: score}} or a list of (id, score) pairs, "
            f"got {type(items).__name__}."
        )
    return ids, _check_scores(f"{name} scores", scores)


def _check_scores(name: str, scores: Any) -> np.ndarray:
    try:
        array = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be real numbers.") from None
    if array.ndim != 1:
        raise InvalidInputError(f"{name} must be a 1-d list of numbers, got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise InvalidInputError(
            f"{name} contain NaN or infinity; drop those candidates before fusing."
        )
    return array


def _check_normalisation(method: Any) -> str:
    if method not in NORMALISATIONS:
        raise InvalidInputError(
            f"unknown normalisation {method!r}; use one of {', '.join(NORMALISATIONS)}."
        )
    return method


def _check_weights(weights: Any, count: int) -> list[float] | None:
    if weights is None:
        return None
    if isinstance(weights, (str, bytes)) or not isinstance(weights, (Sequence, np.ndarray)):
        raise InvalidInputError("weights must be a list of numbers, one per ranking.")
    if len(weights) != count:
        raise InvalidInputError(
            f"got {len(weights)} weights for {count} rankings; pass one weight per ranking."
        )
    return [_check_real(f"weights[{i}]", w, low=0.0) for i, w in enumerate(weights)]


def _check_limit(limit: Any) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit <= 0:
        raise InvalidInputError(f"limit must be a positive integer or None, got {limit!r}.")
    return int(limit)


def _check_real(
    name: str, value: Any, low: float, high: float = math.inf, hint: str = ""
) -> float:
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        bounds = f"in [{low:g}, {high:g}]" if high < math.inf else f">= {low:g}"
        reason = f"; {hint}" if hint else ""
        raise InvalidInputError(f"{name} must be a finite number {bounds}, got {value!r}{reason}.")
    return float(value)
