"""Tests of llmds.cms: guarantees, exactness of batch/merge/persistence, heavy hitters, bad input."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.cms import CountMinSketch, fingerprint
from llmds.errors import CorruptIndexError, InvalidInputError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
UINT64_MAX = (1 << 64) - 1


def fnv1a_64(text: str) -> int:
    """Reference FNV-1a (64-bit) over UTF-8, written independently of the module."""
    state = 0xCBF29CE484222325
    for byte in text.encode("utf-8", "surrogatepass"):
        state = ((state ^ byte) * 0x100000001B3) & UINT64_MAX
    return state


def zipf_stream(length: int, distinct: int, exponent: float, seed: int) -> np.ndarray:
    """Integer keys 0..distinct-1 drawn with probability proportional to rank**-exponent."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, distinct + 1) ** exponent
    return rng.choice(distinct, size=length, p=weights / weights.sum()).astype(np.int64)


def exact_counts(keys, counts=None) -> Counter:
    counter: Counter = Counter()
    for position, key in enumerate(keys):
        counter[key] += 1 if counts is None else int(counts[position])
    return counter


# Small streams over few distinct keys in a narrow sketch: collisions on every update.
small_keys = st.one_of(st.integers(-(2**63), UINT64_MAX), st.text(max_size=6))
streams = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5)), max_size=120)


# ---------------------------------------------------------------- fingerprints


def test_string_fingerprints_are_fnv1a_of_utf8_in_every_input_form():
    words = ["", "a", "the", "héllo", "日本語", "😀x", "a\ud800b", "x\x00y", "tab\tnewline\n"]
    expected = [fnv1a_64(word) for word in words]
    assert fingerprint(words).tolist() == expected
    assert fingerprint(tuple(words)).tolist() == expected
    assert fingerprint(np.array(words, dtype=object)).tolist() == expected
    assert fingerprint(np.array(words)).tolist() == expected  # fixed-width UTF-32 rows
    assert fingerprint(words).dtype == np.uint64
    assert fingerprint("héllo").tolist() == [fnv1a_64("héllo")]


def test_integer_fingerprints_are_the_integers_modulo_2_64():
    values = [0, 1, 2**63 - 1, -1, -(2**63)]
    expected = [value & UINT64_MAX for value in values]
    assert fingerprint(values).tolist() == expected
    assert fingerprint(np.array(values, dtype=np.int64)).tolist() == expected
    assert fingerprint(np.array([5, 7], dtype=np.int16)).tolist() == [5, 7]
    assert fingerprint(np.array([UINT64_MAX], dtype=np.uint64)).tolist() == [UINT64_MAX]
    assert fingerprint(np.arange(10)[::3]).tolist() == [0, 3, 6, 9]  # strided input
    assert fingerprint(np.array([-2, 5], dtype=">i8")).tolist() == [UINT64_MAX - 1, 5]
    assert fingerprint([-1, 2**63]).tolist() == [UINT64_MAX, 2**63]  # numpy would make floats
    assert fingerprint(3).tolist() == [3]


def test_mixed_lists_fingerprint_each_key_by_its_type():
    assert fingerprint(["a", 7, "b", np.int32(9)]).tolist() == [fnv1a_64("a"), 7, fnv1a_64("b"), 9]


def test_fingerprints_feed_the_same_counters_as_the_keys():
    words = ["alpha", "beta", "alpha", "gamma", "alpha"]
    by_key = CountMinSketch(50, 3, seed=4)
    by_key.update_batch(words)
    by_fingerprint = CountMinSketch(50, 3, seed=4)
    by_fingerprint.update_batch(fingerprint(words))
    assert np.array_equal(by_key.counters, by_fingerprint.counters)
    assert by_fingerprint.query("alpha") == 3


@pytest.mark.parametrize(
    "keys",
    [
        [1.5],
        [b"bytes"],
        b"bytes",
        [None],
        ["a", 2.0],
        [2**64],
        [-(2**63) - 1],
        np.array([1.0, 2.0]),
        np.array([True, False]),
        np.zeros((2, 2), dtype=np.int64),
        3.5,
    ],
)
def test_unusable_keys_are_rejected(keys):
    with pytest.raises(InvalidInputError):
        fingerprint(keys)
    with pytest.raises(InvalidInputError):
        CountMinSketch(10, 2).update_batch(keys)


