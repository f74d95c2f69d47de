"""Hybrid retrieval: BM25 and a dense vector index, fused, behind a hot-query cache.

A :class:`HybridRetriever` indexes every document twice: its text into a
:class:`~llmds.bm25.BM25Index` (sparse, lexical) and its embedding into a
:class:`~llmds.hnsw.HNSWIndex` (dense, semantic). A query retrieves the top ``depth``
candidates from each and merges the two lists with reciprocal rank fusion or a convex
combination of normalised scores (:mod:`llmds.fusion`); the answer is the exact top ``k`` of
the fused list. Lexical and dense retrievers fail on different queries (exact terms and rare
names versus paraphrases), which is why the fused list beats both (Bruch, Gai & Ingber,
"An Analysis of Fusion Functions for Hybrid Retrieval", ACM TOIS 2023).

Queries bring their embedding (computed offline with the model that embedded the documents)
or the retriever calls an *embedder*: any callable ``list[str] -> (n, dim) array``, for
instance :func:`sentence_transformer_embedder`.

A :class:`HotQueryCache` in front of the retriever stores answers only for queries that a
Count-Min Sketch (:mod:`llmds.cms`) has seen often enough: on a skewed stream the few hot
queries take the cache and one-off queries do not evict them, the admission idea of TinyLFU
(Einziger, Friedman & Manes, "TinyLFU: A Highly Efficient Cache Admission Policy", ACM ToS
2017), with LRU order choosing the eviction candidate among the admitted.

Every search reports the nanoseconds spent per stage (:data:`STAGES`), measured with
``time.perf_counter_ns``, so that latency can be broken down query by query.

None of these classes is safe to use from several threads at once (the indexes share
scratch buffers).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmds.bm25 import BM25Index
from llmds.checks import integer_argument
from llmds.cms import CountMinSketch
from llmds.errors import InvalidInputError, NotAvailableError
from llmds.fusion import (
    DEFAULT_RRF_K,
    NORMALISATIONS,
    check_alpha,
    convex_positions,
    rrf_positions,
)
from llmds.hnsw import HNSWIndex

STAGES = ("cache", "tokenise", "sparse", "embed", "dense", "fusion")
"""Keys of :attr:`SearchResult.stage_ns`: cache lookup and admission; query tokenisation;
BM25 search; query embedding by the embedder plug-in (0 when the vector is given); dense
search, including the check of the query vector; fusion and the mapping to document ids."""

MODES = ("hybrid", "sparse", "dense")
FUSIONS = ("rrf", "convex")
METRICS = ("cosine", "ip", "l2")

Embedder = Callable[[list[str]], np.ndarray]

_NO_DOCS = np.zeros(0, dtype=np.int64)
_NO_SCORES = np.zeros(0, dtype=np.float64)

_ENTRY_OVERHEAD_BYTES = 120
"""Approximate bytes of one cache entry's bookkeeping: an ordered-dict node with its key and
value references, and the value tuple."""


# ----------------------------------------------------------------------------------------
# Search results


@dataclass(slots=True)
class SearchResult:
    """The answer to one query.

    ``ids`` are document ids best first; ``scores`` their scores (fused score for hybrid
    search, BM25 score for sparse, similarity for dense: ``1 - distance`` under cosine and
    inner product, ``-distance`` under l2); ``cached`` tells whether the answer came from the
    cache; ``stage_ns`` holds the nanoseconds spent in each of :data:`STAGES` for this query,
    and ``total_ns`` the whole call.
    """

    ids: list[str]
    scores: np.ndarray
    cached: bool
    stage_ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    total_ns: int = 0


@dataclass(frozen=True, slots=True)
class Candidates:
    """Each retriever's ranked candidates for one query, before fusion (see
    :meth:`HybridRetriever.candidates`): document positions (``doc_ids[p]`` names position
    ``p``) best first, with their BM25 scores and dense similarities (as in
    :class:`SearchResult`). A retriever that was not searched has empty arrays."""

    sparse_positions: np.ndarray
    sparse_scores: np.ndarray
    dense_positions: np.ndarray
    dense_scores: np.ndarray


# ----------------------------------------------------------------------------------------
# Hot-query cache


class HotQueryCache:
    """A bounded result cache that admits a query only once it is hot.

    Every lookup counts the query in a Count-Min Sketch (Cormode & Muthukrishnan, 2005). After
    a miss the caller offers the computed answer with :meth:`put`, and it is stored only when
    the sketch estimates that the query has been asked at least ``threshold`` times and, once
    the cache is full, more often than the entry it would evict, the least recently used one
    (TinyLFU's admission test). The sketch over-estimates, never under-estimates, so no query
    is refused for looking colder than it is; a cold one passes early only when it collides
    with hot ones in every row.

    On a Zipf(1.1) stream of 5,000 SciFact queries with 32 slots, the threshold alone lifts
    the hit rate from 0.60 (plain LRU) to 0.61 and the victim comparison to 0.70: one-off
    queries no longer push hot ones out. With room for every query, admitting on the first
    sight is best (threshold 1: 0.94; threshold 2: 0.89), since a threshold costs each query
    its first ``threshold - 1`` hits.

    Parameters
    ----------
    capacity:
        Maximum number of cached answers (default 1024).
    threshold:
        Estimated number of lookups a query needs before its answer is cached (default 2:
        cached on its second occurrence, served from the cache from the third on). 1 admits
        every query, i.e. a plain LRU cache.
    sketch:
        The frequency sketch (default: 4096 x 4 counters with conservative update, about
        64 KB, whose expected over-count is below 1/4096 of the lookups so far).
    compare_with_victim:
        Apply the victim comparison above (default ``True``); ``False`` admits every query
        that reaches the threshold and evicts by recency alone.
    window:
        When set, frequencies are forgotten every ``window`` lookups by starting a fresh
        sketch of the same shape (default ``None``: counts accumulate forever). On a long
        stream the accumulated error ``epsilon * N`` eventually exceeds any fixed threshold
        and every query looks hot; a window keeps the estimates about recent traffic, as
        TinyLFU's periodic reset does (it halves the counters; the sketch here can only be
        replaced). Cached answers stay when the sketch is reset.
    seed:
        Seed of the default sketch's hash functions (default 0).
    """

    def __init__(
        self,
        capacity: int = 1024,
        threshold: int = 2,
        *,
        sketch: CountMinSketch | None = None,
        compare_with_victim: bool = True,
        window: int | None = None,
        seed: int = 0,
    ) -> None:
        self.capacity = integer_argument("capacity", capacity)
        self.threshold = integer_argument("threshold", threshold)
        if not isinstance(compare_with_victim, bool):
            raise InvalidInputError(
                f"compare_with_victim must be True or False, got {compare_with_victim!r}."
            )
        self.compare_with_victim = compare_with_victim
        self.window = None if window is None else integer_argument("window", window)
        if sketch is None:
            seed = integer_argument("seed", seed, minimum=0)
            sketch = CountMinSketch(4096, 4, seed=seed, conservative=True)
        elif not isinstance(sketch, CountMinSketch):
            raise InvalidInputError(
                f"sketch must be an llmds.cms.CountMinSketch, got {type(sketch).__name__}."
            )
        self._sketch = sketch
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._entry_bytes = 0
        self._since_reset = 0
        self.reset_stats()

    @property
    def sketch(self) -> CountMinSketch:
        """The frequency sketch currently deciding admission."""
        return self._sketch

    def get(self, key: str) -> Any | None:
        """Count one occurrence of ``key`` and return its cached answer, or ``None``."""
        if self.window is not None and self._since_reset >= self.window:
            self._sketch = _empty_like(self._sketch)
            self._since_reset = 0
        self._sketch.update(key)
        self._since_reset += 1
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: str, value: Any, nbytes: int | None = None) -> bool:
        """Offer the answer for ``key`` after a miss; store it if the query is hot enough.

        ``nbytes`` is the size of ``value`` for :meth:`memory_bytes` (default
        ``sys.getsizeof(value)``). Returns whether the answer is now cached.
        """
        if key not in self._entries:
            estimate = self._sketch.query(key)
            if estimate < self.threshold:
                return False
            if self.compare_with_victim and len(self._entries) >= self.capacity:
                victim = next(iter(self._entries))
                # Ties keep the incumbent: replacing it could not raise the expected hits.
                if estimate <= self._sketch.query(victim):
                    return False
        size = (sys.getsizeof(value) if nbytes is None else int(nbytes)) + sys.getsizeof(key)
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._entry_bytes -= previous[1]
        else:
            self.admissions += 1
        self._entries[key] = (value, size)
        self._entry_bytes += size
        while len(self._entries) > self.capacity:
            _, (_, evicted_size) = self._entries.popitem(last=False)
            self._entry_bytes -= evicted_size
            self.evictions += 1
        return True

    def invalidate(self) -> None:
        """Drop every cached answer (the documents changed, so answers may be stale).

        Query frequencies are kept: which queries are hot does not depend on the documents,
        so hot queries are admitted again on their next miss.
        """
        self._entries.clear()
        self._entry_bytes = 0
        self.invalidations += 1

    def reset_stats(self) -> None:
        """Zero the hit, miss, admission, eviction and invalidation counters (for instance
        after a warm-up); cached answers and frequencies stay."""
        self.hits = 0
        self.misses = 0
        self.admissions = 0
        self.evictions = 0
        self.invalidations = 0

    @property
    def hit_rate(self) -> float:
        """Hits over lookups since the last :meth:`reset_stats` (0 before any lookup)."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def memory_bytes(self) -> int:
        """The sketch's bytes plus the cached keys and answers and their bookkeeping."""
        return (
            self._sketch.memory_bytes()
            + self._entry_bytes
            + _ENTRY_OVERHEAD_BYTES * len(self._entries)
        )

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def describe(self) -> dict[str, Any]:
        """Settings, counters and size, JSON-serialisable."""
        return {
            "capacity": self.capacity,
            "threshold": self.threshold,
            "compare_with_victim": self.compare_with_victim,
            "window": self.window,
            "entries": len(self),
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hit_rate,
            "admissions": self.admissions,
            "evictions": self.evictions,
            "invalidations": self.invalidations,
            "sketch": {"width": self._sketch.width, "depth": self._sketch.depth,
                       "conservative": self._sketch.conservative},
            "memory_bytes": self.memory_bytes(),
        }

    def __repr__(self) -> str:
        return (f"HotQueryCache(capacity={self.capacity}, threshold={self.threshold}, "
                f"entries={len(self)}, hit_rate={self.hit_rate:.3f})")


