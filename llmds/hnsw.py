"""HNSW: a Hierarchical Navigable Small World graph for approximate nearest-neighbour search.

Malkov & Yashunin, "Efficient and robust approximate nearest neighbor search using
Hierarchical Navigable Small World graphs", IEEE TPAMI 42(4), 2018 (arXiv:1603.09320).

Every element gets a level drawn from an exponential distribution (``mL = 1 / ln M``) and is
linked on each layer up to its level. A query descends greedily through the sparse upper
layers and then runs an ef-bounded best-first search on layer 0, which links up to
``M0 = 2 M`` neighbours per node. Neighbour lists are chosen with the paper's heuristic
(Algorithm 4), both for a new element and when an existing list overflows and must be shrunk.

The hot loops (distances, layer search, heuristic, whole insertions and whole query batches)
are numba kernels in :mod:`llmds._hnsw_kernels`; this module validates input in numpy, owns
and grows the arrays, and maps user ids to internal slots.

Metrics and the distances returned:

- ``"l2"``: squared Euclidean distance.
- ``"ip"``: ``1 - <q, x>`` (hnswlib's convention, so that smaller is closer). Inner product is
  not a metric: a vector of small norm is nobody's near neighbour and may become unreachable,
  as in hnswlib; for normalised embeddings prefer ``"cosine"``.
- ``"cosine"``: ``1 - cos(q, x)``. Vectors are normalised to unit length once, at insertion,
  and each query once per search; the index stores (and :meth:`HNSWIndex.get_vector`
  returns) the normalised vectors. Zero vectors have no direction and are rejected.

Deletion marks an element deleted: it keeps routing searches (so the graph stays connected)
but is never returned. Re-adding a deleted id, or adding an existing id with
``replace=True``, stores the new vector in a fresh slot and leaves the old slot behind as such
a routing-only tombstone (its memory is not reclaimed). An index is not safe to use from
several threads at once: searches share scratch buffers.
"""

from __future__ import annotations

import math
import operator
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llmds import _hnsw_kernels as kernels
from llmds.checks import integer_argument
from llmds.errors import CorruptIndexError, InvalidInputError
from llmds.persist import load_arrays, save_arrays

METRICS = ("l2", "ip", "cosine")
_METRIC_CODES = {"l2": kernels.METRIC_L2, "ip": kernels.METRIC_IP, "cosine": kernels.METRIC_IP}
_KIND = "hnsw"
_FORMAT_VERSION = 1
# A level above this has probability M**-64: the cap only bounds memory if it ever happened.
_LEVEL_CAP = 64
_INT64_MAX = int(np.iinfo(np.int64).max)
# Approximate cost of one id -> slot dict entry: two Python ints plus the hash-table slot.
_DICT_ENTRY_BYTES = 100
# Arrays with one entry (or row) per slot; they grow together.
_SLOT_ARRAYS = ("_vectors", "_ids", "_levels", "_live", "_links0", "_upper_offset")

IdFilter = Callable[[int], bool] | np.ndarray | Sequence[int]


def _resized(array: np.ndarray, length: int, keep: int) -> np.ndarray:
    """A zeroed copy of ``array`` with ``length`` rows, holding its first ``keep`` rows."""
    grown = np.zeros((length, *array.shape[1:]), dtype=array.dtype)
    grown[:keep] = array[:keep]
    return grown