# ---------------------------------------------------------------- the guarantees


@settings(max_examples=60, deadline=None)
@given(stream=streams, conservative=st.booleans(), seed=st.integers(0, 2**32))
def test_estimates_never_fall_below_true_counts(stream, conservative, seed):
    keys = [key for key, _ in stream]
    counts = [count for _, count in stream]
    sketch = CountMinSketch(7, 3, seed=seed, conservative=conservative)
    sketch.update_batch(keys, counts)
    truth = exact_counts(keys, counts)
    distinct = list(range(41))
    estimates = sketch.query_batch(distinct)
    assert all(int(estimates[key]) >= truth[key] for key in distinct)
    assert sketch.total == sum(counts)


@settings(max_examples=25, deadline=None)
@given(keys=st.lists(small_keys, max_size=60), conservative=st.booleans())
def test_estimates_cover_true_counts_for_any_int_or_str_keys(keys, conservative):
    sketch = CountMinSketch(5, 2, conservative=conservative)
    sketch.update_batch(keys)
    for key, count in exact_counts(keys).items():
        assert sketch.query(key) >= count


@pytest.mark.parametrize("conservative", [False, True])
def test_share_of_keys_over_the_error_bound_is_at_most_delta(conservative):
    """Theorem 1 on seeded Zipf streams: P[estimate > true + epsilon N] <= delta per key.

    The share is measured over all distinct keys of each stream and must stay below delta
    (e**-3 ~ 0.05 here) for every seed; a hash that put related keys in the same column, or a
    row that ignored its seed, breaks it at once.
    """
    for seed in range(6):
        stream = zipf_stream(40_000, 5_000, 1.0, seed)
        sketch = CountMinSketch(200, 3, seed=seed, conservative=conservative)
        sketch.update_batch(stream)
        truth = np.bincount(stream, minlength=5_000)
        seen = np.flatnonzero(truth)
        errors = sketch.query_batch(seen).astype(np.int64) - truth[seen]
        assert errors.min() >= 0
        bound, delta = sketch.error_bound()
        assert bound == pytest.approx(math.e / 200 * len(stream))
        assert delta == pytest.approx(math.exp(-3))
        assert (errors > bound).mean() <= delta


def test_mean_error_per_row_is_at_most_n_over_width():
    """Each row over-counts a key by (N - own count) / width on average; the minimum of the
    rows cannot do worse than one row, so the mean error over keys stays below N / width."""
    stream = zipf_stream(50_000, 20_000, 0.6, seed=11)
    sketch = CountMinSketch(500, 4, seed=11)
    sketch.update_batch(stream)
    truth = np.bincount(stream, minlength=20_000)
    seen = np.flatnonzero(truth)
    mean_error = (sketch.query_batch(seen).astype(np.int64) - truth[seen]).mean()
    assert mean_error <= len(stream) / 500


def test_conservative_update_lowers_the_error_on_a_skewed_stream():
    stream = zipf_stream(60_000, 8_000, 1.1, seed=3)
    truth = np.bincount(stream, minlength=8_000)
    seen = np.flatnonzero(truth)
    mean_errors = {}
    for conservative in (False, True):
        sketch = CountMinSketch(300, 4, seed=3, conservative=conservative)
        sketch.update_batch(stream)
        mean_errors[conservative] = (sketch.query_batch(seen).astype(np.int64) - truth[seen]).mean()
    assert mean_errors[True] < 0.8 * mean_errors[False]


def test_from_error_uses_the_papers_constants():
    sketch = CountMinSketch.from_error(0.001, 0.01)
    assert (sketch.width, sketch.depth) == (2719, 5)
    assert sketch.epsilon <= 0.001 and sketch.delta <= 0.01
    assert sketch.memory_bytes() == 2719 * 5 * 4 + 5 * 3 * 8
    conservative = CountMinSketch.from_error(0.01, 0.1, conservative=True, seed=3)
    assert (conservative.width, conservative.depth, conservative.conservative) == (272, 3, True)


