"""Count-Min Sketch: approximate counts of a stream in fixed memory, with heavy hitters.

Cormode & Muthukrishnan, "An improved data stream summary: the count-min sketch and its
applications", Journal of Algorithms 55(1), 2005. Conservative update: Estan & Varghese, "New
directions in traffic measurement and accounting", SIGCOMM 2002.

The sketch is a ``depth x width`` table of counters with one hash function per row. Adding
``count`` to a key adds it to one counter per row; the estimate of a key is the smallest of its
``depth`` counters. Estimates never fall below the true count (while no counter saturates, see
below) and, with ``width = ceil(e / epsilon)`` and ``depth = ceil(ln(1 / delta))``, exceed it by
more than ``epsilon * N`` (N = the total of all counts) with probability at most ``delta`` per
key (the paper's Theorem 1).

Sizing conventions differ between libraries, so the same (epsilon, delta) gives different sketches:

- this module and Apache DataSketches (``suggest_num_buckets`` / ``suggest_num_hashes``):
  ``width = ceil(e / epsilon)``, ``depth = ceil(ln(1 / delta))``, the paper's constants;
  epsilon = 0.001, delta = 0.01 gives 2719 x 5.
- pyprobables ``CountMinSketch(confidence=1 - delta, error_rate=epsilon)``:
  ``width = ceil(2 / epsilon)``, ``depth = ceil(log2(1 / delta))`` (a Markov bound with factor 2
  per row); the same request gives 2000 x 7.

Keys are integers or strings, reduced once to 64-bit *fingerprints* (:func:`fingerprint`):

- an integer is its own fingerprint, taken modulo 2**64 (two's complement, so -1 and 2**64 - 1
  are the same key); integers outside [-2**63, 2**64) are rejected;
- a string's fingerprint is the 64-bit FNV-1a hash of its UTF-8 bytes (lone surrogates encoded
  as by Python's ``surrogatepass``): stable across runs, processes and platforms, unlike Python's
  salted ``hash``. Distinct strings share a fingerprint with probability about 2**-64 per pair.

Because fingerprints are integers, an array of fingerprints (``fingerprint(words)``) and the
words themselves update the same counters: hash a corpus once and feed the uint64 array.

Row hashes are pairwise independent, as the paper's analysis requires, and cost two multiplies
each: a fingerprint is split into 32-bit halves ``lo, hi`` and row ``i`` computes
``v = ((a_i * lo + c_i * hi + b_i) mod 2**64) >> 32`` with uniform 64-bit ``a_i, c_i, b_i``.
This vector multiply-shift family (Dietzfelbinger 1996; Thorup, "High speed hashing for integers
and strings", arXiv:1504.06804) is strongly universal onto 32 bits, over all 2**64
fingerprints. The column is ``(v * width) >> 32`` (Lemire's multiply-shift range reduction,
2019), which avoids a division and gives each column a probability within 2**-32 of
``1 / width``, so two keys collide in a row with probability at most ``1 / width + 2**-32``.
The coefficients come from ``np.random.default_rng(seed)`` and are saved with the sketch.
The textbook family ``((a x + b) mod (2**61 - 1)) mod width`` needs a 122-bit product (four
32-bit multiplies) per row and made the update loop 1.6-2x slower in our measurements.

Counters never wrap around. With ``overflow="widen"`` (default) the table moves to the next
wider unsigned type before an update could exceed its maximum; since no counter can exceed N,
checking N before each update suffices and the check costs O(1). Beyond 2**64 - 1 (or always,
with ``overflow="saturate"``) counters stick at the type's maximum and :attr:`saturated` becomes
True: estimates that involve a saturated counter may then be below the true count.

Heavy hitters (``track_top=k``) keep the k keys with the largest estimates in an
:class:`~llmds.indexed_heap.IndexedHeap` keyed by fingerprint, as in section 5.1 of the paper:
after an update, a key whose estimate exceeds the heap's minimum enters and evicts that minimum.
Batches are processed in chunks; the compiled update loop collects the distinct keys of the chunk
whose estimate passed the heap minimum at the start of the chunk, and only those (their final
estimates, best k first) are offered to the heap, so the Python work per chunk is bounded by k.
The sketch also keeps :attr:`untracked_limit`, an upper bound on the true count of every key that
is *not* tracked; :meth:`above` uses it to refuse an answer that could be incomplete. Keys are
ranked by estimate, so two keys whose counts differ by less than the estimation error can swap
places at the boundary; conservative update, with its smaller errors, swaps fewer.

A sketch is not safe to update from several threads at once.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from numba import njit

from llmds.checks import integer_argument
from llmds.errors import CorruptIndexError, InvalidInputError
from llmds.indexed_heap import IndexedHeap
from llmds.persist import load_arrays, save_arrays

Key = int | str

_KIND = "cms"
_FORMAT_VERSION = 1
# Two counter types only: every type is another compiled specialisation of each kernel
# (seconds of compile time each), and narrower counters would widen within a short stream.
_COUNTER_DTYPES = (np.dtype(np.uint32), np.dtype(np.uint64))
_MAX_COUNT = {dtype: np.uint64(np.iinfo(dtype).max) for dtype in _COUNTER_DTYPES}
_OVERFLOW_POLICIES = ("widen", "saturate")
_UINT64_MAX = (1 << 64) - 1
_INT64_MIN = -(1 << 63)
# The column reduction multiplies 32 bits of the row hash by the width in 64 bits.
_MAX_WIDTH = 1 << 31
# delta = e**-64 is far below any useful failure probability: a larger depth is almost always
# width and depth swapped.
_MAX_DEPTH = 64
# update() applies single keys in batches of this many (or sooner, before any read).
_PENDING_LIMIT = 4096
# Large batches of a tracking sketch are updated in chunks so that the heap minimum, which
# filters the candidates of the next chunk, stays current and the candidate set stays small.
_TRACKING_CHUNK = 1 << 17
_FIRST_TRACKING_CHUNK = 1 << 12
# Approximate bytes per tracked key (heap entry list, its ints, the two dict entries), measured
# with tracemalloc on CPython 3.11; the key objects themselves are shared with the caller.
_TRACKED_KEY_BYTES = 280

# ------------------------------------------------------------------ compiled kernels
#
# Constants are np.uint64 so that numba keeps every operation in unsigned 64-bit arithmetic
# (mixing uint64 with a signed int makes numba fall back to float64).

_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
# Fibonacci hashing constant (2**64 / golden ratio) to spread fingerprints over the slots of the
# candidate set, whatever the distribution of the keys (small consecutive integers included).
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_NO_CANDIDATES = np.uint64(_UINT64_MAX)
# An empty counts array means "every count is 1" to the update kernel.
_UNIT_COUNTS = np.empty(0, dtype=np.uint64)
_UTF8_ONE_BYTE_LIMIT = np.uint64(0x80)
_UTF8_TWO_BYTE_LIMIT = np.uint64(0x800)
_UTF8_THREE_BYTE_LIMIT = np.uint64(0x10000)
_UTF8_LEAD_2 = np.uint64(0xC0)
_UTF8_LEAD_3 = np.uint64(0xE0)
_UTF8_LEAD_4 = np.uint64(0xF0)
_UTF8_CONTINUATION = np.uint64(0x80)
_UTF8_PAYLOAD = np.uint64(0x3F)
_SHIFT6 = np.uint64(6)
_SHIFT12 = np.uint64(12)
_SHIFT18 = np.uint64(18)
# Keys are hashed a block at a time, one row after the other: that inner loop has no
# dependencies between keys, so LLVM vectorises it (about 1.7x faster than hashing key by key).
# 256 keys x depth indices (8 bytes each) stay in L1 next to the hot counters.
_HASH_BLOCK = 256


@njit(cache=True)
def _hash_block(fingerprints, start, stop, coefficients, width, columns):
    """``columns[row, j]`` = flat index (``row * width + column``) of ``fingerprints[start + j]``.

    Row hash: ``((a * lo + c * hi + b) mod 2**64) >> 32`` on the 32-bit halves of the
    fingerprint, strongly universal on 32 bits (vector multiply-shift), then the column
    ``(value * width) >> 32``. Flat indices let the update loops address the counters as one
    1-D array (2-D indexing in the per-key conservative loop measured about 15% slower).
    """
    width = np.uint64(width)
    for row in range(coefficients.shape[0]):
        row_offset = np.uint64(row) * width
        low_multiplier = coefficients[row, 0]
        high_multiplier = coefficients[row, 1]
        offset = coefficients[row, 2]
        row_columns = columns[row]
        for j in range(stop - start):
            fingerprint = fingerprints[start + j]
            low, high = fingerprint & _LOW32, fingerprint >> _SHIFT32
            value = (low_multiplier * low + high_multiplier * high + offset) >> _SHIFT32
            row_columns[j] = row_offset + ((value * width) >> _SHIFT32)


@njit(cache=True)
def _block_estimates(counters, columns, size, estimates):
    """``estimates[j]`` = the smallest of the counters at ``columns[:, j]`` (flat indices)."""
    first_columns = columns[0]
    for j in range(size):
        estimates[j] = counters[first_columns[j]]
    for row in range(1, columns.shape[0]):
        row_columns = columns[row]
        for j in range(size):
            estimates[j] = min(estimates[j], np.uint64(counters[row_columns[j]]))


@njit(cache=True)
def _insert_candidate(slot_fingerprints, slot_positions, fingerprint, position):
    """Add a fingerprint to the open-addressing set; True if it was not there yet.

    ``slot_positions`` holds ``position + 1`` of the key's first occurrence (0 = empty slot), so
    the caller can find the original key of each candidate; the fingerprint is stored beside it
    so that probing never reads the (large) input array at random.
    """
    mask = np.uint64(slot_positions.shape[0] - 1)
    slot = ((fingerprint * _GOLDEN) >> _SHIFT32) & mask
    while slot_positions[slot] != 0:
        if slot_fingerprints[slot] == fingerprint:
            return False
        slot = (slot + np.uint64(1)) & mask
    slot_fingerprints[slot] = fingerprint
    slot_positions[slot] = position + 1
    return True


@njit(cache=True)
def _grown_candidates(slot_fingerprints, slot_positions):
    grown_fingerprints = np.zeros(slot_positions.shape[0] * 2, dtype=np.uint64)
    grown_positions = np.zeros(slot_positions.shape[0] * 2, dtype=np.int64)
    for slot in range(slot_positions.shape[0]):
        if slot_positions[slot] != 0:
            position = slot_positions[slot] - 1
            _insert_candidate(grown_fingerprints, grown_positions, slot_fingerprints[slot], position)
    return grown_fingerprints, grown_positions


@njit(cache=True)
def _collect_candidates(fingerprints, start, offsets, slot_fingerprints, slot_positions, distinct):
    """Add the keys at ``start + offsets[i]`` to the candidate set, in order.

    Stops early when the set reaches half full so that the caller can grow it: the caller
    reassigns the set arrays, which numba handles much faster outside this hot loop.
    Returns the new number of distinct candidates and how many offsets were processed.
    """
    for i in range(offsets.shape[0]):
        position = start + offsets[i]
        if _insert_candidate(slot_fingerprints, slot_positions, fingerprints[position], position):
            distinct += 1
            if 2 * distinct > slot_positions.shape[0]:
                return distinct, i + 1
    return distinct, offsets.shape[0]


@njit(cache=True)
def _update_kernel(table, coefficients, fingerprints, counts, conservative, max_count, threshold):
    """Add ``counts`` (all ones when empty) for ``fingerprints``; the sketch's hot loop.

    Plain update adds the count to the key's counter in every row. Increments commute, so a
    block of keys is applied row by row (each row's counters stay in cache). Conservative update
    (Estan & Varghese) raises each of the key's counters only as far as the new estimate
    ``min + count`` needs, which keeps every estimate an upper bound while adding less collision
    noise; it depends on the order, so keys are applied one after the other. Counters stick at
    ``max_count`` instead of wrapping (sticking is order independent too).

    Returns ``(saturated, positions)``: whether a counter hit ``max_count``, and the sorted
    positions of the first occurrence of each distinct fingerprint whose estimate exceeded
    ``threshold`` right after its update (conservative) or at the end of its block (plain); pass
    2**64 - 1 to collect none.
    """
    depth = table.shape[0]
    columns = np.empty((depth, _HASH_BLOCK), dtype=np.uint64)
    counters = table.reshape(-1)
    estimates = np.empty(_HASH_BLOCK, dtype=np.uint64)
    values = np.empty(depth, dtype=np.uint64)
    passing_offsets = np.empty(_HASH_BLOCK, dtype=np.int64)
    unit_counts = counts.shape[0] == 0
    collect = threshold < max_count
    saturated = False
    slot_fingerprints = np.zeros(64, dtype=np.uint64)
    slot_positions = np.zeros(64, dtype=np.int64)
    distinct_candidates = 0
    one = np.uint64(1)
    for start in range(0, fingerprints.shape[0], _HASH_BLOCK):
        stop = min(start + _HASH_BLOCK, fingerprints.shape[0])
        size = stop - start
        _hash_block(fingerprints, start, stop, coefficients, table.shape[1], columns)
        if conservative:
            for j in range(size):
                count = one if unit_counts else np.uint64(counts[start + j])
                current = max_count
                for row in range(depth):
                    values[row] = counters[columns[row, j]]
                    current = min(current, values[row])
                if count > max_count - current:
                    target = max_count
                    saturated = True
                else:
                    target = current + count
                # Unconditional, branch-free stores: the compare-and-skip version mispredicts.
                for row in range(depth):
                    counters[columns[row, j]] = max(values[row], target)
                estimates[j] = target
        else:
            for row in range(depth):
                row_columns = columns[row]
                for j in range(size):
                    count = one if unit_counts else np.uint64(counts[start + j])
                    value = np.uint64(counters[row_columns[j]])
                    if count > max_count - value:
                        value = max_count
                        saturated = True
                    else:
                        value += count
                    counters[row_columns[j]] = value
            if collect:
                _block_estimates(counters, columns, size, estimates)
        if not collect:
            continue
        # Branch-free compaction of the keys above the threshold first: a branch on the
        # estimate mispredicts (on a Zipf stream about 40% pass, in no pattern) and measured
        # three times slower than compacting and then inserting.
        passing = 0
        for j in range(size):
            passing_offsets[passing] = j
            passing += 1 if estimates[j] > threshold else 0
        processed = 0
        while processed < passing:
            distinct_candidates, newly_processed = _collect_candidates(
                fingerprints,
                start,
                passing_offsets[processed:passing],
                slot_fingerprints,
                slot_positions,
                distinct_candidates,
            )
            processed += newly_processed
            if 2 * distinct_candidates > slot_positions.shape[0]:
                slot_fingerprints, slot_positions = _grown_candidates(
                    slot_fingerprints, slot_positions
                )
    positions = np.sort(slot_positions[slot_positions != 0]) - 1
    return saturated, positions


@njit(cache=True)
def _query_kernel(table, coefficients, fingerprints, estimates):
    columns = np.empty((table.shape[0], _HASH_BLOCK), dtype=np.uint64)
    counters = table.reshape(-1)
    for start in range(0, fingerprints.shape[0], _HASH_BLOCK):
        stop = min(start + _HASH_BLOCK, fingerprints.shape[0])
        _hash_block(fingerprints, start, stop, coefficients, table.shape[1], columns)
        _block_estimates(counters, columns, stop - start, estimates[start:stop])


@njit(cache=True)
def _add_tables_kernel(table, other, max_count):
    """``table += other`` counter by counter, sticking at ``max_count``; True if any stuck."""
    saturated = False
    for row in range(table.shape[0]):
        for column in range(table.shape[1]):
            value = np.uint64(table[row, column])
            added = np.uint64(other[row, column])
            if added > max_count - value:
                table[row, column] = max_count
                saturated = True
            else:
                table[row, column] = value + added
    return saturated


@njit(cache=True)
def _fnv1a_step(state, byte):
    return (state ^ byte) * _FNV_PRIME


@njit(cache=True)
def _fnv1a_codepoint(state, codepoint):
    """Feed the UTF-8 bytes of one code point (surrogates as by ``surrogatepass``) to FNV-1a.

    Encoding here avoids building a bytes object per string in Python, while the result equals
    FNV-1a over ``s.encode("utf-8", "surrogatepass")``.
    """
    if codepoint < _UTF8_ONE_BYTE_LIMIT:
        return _fnv1a_step(state, codepoint)
    if codepoint < _UTF8_TWO_BYTE_LIMIT:
        continuation_bytes = 1
        state = _fnv1a_step(state, _UTF8_LEAD_2 | (codepoint >> _SHIFT6))
    elif codepoint < _UTF8_THREE_BYTE_LIMIT:
        continuation_bytes = 2
        state = _fnv1a_step(state, _UTF8_LEAD_3 | (codepoint >> _SHIFT12))
    else:
        continuation_bytes = 3
        state = _fnv1a_step(state, _UTF8_LEAD_4 | (codepoint >> _SHIFT18))
    for remaining in range(continuation_bytes - 1, -1, -1):
        payload = (codepoint >> np.uint64(6 * remaining)) & _UTF8_PAYLOAD
        state = _fnv1a_step(state, _UTF8_CONTINUATION | payload)
    return state


@njit(cache=True)
def _fnv1a_utf8_kernel(codepoints, starts, lengths, out):
    """64-bit FNV-1a of the UTF-8 encoding of each string, given as UTF-32 code points."""
    for index in range(starts.shape[0]):
        state = _FNV_OFFSET
        for offset in range(starts[index], starts[index] + lengths[index]):
            state = _fnv1a_codepoint(state, np.uint64(codepoints[offset]))
        out[index] = state


# ------------------------------------------------------------------ fingerprints


def _key_type_error(key: Any, where: str) -> InvalidInputError:
    return InvalidInputError(
        f"{where}: keys must be int or str, got {type(key).__name__} {key!r}; convert the key "
        "with int(...) or str(...)."
    )


def _int_fingerprint(key: int) -> int:
    if not _INT64_MIN <= key <= _UINT64_MAX:
        raise InvalidInputError(
            f"integer key {key} does not fit in 64 bits (allowed: -2**63 .. 2**64 - 1); "
            "pass it as a string, str(key), to have it hashed."
        )
    return key & _UINT64_MAX


def _string_fingerprints(strings: Sequence[str], joined: str) -> np.ndarray:
    """Fingerprints of ``strings``, whose concatenation ``joined`` the caller has built."""
    codepoints = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    starts = np.cumsum(lengths) - lengths
    out = np.empty(len(strings), dtype=np.uint64)
    _fnv1a_utf8_kernel(codepoints, starts, lengths, out)
    return out


def _unicode_array_fingerprints(keys: np.ndarray) -> np.ndarray:
    """Fingerprints of a numpy ``U`` array, read in place as fixed-width UTF-32 rows."""
    keys = np.ascontiguousarray(keys, dtype=keys.dtype.newbyteorder("="))
    row_chars = keys.dtype.itemsize // 4
    codepoints = keys.view(np.uint32).reshape(-1)
    # Read-only like the np.frombuffer view of the list path: one compiled specialisation.
    codepoints.flags.writeable = False
    starts = np.arange(keys.shape[0], dtype=np.int64) * row_chars
    lengths = np.char.str_len(keys).astype(np.int64)
    out = np.empty(keys.shape[0], dtype=np.uint64)
    _fnv1a_utf8_kernel(codepoints, starts, lengths, out)
    return out


def _integer_array_fingerprints(keys: np.ndarray) -> np.ndarray:
    """Integers modulo 2**64 as a contiguous uint64 array (no copy for int64/uint64 input)."""
    if keys.dtype.kind == "i":
        return np.ascontiguousarray(keys, dtype=np.int64).view(np.uint64)
    return np.ascontiguousarray(keys, dtype=np.uint64)


def _mixed_list_fingerprints(keys: list) -> np.ndarray:
    """Slow path for a list that mixes strings and integers (or holds huge ints)."""
    out = np.empty(len(keys), dtype=np.uint64)
    string_positions = []
    for position, key in enumerate(keys):
        if isinstance(key, str):
            string_positions.append(position)
        elif isinstance(key, numbers.Integral) and not isinstance(key, bool | np.bool_):
            out[position] = _int_fingerprint(int(key))
        else:
            raise _key_type_error(key, f"key at position {position}")
    if string_positions:
        strings = [keys[position] for position in string_positions]
        out[string_positions] = _string_fingerprints(strings, "".join(strings))
    return out


def _fingerprints_and_source(keys: Any) -> tuple[np.ndarray, Sequence]:
    """Fingerprints of ``keys`` plus an indexable of the original keys (for heavy-hitter labels)."""
    if isinstance(keys, str):
        return _string_fingerprints([keys], keys), [keys]
    if isinstance(keys, numbers.Integral) and not isinstance(keys, bool | np.bool_):
        return np.array([_int_fingerprint(int(keys))], dtype=np.uint64), [int(keys)]
    if isinstance(keys, np.ndarray):
        if keys.ndim != 1:
            raise InvalidInputError(
                f"keys must be a 1-D array, got shape {keys.shape}; flatten it with keys.ravel()."
            )
        kind = keys.dtype.kind
        if kind in "iu":
            return _integer_array_fingerprints(keys), keys
        if kind == "U":
            return _unicode_array_fingerprints(keys), keys
        if kind not in "OT":
            raise InvalidInputError(
                f"keys must be integers or strings, got an array of dtype {keys.dtype}; convert "
                "it with keys.astype(np.int64) or keys.astype(str)."
            )
        keys = keys.tolist()
    elif isinstance(keys, bytes | bytearray) or not isinstance(keys, Iterable):
        raise _key_type_error(keys, "keys")
    elif not isinstance(keys, list):
        keys = list(keys)
    try:
        joined = "".join(keys)
    except TypeError:
        pass  # not all strings
    else:
        return _string_fingerprints(keys, joined), keys
    try:
        as_array = np.asarray(keys)
    except (ValueError, TypeError, OverflowError):
        as_array = None  # ragged or odd elements: the per-key path names the bad one
    if as_array is not None and as_array.dtype.kind in "iu" and as_array.ndim == 1:
        return _integer_array_fingerprints(as_array), keys
    return _mixed_list_fingerprints(keys), keys


def fingerprint(keys: Any) -> np.ndarray:
    """64-bit fingerprints (uint64 array) of integer or string keys, as the sketch hashes them.

    ``keys`` is one key (``int`` or ``str``), a sequence of keys, or a 1-D numpy array of
    integers or strings. Integers map to themselves modulo 2**64; strings to the 64-bit FNV-1a
    hash of their UTF-8 bytes, stable across runs and machines. Feeding the result to
    :meth:`CountMinSketch.update_batch` counts exactly what feeding the keys would, so a corpus
    can be hashed once and counted many times.
    """
    return _fingerprints_and_source(keys)[0]


def _single_key(key: Any, method: str) -> Key:
    """One key validated for the per-item methods, as a plain ``str`` or ``int``."""
    if type(key) is str:
        return key
    if isinstance(key, str):
        return str(key)  # a plain str label, not numpy's str_ subclass
    if isinstance(key, numbers.Integral) and not isinstance(key, bool | np.bool_):
        key = int(key)
        _int_fingerprint(key)  # range check now, not when the buffer is applied
        return key
    raise InvalidInputError(
        f"{method}() takes one int or str key, got {type(key).__name__}; use {method}_batch(keys) "
        "for a sequence or array of keys."
    )


def _label(source: Sequence, position: int) -> Key:
    """The original key at ``position`` as a plain Python int or str."""
    key = source[position]
    return key.item() if isinstance(key, np.generic) else key


# ------------------------------------------------------------------ argument checks


def _open_unit_interval(name: str, value: Any, meaning: str) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise InvalidInputError(f"{name} must be a number in (0, 1), got {value!r}.")
    number = float(value)
    if not 0.0 < number < 1.0:
        raise InvalidInputError(
            f"{name} must lie strictly between 0 and 1 ({meaning}), got {value!r}."
        )
    return number


def _checked_counts(counts: Any, length: int) -> tuple[np.ndarray, int]:
    """``counts`` as uint64 (empty for "all ones") and their exact sum."""
    if counts is None:
        return _UNIT_COUNTS, length
    array = np.asarray(counts)
    if array.shape != (length,):
        raise InvalidInputError(
            f"counts must have one entry per key: expected shape ({length},), got {array.shape}."
        )
    if length == 0:
        return _UNIT_COUNTS, 0
    if array.dtype.kind not in "iu":
        raise InvalidInputError(
            f"counts must be integers, got dtype {array.dtype}; round them and convert with "
            "np.asarray(counts).astype(np.int64)."
        )
    if array.dtype.kind == "i" and int(array.min()) < 0:
        raise InvalidInputError(
            "negative counts are not supported: a count-min sketch only counts up (the paper's "
            "cash-register model) and its estimates stop being upper bounds otherwise; drop or "
            f"correct the negative entries (first at position {int(np.argmax(array < 0))})."
        )
    array = array.astype(np.uint64, copy=False)
    largest = int(array.max())
    # A uint64 sum could wrap; fall back to Python integers only when it might.
    total = int(array.sum()) if largest <= _UINT64_MAX // length else sum(array.tolist())
    return array, total


def _checked_count(count: Any) -> int:
    if type(count) is int and 0 <= count <= _UINT64_MAX:
        return count
    if isinstance(count, bool | np.bool_) or not isinstance(count, numbers.Integral):
        raise InvalidInputError(f"count must be a non-negative integer, got {count!r}.")
    count = int(count)
    if count < 0:
        raise InvalidInputError(
            f"count must be >= 0, got {count}: a count-min sketch only counts up (the paper's "
            "cash-register model); negative updates would break its upper-bound guarantee."
        )
    if count > _UINT64_MAX:
        raise InvalidInputError(f"count {count} exceeds 2**64 - 1; split it into several updates.")
    return count


# ------------------------------------------------------------------ the sketch


class CountMinSketch:
    """Count-Min Sketch (Cormode & Muthukrishnan 2005), conservative update, heavy hitters.

    Parameters
    ----------
    width:
        Counters per row (1 .. 2**31). The expected over-count per row is N / width; the
        paper's bound ``epsilon = e / width`` follows by Markov's inequality.
    depth:
        Rows, each with its own hash function (1 .. 64). An estimate exceeds the true count by
        more than ``epsilon * N`` with probability at most ``delta = e**-depth``.
    seed:
        Seeds ``np.random.default_rng`` for the row-hash coefficients (default 0). Only sketches
        with equal seeds (and shapes) can be merged.
    conservative:
        Conservative update (Estan & Varghese, 2002): raise a key's counters only up to its new
        estimate. Estimates stay upper bounds and get markedly closer on skewed streams, but
        updates are order dependent, so merged conservative sketches only bound the counts
        (default False).
    dtype:
        Counter type: ``np.uint32`` (default, 4 bytes per counter) or ``np.uint64``.
    overflow:
        ``"widen"`` (default): switch to a wider counter type before the total count could
        exceed the current one's maximum (exact; memory grows). ``"saturate"``: keep the type
        and let counters stick at its maximum (memory fixed; :attr:`saturated` reports it).
    track_top:
        Number of heavy-hitter candidates kept for :meth:`heavy_hitters` and :meth:`above`
        (default 0: no tracking, the fastest updates).
    """

    def __init__(
        self,
        width: int,
        depth: int,
        *,
        seed: int = 0,
        conservative: bool = False,
        dtype: Any = np.uint32,
        overflow: str = "widen",
        track_top: int = 0,
    ) -> None:
        self._width = integer_argument("width", width, 1, _MAX_WIDTH)
        self._depth = integer_argument("depth", depth, 1)
        if self._depth > _MAX_DEPTH:
            raise InvalidInputError(
                f"depth must be between 1 and {_MAX_DEPTH}, got {self._depth}: depth is the number "
                "of hash rows (delta = e**-depth); did you swap width and depth?"
            )
        self._seed = integer_argument("seed", seed, 0)
        if not isinstance(conservative, bool | np.bool_):
            raise InvalidInputError(f"conservative must be True or False, got {conservative!r}.")
        self._conservative = bool(conservative)
        try:
            counter_dtype = np.dtype(dtype)
        except TypeError:
            counter_dtype = None
        if counter_dtype not in _COUNTER_DTYPES:
            raise InvalidInputError(
                f"dtype must be np.uint32 or np.uint64 (unsigned counters), got {dtype!r}."
            )
        if overflow not in _OVERFLOW_POLICIES:
            raise InvalidInputError(
                f"overflow must be 'widen' (exact, memory grows) or 'saturate' (fixed memory, "
                f"counters stick at the maximum), got {overflow!r}."
            )
        self._overflow = overflow
        self._track_top = integer_argument("track_top", track_top, 0)
        rng = np.random.default_rng(self._seed)
        # Columns: multiplier of the low half, multiplier of the high half, offset; uniform 64-bit.
        self._coefficients = rng.integers(
            0, _UINT64_MAX, size=(self._depth, 3), dtype=np.uint64, endpoint=True
        )
        self._table = np.zeros((self._depth, self._width), dtype=counter_dtype)
        self._total = 0
        self._saturated = False
        # Keys and counts of update() calls not yet applied (see update()).
        self._pending_keys: list[Key] = []
        self._pending_counts: list[int] = []
        # Min-heap of tracked fingerprints by estimate; priorities may lag the table (estimates
        # only grow), so they are lower bounds until refreshed.
        self._heap = IndexedHeap("min")
        self._labels: dict[int, Key] = {}
        self._priorities_current = True
        self._untracked_limit = 0

    @classmethod
    def from_error(cls, epsilon: float, delta: float, **kwargs: Any) -> CountMinSketch:
        """Sketch sized for error ``epsilon * N`` with failure probability ``delta`` per query.

        ``width = ceil(e / epsilon)`` and ``depth = ceil(ln(1 / delta))`` (Cormode &
        Muthukrishnan, Theorem 1; DataSketches uses the same, pyprobables uses
        ``ceil(2 / epsilon)`` and ``ceil(log2(1 / delta))``). Other keyword arguments go to the
        constructor.
        """
        epsilon = _open_unit_interval("epsilon", epsilon, "the error as a share of the total count")
        delta = _open_unit_interval("delta", delta, "the probability of exceeding the error")
        width = math.ceil(math.e / epsilon)
        if width > _MAX_WIDTH:
            raise InvalidInputError(
                f"epsilon={epsilon} needs {width} counters per row, more than {_MAX_WIDTH}; "
                "choose a larger epsilon."
            )
        return cls(width, math.ceil(math.log(1.0 / delta)), **kwargs)

    # -------------------------------------------------------------- properties

    width = property(lambda self: self._width, doc="Counters per row.")
    depth = property(lambda self: self._depth, doc="Rows (hash functions).")
    seed = property(lambda self: self._seed, doc="Seed of the row-hash coefficients.")
    conservative = property(lambda self: self._conservative, doc="Conservative update or not.")
    overflow = property(lambda self: self._overflow, doc="'widen' or 'saturate'.")
    track_top = property(lambda self: self._track_top, doc="Heavy-hitter candidates (0: none).")

    @property
    def total(self) -> int:
        """N: the sum of all counts added (exact, any size)."""
        self._apply_pending()
        return self._total

    @property
    def saturated(self) -> bool:
        """True once a counter stuck at the counter type's maximum (estimates may then be low)."""
        self._apply_pending()
        return self._saturated

    @property
    def untracked_limit(self) -> int:
        """Upper bound on the true count of any key not among the heavy-hitter candidates."""
        self._apply_pending()
        return self._untracked_limit

    @property
    def dtype(self) -> np.dtype:
        """Current counter type (may have widened since construction)."""
        self._apply_pending()
        return self._table.dtype

    @property
    def epsilon(self) -> float:
        """Additive error per unit of N: ``e / width``."""
        return math.e / self._width

    @property
    def delta(self) -> float:
        """Probability that one estimate exceeds the error bound: ``e**-depth``."""
        return math.exp(-self._depth)

    @property
    def counters(self) -> np.ndarray:
        """Read-only view of the ``depth x width`` counter table."""
        self._apply_pending()
        view = self._table.view()
        view.flags.writeable = False
        return view

    def error_bound(self) -> tuple[float, float]:
        """``(epsilon * N, delta)``: an estimate exceeds the true count by more than the first
        with probability at most the second (for the current total N)."""
        return self.epsilon * self.total, self.delta

    def memory_bytes(self) -> int:
        """Bytes held: counters and hash coefficients, plus an estimate for tracked keys."""
        self._apply_pending()
        return self._table.nbytes + self._coefficients.nbytes + len(self._heap) * _TRACKED_KEY_BYTES

    # -------------------------------------------------------------- updates

    def update(self, key: Key, count: int = 1) -> None:
        """Add ``count`` (a non-negative integer, default 1) to ``key`` (int or str).

        Keys are validated at once but applied in buffered batches of up to 4096 (one compiled
        call instead of one per key); every read (query, heavy hitters, total, save, merge, ...)
        applies the buffer first, so results are exactly those of applying each update at once.
        """
        # The common cases (a plain str or small int key, a count of 1) skip the helper calls:
        # this method is the whole per-item cost.
        if type(key) is not str and not (type(key) is int and _INT64_MIN <= key <= _UINT64_MAX):
            key = _single_key(key, "update")
        if type(count) is not int or count != 1:
            count = _checked_count(count)
        self._pending_keys.append(key)
        self._pending_counts.append(count)
        if len(self._pending_keys) >= _PENDING_LIMIT:
            self._apply_pending()

    def _apply_pending(self) -> None:
        """Apply the keys buffered by :meth:`update`, in their order."""
        if not self._pending_keys:
            return
        keys, counts = self._pending_keys, self._pending_counts
        self._pending_keys, self._pending_counts = [], []
        fingerprints, source = _fingerprints_and_source(keys)
        counts_array = np.array(counts, dtype=np.uint64)
        self._update_fingerprints(fingerprints, counts_array, sum(counts), source)

    def update_batch(
        self, keys: np.ndarray | Sequence[Key], counts: np.ndarray | Sequence[int] | None = None
    ) -> None:
        """Add ``counts`` (default: 1 each) to ``keys``, in order, in one compiled loop.

        ``keys`` is a 1-D integer or string numpy array (the fastest inputs; uint64
        fingerprints from :func:`fingerprint` included) or a sequence of ints/strs. ``counts``
        are non-negative integers, one per key. The result equals calling :meth:`update` for
        each key in turn, for plain and conservative update alike.
        """
        fingerprints, source = _fingerprints_and_source(keys)
        counts_array, added = _checked_counts(counts, fingerprints.shape[0])
        self._apply_pending()
        self._update_fingerprints(fingerprints, counts_array, added, source)

    def _update_fingerprints(
        self, fingerprints: np.ndarray, counts: np.ndarray, added: int, source: Sequence
    ) -> None:
        """Apply ``counts`` (empty: all ones) summing to ``added``; ``source`` holds the keys."""
        if fingerprints.shape[0] == 0:
            return
        self._make_room_for(added)
        max_count = _MAX_COUNT[self._table.dtype]
        if not self._track_top:
            saturated, _ = _update_kernel(
                self._table,
                self._coefficients,
                fingerprints,
                counts,
                self._conservative,
                max_count,
                _NO_CANDIDATES,
            )
            self._saturated |= saturated
        else:
            start = 0
            while start < fingerprints.shape[0]:
                # Chunks grow with the stream: early on the heap minimum is low and nearly every
                # key passes it, so short chunks keep the candidate sets small until it rises.
                chunk = min(_TRACKING_CHUNK, max(_FIRST_TRACKING_CHUNK, self._total + start))
                stop = start + chunk
                threshold = self._admission_threshold()
                saturated, positions = _update_kernel(
                    self._table,
                    self._coefficients,
                    fingerprints[start:stop],
                    counts[start:stop],
                    self._conservative,
                    max_count,
                    np.uint64(threshold),
                )
                self._saturated |= saturated
                self._priorities_current = False
                # Keys left out had estimates <= threshold after each of their updates.
                self._untracked_limit = max(self._untracked_limit, threshold)
                first_positions = start + positions
                self._offer(
                    fingerprints[first_positions],
                    lambda index: _label(source, first_positions[index]),
                )
                start = stop
        self._total += added

    def _make_room_for(self, added: int) -> None:
        """Widen the counters if the total could exceed their type (no counter exceeds N)."""
        needed = self._total + added
        if self._overflow != "widen" or needed <= _MAX_COUNT[self._table.dtype]:
            return
        wider = next(
            (dtype for dtype in _COUNTER_DTYPES if _MAX_COUNT[dtype] >= needed), _COUNTER_DTYPES[-1]
        )
        if wider.itemsize > self._table.dtype.itemsize:
            self._table = self._table.astype(wider)

    # -------------------------------------------------------------- heavy hitters

    def _admission_threshold(self) -> int:
        """Estimate a key must beat to be worth offering: the heap minimum once it is full."""
        if len(self._heap) < self._track_top:
            return 0
        return self._heap.peek()[1]

    def _refresh_priorities(self) -> None:
        """Re-read every tracked key's estimate (one compiled query for all of them)."""
        if self._priorities_current or not self._heap:
            return
        tracked = np.fromiter(self._heap.keys(), dtype=np.uint64, count=len(self._heap))
        for key_fingerprint, estimate in zip(tracked.tolist(), self._estimates(tracked).tolist()):
            self._heap.update(key_fingerprint, estimate)
        self._priorities_current = True

    def _offer(self, candidates: np.ndarray, label_of: Callable[[int], Key]) -> None:
        """Let distinct candidate fingerprints into the top-k heap, best estimate first.

        Only the best ``track_top`` candidates can end up in the top ``track_top``, so at most
        that many reach the Python loop; it stops at the first newcomer that does not beat the
        (refreshed) minimum, as every later one has a smaller estimate. Tracked keys are left
        alone: their priorities only lag (estimates never shrink) and are refreshed all at once
        before a newcomer is compared with the minimum.
        """
        if candidates.shape[0] == 0:
            return
        estimates = self._estimates(candidates)
        capacity = self._track_top
        if candidates.shape[0] > capacity:
            cut = candidates.shape[0] - capacity
            kept = np.argpartition(estimates, cut)
            self._untracked_limit = max(self._untracked_limit, int(estimates[kept[:cut]].max()))
            order = kept[cut:]
        else:
            order = np.arange(candidates.shape[0])
        order = order[np.argsort(estimates[order], kind="stable")[::-1]]
        heap, labels = self._heap, self._labels
        for index, key_fingerprint, estimate in zip(
            order.tolist(), candidates[order].tolist(), estimates[order].tolist()
        ):
            if key_fingerprint in heap:
                continue  # its priority is refreshed, with all others, when it matters
            if len(heap) >= capacity:
                self._refresh_priorities()
                if estimate <= heap.peek()[1]:
                    self._untracked_limit = max(self._untracked_limit, estimate)
                    break
                evicted, evicted_estimate = heap.pop()
                del labels[evicted]
                self._untracked_limit = max(self._untracked_limit, evicted_estimate)
            heap.push(key_fingerprint, estimate)
            labels[key_fingerprint] = label_of(index)

    def _require_tracking(self, method: str) -> None:
        if not self._track_top:
            raise InvalidInputError(
                f"{method}() needs heavy-hitter tracking, which this sketch does not do; "
                "construct it with track_top=k (k >= the number of keys you want)."
            )

    def _ranked(self) -> list[tuple[Key, int]]:
        self._apply_pending()
        self._refresh_priorities()
        # Ties broken by fingerprint so that the order is reproducible.
        ranked = sorted(self._heap.items(), key=lambda item: (-item[1], item[0]))
        return [(self._labels[key_fingerprint], estimate) for key_fingerprint, estimate in ranked]

    def heavy_hitters(self, k: int) -> list[tuple[Key, int]]:
        """The ``k`` tracked keys with the largest estimates, as ``(key, estimate)``, largest first.

        Needs ``1 <= k <= track_top``. Keys come back as given (str, or int for integer keys and
        fingerprints).
        """
        self._require_tracking("heavy_hitters")
        k = integer_argument("k", k, 1)
        if k > self._track_top:
            raise InvalidInputError(
                f"k={k} exceeds track_top={self._track_top}, the number of candidates this sketch "
                f"keeps; construct it with track_top >= {k}."
            )
        return self._ranked()[:k]

    def above(self, phi: float) -> list[tuple[Key, int]]:
        """Tracked keys with estimate >= ``phi * N``, largest first (the paper's phi-heavy hitters).

        Every key whose true count is >= ``phi * N`` is returned; a key with a true count below
        ``(phi - epsilon) * N`` is returned with probability at most ``delta``. When the
        candidates kept cannot guarantee the first promise (``phi * N`` is not above
        :attr:`untracked_limit`) this raises instead of answering incompletely.
        """
        self._require_tracking("above")
        is_number = isinstance(phi, numbers.Real) and not isinstance(phi, bool | np.bool_)
        if not is_number or not 0.0 < phi <= 1.0:
            raise InvalidInputError(f"phi must be a number in (0, 1], got {phi!r}.")
        self._apply_pending()
        threshold = phi * self._total
        if self._total and threshold <= self._untracked_limit:
            raise InvalidInputError(
                f"phi={phi} is too small for this sketch: an untracked key may have a count up to "
                f"{self._untracked_limit} >= phi * N = {threshold:g}, so the answer could miss "
                "keys; use a larger phi or construct the sketch with track_top > "
                f"{self._track_top}."
            )
        return [(key, estimate) for key, estimate in self._ranked() if estimate >= threshold]

    # -------------------------------------------------------------- queries

    def _estimates(self, fingerprints: np.ndarray) -> np.ndarray:
        estimates = np.empty(fingerprints.shape[0], dtype=np.uint64)
        _query_kernel(self._table, self._coefficients, fingerprints, estimates)
        return estimates

    def query(self, key: Key) -> int:
        """Estimated count of ``key``: >= its true count, and <= true count + epsilon * N with
        probability >= 1 - delta."""
        return int(self.query_batch(_single_key(key, "query"))[0])

    def query_batch(self, keys: np.ndarray | Sequence[Key]) -> np.ndarray:
        """Estimated counts (uint64 array) of ``keys`` (same inputs as :meth:`update_batch`)."""
        fingerprints = fingerprint(keys)
        self._apply_pending()
        return self._estimates(fingerprints)

    # -------------------------------------------------------------- merge

    def merge(self, other: CountMinSketch) -> None:
        """Add the counts of ``other`` into this sketch (in place).

        Both need equal width, depth, seed (hence equal hash functions) and update mode. For
        plain update the result equals the sketch of the concatenated streams. Counters follow
        this sketch's overflow policy; heavy-hitter candidates of both are re-ranked.
        """
        if not isinstance(other, CountMinSketch):
            raise InvalidInputError(
                f"can only merge another CountMinSketch, got {type(other).__name__}."
            )
        if (self._width, self._depth) != (other._width, other._depth):
            raise InvalidInputError(
                f"cannot merge sketches of different shapes ({self._depth} x {self._width} and "
                f"{other._depth} x {other._width}): build both with the same width and depth "
                "(or the same epsilon and delta)."
            )
        if self._seed != other._seed or not np.array_equal(self._coefficients, other._coefficients):
            raise InvalidInputError(
                f"cannot merge sketches with different hash functions (seeds {self._seed} and "
                f"{other._seed}): their counters refer to different columns; build both with the "
                "same seed (or load both from files saved by the same sketch family)."
            )
        if self._conservative != other._conservative:
            raise InvalidInputError(
                "cannot merge a conservative sketch with a plain one: build both with the same "
                "conservative setting."
            )
        self._apply_pending()
        other._apply_pending()
        self._make_room_for(other._total)
        max_count = _MAX_COUNT[self._table.dtype]
        stuck = _add_tables_kernel(self._table, other._table, max_count)
        self._saturated = self._saturated or stuck or other._saturated
        self._total += other._total
        self._priorities_current = False
        if self._track_top:
            # A key untracked on both sides can have counted up to both limits together; a sketch
            # that tracked nothing bounds its keys only by its total.
            other_limit = other._untracked_limit if other._track_top else other._total
            self._untracked_limit += other_limit
            other_tracked = list(other._labels.items())
            candidates = np.array([fp for fp, _ in other_tracked], dtype=np.uint64)
            self._offer(candidates, lambda index: other_tracked[index][1])

    # -------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike) -> None:
        """Save to the folder ``path`` (.npy arrays + JSON manifest with checksums, no pickle)."""
        self._apply_pending()
        tracked = list(self._labels.items())
        meta = {
            "width": self._width,
            "depth": self._depth,
            "seed": self._seed,
            "conservative": self._conservative,
            "overflow": self._overflow,
            "track_top": self._track_top,
            "total": self._total,
            "saturated": self._saturated,
            "untracked_limit": self._untracked_limit,
            "tracked_keys": [label for _, label in tracked],
            "fingerprint": "fnv1a64-utf8",
        }
        arrays = {
            "counters": self._table,
            "hash_coefficients": self._coefficients,
            "tracked_fingerprints": np.array([fp for fp, _ in tracked], dtype=np.uint64),
        }
        save_arrays(path, _KIND, _FORMAT_VERSION, meta, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CountMinSketch:
        """Load a sketch saved by :meth:`save`; :class:`CorruptIndexError` if anything is off."""
        meta, arrays = load_arrays(path, _KIND, _FORMAT_VERSION)
        try:
            sketch = cls(
                meta["width"],
                meta["depth"],
                seed=meta["seed"],
                conservative=meta["conservative"],
                dtype=arrays["counters"].dtype,
                overflow=meta["overflow"],
                track_top=meta["track_top"],
            )
            total, untracked_limit = meta["total"], meta["untracked_limit"]
            tracked_keys = meta["tracked_keys"]
            saturated = meta["saturated"]
            coefficients, tracked = arrays["hash_coefficients"], arrays["tracked_fingerprints"]
            counters = arrays["counters"]
            if not isinstance(tracked_keys, list):
                raise TypeError("tracked_keys is not a list")
            tracked_fingerprints = fingerprint(tracked_keys)
        except (KeyError, TypeError, InvalidInputError) as exc:
            raise CorruptIndexError(
                f"{path}: the saved sketch is incomplete or inconsistent ({exc}); save it again."
            ) from exc
        problems = []
        if counters.shape != (sketch._depth, sketch._width):
            expected = (sketch._depth, sketch._width)
            problems.append(f"counters have shape {counters.shape}, expected {expected}")
        if coefficients.shape != (sketch._depth, 3) or coefficients.dtype != np.uint64:
            problems.append("hash coefficients are malformed")
        if not all(isinstance(value, int) and value >= 0 for value in (total, untracked_limit)):
            problems.append("total or untracked_limit is not a non-negative integer")
        if not isinstance(saturated, bool):
            problems.append("saturated is not a boolean")
        if len(tracked_keys) > sketch._track_top or not np.array_equal(
            tracked_fingerprints, tracked
        ):
            problems.append("tracked keys do not match their fingerprints")
        if problems:
            raise CorruptIndexError(f"{path}: {'; '.join(problems)}; save the sketch again.")
        sketch._table = counters.copy()
        sketch._coefficients = coefficients.copy()
        sketch._total, sketch._saturated, sketch._untracked_limit = total, saturated, untracked_limit
        estimates = sketch._estimates(tracked).tolist()
        for key_fingerprint, label, estimate in zip(tracked.tolist(), tracked_keys, estimates):
            sketch._heap.push(key_fingerprint, estimate)
            sketch._labels[key_fingerprint] = label
        return sketch

    # -------------------------------------------------------------- description

    def describe(self) -> dict[str, Any]:
        """Parameters, guarantees and size, as a JSON-serialisable dict."""
        self._apply_pending()
        return {
            "structure": "count-min sketch (Cormode & Muthukrishnan 2005)",
            "update": "conservative (Estan & Varghese 2002)" if self._conservative else "plain",
            "width": self._width,
            "depth": self._depth,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "seed": self._seed,
            "dtype": str(self._table.dtype),
            "overflow": self._overflow,
            "saturated": self._saturated,
            "total": self._total,
            "error_bound": self.epsilon * self._total,
            "hash": "((a*lo32 + c*hi32 + b) mod 2^64) >> 32, column (v*width) >> 32",
            "fingerprint": "int: itself mod 2^64; str: FNV-1a 64 of UTF-8",
            "track_top": self._track_top,
            "tracked": len(self._heap),
            "untracked_limit": self._untracked_limit,
            "memory_bytes": self.memory_bytes(),
        }

    def __repr__(self) -> str:
        self._apply_pending()
        mode = ", conservative=True" if self._conservative else ""
        return (
            f"CountMinSketch(width={self._width}, depth={self._depth}, seed={self._seed}{mode}, "
            f"dtype={self._table.dtype}, total={self._total})"
        )