def _empty_like(sketch: CountMinSketch) -> CountMinSketch:
    """A fresh sketch with the settings of ``sketch`` (and its current counter type)."""
    return CountMinSketch(
        sketch.width, sketch.depth, seed=sketch.seed, conservative=sketch.conservative,
        dtype=sketch.dtype, overflow=sketch.overflow, track_top=sketch.track_top,
    )


# ----------------------------------------------------------------------------------------
# Exact dense search


class ExactDenseIndex:
    """Brute-force nearest-neighbour search: the exact reference for :class:`HNSWIndex`.

    Same interface and distance conventions as :class:`~llmds.hnsw.HNSWIndex` (``add``,
    ``search(query, k, ef=)`` returning int64 ids and float32 distances, nearest first), so a
    :class:`HybridRetriever` can use either. Every search scores all vectors: O(n * dim).

    Parameters
    ----------
    dim:
        Vector dimension.
    metric:
        ``"cosine"`` (default: ``1 - cos``, vectors normalised once when added), ``"ip"``
        (``1 - <q, x>``) or ``"l2"`` (squared Euclidean distance).
    """

    def __init__(self, dim: int, *, metric: str = "cosine") -> None:
        if metric not in METRICS:
            raise InvalidInputError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}.")
        self.dim = integer_argument("dim", dim)
        self.metric = metric
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)
        self._squared_norms = np.zeros(0, dtype=np.float32)
        self._ids = np.zeros(0, dtype=np.int64)
        self._id_set: set[int] = set()

    def add(self, vectors: np.ndarray, ids: Sequence[int] | np.ndarray | None = None) -> None:
        """Append vectors (n, dim) with distinct int ids (default: continue from the count)."""
        matrix = _as_vectors(vectors, self.dim, "vectors", self.metric)
        if ids is None:
            new_ids = np.arange(len(self._ids), len(self._ids) + len(matrix), dtype=np.int64)
        else:
            new_ids = np.asarray(ids)
            if new_ids.dtype.kind not in "iu" or new_ids.shape != (len(matrix),):
                raise InvalidInputError(
                    f"ids must be {len(matrix)} integers, one per vector; got dtype "
                    f"{new_ids.dtype} and shape {new_ids.shape}."
                )
            new_ids = new_ids.astype(np.int64)
        id_list = new_ids.tolist()
        if len(set(id_list)) != len(id_list) or not self._id_set.isdisjoint(id_list):
            raise InvalidInputError("ids must be distinct and not already in the index.")
        self._vectors = np.concatenate([self._vectors, matrix])
        self._squared_norms = np.einsum("ij,ij->i", self._vectors, self._vectors)
        self._ids = np.concatenate([self._ids, new_ids])
        self._id_set.update(id_list)

    def search(
        self, query: np.ndarray, k: int = 10, *, ef: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest ids and their distances, nearest first, ties by insertion order
        (``ef`` is accepted for interface compatibility and ignored: the search is exact)."""
        vector = _as_vectors(query, self.dim, "query", self.metric)
        if vector.shape[0] != 1:
            raise InvalidInputError(f"query must be one vector of shape ({self.dim},).")
        k = integer_argument("k", k)
        products = self._vectors @ vector[0]
        if self.metric == "l2":
            distances = self._squared_norms - 2.0 * products + float(vector[0] @ vector[0])
        else:
            distances = 1.0 - products
        count = min(k, len(distances))
        if count < len(distances):
            candidates = np.argpartition(distances, count - 1)[:count]
            # Include every vector tied with the k-th distance so ties resolve by position.
            candidates = np.flatnonzero(distances <= distances[candidates].max())
        else:
            candidates = np.arange(len(distances))
        order = candidates[np.lexsort((candidates, distances[candidates]))][:count]
        return self._ids[order], distances[order].astype(np.float32)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, id: object) -> bool:
        return id in self._id_set

    def memory_bytes(self) -> int:
        return self._vectors.nbytes + self._squared_norms.nbytes + self._ids.nbytes

    def describe(self) -> dict[str, Any]:
        return {"kind": "exact", "dim": self.dim, "metric": self.metric, "live": len(self),
                "memory_bytes": self.memory_bytes()}


# ----------------------------------------------------------------------------------------
# The retriever


class HybridRetriever:
    """Sparse (BM25) plus dense (HNSW) retrieval with score fusion and an optional cache.

    Parameters
    ----------
    bm25:
        The sparse index. ``None`` (default) builds a :class:`~llmds.bm25.BM25Index` with its
        defaults (Lucene BM25, k1 = 1.5, b = 0.75, English stop words, Snowball stemming) in
        :meth:`index`. An index that already holds documents is used as it is (see
        :meth:`index`); an empty one is filled with its own settings.
    hnsw:
        The dense index. ``None`` (default) builds ``HNSWIndex(dim, metric="cosine", M=16,
        ef_construction=200)`` in :meth:`index`. Any index with the same interface works, for
        example :class:`ExactDenseIndex` for exact search. A pre-built index must use the
        documents' positions in ``doc_ids`` (0, 1, ...) as its ids.
    fusion:
        ``"rrf"`` (default; reciprocal rank fusion) or ``"convex"`` (convex combination of
        normalised scores); see :mod:`llmds.fusion`.
    alpha:
        Weight of the dense score in the convex combination, in [0, 1] (default 0.5; tune it
        on held-out queries). Unused by RRF.
    rrf_k:
        RRF's rank constant (default 60, from Cormack, Clarke & Büttcher, SIGIR 2009).
    depth:
        Candidates taken from each retriever before fusion (default 100). Documents below
        this depth in both lists cannot be returned; ``max(depth, k)`` is used.
    normalisation:
        Score normalisation of the convex combination: ``"minmax"`` (default) or ``"zscore"``.
    cache:
        Optional :class:`HotQueryCache` consulted before and filled after each search.
    embedder:
        Optional callable ``list[str] -> (n, dim) array``: embeds queries that come without a
        vector (and documents indexed without embeddings). It must be the model that embedded
        the documents.
    ef:
        HNSW candidate-list size at search (default ``None``: the index's own default; a
        hybrid search uses at least ``depth``).
    """

    def __init__(
        self,
        *,
        bm25: BM25Index | None = None,
        hnsw: HNSWIndex | ExactDenseIndex | None = None,
        fusion: str = "rrf",
        alpha: float = 0.5,
        rrf_k: float = DEFAULT_RRF_K,
        depth: int = 100,
        normalisation: str = "minmax",
        cache: HotQueryCache | None = None,
        embedder: Embedder | None = None,
        ef: int | None = None,
    ) -> None:
        if bm25 is not None and not isinstance(bm25, BM25Index):
            raise InvalidInputError(
                f"bm25 must be an llmds.bm25.BM25Index, got {type(bm25).__name__}."
            )
        if hnsw is not None and not all(hasattr(hnsw, name) for name in ("dim", "add", "search")):
            raise InvalidInputError(
                f"hnsw must be an HNSWIndex or ExactDenseIndex, got {type(hnsw).__name__}."
            )
        if cache is not None and not isinstance(cache, HotQueryCache):
            raise InvalidInputError(f"cache must be a HotQueryCache, got {type(cache).__name__}.")
        if embedder is not None and not callable(embedder):
            raise InvalidInputError("embedder must be a callable list[str] -> (n, dim) array.")
        self.bm25 = bm25
        self.hnsw = hnsw
        self.cache = cache
        self.embedder = embedder
        self._doc_ids: list[str] | None = None
        self._position_of: dict[str, int] = {}
        self.ef: int | None = None
        self.configure(fusion=fusion, alpha=alpha, rrf_k=rrf_k, depth=depth,
                       normalisation=normalisation, ef=ef)

    def configure(
        self,
        *,
        fusion: str | None = None,
        alpha: float | None = None,
        rrf_k: float | None = None,
        depth: int | None = None,
        normalisation: str | None = None,
        ef: int | None = None,
    ) -> HybridRetriever:
        """Change search settings (those given; see the constructor) without re-indexing, for
        instance to sweep alpha. Clears the cache, whose answers used the old settings."""
        if fusion is not None:
            self.fusion = _check_fusion(fusion)
        if alpha is not None:
            self.alpha = check_alpha(alpha)
        if rrf_k is not None:
            self.rrf_k = _check_rrf_k(rrf_k)
        if depth is not None:
            self.depth = integer_argument("depth", depth)
        if normalisation is not None:
            self.normalisation = _check_normalisation(normalisation)
        if ef is not None:
            self.ef = integer_argument("ef", ef)
        if self.cache is not None and self._doc_ids is not None:
            self.cache.invalidate()
        return self

    # -- building ------------------------------------------------------------------------

    def index(
        self,
        doc_ids: Sequence[str],
        texts: Sequence[str] | None,
        embeddings: np.ndarray | None,
    ) -> HybridRetriever:
        """Index the documents into both retrievers, once; returns ``self``.

        ``texts[i]`` and ``embeddings[i]`` (a row of an (n, dim) array) belong to
        ``doc_ids[i]``. A retriever given pre-built to the constructor keeps its content: it
        must hold exactly these documents (BM25 with these ids in this order; the dense index
        with ids 0..n-1), and its ``texts`` or ``embeddings`` argument must be ``None``.
        Without embeddings, a configured embedder embeds the texts. Every check runs before
        anything is built.
        """
        if self._doc_ids is not None:
            raise InvalidInputError(
                "this retriever is already indexed; use add() for more documents or build a "
                "new HybridRetriever."
            )
        ids = self._check_new_ids(doc_ids, existing={})
        count = len(ids)
        if count == 0:
            raise InvalidInputError("doc_ids is empty: pass at least one document to index().")
        sparse_built = self.bm25 is not None and len(self.bm25) > 0
        dense_built = self.hnsw is not None and len(self.hnsw) > 0
        if sparse_built:
            self._check_prebuilt_sparse(ids, texts)
        else:
            texts = _check_texts(texts, count)
        if dense_built:
            self._check_prebuilt_dense(count, embeddings)
        else:
            embeddings = self._document_vectors(texts, embeddings, count)

        if not dense_built:
            if self.hnsw is None:
                self.hnsw = HNSWIndex(
                    embeddings.shape[1], metric="cosine", M=16, ef_construction=200
                )
            self.hnsw.add(embeddings, np.arange(count, dtype=np.int64))
        if not sparse_built:
            if self.bm25 is None:
                self.bm25 = BM25Index()
            self.bm25.index(texts, ids)
        self._doc_ids = ids
        self._position_of = {doc_id: position for position, doc_id in enumerate(ids)}
        if self.cache is not None:
            self.cache.invalidate()
        return self

    def add(
        self, doc_ids: Sequence[str], texts: Sequence[str], embeddings: np.ndarray | None
    ) -> None:
        """Add documents to both retrievers (ids must be new) and invalidate the cache.

        Arguments as for :meth:`index`; every check runs before anything changes.
        """
        if self._doc_ids is None:
            raise InvalidInputError("nothing is indexed yet; call index() first.")
        ids = self._check_new_ids(doc_ids, existing=self._position_of)
        texts = _check_texts(texts, len(ids))
        embeddings = self._document_vectors(texts, embeddings, len(ids))
        if not ids:
            return
        first = len(self._doc_ids)
        # The dense index checks its input before changing anything, and the texts are
        # already checked, so a failure cannot leave the two indexes out of step.
        self.hnsw.add(embeddings, np.arange(first, first + len(ids), dtype=np.int64))
        self.bm25.add(texts, ids)
        self._doc_ids.extend(ids)
        self._position_of.update((doc_id, first + i) for i, doc_id in enumerate(ids))
        if self.cache is not None:
            self.cache.invalidate()

    # -- searching -----------------------------------------------------------------------

    def search(
        self,
        query_text: str,
        query_vector: np.ndarray | None = None,
        k: int = 10,
        *,
        mode: str = "hybrid",
    ) -> SearchResult:
        """The best ``k`` documents for a query.

        ``mode`` is ``"hybrid"`` (default: both retrievers, fused), ``"sparse"`` (BM25 only)
        or ``"dense"`` (the vector index only). ``query_vector`` (shape (dim,)) is needed for
        hybrid and dense search unless an embedder is configured (sparse search ignores it).
        See :class:`SearchResult` for what comes back; the stage timings are for this call.
        """
        start = time.perf_counter_ns()
        stage_ns = dict.fromkeys(STAGES, 0)
        if mode not in MODES:
            raise InvalidInputError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}.")
        if type(k) is not int or k <= 0:
            k = integer_argument("k", k)
        uses_dense = mode != "sparse"
        query_vector = self._check_query(query_text, query_vector, uses_dense)
        checked = time.perf_counter_ns()
        if uses_dense:
            stage_ns["dense"] = checked - start  # the query vector's check

        key = None
        if self.cache is not None:
            key = _cache_key(query_text, query_vector, k, mode)
            answer = self.cache.get(key)
            if answer is not None:
                end = time.perf_counter_ns()
                stage_ns["dense"] = 0
                stage_ns["cache"] = end - start
                return SearchResult(list(answer[0]), answer[1], True, stage_ns, end - start)
            stage_ns["cache"] = time.perf_counter_ns() - checked

        depth = max(self.depth, k)
        found = self._retrieve(
            query_text,
            query_vector,
            sparse_k=depth if mode == "hybrid" else k if mode == "sparse" else 0,
            dense_k=depth if mode == "hybrid" else k if mode == "dense" else 0,
            stage_ns=stage_ns,
        )
        t0 = time.perf_counter_ns()
        if mode == "sparse":
            docs, scores = found.sparse_positions, found.sparse_scores
        elif mode == "dense":
            docs, scores = found.dense_positions, found.dense_scores
        else:
            docs, scores = self._fused_positions(
                found, k, self.fusion, self.alpha, self.rrf_k, self.normalisation
            )
        doc_ids = self._doc_ids
        ids = [doc_ids[position] for position in docs.tolist()]
        stage_ns["fusion"] = time.perf_counter_ns() - t0

        if key is not None:
            t0 = time.perf_counter_ns()
            scores.flags.writeable = False  # shared with the cache: callers must not edit it
            self.cache.put(key, (tuple(ids), scores), _answer_bytes(ids, scores))
            stage_ns["cache"] += time.perf_counter_ns() - t0
        return SearchResult(ids, scores, False, stage_ns, time.perf_counter_ns() - start)

    def candidates(
        self, query_text: str, query_vector: np.ndarray | None = None, *, depth: int | None = None
    ) -> Candidates:
        """Both retrievers' top ``depth`` (default: the retriever's depth) for a query, before
        fusion. With :meth:`fuse`, this evaluates many fusion settings (an alpha sweep, say)
        from one retrieval per query. The cache is not consulted."""
        depth = self.depth if depth is None else integer_argument("depth", depth)
        query_vector = self._check_query(query_text, query_vector, uses_dense=True)
        return self._retrieve(query_text, query_vector, depth, depth, dict.fromkeys(STAGES, 0))

    def fuse(
        self,
        candidates: Candidates,
        k: int = 10,
        *,
        fusion: str | None = None,
        alpha: float | None = None,
        rrf_k: float | None = None,
        normalisation: str | None = None,
    ) -> tuple[list[str], np.ndarray]:
        """The top ``k`` ids and scores of fused :meth:`candidates`, with the retriever's
        settings or the ones given here (same meaning as in the constructor)."""
        if not isinstance(candidates, Candidates):
            raise InvalidInputError(
                f"candidates must come from HybridRetriever.candidates(), got "
                f"{type(candidates).__name__}."
            )
        docs, scores = self._fused_positions(
            candidates,
            integer_argument("k", k),
            self.fusion if fusion is None else _check_fusion(fusion),
            self.alpha if alpha is None else check_alpha(alpha),
            self.rrf_k if rrf_k is None else _check_rrf_k(rrf_k),
            self.normalisation if normalisation is None else _check_normalisation(normalisation),
        )
        doc_ids = self._doc_ids
        return [doc_ids[position] for position in docs.tolist()], scores

    def _retrieve(
        self,
        query_text: str,
        query_vector: np.ndarray | None,
        sparse_k: int,
        dense_k: int,
        stage_ns: dict[str, int],
    ) -> Candidates:
        """Search each retriever asked for (k > 0), adding the time of each stage to
        ``stage_ns``; a retriever not asked for contributes empty arrays."""
        sparse_docs, sparse_scores = _NO_DOCS, _NO_SCORES
        dense_docs, dense_scores = _NO_DOCS, _NO_SCORES
        if sparse_k:
            t0 = time.perf_counter_ns()
            token_ids = self.bm25.query_token_ids(query_text)
            t1 = time.perf_counter_ns()
            sparse_docs, sparse_scores = self.bm25.search_token_ids(token_ids, sparse_k)
            stage_ns["tokenise"] += t1 - t0
            stage_ns["sparse"] += time.perf_counter_ns() - t1
        if dense_k:
            if query_vector is None:
                t0 = time.perf_counter_ns()
                query_vector = self._embed([query_text], 1)[0]
                stage_ns["embed"] += time.perf_counter_ns() - t0
            t0 = time.perf_counter_ns()
            dense_docs, distances = self.hnsw.search(query_vector, dense_k, ef=self.ef)
            dense_scores = self._similarities(distances)
            stage_ns["dense"] += time.perf_counter_ns() - t0
        return Candidates(sparse_docs, sparse_scores, dense_docs, dense_scores)

    @staticmethod
    def _fused_positions(
        found: Candidates, k: int, fusion: str, alpha: float, rrf_k: float, normalisation: str
    ) -> tuple[np.ndarray, np.ndarray]:
        if fusion == "rrf":
            return rrf_positions((found.sparse_positions, found.dense_positions), rrf_k, None, k)
        return convex_positions(
            found.sparse_positions, found.sparse_scores, found.dense_positions,
            found.dense_scores, alpha, normalisation, k,
        )

    def _check_query(
        self, query_text: Any, query_vector: Any, uses_dense: bool
    ) -> np.ndarray | None:
        """Check that the retriever is indexed and the query usable; returns the query vector
        as float32 (dim,), or ``None`` when not needed or the embedder will make it."""
        if self._doc_ids is None:
            raise InvalidInputError("nothing is indexed yet; call index() before searching.")
        if not isinstance(query_text, str):
            raise InvalidInputError(f"query_text must be a str, got {type(query_text).__name__}.")
        return self._query_vector(query_vector) if uses_dense else None

    # -- inspection ----------------------------------------------------------------------

    def __len__(self) -> int:
        return 0 if self._doc_ids is None else len(self._doc_ids)

    @property
    def doc_ids(self) -> list[str]:
        """Document ids in indexing order."""
        return [] if self._doc_ids is None else list(self._doc_ids)

    @property
    def dim(self) -> int | None:
        """Dimension of the dense index (``None`` before it exists)."""
        return None if self.hnsw is None else self.hnsw.dim

    def memory_bytes(self) -> int:
        """Bytes reported by both indexes and the cache, plus the id table (strings and the
        id -> position dictionary, estimated)."""
        parts = (self.bm25, self.hnsw, self.cache)
        total = sum(part.memory_bytes() for part in parts if part is not None)
        if self._doc_ids:
            total += sum(map(sys.getsizeof, self._doc_ids)) + sys.getsizeof(self._position_of)
        return total

    def describe(self) -> dict[str, Any]:
        """Settings and the parts' own descriptions, JSON-serialisable."""
        return {
            "documents": len(self),
            "fusion": self.fusion,
            "alpha": self.alpha,
            "rrf_k": self.rrf_k,
            "depth": self.depth,
            "normalisation": self.normalisation,
            "ef": self.ef,
            "embedder": (
                None if self.embedder is None else getattr(self.embedder, "__name__", "callable")
            ),
            "bm25": None if self.bm25 is None else self.bm25.describe(),
            "dense": None if self.hnsw is None else self.hnsw.describe(),
            "cache": None if self.cache is None else self.cache.describe(),
            "memory_bytes": self.memory_bytes(),
        }

    def __repr__(self) -> str:
        return (f"HybridRetriever(documents={len(self)}, fusion={self.fusion!r}, "
                f"alpha={self.alpha}, rrf_k={self.rrf_k:g}, depth={self.depth}, "
                f"cache={self.cache is not None})")

    # -- helpers -------------------------------------------------------------------------

    def _similarities(self, distances: np.ndarray) -> np.ndarray:
        """Dense distances as scores where higher is better (see :class:`SearchResult`)."""
        distances = distances.astype(np.float64)
        return -distances if self.hnsw.metric == "l2" else 1.0 - distances

    def _query_vector(self, query_vector: Any) -> np.ndarray | None:
        """The query embedding as a float32 (dim,) vector; ``None`` when the embedder will
        make it. Only the shape is checked here; the dense index rejects NaN and zero
        vectors itself."""
        if query_vector is None:
            if self.embedder is None:
                raise InvalidInputError(
                    "query_vector is required for hybrid and dense search: pass the query's "
                    "embedding, configure an embedder, or use mode='sparse'."
                )
            return None
        dim = self.hnsw.dim
        if not (type(query_vector) is np.ndarray and query_vector.dtype == np.float32
                and query_vector.shape == (dim,)):
            try:
                array = np.asarray(query_vector, dtype=np.float32)
            except (TypeError, ValueError):
                raise InvalidInputError(f"query_vector must be {dim} numbers.") from None
            if array.size != dim or array.ndim not in (1, 2):
                raise InvalidInputError(
                    f"query_vector has shape {array.shape} but the dense index holds {dim}-d "
                    "vectors: embed the query with the model that embedded the documents."
                )
            query_vector = np.ascontiguousarray(array.reshape(dim))
        return query_vector

    def _document_vectors(self, texts: list[str], embeddings: Any, count: int) -> np.ndarray:
        """Checked (count, dim) float32 embeddings, or the embedder's vectors for ``texts``."""
        if embeddings is None:
            if self.embedder is None:
                raise InvalidInputError(
                    "embeddings are required (one row per document), or configure an embedder."
                )
            return self._embed(texts, count)
        dim = None if self.hnsw is None else self.hnsw.dim
        return _as_vectors(embeddings, dim, "embeddings", "l2", rows=count)

    def _embed(self, texts: list[str], count: int) -> np.ndarray:
        vectors = self.embedder(list(texts))
        dim = None if self.hnsw is None else self.hnsw.dim
        try:
            return _as_vectors(vectors, dim, "the embedder's output", "l2", rows=count)
        except InvalidInputError as exc:
            raise InvalidInputError(
                f"{exc} The embedder must return one row per text, as an (n, dim) array."
            ) from None

    def _check_new_ids(self, doc_ids: Any, existing: dict[str, int]) -> list[str]:
        if isinstance(doc_ids, str) or not isinstance(doc_ids, Sequence):
            raise InvalidInputError("doc_ids must be a list of str, one per document.")
        ids = list(doc_ids)
        seen: set[str] = set()
        for doc_id in ids:
            if not isinstance(doc_id, str):
                raise InvalidInputError(
                    f"document id {doc_id!r} is a {type(doc_id).__name__}, not a str; convert "
                    "the ids with str()."
                )
            if doc_id in existing or doc_id in seen:
                raise InvalidInputError(f"duplicate document id {doc_id!r}: ids must be unique.")
            seen.add(doc_id)
        return ids

    def _check_prebuilt_sparse(self, ids: list[str], texts: Any) -> None:
        if texts is not None:
            raise InvalidInputError(
                "the BM25 index passed to HybridRetriever already holds documents; pass "
                "texts=None to use it as it is, or pass an empty BM25Index to build it."
            )
        if self.bm25.doc_ids != ids:
            raise InvalidInputError(
                "the pre-built BM25 index holds other documents (or another order) than "
                "doc_ids; index exactly these ids, in this order."
            )

    def _check_prebuilt_dense(self, count: int, embeddings: Any) -> None:
        if embeddings is not None:
            raise InvalidInputError(
                "the dense index passed to HybridRetriever already holds vectors; pass "
                "embeddings=None to use it as it is, or pass an empty index to build it."
            )
        if len(self.hnsw) != count or any(position not in self.hnsw for position in range(count)):
            raise InvalidInputError(
                f"the pre-built dense index must hold exactly ids 0..{count - 1}, the "
                "positions of doc_ids; rebuild it with ids=np.arange(len(doc_ids))."
            )