def test_from_error_matches_datasketches_sizing():
    datasketches = pytest.importorskip("datasketches")
    for epsilon, delta in ((0.001, 0.01), (0.01, 0.05), (0.0003, 0.001)):
        sketch = CountMinSketch.from_error(epsilon, delta)
        assert sketch.width == datasketches.count_min_sketch.suggest_num_buckets(epsilon)
        assert sketch.depth == datasketches.count_min_sketch.suggest_num_hashes(1 - delta)


def test_error_is_comparable_to_datasketches_with_the_same_shape():
    """Parity: two count-min sketches of equal shape with good hashes err alike on one stream."""
    datasketches = pytest.importorskip("datasketches")
    stream = zipf_stream(30_000, 6_000, 1.0, seed=5)
    truth = np.bincount(stream, minlength=6_000)
    seen = np.flatnonzero(truth)
    ours = CountMinSketch(400, 4, seed=5)
    ours.update_batch(stream)
    peer = datasketches.count_min_sketch(4, 400)
    for key in stream.tolist():
        peer.update(key)
    our_errors = ours.query_batch(seen).astype(np.int64) - truth[seen]
    peer_errors = np.array([peer.get_estimate(int(key)) for key in seen]) - truth[seen]
    assert peer_errors.min() >= 0 and our_errors.min() >= 0
    assert 0.7 < our_errors.mean() / peer_errors.mean() < 1.4


# ---------------------------------------------------------------- exactness of batch, merge, save


@settings(max_examples=40, deadline=None)
@given(stream=streams, conservative=st.booleans(), track=st.sampled_from([0, 3]))
def test_batch_update_equals_item_by_item(stream, conservative, track):
    keys = [key if key % 2 else f"k{key}" for key, _ in stream]  # ints and strings mixed
    counts = [count for _, count in stream]
    batch = CountMinSketch(11, 3, seed=2, conservative=conservative, track_top=track)
    batch.update_batch(keys, np.array(counts, dtype=np.int64))
    items = CountMinSketch(11, 3, seed=2, conservative=conservative, track_top=track)
    for key, count in zip(keys, counts):
        items.update(key, count)
    assert np.array_equal(batch.counters, items.counters)
    assert batch.total == items.total
    if track:
        # The candidates may differ (an item sees estimates of its moment, a batch those at its
        # end), but both keep the promise: every key counted more than the limit is tracked.
        truth = exact_counts(keys, counts)
        for sketch in (batch, items):
            tracked = {key for key, _ in sketch.heavy_hitters(track)}
            assert {key for key, count in truth.items() if count > sketch.untracked_limit} <= tracked


def test_batches_longer_than_a_hash_block_and_tracking_chunk_match_item_by_item():
    stream = zipf_stream(140_000, 3_000, 1.0, seed=8)
    for conservative in (False, True):
        whole = CountMinSketch(97, 3, conservative=conservative, track_top=5)
        whole.update_batch(stream)
        pieces = CountMinSketch(97, 3, conservative=conservative, track_top=5)
        for part in np.array_split(stream, 7):
            pieces.update_batch(part)
        assert np.array_equal(whole.counters, pieces.counters)
        # Equal estimates; which of two keys tied at the boundary stays may differ.
        whole_top, pieces_top = whole.heavy_hitters(5), pieces.heavy_hitters(5)
        assert [estimate for _, estimate in whole_top] == [estimate for _, estimate in pieces_top]
        boundary = whole_top[-1][1]
        assert {key for key, e in whole_top if e > boundary} == {key for key, e in pieces_top if e > boundary}


@settings(max_examples=40, deadline=None)
@given(first=streams, second=streams)
def test_merge_equals_the_sketch_of_the_concatenated_stream(first, second):
    def sketch_of(stream):
        sketch = CountMinSketch(13, 4, seed=9, track_top=4)
        sketch.update_batch([key for key, _ in stream], [count for _, count in stream])
        return sketch

    merged = sketch_of(first)
    merged.merge(sketch_of(second))
    whole = sketch_of(first + second)
    assert np.array_equal(merged.counters, whole.counters)
    assert merged.total == whole.total
    truth = exact_counts([key for key, _ in first + second], [count for _, count in first + second])
    # Whatever the two sides tracked, every key above the merged untracked limit is tracked.
    tracked = {key for key, _ in merged.heavy_hitters(4)}
    assert all(key in tracked for key, count in truth.items() if count > merged.untracked_limit)


