"""BM25 retrieval over a compressed inverted index, with exact top-k by MaxScore.

Scoring follows the variants compared by Kamphuis, de Vries, Boytsov & Lin, "Which BM25 Do
You Mean? A Large-Scale Reproducibility Study of Scoring Variants" (ECIR 2020), as bm25s
implements them. With ``N`` documents, ``df`` the number of documents holding a term, ``tf``
its frequency in document ``d``, ``L`` the length of ``d`` and ``avgdl`` the mean length,
``norm = 1 - b + b * L / avgdl`` and ``K = k1 * norm``:

============  =================================  =========================================
method        idf                                term-frequency part
============  =================================  =========================================
robertson     log((N - df + .5) / (df + .5)),    tf / (K + tf)
              floored at 0
lucene        log(1 + (N - df + .5) / (df + .5)) tf / (K + tf)
atire         log(N / df)                        (k1 + 1) tf / (K + tf)
bm25l         log((N + 1) / (df + .5))           (k1 + 1)(c + delta) / (k1 + c + delta),
                                                 c = tf / norm
bm25+         log((N + 1) / df)                  (k1 + 1) tf / (K + tf) + delta
============  =================================  =========================================

A document's score is the sum over the query's terms (a term repeated in the query counts
as often as it appears) of idf times the term-frequency part. For BM25L and BM25+ the
term-frequency part is not zero when ``tf = 0``; the sum runs over every query term, as in
the paper's formulas and in bm25s, so documents missing a term still receive its
``tf = 0`` share. That share is the same for every document, so it shifts all scores of a
query by one constant: under this reading BM25+ ranks exactly like ATIRE with BM25+'s idf.

Documents are the ones that hold at least one query term; search returns the best ``k`` of
those, ties broken by the order the documents were indexed in. The index keeps term
frequencies, not scores (see :mod:`llmds.postings`), and computes ``idf * tf-part`` while
decoding.

Top-k is exact and follows the MaxScore strategy of Turtle & Flood, "Query evaluation:
strategies and optimizations" (IP&M 1995), term at a time. A term's score upper bound is its
query weight times the largest gain over its list (kept per term). Terms are processed by
decreasing bound, adding into one accumulator per document. Before each term, if the bounds
of the terms left sum to less than the k-th best partial score, no document not seen yet can
enter the top k: the documents that cannot reach that score even with every remaining bound
are dropped, and the remaining terms only update the survivors. Those terms are the common
ones, mostly stored as bitmaps; the survivors, held in a bitmap too, are intersected with
them one 64-bit word at a time, so their long lists are never decoded.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from numba import njit

from llmds.errors import CorruptIndexError, InvalidInputError
from llmds.persist import load_arrays, save_arrays

# The kernels below call (and numba inlines) kernels of llmds.postings. Numba's on-disk cache
# only watches a function's own file: after editing llmds/postings.py, delete the cached
# llmds/__pycache__/bm25.*.nbi/.nbc files, or these kernels keep the old postings code.
from llmds.postings import (
    BITMAP_DENSITY,
    BLOCK_SIZE,
    MAX_DOCUMENTS,
    CompressedPostings,
    chunk_start,
    concatenate_postings,
    decode_bitmap_masked,
    decode_chunk,
    is_bitmap,
    num_chunks,
    postings_from_tokens,
)
from llmds.tokenizer import Tokenizer, Vocabulary

METHODS = ("robertson", "lucene", "atire", "bm25l", "bm25+")
"""Scoring variants, by name (see the module docstring)."""

FORMAT_KIND = "bm25"
FORMAT_VERSION = 1

_ROBERTSON, _LUCENE, _ATIRE, _BM25L, _BM25PLUS = range(len(METHODS))

_BOUND_SLACK = 1e-9
"""Relative slack on pruning decisions: sums of upper bounds and sums of contributions are
rounded in different orders, so a document is only dropped when it misses the threshold by
more than rounding could explain."""


# ----------------------------------------------------------------------------------------
# Scoring formulas (numba)


@njit(cache=True)
def _idf(method, df, num_documents):
    if method == _ROBERTSON:
        return max(0.0, math.log((num_documents - df + 0.5) / (df + 0.5)))
    if method == _LUCENE:
        return math.log(1.0 + (num_documents - df + 0.5) / (df + 0.5))
    if method == _ATIRE:
        return math.log(num_documents / df)
    if method == _BM25L:
        return math.log((num_documents + 1.0) / (df + 0.5))
    return math.log((num_documents + 1.0) / df)


def _gain_shape(method: int, k1: float, delta: float) -> tuple[float, float, float, float]:
    """Constants ``(k1, scale, inner, floor)`` that write every variant's term-frequency part
    *minus its value at tf = 0* (the gain of holding the term) in one branch-free form:

        gain = scale * x / (x + k1 * norm) - floor,   x = tf + inner * norm

    Robertson and Lucene: scale 1. ATIRE and BM25+: scale k1 + 1 (BM25+'s delta is the same
    for every document, present or absent, so it cancels). BM25L: c = tf / norm gives
    (k1 + 1)(c + delta) / (k1 + c + delta) = (k1 + 1) x / (x + k1 * norm) with inner = delta,
    and the floor removes its value at tf = 0.
    """
    if method in (_ROBERTSON, _LUCENE):
        return k1, 1.0, 0.0, 0.0
    if method == _BM25L:
        return k1, k1 + 1.0, delta, _absent_tf_part(method, k1, delta)
    return k1, k1 + 1.0, 0.0, 0.0


def _absent_tf_part(method: int, k1: float, delta: float) -> float:
    """The term-frequency part at ``tf = 0``: what a document without the term receives."""
    if method == _BM25L:
        return (k1 + 1.0) * delta / (k1 + delta) if delta > 0 else 0.0
    if method == _BM25PLUS:
        return delta
    return 0.0


@njit(cache=True)
def _gain(tf, norm, shape):
    k1, scale, inner, floor = shape
    x = tf + inner * norm
    return scale * x / (x + k1 * norm) - floor


@njit(cache=True)
def _max_gains(term_starts, docs, tfs, norms, shape):
    """Per term, the largest gain over its postings (the MaxScore upper bound)."""
    terms = len(term_starts) - 1
    maxima = np.zeros(terms, dtype=np.float64)
    for term in range(terms):
        best = 0.0
        for i in range(term_starts[term], term_starts[term + 1]):
            best = max(best, _gain(tfs[i], norms[docs[i]], shape))
        maxima[term] = best
    return maxima


# ----------------------------------------------------------------------------------------
# Query evaluation (numba)


@njit(cache=True)
def _is_worse(score_a, doc_a, score_b, doc_b):
    """Ranking order: higher score first, then lower document number."""
    return score_a < score_b or (score_a == score_b and doc_a > doc_b)


@njit(cache=True)
def _sift_down(heap_scores, heap_docs, size, root):
    while True:
        child = 2 * root + 1
        if child >= size:
            return
        if child + 1 < size and _is_worse(
            heap_scores[child + 1], heap_docs[child + 1], heap_scores[child], heap_docs[child]
        ):
            child += 1
        if not _is_worse(heap_scores[child], heap_docs[child], heap_scores[root], heap_docs[root]):
            return
        heap_scores[root], heap_scores[child] = heap_scores[child], heap_scores[root]
        heap_docs[root], heap_docs[child] = heap_docs[child], heap_docs[root]
        root = child


@njit(cache=True)
def _sift_up(heap_scores, heap_docs, slot, score, doc):
    """Place ``(score, doc)`` at free slot ``slot`` of the heap (root = worst kept entry)."""
    while slot > 0:
        parent = (slot - 1) // 2
        if not _is_worse(score, doc, heap_scores[parent], heap_docs[parent]):
            break
        heap_scores[slot] = heap_scores[parent]
        heap_docs[slot] = heap_docs[parent]
        slot = parent
    heap_scores[slot] = score
    heap_docs[slot] = doc


@njit(cache=True)
def _select_top(acc, docs, count, k, shift, floor, heap_scores, heap_docs):
    """Keep the best ``k`` of ``docs[:count]`` whose accumulator is at least ``floor`` (score
    ``acc[doc] + shift``) in a heap whose root is the worst kept; returns how many were kept.
    The floor lets threshold searches pass over the many documents that cannot matter with
    one comparison each."""
    size = 0
    # The worst kept entry lives in locals: most documents lose against it, and comparing
    # registers is several times cheaper than going through the heap for each of them.
    worst_score = 0.0
    worst_doc = 0
    for i in range(count):
        doc = docs[i]
        value = acc[doc]
        if value < floor:
            continue
        score = value + shift
        if size < k:
            _sift_up(heap_scores, heap_docs, size, score, doc)
            size += 1
            if size < k:
                continue
        else:
            if _is_worse(score, doc, worst_score, worst_doc):
                continue
            heap_scores[0] = score
            heap_docs[0] = doc
            _sift_down(heap_scores, heap_docs, size, 0)
        worst_score = heap_scores[0]
        worst_doc = heap_docs[0]
    return size


@njit(cache=True)
def _drain_sorted(heap_scores, heap_docs, size, out_docs, out_scores):
    """Empty the heap into the outputs, best first."""
    for last in range(size - 1, -1, -1):
        out_scores[last] = heap_scores[0]
        out_docs[last] = heap_docs[0]
        heap_scores[0] = heap_scores[last]
        heap_docs[0] = heap_docs[last]
        _sift_down(heap_scores, heap_docs, last, 0)


@njit(cache=True)
def _accumulate_list(
    postings, term, weight, shape, norms, acc, touched, touched_count, doc_buffer, tf_buffer
):
    """Add one term's contributions to every document of its list (unseen documents have
    ``acc = -1`` and are appended to ``touched``, which needs one slot more than there are
    documents). Returns the new touched count and the largest accumulated score among the
    documents of this list."""
    words, term_offsets, term_df = postings
    num_documents = len(norms)
    offset = term_offsets[term]
    df = term_df[term]
    position, previous_doc = chunk_start(offset, df, num_documents)
    best = 0.0
    for chunk in range(num_chunks(df, num_documents)):
        size, position, previous_doc = decode_chunk(
            words, offset, df, num_documents, chunk, position, previous_doc, doc_buffer, tf_buffer
        )
        for i in range(size):
            doc = doc_buffer[i]
            score = weight * _gain(tf_buffer[i], norms[doc], shape)
            # Branch-free first-touch bookkeeping: whether a document was seen before is
            # unpredictable, and a mispredicted branch costs more than these few operations.
            previous = acc[doc]
            touched[touched_count] = doc
            touched_count += previous < 0.0
            score += max(previous, 0.0)
            acc[doc] = score
            best = max(best, score)
    return touched_count, best


@njit(cache=True)
def _accumulate_survivors(postings, term, weight, shape, norms, acc, doc_buffer, tf_buffer):
    """Add one term's contributions to the documents still in the running (``acc >= 0``);
    documents never seen or already dropped hold -1 and are passed over unscored."""
    words, term_offsets, term_df = postings
    num_documents = len(norms)
    offset = term_offsets[term]
    df = term_df[term]
    position, previous_doc = chunk_start(offset, df, num_documents)
    for chunk in range(num_chunks(df, num_documents)):
        size, position, previous_doc = decode_chunk(
            words, offset, df, num_documents, chunk, position, previous_doc, doc_buffer, tf_buffer
        )
        for i in range(size):
            doc = doc_buffer[i]
            previous = acc[doc]
            if previous >= 0.0:
                acc[doc] = previous + weight * _gain(tf_buffer[i], norms[doc], shape)


@njit(cache=True)
def _accumulate_masked(postings, term, weight, shape, norms, acc, mask, doc_buffer, tf_buffer):
    """Add a bitmap-stored term's contributions to the documents set in ``mask`` only: one
    AND per 64 documents finds them, so the list itself is never decoded."""
    words, term_offsets, term_df = postings
    num_documents = len(norms)
    offset = term_offsets[term]
    rank = 0
    for chunk in range(num_chunks(term_df[term], num_documents)):
        size, rank = decode_bitmap_masked(
            words, offset, num_documents, chunk, rank, mask, doc_buffer, tf_buffer
        )
        for i in range(size):
            doc = doc_buffer[i]
            acc[doc] += weight * _gain(tf_buffer[i], norms[doc], shape)


@njit(cache=True)
def _distinct_terms(token_ids):
    """Sorted distinct term ids of a query and how often each occurs."""
    ordered = np.sort(token_ids)
    terms = np.empty(len(ordered), dtype=np.int64)
    counts = np.zeros(len(ordered), dtype=np.int64)
    distinct = 0
    for i in range(len(ordered)):
        if i == 0 or ordered[i] != ordered[i - 1]:
            terms[distinct] = ordered[i]
            distinct += 1
        counts[distinct - 1] += 1
    return terms[:distinct], counts[:distinct]


@njit(cache=True)
def _query_plan(postings, term_max_gains, num_documents, method, absent_part, token_ids):
    """The query's distinct terms in the order to process them (decreasing score bound), their
    weights (count x idf), the bound of the terms from each position on, and the score every
    document receives from absent terms."""
    terms, counts = _distinct_terms(token_ids)
    term_df = postings[2]
    m = len(terms)
    weights = np.empty(m, dtype=np.float64)
    bounds = np.empty(m, dtype=np.float64)
    shift = 0.0
    for i in range(m):
        weights[i] = counts[i] * _idf(method, term_df[terms[i]], num_documents)
        bounds[i] = weights[i] * term_max_gains[terms[i]]
        shift += weights[i] * absent_part
    order = np.argsort(-bounds, kind="mergesort")
    remaining = np.zeros(m + 1, dtype=np.float64)
    for position in range(m - 1, -1, -1):
        remaining[position] = remaining[position + 1] + bounds[order[position]]
    return terms[order], weights[order], remaining, shift


@njit(cache=True)
def _keep_reachable(acc, docs, count, remaining, threshold, shift):
    """Compact ``docs[:count]`` (order kept) to those that can still reach ``threshold`` with
    ``remaining`` more score; reset the others' accumulators to -1."""
    floor = threshold - _BOUND_SLACK * (threshold + shift)
    kept = 0
    for i in range(count):
        doc = docs[i]
        if acc[doc] + remaining >= floor:
            docs[kept] = doc
            kept += 1
        else:
            acc[doc] = -1.0
    return kept