# ----------------------------------------------------------------------------------------
# Embedder plug-in


def sentence_transformer_embedder(
    model_name: str = "sentence-transformers/all-MiniLM-L6-v2",
    *,
    device: str | None = None,
    batch_size: int = 32,
) -> Embedder:
    """An embedder backed by sentence-transformers (an optional dependency, imported here).

    ``model_name`` is any model sentence-transformers can load (default all-MiniLM-L6-v2, the
    model of the SciFact embeddings in this project's data); loading it may download it.
    ``device`` is passed to the model (default: its own choice); ``batch_size`` texts are
    encoded at a time. Vectors are L2-normalised float32. Raises
    :class:`~llmds.errors.NotAvailableError` when the package is not installed.
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise NotAvailableError(
            "the sentence-transformers embedder needs the sentence-transformers package: "
            "`pip install sentence-transformers`, or pass pre-computed query vectors."
        ) from None
    model = SentenceTransformer(model_name, device=device)

    def embed(texts: list[str]) -> np.ndarray:
        vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                               convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32)

    embed.__name__ = f"sentence_transformer_embedder({model_name})"
    return embed


# ----------------------------------------------------------------------------------------
# Shared checks


def _as_vectors(
    vectors: Any, dim: int | None, what: str, metric: str, rows: int | None = None
) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 (n, dim) array (one 1-d vector is one row):
    ``dim`` (when known) and ``rows`` (when given) must match, values must be finite, and
    under cosine rows are normalised to unit length (zero rows rejected)."""
    try:
        array = np.asarray(vectors)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{what} must be a numeric array.") from None
    if array.dtype.kind not in "fiu":
        raise InvalidInputError(f"{what} must hold numbers, got dtype {array.dtype}.")
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise InvalidInputError(f"{what} must be a 2-d (n, dim) array, got shape {array.shape}.")
    if rows is not None and array.shape[0] != rows:
        raise InvalidInputError(
            f"{what} has {array.shape[0]} rows for {rows} documents; pass one row per document, "
            "in the order of doc_ids."
        )
    if dim is not None and array.shape[1] != dim:
        raise InvalidInputError(
            f"{what} are {array.shape[1]}-d but the dense index holds {dim}-d vectors: use the "
            "embedding model that embedded the indexed documents."
        )
    matrix = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise InvalidInputError(f"{what} contain NaN or infinity; clean them first.")
    if metric == "cosine":
        norms = np.linalg.norm(matrix, axis=1)
        if (norms == 0).any():
            raise InvalidInputError(
                f"{what} row {int(np.flatnonzero(norms == 0)[0])} is a zero vector, which has "
                "no direction under the cosine metric."
            )
        matrix = matrix / norms[:, None]
    return matrix