def test_merging_conservative_sketches_still_bounds_the_counts():
    first, second = zipf_stream(5_000, 500, 1.0, seed=1), zipf_stream(5_000, 500, 1.0, seed=2)
    left = CountMinSketch(50, 3, conservative=True)
    left.update_batch(first)
    right = CountMinSketch(50, 3, conservative=True)
    right.update_batch(second)
    left.merge(right)
    truth = np.bincount(np.concatenate([first, second]), minlength=500)
    assert (left.query_batch(np.arange(500)).astype(np.int64) >= truth).all()


def test_merge_widens_to_hold_the_combined_total():
    left = CountMinSketch(4, 2)
    left.update(0, 2**31)
    right = CountMinSketch(4, 2)
    right.update(0, 2**31)
    left.merge(right)
    assert left.query(0) == 2**32 and left.dtype == np.uint64 and not left.saturated


def test_save_load_round_trip(tmp_path):
    stream = ["the", "cat", "sat", "on", "the", "mat", "the", "end", "cat"] * 50 + [7, 7, -3]
    sketch = CountMinSketch(31, 4, seed=12, conservative=True, track_top=3)
    sketch.update_batch(stream)
    sketch.save(tmp_path / "sketch")
    loaded = CountMinSketch.load(tmp_path / "sketch")
    assert np.array_equal(loaded.counters, sketch.counters)
    assert loaded.counters.dtype == sketch.counters.dtype
    assert loaded.describe() == sketch.describe()
    assert loaded.heavy_hitters(3) == sketch.heavy_hitters(3)
    assert [key for key, _ in loaded.heavy_hitters(2)] == ["the", "cat"]
    # The loaded sketch continues exactly like the original.
    for target in (sketch, loaded):
        target.update_batch(["mat"] * 200 + [-3])
    assert np.array_equal(loaded.counters, sketch.counters)
    assert loaded.heavy_hitters(3) == sketch.heavy_hitters(3)
    assert loaded.query(-3) == sketch.query(-3) >= 2


def test_save_load_keeps_the_counter_type_and_saturation(tmp_path):
    sketch = CountMinSketch(3, 2, overflow="saturate")
    sketch.update(1, 2**32 + 5)
    sketch.save(tmp_path / "s")
    loaded = CountMinSketch.load(tmp_path / "s")
    assert loaded.saturated and loaded.dtype == np.uint32 and loaded.query(1) == 2**32 - 1
    assert loaded.total == 2**32 + 5


def test_damaged_or_foreign_files_are_rejected(tmp_path):
    sketch = CountMinSketch(16, 2, track_top=2)
    sketch.update_batch(["a", "b", "a"])
    folder = sketch.save(tmp_path / "s") or tmp_path / "s"
    counters = folder / "counters.npy"
    data = bytearray(counters.read_bytes())
    data[-1] ^= 0xFF
    counters.write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match="checksum"):
        CountMinSketch.load(folder)

    sketch.save(tmp_path / "t")
    manifest_file = tmp_path / "t" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["meta"]["tracked_keys"] = ["a", "zzz"]
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="tracked keys"):
        CountMinSketch.load(tmp_path / "t")

    manifest["meta"]["width"] = 0
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError):
        CountMinSketch.load(tmp_path / "t")

    del manifest["meta"]["total"]
    manifest["meta"]["width"] = 16
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="incomplete"):
        CountMinSketch.load(tmp_path / "t")

    with pytest.raises(CorruptIndexError, match="manifest.json is missing"):
        CountMinSketch.load(tmp_path / "nothing-here")


# ---------------------------------------------------------------- counter overflow


def test_widen_moves_to_a_wider_counter_type_before_overflow():
    sketch = CountMinSketch(8, 3)
    sketch.update_batch([4, 4], [2**32 - 10, 9])
    assert sketch.dtype == np.uint32 and sketch.query(4) == 2**32 - 1
    sketch.update(4)
    assert sketch.dtype == np.uint64 and sketch.query(4) == 2**32 and not sketch.saturated
    sketch.update_batch(np.array([4, 5]), np.array([2**40, 3]))
    assert sketch.query(4) == 2**40 + 2**32 and sketch.query(5) >= 3