@njit(cache=True)
def _search_one(
    postings,
    term_max_gains,
    norms,
    method,
    shape,
    absent_part,
    token_ids,
    k,
    acc,
    touched,
    candidate_bits,
    heap_scores,
    heap_docs,
    doc_buffer,
    tf_buffer,
    out_docs,
    out_scores,
):
    """Exact top-k of one query into ``out_docs``/``out_scores``; returns the result count.

    ``acc`` must hold -1 for every document and ``candidate_bits`` 0 on entry, and do again
    on return.
    """
    terms, weights, remaining, shift = _query_plan(
        postings, term_max_gains, len(norms), method, absent_part, token_ids
    )
    m = len(terms)
    touched_count = 0
    best = 0.0
    threshold = 0.0
    restricted_from = m
    for position in range(m):
        # Pruning needs remaining < threshold <= best, so only then is the threshold worth
        # finding, and only documents above ``remaining`` can decide it.
        if position > 0 and touched_count >= k and remaining[position] < best:
            above = _select_top(
                acc, touched, touched_count, k, 0.0, remaining[position], heap_scores, heap_docs
            )
            if above == k:
                threshold = heap_scores[0]
                if remaining[position] < threshold - _BOUND_SLACK * (threshold + shift):
                    restricted_from = position
                    touched_count = _keep_reachable(
                        acc, touched, touched_count, remaining[position], threshold, shift
                    )
                    break
        touched_count, list_best = _accumulate_list(
            postings,
            terms[position],
            weights[position],
            shape,
            norms,
            acc,
            touched,
            touched_count,
            doc_buffer,
            tf_buffer,
        )
        best = max(best, list_best)

    if restricted_from < m:
        # No unseen document can reach the top k any more: the remaining terms only update
        # the candidates. Their set, as a bitmap, is intersected with bitmap-stored lists;
        # packed lists (short by construction) are decoded and filtered.
        for i in range(touched_count):
            doc = touched[i]
            candidate_bits[doc >> 6] |= np.uint64(1) << np.uint64(doc & 63)
        for position in range(restricted_from, m):
            term = terms[position]
            if is_bitmap(postings[2][term], len(norms)):
                _accumulate_masked(
                    postings,
                    term,
                    weights[position],
                    shape,
                    norms,
                    acc,
                    candidate_bits,
                    doc_buffer,
                    tf_buffer,
                )
            else:
                _accumulate_survivors(
                    postings, term, weights[position], shape, norms, acc, doc_buffer, tf_buffer
                )
        for i in range(touched_count):
            candidate_bits[touched[i] >> 6] = 0
    size = _select_top(acc, touched, touched_count, k, shift, 0.0, heap_scores, heap_docs)
    _drain_sorted(heap_scores, heap_docs, size, out_docs, out_scores)
    for i in range(touched_count):
        acc[touched[i]] = -1.0
    return size