def _check_fusion(fusion: Any) -> str:
    if fusion not in FUSIONS:
        raise InvalidInputError(f"unknown fusion {fusion!r}; use one of {', '.join(FUSIONS)}.")
    return fusion


def _check_rrf_k(rrf_k: Any) -> float:
    if (
        isinstance(rrf_k, bool)
        or not isinstance(rrf_k, numbers.Real)
        or not (math.isfinite(rrf_k) and rrf_k >= 0)
    ):
        raise InvalidInputError(f"rrf_k must be a finite number >= 0 (default 60), got {rrf_k!r}.")
    return float(rrf_k)


def _check_normalisation(normalisation: Any) -> str:
    if normalisation not in NORMALISATIONS:
        raise InvalidInputError(
            f"unknown normalisation {normalisation!r}; use one of {', '.join(NORMALISATIONS)}."
        )
    return normalisation


def _check_texts(texts: Any, count: int) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise InvalidInputError("texts must be a list of str, one per document.")
    texts = list(texts)
    if len(texts) != count:
        raise InvalidInputError(
            f"got {len(texts)} texts for {count} doc_ids; pass one text per document."
        )
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(
                f"text {position} is a {type(text).__name__}, not a str."
            )
    return texts


def _cache_key(query_text: str, query_vector: np.ndarray | None, k: int, mode: str) -> str:
    """The cache key: mode, k, text and (when the caller gave one) a digest of the vector, so
    that two different embeddings under one text never share an answer."""
    key = f"{mode}\x1f{k}\x1f{query_text}"
    if query_vector is not None:
        key += "\x1f" + hashlib.blake2b(query_vector.tobytes(), digest_size=8).hexdigest()
    return key


def _answer_bytes(ids: list[str], scores: np.ndarray) -> int:
    return sys.getsizeof(tuple(ids)) + sum(map(sys.getsizeof, ids)) + scores.nbytes