def test_saturate_sticks_at_the_maximum_and_says_so():
    for conservative in (False, True):
        sketch = CountMinSketch(8, 3, overflow="saturate", conservative=conservative)
        sketch.update_batch([4, 4], [2**32 - 10, 9])
        assert not sketch.saturated
        sketch.update_batch([4, 4, 4], [1, 5, 1])
        assert sketch.saturated and sketch.query(4) == 2**32 - 1 and sketch.dtype == np.uint32
        assert sketch.total == 2**32 + 6  # N itself stays exact


def test_widened_uint64_counters_saturate_beyond_2_64():
    sketch = CountMinSketch(4, 2, dtype=np.uint64)
    sketch.update(1, UINT64_MAX)
    assert not sketch.saturated and sketch.query(1) == UINT64_MAX
    sketch.update(1, 5)
    assert sketch.saturated and sketch.query(1) == UINT64_MAX and sketch.total == UINT64_MAX + 5


def test_huge_weight_sums_are_counted_exactly():
    sketch = CountMinSketch(4, 2)
    sketch.update_batch([1, 2, 3], np.array([UINT64_MAX, UINT64_MAX, 1], dtype=np.uint64))
    assert sketch.total == 2 * UINT64_MAX + 1 and sketch.saturated and sketch.dtype == np.uint64


# ---------------------------------------------------------------- heavy hitters


@pytest.mark.parametrize("conservative", [False, True])
def test_heavy_hitters_match_exact_top_k_on_a_zipf_stream(conservative):
    stream = zipf_stream(200_000, 50_000, 1.1, seed=21)
    truth = np.bincount(stream, minlength=50_000)
    exact_top = np.argsort(-truth, kind="stable")[:20]
    sketch = CountMinSketch.from_error(0.0005, 0.01, conservative=conservative, track_top=20)
    sketch.update_batch(stream)
    found = sketch.heavy_hitters(20)
    assert {key for key, _ in found} == set(exact_top.tolist())
    assert [estimate for _, estimate in found] == sorted((estimate for _, estimate in found), reverse=True)
    assert all(estimate >= truth[key] for key, estimate in found)


def test_heavy_hitters_of_a_string_stream_come_back_as_strings():
    words = ["tok%d" % key for key in zipf_stream(20_000, 2_000, 1.2, seed=4).tolist()]
    sketch = CountMinSketch(2000, 4, conservative=True, track_top=10)
    sketch.update_batch(words)
    exact = Counter(words)
    found = sketch.heavy_hitters(10)
    assert {word for word, _ in found} == {word for word, _ in exact.most_common(10)}
    assert all(isinstance(word, str) and estimate >= exact[word] for word, estimate in found)


def test_item_by_item_tracking_finds_the_same_heavy_hitters_as_batches():
    stream = zipf_stream(20_000, 3_000, 1.1, seed=6)
    items = CountMinSketch(500, 4, conservative=True, track_top=15)
    for key in stream.tolist():
        items.update(key)
    batch = CountMinSketch(500, 4, conservative=True, track_top=15)
    batch.update_batch(stream)
    assert items.heavy_hitters(15) == batch.heavy_hitters(15)


def test_above_returns_every_phi_heavy_key_or_refuses():
    stream = zipf_stream(100_000, 10_000, 1.0, seed=17)
    truth = np.bincount(stream, minlength=10_000)
    sketch = CountMinSketch(1000, 5, track_top=40)
    sketch.update_batch(stream)
    phi = 0.01
    heavy = set(np.flatnonzero(truth >= phi * len(stream)).tolist())
    found = sketch.above(phi)
    assert heavy <= {key for key, _ in found}
    assert all(estimate >= phi * len(stream) for _, estimate in found)
    assert sketch.untracked_limit < phi * len(stream)
    with pytest.raises(InvalidInputError, match="track_top"):
        sketch.above(0.0001)  # far more keys than 40 reach 10 counts