@njit(cache=True)
def _search_many(
    postings,
    term_max_gains,
    norms,
    method,
    shape,
    absent_part,
    query_starts,
    token_ids,
    k,
    acc,
    touched,
    candidate_bits,
    out_docs,
    out_scores,
    out_counts,
):
    heap_scores = np.empty(k, dtype=np.float64)
    heap_docs = np.empty(k, dtype=np.int64)
    doc_buffer = np.empty(BLOCK_SIZE, dtype=np.int64)
    tf_buffer = np.empty(BLOCK_SIZE, dtype=np.int64)
    for q in range(len(query_starts) - 1):
        out_counts[q] = _search_one(
            postings,
            term_max_gains,
            norms,
            method,
            shape,
            absent_part,
            token_ids[query_starts[q] : query_starts[q + 1]],
            k,
            acc,
            touched,
            candidate_bits,
            heap_scores,
            heap_docs,
            doc_buffer,
            tf_buffer,
            out_docs[q],
            out_scores[q],
        )


@njit(cache=True)
def _score_all(
    postings, term_max_gains, norms, method, shape, absent_part, token_ids, acc, touched
):
    """Scores of every document, summed in the same order as :func:`_search_one` so that
    both give bit-identical scores."""
    terms, weights, _, shift = _query_plan(
        postings, term_max_gains, len(norms), method, absent_part, token_ids
    )
    doc_buffer = np.empty(BLOCK_SIZE, dtype=np.int64)
    tf_buffer = np.empty(BLOCK_SIZE, dtype=np.int64)
    touched_count = 0
    for position in range(len(terms)):
        touched_count, _ = _accumulate_list(
            postings,
            terms[position],
            weights[position],
            shape,
            norms,
            acc,
            touched,
            touched_count,
            doc_buffer,
            tf_buffer,
        )
    scores = np.full(len(norms), shift, dtype=np.float64)
    for i in range(touched_count):
        doc = touched[i]
        scores[doc] = acc[doc] + shift
        acc[doc] = -1.0
    return scores