class HNSWIndex:
    """An HNSW graph index over float32 vectors with int64 ids.

    Parameters
    ----------
    dim:
        Vector dimension; every added vector and every query must have exactly this length.
    metric:
        ``"l2"`` (squared Euclidean, the default), ``"ip"`` (``1 - inner product``) or
        ``"cosine"`` (``1 - cosine similarity``; vectors are normalised at insertion and queries
        at search).
    M:
        Links per node on the upper layers; layer 0 allows ``2 * M`` (the paper's ``Mmax0``).
        16 is the paper's and hnswlib's usual choice; a larger M raises recall on
        high-dimensional data at the cost of memory and build time. At least 2, since the level
        distribution uses ``mL = 1 / ln M``.
    ef_construction:
        Size of the candidate list while inserting (the paper's ``efConstruction``). The default
        200, as in hnswlib's examples, builds a high-quality graph; lower values build faster.
    ef:
        Default size of the candidate list at search, the recall/speed knob; a search uses
        ``max(ef, k)``. 50 is a balanced default; pass ``ef=`` to :meth:`search` per call.
    seed:
        Seed of this index's own random generator, which draws the levels: the same seed and the
        same sequence of operations give the identical graph.
    capacity:
        Initial number of slots. Storage doubles when full, so this only saves early copies.
    """

    def __init__(
        self,
        dim: int,
        *,
        metric: str = "l2",
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 50,
        seed: int = 0,
        capacity: int = 1024,
    ) -> None:
        if metric not in METRICS:
            raise InvalidInputError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}.")
        self.dim = integer_argument("dim", dim)
        self.metric = metric
        self.M = integer_argument("M", M, minimum=2)
        self.ef_construction = integer_argument("ef_construction", ef_construction)
        self.ef = integer_argument("ef", ef)
        self.seed = integer_argument("seed", seed, minimum=0)
        capacity = integer_argument("capacity", capacity)
        self._metric_code = _METRIC_CODES[metric]
        self._level_scale = 1.0 / math.log(self.M)
        self._rng = np.random.default_rng(self.seed)
        self._slot_of: dict[int, int] = {}
        self._next_auto_id = 0
        self._size = 0  # slots in use, live or not
        self._upper_used = 0  # rows of _upper_links in use
        # [entry slot, top level, visited generation, distance computations]: see the kernels.
        self._state = np.array([-1, 0, 0, 0], dtype=np.int64)
        self._vectors = np.zeros((capacity, self.dim), dtype=np.float32)
        self._ids = np.zeros(capacity, dtype=np.int64)
        self._levels = np.zeros(capacity, dtype=np.int32)
        self._live = np.zeros(capacity, dtype=np.uint8)
        self._links0 = np.zeros((capacity, 1 + 2 * self.M), dtype=np.int32)
        self._upper_offset = np.zeros(capacity, dtype=np.int32)
        # About 1/M of the nodes reach layer 1, and they own 1/(M-1) rows each on average.
        upper_rows = max(16, capacity // (self.M - 1))
        self._upper_links = np.zeros((upper_rows, 1 + self.M), dtype=np.int32)
        self._reset_scratch(capacity)

    # ------------------------------------------------------------------ storage

    def _reset_scratch(self, capacity: int) -> None:
        """Per-search scratch sized to the slot capacity (see :mod:`llmds._hnsw_kernels`)."""
        self._visited = np.zeros(capacity, dtype=np.int32)
        self._state[kernels.GENERATION] = 0
        self._cand_keys = np.empty(capacity, dtype=np.float32)
        self._cand_nodes = np.empty(capacity, dtype=np.int32)

    def _reserve(self, slots: int, upper_rows: int) -> None:
        """Grow storage, doubling, so that ``slots`` slots and ``upper_rows`` upper rows fit."""
        capacity = self._vectors.shape[0]
        if slots > capacity:
            capacity = max(slots, 2 * capacity)
            for name in _SLOT_ARRAYS:
                setattr(self, name, _resized(getattr(self, name), capacity, self._size))
            self._reset_scratch(capacity)
        rows = self._upper_links.shape[0]
        if upper_rows > rows:
            self._upper_links = _resized(self._upper_links, max(upper_rows, 2 * rows),
                                         self._upper_used)

    # ------------------------------------------------------------------ validation

    def _as_matrix(self, vectors: Any, what: str, ndim: int | None = None) -> np.ndarray:
        """``vectors`` as a C-contiguous float32 (n, dim) array; one 1-D vector is one row.

        ``ndim`` (1 or 2), when given, is the only accepted input rank. Rejects non-numeric or
        ragged data, a wrong shape and non-finite values; for cosine, also zero rows, and returns
        the rows normalised to unit length.
        """
        try:
            array = np.asarray(vectors)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{what} must be a numeric array: {exc}") from None
        if array.dtype.kind not in "fiu":
            raise InvalidInputError(
                f"{what} must hold numbers (float or int), got dtype {array.dtype}; "
                "convert with np.asarray(..., dtype=np.float32)."
            )
        if ndim == 1 and array.ndim != 1:
            raise InvalidInputError(
                f"{what} must be one vector of shape ({self.dim},), got shape {array.shape}; "
                "use search_batch for several queries."
            )
        if ndim == 2 and array.ndim != 2:
            raise InvalidInputError(
                f"{what} must be a 2-D array of shape (n, {self.dim}), got shape "
                f"{array.shape}; use search for a single vector."
            )
        if array.ndim == 1:
            array = array.reshape(1, -1)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise InvalidInputError(
                f"{what} must have shape (n, {self.dim}) or ({self.dim},) for this {self.dim}-d "
                f"index, got {array.shape}."
            )
        with np.errstate(over="ignore", invalid="ignore"):
            matrix = np.ascontiguousarray(array, dtype=np.float32)
            squared_norms = np.einsum("ij,ij->i", matrix, matrix)
        self._check_norms(matrix, squared_norms, what)
        if self.metric == "cosine":
            matrix = matrix / np.sqrt(squared_norms)[:, None]
        return matrix

    def _check_norms(self, matrix: np.ndarray, squared_norms: np.ndarray, what: str) -> None:
        """Reject rows whose float32 squared norm is not finite (NaN, Inf, or too large), and
        zero rows under cosine. A finite squared norm proves every entry finite, so the common
        case costs one reduction."""
        bad = ~np.isfinite(squared_norms)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            if np.isfinite(matrix[row]).all():
                raise InvalidInputError(
                    f"{what} row {row} is too large for float32 distances (its squared norm "
                    "overflows); scale the vectors down."
                )
            raise InvalidInputError(
                f"{what} row {row} contains NaN or infinity (or a value beyond the float32 "
                "range); clean or drop it before adding or searching. Nothing was changed."
            )
        if self.metric == "cosine":
            zero = squared_norms == 0
            if zero.any():
                raise InvalidInputError(
                    f"{what} row {int(np.flatnonzero(zero)[0])} is a zero vector, which has no "
                    "direction under the cosine metric; drop it or use metric='l2'."
                )

    def _as_ids(self, ids: Any, count: int) -> np.ndarray:
        """User ids as an int64 array of ``count`` distinct values (auto ids when None)."""
        if ids is None:
            if self._next_auto_id + count - 1 > _INT64_MAX:
                raise InvalidInputError(
                    "automatic ids would exceed the int64 range; pass ids= explicitly."
                )
            return np.arange(self._next_auto_id, self._next_auto_id + count, dtype=np.int64)
        array = np.asarray(ids)
        if array.ndim == 0:
            array = array.reshape(1)
        if array.dtype.kind not in "iu" or array.ndim != 1:
            raise InvalidInputError(
                f"ids must be a 1-D sequence of integers, got dtype {array.dtype} and shape "
                f"{array.shape}; pass e.g. np.arange(n, dtype=np.int64)."
            )
        if array.shape[0] != count:
            raise InvalidInputError(
                f"got {count} vectors but {array.shape[0]} ids; pass one id per vector."
            )
        if array.dtype.kind == "u" and count and int(array.max()) > _INT64_MAX:
            raise InvalidInputError("ids must fit in int64; got an unsigned id above 2**63 - 1.")
        array = array.astype(np.int64)
        unique, counts = np.unique(array, return_counts=True)
        if unique.shape[0] != count:
            raise InvalidInputError(
                f"id {int(unique[counts > 1][0])} appears more than once in this batch; "
                "ids must be distinct."
            )
        return array

    def _eligibility(self, allowed: IdFilter | None) -> tuple[np.ndarray, int]:
        """The per-slot flag array of nodes a search may return, and how many are set."""
        live_count = len(self._slot_of)
        if allowed is None:
            return self._live, live_count
        size = self._size
        eligible = np.zeros(size, dtype=np.uint8)
        if callable(allowed):
            eligible[[slot for id_, slot in self._slot_of.items() if allowed(id_)]] = 1
            return eligible, int(np.count_nonzero(eligible))
        allowed_ids = np.asarray(allowed)
        if allowed_ids.size == 0:
            return eligible, 0
        if allowed_ids.dtype.kind not in "iu" or allowed_ids.ndim != 1:
            raise InvalidInputError(
                "filter must be a 1-D array of allowed integer ids or a callable id -> bool, "
                f"got dtype {allowed_ids.dtype} and shape {allowed_ids.shape}."
            )
        if allowed_ids.dtype.kind == "u":  # ids above the int64 range cannot be stored anyway
            allowed_ids = allowed_ids[allowed_ids <= _INT64_MAX]
        eligible[np.isin(self._ids[:size], allowed_ids.astype(np.int64))] = 1
        eligible &= self._live[:size]
        return eligible, int(np.count_nonzero(eligible))

    # ------------------------------------------------------------------ operations

    def add(
        self,
        vectors: np.ndarray,
        ids: np.ndarray | Sequence[int] | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """Insert vectors (Algorithm 1), one after another in one compiled loop.

        ``vectors`` is (n, dim), or one vector of shape (dim,). ``ids`` are int64 ids, one per
        vector; when None, ids continue from the largest id ever stored plus one (0 for a new
        index). An id that is already live is an error unless ``replace=True``, which replaces
        its vector; an id that was deleted may always be added again. Every check runs before
        anything changes, so a rejected call leaves the index as it was.
        """
        matrix = self._as_matrix(vectors, "vectors")
        count = matrix.shape[0]
        new_ids = self._as_ids(ids, count)
        if count == 0:
            return
        id_list = new_ids.tolist()
        replaced = [self._slot_of[i] for i in id_list if i in self._slot_of]
        if replaced and not replace:
            duplicate = next(i for i in id_list if i in self._slot_of)
            raise InvalidInputError(
                f"id {duplicate} is already in the index; pass replace=True to overwrite it "
                "or delete it first."
            )
        levels = self._draw_levels(count)
        first = self._size
        row_offsets = self._upper_used + np.cumsum(levels) - levels
        self._reserve(first + count, self._upper_used + int(levels.sum()))
        new_slots = slice(first, first + count)
        self._vectors[new_slots] = matrix
        self._ids[new_slots] = new_ids
        self._levels[new_slots] = levels
        self._upper_offset[new_slots] = np.where(levels > 0, row_offsets, -1)
        self._live[replaced] = 0
        kernels.insert_batch(
            first, count, self._levels, self._vectors, self._links0, self._upper_links,
            self._upper_offset, self._state, self._visited, self._cand_keys, self._cand_nodes,
            self.M, self.ef_construction, self._metric_code,
        )
        self._live[new_slots] = 1
        self._slot_of.update(zip(id_list, range(first, first + count)))
        self._size += count
        self._upper_used += int(levels.sum())
        self._next_auto_id = max(self._next_auto_id, int(new_ids.max()) + 1)
        if not self._live[self._state[kernels.ENTRY]]:
            self._choose_entry()

    def _draw_levels(self, count: int) -> np.ndarray:
        """Levels floor(-ln U * mL) with U uniform on (0, 1], as in the paper (Algorithm 1)."""
        uniform = 1.0 - self._rng.random(count)
        levels = np.floor(-np.log(uniform) * self._level_scale)
        return np.minimum(levels, _LEVEL_CAP).astype(np.int32)

    def _choose_entry(self) -> None:
        """Make the live node of the highest level (lowest slot on ties) the entry point.

        With no live node left the old entry stays: it still routes later insertions.
        """
        live_levels = np.where(self._live[: self._size] == 1, self._levels[: self._size], -1)
        best = int(np.argmax(live_levels))
        if live_levels[best] >= 0:
            self._state[kernels.ENTRY] = best
            self._state[kernels.TOP] = live_levels[best]

    def search(
        self,
        query: np.ndarray,
        k: int = 10,
        *,
        ef: int | None = None,
        filter: IdFilter | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest live ids to ``query`` (Algorithm 5) and their distances.

        Returns (ids int64, distances float32), nearest first, each of length
        min(k, number of eligible items): never padded, empty on an empty index. ``ef``
        overrides the index's default candidate-list size (``max(ef, k)`` is used). ``filter``
        restricts the results to allowed ids, given as an array of ids or as a callable
        ``id -> bool`` (called once per live item per search, so prefer the array on large
        indexes); filtered-out and deleted items still route the search. When the graph search
        reaches fewer eligible items than requested, an exact scan over the eligible items
        completes the answer.
        """
        # At tens of microseconds per query the checks themselves must be cheap: a C-contiguous
        # float32 vector of the right length takes the short path (one compiled sum of squares
        # proves it finite and gives the cosine norm); anything else goes through _as_matrix.
        if (type(query) is np.ndarray and query.dtype == np.float32
                and query.shape == (self.dim,) and query.flags.c_contiguous):
            squared_norm = float(kernels.squared_norm(query))
            if not math.isfinite(squared_norm) or squared_norm == 0.0:
                query = self._as_matrix(query, "query", ndim=1)[0]
            elif self.metric == "cosine":
                query = query * np.float32(1.0 / math.sqrt(squared_norm))
        else:
            query = self._as_matrix(query, "query", ndim=1)[0]
        if type(k) is not int or k <= 0:
            k = integer_argument("k", k)
        ef = self.ef if ef is None else integer_argument("ef", ef)
        if filter is None:
            eligible, want = self._live, min(k, len(self._slot_of))
        else:
            eligible, n_eligible = self._eligibility(filter)
            want = min(k, n_eligible)
        out_ids = np.empty(want, dtype=np.int64)
        out_distances = np.empty(want, dtype=np.float32)
        if want:
            kernels.search_one(
                query, k, ef, self._size, self._vectors, self._links0, self._upper_links,
                self._upper_offset, self._ids, eligible, self._state, self._visited,
                self._cand_keys, self._cand_nodes, self._metric_code, out_ids, out_distances,
            )
        return out_ids, out_distances

    def search_batch(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        ef: int | None = None,
        filter: IdFilter | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search every row of ``queries`` (n, dim) in one compiled, single-threaded loop.

        Returns (ids int64, distances float32) of shape (n, min(k, number of eligible items)),
        each row nearest first. Parameters as for :meth:`search`.
        """
        matrix = self._as_matrix(queries, "queries", ndim=2)
        k = integer_argument("k", k)
        ef = self.ef if ef is None else integer_argument("ef", ef)
        eligible, n_eligible = self._eligibility(filter)
        return self._run_search(matrix, k, ef, eligible, min(k, n_eligible))

    def _run_search(
        self, matrix: np.ndarray, k: int, ef: int, eligible: np.ndarray, want: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run the compiled search over validated query rows; ``want`` results per row."""
        out_ids = np.empty((matrix.shape[0], want), dtype=np.int64)
        out_distances = np.empty((matrix.shape[0], want), dtype=np.float32)
        if want:
            kernels.search_batch(
                matrix, k, ef, self._size, self._vectors, self._links0, self._upper_links,
                self._upper_offset, self._ids, eligible, self._state, self._visited,
                self._cand_keys, self._cand_nodes, self._metric_code, out_ids, out_distances,
            )
        return out_ids, out_distances

    def delete(self, id: int) -> None:
        """Mark ``id`` deleted: never returned again, but its node keeps routing searches.

        If it was the entry point, the live node of the highest level becomes the entry.
        """
        key = self._lookup(id)
        slot = self._slot_of.pop(key)
        self._live[slot] = 0
        if slot == self._state[kernels.ENTRY]:
            self._choose_entry()

    def _lookup(self, id: Any) -> int:
        """``id`` as a Python int that is live in the index, else InvalidInputError."""
        key = integer_argument("id", id, minimum=-_INT64_MAX - 1)
        if key not in self._slot_of:
            raise InvalidInputError(f"id {key} is not in the index (never added, or deleted).")
        return key

    def __len__(self) -> int:
        """Number of live (not deleted) items."""
        return len(self._slot_of)

    def __contains__(self, id: object) -> bool:
        try:
            return operator.index(id) in self._slot_of
        except TypeError:
            return False

    def get_vector(self, id: int) -> np.ndarray:
        """A copy of the stored vector of ``id`` (unit length under cosine)."""
        return self._vectors[self._slot_of[self._lookup(id)]].copy()

    @property
    def distance_computations(self) -> int:
        """Total distance computations since creation, load or the last reset (assign 0)."""
        return int(self._state[kernels.DISTANCES])

    @distance_computations.setter
    def distance_computations(self, value: int) -> None:
        self._state[kernels.DISTANCES] = integer_argument("distance_computations", value, minimum=0)

    # ------------------------------------------------------------------ reporting

    def memory_bytes(self) -> int:
        """Bytes held by the index: every array at its allocated capacity (vectors, links, ids,
        levels, flags, search scratch) plus an estimate for the id -> slot dictionary."""
        arrays = (*_SLOT_ARRAYS, "_upper_links", "_visited", "_cand_keys", "_cand_nodes")
        array_bytes = sum(getattr(self, name).nbytes for name in arrays)
        return array_bytes + sys.getsizeof(self._slot_of) + _DICT_ENTRY_BYTES * len(self._slot_of)

    def describe(self) -> dict[str, Any]:
        """Parameters, sizes and graph shape, JSON-serialisable."""
        size = self._size
        level_counts = np.bincount(self._levels[:size], minlength=1) if size else np.zeros(1, int)
        return {
            "kind": _KIND,
            "paper": "Malkov & Yashunin, TPAMI 2018 (arXiv:1603.09320)",
            "dim": self.dim,
            "metric": self.metric,
            "M": self.M,
            "M0": 2 * self.M,
            "ef_construction": self.ef_construction,
            "ef": self.ef,
            "seed": self.seed,
            "live": len(self),
            "slots_used": size,
            "tombstones": size - len(self),
            "capacity": int(self._vectors.shape[0]),
            "top_level": int(self._state[kernels.TOP]) if size else -1,
            "nodes_per_level": level_counts.tolist(),
            "mean_layer0_degree": float(self._links0[:size, 0].mean()) if size else 0.0,
            "memory_bytes": self.memory_bytes(),
            "distance_computations": self.distance_computations,
        }

    def __repr__(self) -> str:
        return (f"HNSWIndex(dim={self.dim}, metric={self.metric!r}, M={self.M}, "
                f"ef_construction={self.ef_construction}, ef={self.ef}, live={len(self)})")

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to the folder ``path`` (.npy arrays + JSON manifest with checksums,
        via :mod:`llmds.persist`). Parameters, ids, deletions and the random generator's state
        are kept, so a loaded index answers and grows exactly like this one."""
        size, rows = self._size, self._upper_used
        meta = {
            "dim": self.dim,
            "metric": self.metric,
            "M": self.M,
            "ef_construction": self.ef_construction,
            "ef": self.ef,
            "seed": self.seed,
            "size": size,
            "upper_rows": rows,
            "entry": int(self._state[kernels.ENTRY]),
            "top_level": int(self._state[kernels.TOP]),
            "next_auto_id": self._next_auto_id,
            "rng_state": self._rng.bit_generator.state,
        }
        arrays = {
            "vectors": self._vectors[:size],
            "ids": self._ids[:size],
            "levels": self._levels[:size],
            "live": self._live[:size],
            "links0": self._links0[:size],
            "upper_offset": self._upper_offset[:size],
            "upper_links": self._upper_links[:rows],
        }
        save_arrays(path, _KIND, _FORMAT_VERSION, meta, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, *, dim: int | None = None) -> HNSWIndex:
        """Load an index written by :meth:`save`.

        Raises :class:`CorruptIndexError` for a missing, damaged or inconsistent folder, and
        :class:`InvalidInputError` when ``dim`` is given and the saved index has another
        dimension.
        """
        meta, arrays = load_arrays(path, _KIND, _FORMAT_VERSION)
        try:
            index = cls(
                meta["dim"], metric=meta["metric"], M=meta["M"],
                ef_construction=meta["ef_construction"], ef=meta["ef"], seed=meta["seed"],
                capacity=max(1, int(meta["size"])),
            )
            index._restore(meta, arrays)
        except (KeyError, TypeError, ValueError, InvalidInputError) as exc:
            raise CorruptIndexError(f"{path} is not a consistent saved HNSW index: {exc}") from None
        if dim is not None and index.dim != integer_argument("dim", dim):
            raise InvalidInputError(
                f"{path} holds a {index.dim}-d index but {dim}-d was expected; load the index "
                "built for this data or rebuild it."
            )
        return index

    def _restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Fill a fresh index from saved arrays after checking every invariant the kernels rely
        on (shapes, dtypes, link ranges, row offsets): a crafted file must not reach them."""
        size, rows = int(meta["size"]), int(meta["upper_rows"])
        expected = {
            "vectors": ((size, self.dim), np.float32),
            "ids": ((size,), np.int64),
            "levels": ((size,), np.int32),
            "live": ((size,), np.uint8),
            "links0": ((size, 1 + 2 * self.M), np.int32),
            "upper_offset": ((size,), np.int32),
            "upper_links": ((rows, 1 + self.M), np.int32),
        }
        for name, (shape, dtype) in expected.items():
            if name not in arrays:
                raise ValueError(f"array {name!r} is missing")
            array = arrays[name]
            if array.shape != shape or array.dtype != dtype:
                raise ValueError(f"array {name!r} is {array.dtype}{array.shape}, expected "
                                 f"{np.dtype(dtype)}{shape}")
        if not np.isfinite(arrays["vectors"]).all():
            raise ValueError("stored vectors contain NaN or infinity")
        levels, offsets = arrays["levels"], arrays["upper_offset"]
        if ((levels < 0) | (levels > _LEVEL_CAP)).any() or int(levels.sum()) != rows:
            raise ValueError("node levels are out of range or disagree with the upper rows")
        upper = levels > 0
        if upper.any() and ((offsets[upper] < 0) | (offsets[upper] + levels[upper] > rows)).any():
            raise ValueError("upper-layer row offsets point outside the stored rows")
        for links in (arrays["links0"], arrays["upper_links"]):
            counts = links[:, 0]
            if ((counts < 0) | (counts > links.shape[1] - 1)).any():
                raise ValueError("neighbour counts are out of range")
            in_use = np.arange(1, links.shape[1]) <= counts[:, None]
            neighbours = links[:, 1:][in_use]
            if ((neighbours < 0) | (neighbours >= size)).any():
                raise ValueError("links point outside the stored nodes")
        live = arrays["live"]
        if ((live != 0) & (live != 1)).any():
            raise ValueError("live flags must be 0 or 1")
        live_ids = arrays["ids"][live == 1]
        if np.unique(live_ids).shape[0] != live_ids.shape[0]:
            raise ValueError("a live id appears twice")
        entry, top = int(meta["entry"]), int(meta["top_level"])
        entry_valid = 0 <= entry < size and top == levels[entry]
        if (size == 0 and entry != -1) or (size > 0 and not entry_valid):
            raise ValueError("the entry point is inconsistent with the nodes")
        self._reserve(size, rows)
        for name in expected:
            getattr(self, f"_{name}")[: arrays[name].shape[0]] = arrays[name]
        self._size, self._upper_used = size, rows
        self._state[[kernels.ENTRY, kernels.TOP]] = (entry, top)
        self._slot_of = dict(zip(live_ids.tolist(), np.flatnonzero(live == 1).tolist()))
        self._next_auto_id = int(meta["next_auto_id"])
        self._rng.bit_generator.state = meta["rng_state"]