def test_tracking_survives_merges_of_tracking_and_plain_sketches():
    first, second = zipf_stream(30_000, 2_000, 1.2, seed=31), zipf_stream(30_000, 2_000, 1.2, seed=32)
    left = CountMinSketch(800, 4, track_top=10)
    left.update_batch(first)
    right = CountMinSketch(800, 4, track_top=10)
    right.update_batch(second)
    left.merge(right)
    truth = np.bincount(np.concatenate([first, second]), minlength=2_000)
    assert {key for key, _ in left.heavy_hitters(10)} == set(np.argsort(-truth, kind="stable")[:10].tolist())
    untracked_other = CountMinSketch(800, 4)
    untracked_other.update_batch(second)
    before = left.untracked_limit
    left.merge(untracked_other)
    assert left.untracked_limit == before + len(second)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("epsilon", [0, 1, -0.1, 1.5, float("nan"), float("inf"), True, "0.1", None])
def test_epsilon_outside_the_open_unit_interval_is_rejected(epsilon):
    with pytest.raises(InvalidInputError, match="epsilon"):
        CountMinSketch.from_error(epsilon, 0.01)


@pytest.mark.parametrize("delta", [0, 1, -1, 2.0, float("nan"), False])
def test_delta_outside_the_open_unit_interval_is_rejected(delta):
    with pytest.raises(InvalidInputError, match="delta"):
        CountMinSketch.from_error(0.01, delta)


def test_epsilon_too_small_for_the_table_is_rejected():
    with pytest.raises(InvalidInputError, match="larger epsilon"):
        CountMinSketch.from_error(1e-12, 0.1)


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ((0, 3), "width"),
        ((-5, 3), "width"),
        ((2.5, 3), "width"),
        ((True, 3), "width"),
        ((2**31 + 1, 3), "width"),
        ((10, 0), "depth"),
        ((10, -1), "depth"),
        ((3, 2719), "swap"),
    ],
)
def test_bad_shapes_are_rejected(arguments, match):
    with pytest.raises(InvalidInputError, match=match):
        CountMinSketch(*arguments)


@pytest.mark.parametrize(
    ("keywords", "match"),
    [
        ({"seed": -1}, "seed"),
        ({"conservative": "yes"}, "conservative"),
        ({"dtype": np.int32}, "dtype"),
        ({"dtype": np.uint8}, "dtype"),
        ({"dtype": np.float64}, "dtype"),
        ({"dtype": "nonsense"}, "dtype"),
        ({"overflow": "wrap"}, "overflow"),
        ({"track_top": -1}, "track_top"),
    ],
)
def test_bad_options_are_rejected(keywords, match):
    with pytest.raises(InvalidInputError, match=match):
        CountMinSketch(10, 2, **keywords)


def test_merging_incompatible_sketches_is_rejected():
    base = CountMinSketch(10, 3, seed=1)
    with pytest.raises(InvalidInputError, match="shapes"):
        base.merge(CountMinSketch(11, 3, seed=1))
    with pytest.raises(InvalidInputError, match="shapes"):
        base.merge(CountMinSketch(10, 4, seed=1))
    with pytest.raises(InvalidInputError, match="seed"):
        base.merge(CountMinSketch(10, 3, seed=2))
    with pytest.raises(InvalidInputError, match="conservative"):
        base.merge(CountMinSketch(10, 3, seed=1, conservative=True))
    with pytest.raises(InvalidInputError, match="CountMinSketch"):
        base.merge(Counter())
    assert base.total == 0 and not base.counters.any()


@pytest.mark.parametrize(
    ("counts", "match"),
    [
        ([1, -2, 3], "negative"),
        (np.array([1, 2, -1]), "negative"),
        ([1.0, 2.0, 3.0], "integers"),
        ([1, 2], "one entry per key"),
        (np.ones((3, 1), dtype=np.int64), "one entry per key"),
    ],
)
def test_bad_batch_counts_are_rejected(counts, match):
    sketch = CountMinSketch(10, 2)
    with pytest.raises(InvalidInputError, match=match):
        sketch.update_batch(["a", "b", "c"], counts)
    assert sketch.total == 0 and not sketch.counters.any()


@pytest.mark.parametrize("count", [-1, 1.5, "3", None, True, 2**64])
def test_bad_single_counts_are_rejected(count):
    sketch = CountMinSketch(10, 2)
    with pytest.raises(InvalidInputError, match="count"):
        sketch.update("a", count)
    assert sketch.total == 0 and sketch.query("a") == 0  # nothing half-applied