# ----------------------------------------------------------------------------------------
# The index


class BM25Index:
    """A BM25 inverted index with compressed postings and exact top-k search.

    Parameters
    ----------
    method:
        Scoring variant, one of :data:`METHODS` (default ``"lucene"``, the variant of Lucene,
        Elasticsearch and Pyserini; formulas in the module docstring).
    k1:
        Term-frequency saturation (default 1.5, the value used by bm25s and rank_bm25; Lucene
        uses 1.2). 0 makes the term-frequency part binary; larger values let repeated
        occurrences count for longer.
    b:
        Length normalisation strength in [0, 1] (default 0.75, Robertson's value): 0 ignores
        document length, 1 divides term frequency fully by the relative length.
    delta:
        The lower bound added to the term-frequency part by BM25L and BM25+ (default 0.5, the
        value Lv & Zhai recommend for BM25L and bm25s's default; they use 1.0 for BM25+);
        ignored by the other variants.
    tokenizer:
        Used for raw-text documents and queries (default: :class:`~llmds.tokenizer.Tokenizer`
        with English stop words and Snowball stemming). Pre-tokenised input bypasses it.

    Search runs in numba and reuses per-index scratch arrays. The kernels keep the GIL, so
    searches from several threads are serialised instead of racing on those arrays (and gain
    nothing from the threads); ``add``, ``index`` and ``load`` replace the arrays wholesale.
    """

    def __init__(
        self,
        *,
        method: str = "lucene",
        k1: float = 1.5,
        b: float = 0.75,
        delta: float = 0.5,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        if method not in METHODS:
            raise InvalidInputError(f"unknown BM25 method {method!r}; choose one of {METHODS}.")
        self.method = method
        self.k1 = _check_number("k1", k1, low=0.0)
        self.b = _check_number("b", b, low=0.0, high=1.0)
        self.delta = _check_number("delta", delta, low=0.0)
        if tokenizer is not None and not isinstance(tokenizer, Tokenizer):
            raise InvalidInputError(
                f"tokenizer must be an llmds.tokenizer.Tokenizer, got {type(tokenizer).__name__}."
            )
        self.tokenizer = tokenizer if tokenizer is not None else Tokenizer()
        self._method_code = METHODS.index(method)
        self._absent_part = _absent_tf_part(self._method_code, self.k1, self.delta)
        self._shape = _gain_shape(self._method_code, self.k1, self.delta)
        self._clear()

    # -- building ------------------------------------------------------------------------

    def index(
        self,
        documents: Sequence[str] | Sequence[Sequence[str]],
        ids: Sequence[str] | None = None,
    ) -> BM25Index:
        """Index ``documents`` (replacing any previous content) and return ``self``.

        ``documents`` are raw texts (tokenised with :attr:`tokenizer`) or pre-tokenised lists
        of terms. ``ids`` name the documents in results (default ``"0"``, ``"1"``, ...); they
        must be unique strings. An empty document is allowed (it has length 0 and matches
        nothing); an empty corpus is not.
        """
        token_lists = self._token_lists(documents)
        if not token_lists:
            raise InvalidInputError(
                "the corpus is empty: pass at least one document to index() "
                "(use add() to grow an index step by step)."
            )
        new_ids = self._check_ids(ids, len(token_lists), existing={}, first_default=0)
        self._clear()
        self._append(token_lists, new_ids)
        return self

    def add(
        self,
        documents: Sequence[str] | Sequence[Sequence[str]],
        ids: Sequence[str] | None = None,
    ) -> None:
        """Append documents; scores afterwards equal those of a fresh build on all documents.

        N and the average length change with every addition, which changes every score bound,
        so the postings are decoded, extended and re-encoded: the cost is that of a build from
        term ids (no re-tokenisation of the old documents).
        """
        token_lists = self._token_lists(documents)
        new_ids = self._check_ids(
            ids, len(token_lists), existing=self._position_of_id, first_default=len(self._doc_ids)
        )
        if token_lists:
            self._append(token_lists, new_ids)

    def _append(self, token_lists: list[list[str]], new_ids: list[str]) -> None:
        first_doc = len(self._doc_ids)
        if first_doc + len(token_lists) >= MAX_DOCUMENTS:
            raise InvalidInputError(
                f"an index holds at most {MAX_DOCUMENTS - 1} documents; split the corpus."
            )
        token_ids: list[int] = []
        lengths = np.empty(len(token_lists), dtype=np.int32)
        to_ids = self._vocabulary.ids
        for i, tokens in enumerate(token_lists):
            term_ids = to_ids(tokens, grow=True)
            lengths[i] = len(term_ids)
            token_ids.extend(term_ids)
        doc_starts = np.zeros(len(token_lists) + 1, dtype=np.int64)
        np.cumsum(lengths, out=doc_starts[1:])
        new_postings = postings_from_tokens(
            np.asarray(token_ids, dtype=np.int32), doc_starts, first_doc, len(self._vocabulary)
        )
        if first_doc > 0:
            new_postings = concatenate_postings(*self._postings.to_postings(), *new_postings)
        self._doc_ids.extend(new_ids)
        for position, doc_id in enumerate(new_ids, start=first_doc):
            self._position_of_id[doc_id] = position
        self._set_postings(
            new_postings, np.concatenate([self._doc_lengths, lengths]).astype(np.int32)
        )

    def _set_postings(
        self, postings: tuple[np.ndarray, np.ndarray, np.ndarray], doc_lengths: np.ndarray
    ) -> None:
        """Install decoded postings and document lengths; derive everything that depends on N."""
        self._doc_lengths = doc_lengths
        self._postings = CompressedPostings.from_postings(*postings, len(doc_lengths))
        self._norms = _length_norms(doc_lengths, self.b)
        self._term_max_gains = _round_up_to_float32(_max_gains(*postings, self._norms, self._shape))
        self._acc = np.full(len(doc_lengths), -1.0, dtype=np.float64)
        # One spare slot: the branch-free bookkeeping in _accumulate_list writes the current
        # document at touched[count] before knowing whether it is new, even when all are seen.
        self._touched = np.empty(len(doc_lengths) + 1, dtype=np.int64)
        self._candidate_bits = np.zeros((len(doc_lengths) + 63) // 64, dtype=np.uint64)

    def _clear(self) -> None:
        self._vocabulary = Vocabulary()
        self._doc_ids: list[str] = []
        self._position_of_id: dict[str, int] = {}
        empty = np.zeros(0, dtype=np.int64)
        self._set_postings((np.zeros(1, dtype=np.int64), empty, empty), np.zeros(0, dtype=np.int32))

    # -- searching -----------------------------------------------------------------------

    def search(self, query: str | Sequence[str], k: int = 10) -> tuple[list[str], np.ndarray]:
        """The ``k`` best documents for ``query`` (text, or a list of terms): their ids and
        scores, best first. Fewer come back when fewer documents hold a query term; none when
        no query term is in the index."""
        token_ids = self._vocabulary.ids(self._query_tokens(query), grow=False)
        positions, scores, counts = self._search_flat([0, len(token_ids)], token_ids, k)
        doc_ids = self._doc_ids
        return [doc_ids[p] for p in positions[0, : counts[0]].tolist()], scores[0, : counts[0]]

    def search_batch(
        self, queries: Sequence[str] | Sequence[Sequence[str]], k: int = 10
    ) -> list[tuple[list[str], np.ndarray]]:
        """:meth:`search` for every query, evaluated in one compiled loop."""
        if isinstance(queries, str) or not isinstance(queries, Sequence):
            raise InvalidInputError(
                "search_batch expects a list of queries (texts or token lists); "
                "use search() for a single query."
            )
        to_ids = self._vocabulary.ids
        starts = [0]
        token_ids: list[int] = []
        for query in queries:
            token_ids.extend(to_ids(self._query_tokens(query), grow=False))
            starts.append(len(token_ids))
        positions, scores, counts = self._search_flat(starts, token_ids, k)
        doc_ids = self._doc_ids
        return [
            ([doc_ids[p] for p in row[:count]], row_scores[:count])
            for row, row_scores, count in zip(positions.tolist(), scores, counts.tolist())
        ]

    def query_token_ids(self, query: str | Sequence[str]) -> np.ndarray:
        """Vocabulary ids of the query's terms (unknown terms dropped, repeats kept): the input
        of the fast paths :meth:`search_token_ids` and :meth:`search_batch_token_ids`."""
        return np.asarray(
            self._vocabulary.ids(self._query_tokens(query), grow=False), dtype=np.int64
        )

    def search_token_ids(self, token_ids: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` for a query already mapped to vocabulary ids: returns document
        positions (0-based, in indexing order; ``doc_ids[p]`` names them) and scores."""
        positions, scores, counts = self.search_batch_token_ids([token_ids], k)
        return positions[0, : counts[0]], scores[0, : counts[0]]

    def search_batch_token_ids(
        self, queries: Sequence[np.ndarray], k: int = 10
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`search_batch` for queries already mapped to vocabulary ids. Returns
        ``(positions, scores, counts)``: row ``q`` holds the ``counts[q]`` results of query
        ``q``, the rest of the row is padding (-1 and 0)."""
        if isinstance(queries, np.ndarray) and queries.ndim == 1 and queries.dtype != object:
            raise InvalidInputError(
                "search_batch_token_ids expects a list of token-id arrays, one per query; "
                "use search_token_ids() for a single query."
            )
        arrays = [np.asarray(token_ids) for token_ids in queries]
        starts = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([array.size for array in arrays], out=starts[1:])
        flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        vocabulary_size = len(self._vocabulary)
        if flat.size and (
            any(array.ndim != 1 for array in arrays)
            or not np.issubdtype(flat.dtype, np.integer)
            or flat.min() < 0
            or flat.max() >= vocabulary_size
        ):
            raise InvalidInputError(
                f"token ids must be 1-d arrays of integers in [0, {vocabulary_size}); "
                "get them from query_token_ids()."
            )
        return self._search_flat(starts, flat, k)

    def _search_flat(self, starts, token_ids, k) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the compiled search over queries ``token_ids[starts[q]:starts[q + 1]]``."""
        k = self._check_k(k)
        queries = len(starts) - 1
        width = max(1, min(k, len(self._doc_ids)))
        out_positions = np.full((queries, width), -1, dtype=np.int64)
        out_scores = np.zeros((queries, width), dtype=np.float64)
        out_counts = np.zeros(queries, dtype=np.int64)
        if self._doc_ids:
            _search_many(
                *self._kernel_arguments(),
                np.asarray(starts, dtype=np.int64),
                np.asarray(token_ids, dtype=np.int64),
                width,
                self._acc,
                self._touched,
                self._candidate_bits,
                out_positions,
                out_scores,
                out_counts,
            )
        return out_positions, out_scores, out_counts

    def get_scores(self, query: str | Sequence[str]) -> np.ndarray:
        """The score of every document for ``query`` (for parity checks and analysis)."""
        return _score_all(
            *self._kernel_arguments(), self.query_token_ids(query), self._acc, self._touched
        )

    def _kernel_arguments(self) -> tuple:
        postings = (self._postings.words, self._postings.term_offsets, self._postings.term_df)
        return (
            postings,
            self._term_max_gains,
            self._norms,
            self._method_code,
            self._shape,
            self._absent_part,
        )

    def _query_tokens(self, query: str | Sequence[str]) -> Sequence[str]:
        if isinstance(query, str):
            return self.tokenizer.tokenize(query)
        # Checking the set of token types runs in C; a per-token isinstance() loop costs
        # about as much as the vocabulary lookup itself.
        if isinstance(query, Sequence) and all(
            issubclass(kind, str) for kind in set(map(type, query))
        ):
            return query
        raise InvalidInputError(
            f"a query must be a str or a sequence of str tokens, got {type(query).__name__}."
        )

    # -- inspection ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._doc_ids)

    @property
    def doc_ids(self) -> list[str]:
        """Document ids in indexing order (position ``p`` of the fast paths is ``doc_ids[p]``)."""
        return list(self._doc_ids)

    @property
    def vocabulary(self) -> Vocabulary:
        return self._vocabulary

    @property
    def num_postings(self) -> int:
        """Number of (term, document) pairs."""
        return self._postings.num_postings

    @property
    def bits_per_posting(self) -> float:
        """Size of the compressed postings stream per posting (document numbers, frequencies,
        bit widths, bitmap rank directories and alignment; see :mod:`llmds.postings`); 0 for
        an empty index."""
        postings = self.num_postings
        return self._postings.stream_bits / postings if postings else 0.0

    def memory_bytes(self) -> int:
        """Bytes of all arrays the index holds: postings stream and term table, per-term score
        bounds, per-document lengths and norms, and the search scratch arrays. The Python
        vocabulary and id list are not included (see :meth:`describe` for their packed size)."""
        return sum(array.nbytes for array in self._arrays_held().values())

    def _arrays_held(self) -> dict[str, np.ndarray]:
        return {
            "words": self._postings.words,
            "term_offsets": self._postings.term_offsets,
            "term_df": self._postings.term_df,
            "term_max_gains": self._term_max_gains,
            "doc_lengths": self._doc_lengths,
            "norms": self._norms,
            "scratch_scores": self._acc,
            "scratch_documents": self._touched,
            "scratch_candidates": self._candidate_bits,
        }

    def describe(self) -> dict[str, Any]:
        """JSON-able parameters and size figures of the index."""
        postings = self.num_postings
        arrays = self._arrays_held()
        return {
            "method": self.method,
            "k1": self.k1,
            "b": self.b,
            "delta": self.delta,
            "tokenizer": self.tokenizer.describe(),
            "num_documents": len(self),
            "num_terms": len(self._vocabulary),
            "num_postings": postings,
            "block_size": BLOCK_SIZE,
            "bitmap_density": BITMAP_DENSITY,
            "bitmap_terms": self._postings.num_bitmaps,
            "top_k": "exact: term-at-a-time MaxScore; survivors intersected with bitmap lists",
            "bits_per_posting": self.bits_per_posting,
            "memory_bytes": self.memory_bytes(),
            "array_bytes": {name: array.nbytes for name, array in arrays.items()},
            "string_bytes": {
                "vocabulary": sum(len(term.encode("utf-8")) for term in self._vocabulary.to_list()),
                "doc_ids": sum(len(doc_id.encode("utf-8")) for doc_id in self._doc_ids),
            },
        }

    def __repr__(self) -> str:
        return (
            f"BM25Index(method={self.method!r}, k1={self.k1}, b={self.b}, delta={self.delta}, "
            f"documents={len(self)}, terms={len(self._vocabulary)}, postings={self.num_postings})"
        )

    # -- persistence ---------------------------------------------------------------------

    def save(self, path) -> None:
        """Write the index as ``.npy`` arrays plus a JSON manifest (see :mod:`llmds.persist`)."""
        vocabulary_bytes, vocabulary_offsets = _pack_strings(self._vocabulary.to_list())
        id_bytes, id_offsets = _pack_strings(self._doc_ids)
        meta = {
            "method": self.method,
            "k1": self.k1,
            "b": self.b,
            "delta": self.delta,
            "tokenizer": self.tokenizer.describe(),
            "num_documents": len(self),
            "num_postings": self.num_postings,
        }
        arrays = {
            "words": self._postings.words,
            "term_offsets": self._postings.term_offsets,
            "term_df": self._postings.term_df,
            "doc_lengths": self._doc_lengths,
            "vocabulary_bytes": vocabulary_bytes,
            "vocabulary_offsets": vocabulary_offsets,
            "id_bytes": id_bytes,
            "id_offsets": id_offsets,
        }
        save_arrays(path, FORMAT_KIND, FORMAT_VERSION, meta, arrays)

    @classmethod
    def load(cls, path) -> BM25Index:
        """Read an index written by :meth:`save`; a damaged or foreign folder raises
        :class:`~llmds.errors.CorruptIndexError`."""
        meta, arrays = load_arrays(path, FORMAT_KIND, FORMAT_VERSION)
        missing = {
            "words",
            "term_offsets",
            "term_df",
            "doc_lengths",
            "vocabulary_bytes",
            "vocabulary_offsets",
            "id_bytes",
            "id_offsets",
        } - set(arrays)
        if missing:
            raise CorruptIndexError(
                f"{path}: arrays {sorted(missing)} are missing; save the index again."
            )
        try:
            index = cls(
                method=meta["method"],
                k1=meta["k1"],
                b=meta["b"],
                delta=meta["delta"],
                tokenizer=Tokenizer.from_description(meta["tokenizer"]),
            )
            terms = _unpack_strings(arrays["vocabulary_bytes"], arrays["vocabulary_offsets"])
            doc_ids = _unpack_strings(arrays["id_bytes"], arrays["id_offsets"])
            vocabulary = Vocabulary.from_list(terms)
        except (KeyError, TypeError, ValueError, InvalidInputError) as exc:
            raise CorruptIndexError(
                f"{path}: the saved index is inconsistent ({exc}); save it again."
            ) from exc
        postings = CompressedPostings(
            arrays["words"], arrays["term_offsets"], arrays["term_df"], len(doc_ids)
        )
        doc_lengths = arrays["doc_lengths"]
        if (
            doc_lengths.dtype != np.int32
            or doc_lengths.shape != (len(doc_ids),)
            or len(set(doc_ids)) != len(doc_ids)
            or postings.num_terms != len(vocabulary)
            or meta.get("num_documents") != len(doc_ids)
        ):
            raise CorruptIndexError(
                f"{path}: array sizes disagree (documents, ids, terms); save the index again."
            )
        damaged = postings.first_damaged_term()
        if damaged is None and np.any(postings.term_df < 1):
            damaged = int(np.argmax(postings.term_df < 1))  # every indexed term occurs somewhere
        if damaged is not None:
            raise CorruptIndexError(
                f"{path}: the postings of term {damaged} are malformed; save the index again."
            )
        decoded = postings.to_postings()
        if np.any(doc_lengths < 0) or not np.array_equal(
            np.bincount(decoded[1], weights=decoded[2], minlength=len(doc_ids)), doc_lengths
        ):
            raise CorruptIndexError(
                f"{path}: document lengths disagree with the postings; save the index again."
            )
        index._vocabulary = vocabulary
        index._doc_ids = doc_ids
        index._position_of_id = {doc_id: position for position, doc_id in enumerate(doc_ids)}
        index._set_postings(decoded, doc_lengths)
        return index

    # -- input checks --------------------------------------------------------------------

    def _token_lists(self, documents) -> list[list[str]]:
        if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
            raise InvalidInputError(
                "documents must be a list of texts or a list of token lists, got "
                f"{type(documents).__name__}."
            )
        if all(isinstance(document, str) for document in documents):
            return self.tokenizer.tokenize_many(documents)
        token_lists = []
        for position, document in enumerate(documents):
            if (
                isinstance(document, str)
                or not isinstance(document, Sequence)
                or not all(isinstance(token, str) for token in document)
            ):
                raise InvalidInputError(
                    f"document {position} is neither a text nor a list of str tokens "
                    f"({type(document).__name__}); pass all documents as texts or all as "
                    "token lists."
                )
            token_lists.append(list(document))
        return token_lists

    @staticmethod
    def _check_ids(ids, count: int, existing: dict[str, int], first_default: int) -> list[str]:
        if ids is None:
            new_ids = [str(position) for position in range(first_default, first_default + count)]
        else:
            if isinstance(ids, str) or not isinstance(ids, Sequence):
                raise InvalidInputError("ids must be a list of str, one per document.")
            new_ids = list(ids)
            if len(new_ids) != count:
                raise InvalidInputError(
                    f"got {len(new_ids)} ids for {count} documents; "
                    "pass exactly one id per document."
                )
            for doc_id in new_ids:
                if not isinstance(doc_id, str):
                    raise InvalidInputError(
                        f"document id {doc_id!r} is a {type(doc_id).__name__}, not a str; "
                        "convert the ids with str()."
                    )
        seen = set()
        for doc_id in new_ids:
            if doc_id in existing or doc_id in seen:
                raise InvalidInputError(
                    f"duplicate document id {doc_id!r}: every document needs a unique id "
                    "(when adding without ids, the default ids are the positions as strings)."
                )
            seen.add(doc_id)
        return new_ids

    @staticmethod
    def _check_k(k) -> int:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k <= 0:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}.")
        return int(k)


def _length_norms(doc_lengths: np.ndarray, b: float) -> np.ndarray:
    """``1 - b + b * L / avgdl`` per document. With no tokens at all there are no postings to
    score, so the norm is left at 1 instead of dividing by a zero average."""
    total = float(doc_lengths.sum())
    if total == 0:
        return np.ones(len(doc_lengths), dtype=np.float64)
    average = total / len(doc_lengths)
    return (1.0 - b) + b * (doc_lengths.astype(np.float64) / average)


def _round_up_to_float32(values: np.ndarray) -> np.ndarray:
    """float32 copies that are never below the float64 originals, so they stay upper bounds."""
    rounded = values.astype(np.float32)
    low = rounded.astype(np.float64) < values
    rounded[low] = np.nextafter(rounded[low], np.float32(np.inf))
    return rounded


def _check_number(name: str, value, low: float, high: float = math.inf) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        bounds = f"in [{low}, {high}]" if high < math.inf else f">= {low}"
        raise InvalidInputError(f"{name} must be a finite number {bounds}, got {value!r}.")
    return float(value)


def _pack_strings(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as UTF-8 bytes plus offsets: compact, and storable as ``.npy`` without pickle."""
    encoded = [string.encode("utf-8") for string in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(item) for item in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


def _unpack_strings(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    if data.dtype != np.uint8 or offsets.dtype != np.int64 or data.ndim != 1 or offsets.ndim != 1:
        raise ValueError("string table arrays have the wrong type")
    if (
        len(offsets) == 0
        or offsets[0] != 0
        or offsets[-1] != len(data)
        or np.any(np.diff(offsets) < 0)
    ):
        raise ValueError("string table offsets do not cover the data")
    raw = data.tobytes()
    bounds = offsets.tolist()
    return [raw[start:end].decode("utf-8") for start, end in itertools.pairwise(bounds)]