@pytest.mark.parametrize("key", [["a"], 1.5, None, b"x", True])
def test_single_key_methods_take_one_int_or_str(key):
    sketch = CountMinSketch(10, 2)
    with pytest.raises(InvalidInputError):
        sketch.update(key)
    with pytest.raises(InvalidInputError):
        sketch.query(key)


def test_bad_heavy_hitter_requests_are_rejected():
    untracked = CountMinSketch(10, 2)
    with pytest.raises(InvalidInputError, match="track_top"):
        untracked.heavy_hitters(1)
    with pytest.raises(InvalidInputError, match="track_top"):
        untracked.above(0.1)
    tracked = CountMinSketch(10, 2, track_top=5)
    for k in (0, -1, 2.5, True):
        with pytest.raises(InvalidInputError, match="k"):
            tracked.heavy_hitters(k)
    with pytest.raises(InvalidInputError, match="track_top >= 6"):
        tracked.heavy_hitters(6)
    for phi in (0, -0.5, 1.5, float("nan"), "0.1"):
        with pytest.raises(InvalidInputError, match="phi"):
            tracked.above(phi)
    assert tracked.above(0.5) == [] and tracked.heavy_hitters(5) == []


# ---------------------------------------------------------------- description


def test_describe_and_error_bound_report_the_current_state():
    sketch = CountMinSketch(100, 4, conservative=True, track_top=2)
    sketch.update_batch(["x"] * 30 + ["y"] * 10)
    info = sketch.describe()
    assert info["total"] == 40 and info["width"] == 100 and info["depth"] == 4
    assert info["update"].startswith("conservative") and info["tracked"] == 2
    assert info["error_bound"] == pytest.approx(math.e / 100 * 40)
    assert sketch.error_bound() == (pytest.approx(math.e / 100 * 40), pytest.approx(math.exp(-4)))
    assert info["memory_bytes"] == sketch.memory_bytes() > 100 * 4 * 4
    json.dumps(info)
    assert "CountMinSketch(width=100, depth=4" in repr(sketch)
    with pytest.raises(ValueError):
        sketch.counters[0, 0] = 1  # read-only view


# ---------------------------------------------------------------- real data


@pytest.mark.realdata
def test_scifact_token_stream_meets_the_bounds_and_finds_the_top_100():
    corpus = DATA / "scifact" / "corpus.jsonl"
    if not corpus.is_file():
        pytest.skip(f"SciFact corpus not found at {corpus} (see shared/data/README.md)")
    pattern = re.compile(r"\w+")
    tokens: list[str] = []
    with open(corpus) as handle:
        for line in handle:
            document = json.loads(line)
            tokens.extend(pattern.findall((document["title"] + " " + document["text"]).lower()))
    exact = Counter(tokens)
    distinct = list(exact)
    truth = np.array([exact[token] for token in distinct], dtype=np.int64)
    fingerprints = fingerprint(tokens)
    assert len(set(fingerprint(distinct).tolist())) == len(distinct)  # no fingerprint collision

    mean_errors = {}
    for conservative in (False, True):
        sketch = CountMinSketch.from_error(0.001, 0.01, conservative=conservative, track_top=100)
        sketch.update_batch(tokens)
        errors = sketch.query_batch(distinct).astype(np.int64) - truth
        bound, delta = sketch.error_bound()
        assert errors.min() >= 0
        assert (errors > bound).mean() <= delta
        mean_errors[conservative] = errors.mean()
        if conservative:
            found = {token for token, _ in sketch.heavy_hitters(100)}
            exact_top = {token for token, _ in exact.most_common(100)}
            assert len(found & exact_top) >= 99  # precision = recall: both sets have 100 keys
    assert mean_errors[True] < 0.7 * mean_errors[False]

    from_strings = CountMinSketch.from_error(0.001, 0.01)
    from_strings.update_batch(np.array(tokens))
    from_fingerprints = CountMinSketch.from_error(0.001, 0.01)
    from_fingerprints.update_batch(fingerprints)
    assert np.array_equal(from_strings.counters, from_fingerprints.counters)
