"""Tests of llmds.hnsw: every operation, every bad input, properties against brute force."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmds.errors import CorruptIndexError, InvalidInputError
from llmds.hnsw import HNSWIndex
from llmds.persist import load_arrays, save_arrays


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 10) -> np.ndarray:
    """Seeded Gaussian clusters (spread 0.3 around N(0, I) centres): realistic neighbourhoods."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return (centres[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))).astype(
        np.float32
    )


def exact_distances(metric: str, queries: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Distances in float64, in the index's conventions."""
    q, b = queries.astype(np.float64), base.astype(np.float64)
    if metric == "l2":
        return ((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 1.0 - q @ b.T


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    pairs = zip(found.tolist(), truth.tolist())
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in pairs]))


def small_index(metric: str = "l2", n: int = 200, dim: int = 8, **params):
    """A small clustered index with small M: (index, data), ids 0..n-1."""
    params = {"M": 4, "ef_construction": 32, "ef": 32, "seed": 1, **params}
    index = HNSWIndex(dim, metric=metric, **params)
    data = clustered(n, dim)
    index.add(data)
    return index, data


def snapshot(index: HNSWIndex) -> dict:
    """Everything observable about an index, to prove a rejected call changed nothing."""
    description = index.describe()
    del description["distance_computations"]  # searching (below) moves it
    queries = clustered(5, index.dim, seed=99)
    ids, distances = index.search_batch(queries, 5) if len(index) else (None, None)
    return {"len": len(index), "describe": description, "ids": ids, "distances": distances,
            "rng": index._rng.bit_generator.state}


def assert_same(a: dict, b: dict) -> None:
    assert a["len"] == b["len"] and a["describe"] == b["describe"] and a["rng"] == b["rng"]
    if a["ids"] is not None:
        np.testing.assert_array_equal(a["ids"], b["ids"])
        np.testing.assert_array_equal(a["distances"], b["distances"])


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dim": 0},
        {"dim": 2.5},
        {"dim": True},
        {"dim": 4, "metric": "manhattan"},
        {"dim": 4, "M": 1},
        {"dim": 4, "ef_construction": 0},
        {"dim": 4, "ef": 0},
        {"dim": 4, "seed": -1},
        {"dim": 4, "capacity": 0},
    ],
)
def test_bad_parameters_are_rejected(kwargs):
    with pytest.raises(InvalidInputError):
        HNSWIndex(**kwargs)


# ---------------------------------------------------------------- add / search basics


# Inner product is not a metric: a low-norm vector is nobody's close neighbour, so it can end up
# unreachable (hnswlib loses the same items on this data: recall 0.94 at ef >= n).
@pytest.mark.parametrize(("metric", "floor"), [("l2", 1.0), ("cosine", 1.0), ("ip", 0.9)])
def test_exhaustive_ef_finds_exact_neighbours_with_correct_distances(metric, floor):
    index, data = small_index(metric)
    queries = clustered(20, 8, seed=5)
    ids, distances = index.search_batch(queries, 10, ef=200)
    truth = exact_distances(metric, queries, data)
    expected_ids = np.argsort(truth, axis=1)[:, :10]
    assert recall(ids, expected_ids) >= floor
    np.testing.assert_allclose(distances, np.take_along_axis(truth, ids, 1), rtol=1e-4, atol=1e-4)
    assert ids.dtype == np.int64 and distances.dtype == np.float32
    assert (np.diff(distances, axis=1) >= 0).all()


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_recall_against_brute_force_on_clustered_data(metric):
    data = clustered(3000, 16, seed=3, clusters=30)
    queries = clustered(200, 16, seed=4, clusters=30)
    index = HNSWIndex(16, metric=metric, M=8, ef_construction=64, seed=0)
    index.add(data)
    truth = np.argsort(exact_distances(metric, queries, data), axis=1)[:, :10]
    assert recall(index.search_batch(queries, 10, ef=128)[0], truth) >= 0.95


def test_single_search_equals_batch_row():
    index, _ = small_index()
    queries = clustered(10, 8, seed=7)
    batch_ids, batch_distances = index.search_batch(queries, 7, ef=20)
    for row, query in enumerate(queries):
        ids, distances = index.search(query, 7, ef=20)
        np.testing.assert_array_equal(ids, batch_ids[row])
        np.testing.assert_array_equal(distances, batch_distances[row])


def test_one_dimensional_vector_adds_one_item_and_auto_ids_continue():
    index = HNSWIndex(3, M=4)
    index.add(np.array([1.0, 2.0, 3.0]))
    assert len(index) == 1 and 0 in index
    index.add(np.ones((2, 3)), ids=[10, 20])
    index.add(np.zeros((2, 3)))
    assert all(i in index for i in (0, 10, 20, 21, 22)) and len(index) == 5


def test_inputs_of_other_numeric_dtypes_and_layouts_are_accepted():
    index = HNSWIndex(4, M=4)
    index.add([[1, 2, 3, 4], [4, 3, 2, 1]], ids=np.array([7, 8], dtype=np.uint8))
    index.add(np.array([[0.5, 0.5, 0.5, 0.5]], dtype=np.float64), ids=[9])
    matrix = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(4, 3)).T  # not C-contiguous
    column = np.ascontiguousarray(matrix[0])
    np.testing.assert_array_equal(index.search(matrix[0], 3)[0], index.search(column, 3)[0])
    np.testing.assert_array_equal(index.search([1, 2, 3, 4], 1)[0], [7])
    np.testing.assert_array_equal(index.get_vector(7), np.array([1, 2, 3, 4], dtype=np.float32))


def test_ip_distance_is_one_minus_inner_product():
    index = HNSWIndex(2, metric="ip", M=4)
    index.add(np.array([[1.0, 0.0], [0.0, 2.0]]), ids=[1, 2])
    ids, distances = index.search(np.array([0.0, 1.0]), 2)
    np.testing.assert_array_equal(ids, [2, 1])
    np.testing.assert_allclose(distances, [-1.0, 1.0])


def test_cosine_normalises_at_insert_and_query():
    index = HNSWIndex(2, metric="cosine", M=4)
    index.add(np.array([[3.0, 4.0], [10.0, 0.0]]), ids=[1, 2])
    np.testing.assert_allclose(index.get_vector(1), [0.6, 0.8], rtol=1e-6)
    ids, distances = index.search(np.array([100.0, 0.0]), 2)
    np.testing.assert_array_equal(ids, [2, 1])
    np.testing.assert_allclose(distances, [0.0, 0.4], atol=1e-6)


def test_storage_grows_from_capacity_one():
    index = HNSWIndex(8, M=4, ef_construction=16, capacity=1)
    data = clustered(300, 8)
    for start in range(0, 300, 37):
        index.add(data[start:start + 37])
    assert len(index) == 300
    truth = np.argsort(exact_distances("l2", data[:20], data), axis=1)[:, :1]
    assert recall(index.search_batch(data[:20], 1, ef=64)[0], truth) == 1.0


# ---------------------------------------------------------------- k, empty index, filters


def test_empty_index_returns_empty_results():
    index = HNSWIndex(4)
    ids, distances = index.search(np.ones(4), 5)
    assert ids.shape == (0,) and distances.shape == (0,) and ids.dtype == np.int64
    ids, distances = index.search_batch(np.ones((3, 4)), 5)
    assert ids.shape == (3, 0) and distances.shape == (3, 0)


def test_k_larger_than_live_count_returns_fewer_without_padding():
    index, _ = small_index(n=6)
    index.delete(0)
    ids, _ = index.search(np.zeros(8), 10)
    assert sorted(ids.tolist()) == [1, 2, 3, 4, 5]
    ids, distances = index.search_batch(np.zeros((4, 8)), 10)
    assert ids.shape == distances.shape == (4, 5)
    assert all(sorted(row) == [1, 2, 3, 4, 5] for row in ids.tolist())


@pytest.mark.parametrize("k", [0, -3, 2.0, "5", None, True])
def test_bad_k_is_rejected(k):
    index, _ = small_index(n=20)
    with pytest.raises(InvalidInputError):
        index.search(np.zeros(8), k)
    with pytest.raises(InvalidInputError):
        index.search_batch(np.zeros((2, 8)), k)


@pytest.mark.parametrize("ef", [0, -1, 1.5])
def test_bad_ef_is_rejected(ef):
    index, _ = small_index(n=20)
    with pytest.raises(InvalidInputError):
        index.search(np.zeros(8), 3, ef=ef)


def test_filter_by_id_array_and_callable_give_exact_allowed_neighbours():
    index, data = small_index(n=300)
    query = clustered(1, 8, seed=11)[0]
    allowed = np.arange(0, 300, 7)
    truth = exact_distances("l2", query[None], data)[0]
    expected = allowed[np.argsort(truth[allowed])[:5]]
    by_array, _ = index.search(query, 5, ef=100, filter=allowed)
    by_callable, _ = index.search(query, 5, ef=100, filter=lambda i: i % 7 == 0)
    np.testing.assert_array_equal(by_array, expected)
    np.testing.assert_array_equal(by_callable, expected)
    ids, _ = index.search_batch(data[:3], 5, filter=allowed)
    assert np.isin(ids, allowed).all()
    unsigned = np.append(allowed.astype(np.uint64), np.uint64(2**64 - 1))
    np.testing.assert_array_equal(index.search(query, 5, ef=100, filter=unsigned)[0], expected)


def test_very_selective_filter_still_returns_every_allowed_item():
    index, data = small_index(n=300)
    ids, _ = index.search(data[0], 10, ef=10, filter=[299, 150, 3, 12345])
    assert sorted(ids.tolist()) == [3, 150, 299]
    assert index.search(data[0], 10, filter=[])[0].shape == (0,)


@pytest.mark.parametrize("bad_filter", [np.array([0.5, 1.5]), np.array([[1, 2]]), ["a"]])
def test_bad_filter_is_rejected(bad_filter):
    index, data = small_index(n=20)
    with pytest.raises(InvalidInputError):
        index.search(data[0], 3, filter=bad_filter)


# ---------------------------------------------------------------- bad vectors change nothing


@pytest.mark.parametrize(
    "bad",
    [
        np.ones((2, 7)),  # wrong dimension
        np.ones(9),
        np.ones((2, 2, 8)),
        np.array([[1.0] * 7 + [np.nan]]),
        np.array([[1.0] * 7 + [np.inf]]),
        np.array([[1.0] * 8, [-np.inf] * 8]),
        np.full((1, 8), 1e20, dtype=np.float32),  # squared norm overflows float32
        np.full((1, 8), 1e300),  # beyond float32 range
        np.array([["a"] * 8]),
        [[1.0] * 8, [1.0] * 7],  # ragged
        np.ones((1, 8), dtype=complex),
    ],
)
def test_bad_vectors_are_rejected_and_index_unchanged(bad):
    index, _ = small_index(n=50)
    before = snapshot(index)
    with pytest.raises(InvalidInputError):
        index.add(bad)
    assert_same(before, snapshot(index))
    query = bad[-1] if isinstance(bad, np.ndarray) and bad.ndim == 2 else bad
    with pytest.raises(InvalidInputError):
        index.search(query, 3)
    with pytest.raises(InvalidInputError):
        index.search_batch(bad, 3)


def test_zero_vector_is_rejected_under_cosine_only():
    index, _ = small_index("cosine", n=30)
    before = snapshot(index)
    with pytest.raises(InvalidInputError, match="zero vector"):
        index.add(np.vstack([np.ones(8), np.zeros(8)]))
    assert_same(before, snapshot(index))
    with pytest.raises(InvalidInputError, match="zero vector"):
        index.search(np.zeros(8), 3)
    l2_index, _ = small_index("l2", n=30)
    l2_index.add(np.zeros(8), ids=[1000])
    assert l2_index.search(np.zeros(8), 1)[0][0] == 1000


def test_single_search_rejects_a_matrix():
    index, data = small_index(n=20)
    with pytest.raises(InvalidInputError, match="search_batch"):
        index.search(data[:2], 3)
    with pytest.raises(InvalidInputError, match="2-D"):
        index.search_batch(data[0], 3)


# ---------------------------------------------------------------- ids, duplicates, replace


@pytest.mark.parametrize(
    "ids",
    [
        [1, 2],  # wrong count
        [1, 1, 2],  # duplicate within the batch
        [1.0, 2.0, 3.0],  # not integers
        np.array([2**63, 1, 2], dtype=np.uint64),  # beyond int64
        np.array([[1, 2, 3]]),
    ],
)
def test_bad_ids_are_rejected_and_index_unchanged(ids):
    index, _ = small_index(n=20)
    before = snapshot(index)
    with pytest.raises(InvalidInputError):
        index.add(clustered(3, 8, seed=2), ids=ids)
    assert_same(before, snapshot(index))


def test_duplicate_id_needs_replace_and_replace_updates_the_vector():
    index, data = small_index(n=50)
    before = snapshot(index)
    new_vector = np.full(8, 40.0, dtype=np.float32)
    with pytest.raises(InvalidInputError, match="replace=True"):
        index.add(np.vstack([new_vector, new_vector + 1]), ids=[1000, 7])
    assert_same(before, snapshot(index))
    index.add(new_vector, ids=[7], replace=True)
    assert len(index) == 50
    np.testing.assert_array_equal(index.get_vector(7), new_vector)
    ids, distances = index.search(new_vector, 3)
    assert ids[0] == 7 and distances[0] == 0.0
    assert ids.tolist().count(7) == 1
    assert index.search(data[7], 50, ef=100)[0].tolist().count(7) == 1


def test_extreme_int64_ids_round_trip():
    index = HNSWIndex(2, M=4)
    extremes = [np.iinfo(np.int64).min, -1, np.iinfo(np.int64).max]
    index.add(np.eye(3, 2) + np.arange(3)[:, None], ids=extremes)
    assert all(i in index for i in extremes)
    assert set(index.search(np.zeros(2), 3)[0].tolist()) == set(extremes)
    with pytest.raises(InvalidInputError, match="int64"):
        index.add(np.ones(2))  # automatic ids would overflow after the largest id


# ---------------------------------------------------------------- delete


def test_deleted_items_are_never_returned_and_can_be_re_added():
    index, data = small_index(n=100)
    for i in range(0, 100, 3):
        index.delete(i)
    assert len(index) == 66 and 3 not in index and 4 in index
    ids, _ = index.search_batch(data, 10, ef=50)
    assert not np.isin(ids, np.arange(0, 100, 3)).any()
    with pytest.raises(InvalidInputError, match="not in the index"):
        index.delete(3)
    with pytest.raises(InvalidInputError):
        index.get_vector(3)
    index.add(data[3], ids=[3])
    assert 3 in index and index.search(data[3], 1)[0][0] == 3


def test_deleting_the_entry_point_chooses_a_live_one():
    index, data = small_index(n=100)
    for _ in range(99):
        entry_slot = int(index._state[0])
        entry_id = int(index._ids[entry_slot])
        index.delete(entry_id)
        entry_slot = int(index._state[0])
        assert index._live[entry_slot] == 1
        assert index.describe()["top_level"] == index._levels[entry_slot]
        assert entry_id not in index.search(data[0], 5)[0]
    assert len(index) == 1
    index.delete(int(index._ids[index._state[0]]))
    assert len(index) == 0 and index.search(data[0], 5)[0].shape == (0,)
    index.add(data[:5], ids=[1, 2, 3, 4, 5])
    assert sorted(index.search(data[0], 10)[0].tolist()) == [1, 2, 3, 4, 5]


# ---------------------------------------------------------------- determinism, reporting


def test_same_seed_gives_identical_graph_whatever_the_batching():
    data = clustered(400, 8)
    one_batch = HNSWIndex(8, M=4, ef_construction=32, seed=7)
    one_batch.add(data)
    one_at_a_time = HNSWIndex(8, M=4, ef_construction=32, seed=7)
    for vector in data:
        one_at_a_time.add(vector)
    for name in ("_levels", "_links0", "_upper_offset", "_upper_links"):
        np.testing.assert_array_equal(getattr(one_batch, name), getattr(one_at_a_time, name))
    other_seed = HNSWIndex(8, M=4, ef_construction=32, seed=8)
    other_seed.add(data)
    assert not np.array_equal(other_seed._levels, one_batch._levels)


def test_describe_memory_and_distance_counter():
    index, data = small_index(n=100)
    description = index.describe()
    json.dumps(description)
    assert description["live"] == 100 and description["M0"] == 8
    assert sum(description["nodes_per_level"]) == 100
    assert index.memory_bytes() >= data.nbytes
    index.distance_computations = 0
    index.search(data[0], 5)
    # Layer 0 measures each node at most once (visited set), plus the entry; the greedy descent
    # steps through each upper-layer list at most once (distances strictly decrease), M each.
    assert 0 < index.distance_computations <= 100 + 1 + index._upper_used * index.M
    with pytest.raises(InvalidInputError):
        index.distance_computations = -1
    assert "HNSWIndex(dim=8" in repr(index)
    assert 1.5 not in index and "x" not in index


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_save_load_round_trip_is_identical(tmp_path, metric):
    index, data = small_index(metric, n=300)
    for i in (5, 17, 250):
        index.delete(i)
    index.save(tmp_path / "idx")
    loaded = HNSWIndex.load(tmp_path / "idx", dim=8)
    queries = clustered(30, 8, seed=12)
    for a, b in zip(index.search_batch(queries, 10), loaded.search_batch(queries, 10)):
        np.testing.assert_array_equal(a, b)
    # Counters restart at load, and the loaded arrays are sized to fit.
    ignored = {"memory_bytes": 0, "capacity": 0, "distance_computations": 0}
    assert loaded.describe() | ignored == index.describe() | ignored
    assert 5 not in loaded and 6 in loaded
    more = clustered(50, 8, seed=13)
    index.add(more)
    loaded.add(more)
    np.testing.assert_array_equal(index._links0[:350], loaded._links0[:350])
    with pytest.raises(InvalidInputError):
        loaded.add(np.ones((1, 5)))
    with pytest.raises(InvalidInputError):
        loaded.search(np.ones(5), 3)


def test_empty_index_round_trip(tmp_path):
    HNSWIndex(4).save(tmp_path / "empty")
    loaded = HNSWIndex.load(tmp_path / "empty")
    assert len(loaded) == 0 and loaded.search(np.ones(4), 3)[0].shape == (0,)
    loaded.add(np.ones(4))
    assert len(loaded) == 1


def test_load_with_another_expected_dimension_fails(tmp_path):
    index, _ = small_index(n=20)
    index.save(tmp_path / "idx")
    with pytest.raises(InvalidInputError, match="8-d"):
        HNSWIndex.load(tmp_path / "idx", dim=16)


def test_damaged_or_missing_files_are_reported(tmp_path):
    index, _ = small_index(n=50)
    index.save(tmp_path / "idx")
    vectors_file = tmp_path / "idx" / "vectors.npy"
    raw = bytearray(vectors_file.read_bytes())
    raw[-3] ^= 0xFF
    vectors_file.write_bytes(bytes(raw))
    with pytest.raises(CorruptIndexError, match="checksum"):
        HNSWIndex.load(tmp_path / "idx")
    with pytest.raises(CorruptIndexError):
        HNSWIndex.load(tmp_path / "nothing-here")


def _resave(source: Path, target: Path, edit) -> None:
    """Re-save a saved index after ``edit(meta, arrays)``, with valid checksums."""
    meta, arrays = load_arrays(source, "hnsw", 1)
    edit(meta, arrays)
    save_arrays(target, "hnsw", 1, meta, arrays)


def _set(mapping, key, value):
    mapping[key] = value


@pytest.mark.parametrize(
    "edit",
    [
        lambda meta, arrays: _set(meta, "dim", 16),
        lambda meta, arrays: _set(meta, "metric", "hamming"),
        lambda meta, arrays: meta.pop("M"),
        lambda meta, arrays: _set(meta, "entry", 10_000),
        lambda meta, arrays: arrays.pop("links0"),
        lambda meta, arrays: _set(arrays, "ids", arrays["ids"].astype(np.float64)),
        lambda meta, arrays: arrays["links0"].__setitem__((3, 1), 10_000),
        lambda meta, arrays: arrays["links0"].__setitem__((3, 0), 99),
        lambda meta, arrays: arrays["upper_links"].__setitem__((0, 1), -5),
        lambda meta, arrays: arrays["upper_offset"].__setitem__(
            int(np.argmax(arrays["levels"])), 10_000),
        lambda meta, arrays: arrays["levels"].__setitem__(0, 70),
        lambda meta, arrays: arrays["vectors"].__setitem__((2, 0), np.nan),
        lambda meta, arrays: arrays["live"].__setitem__(0, 7),
        lambda meta, arrays: arrays["ids"].__setitem__(1, arrays["ids"][0]),
    ],
)
def test_inconsistent_saved_index_is_rejected_before_use(tmp_path, edit):
    index, _ = small_index(n=100)
    index.save(tmp_path / "idx")
    _resave(tmp_path / "idx", tmp_path / "bad", edit)
    with pytest.raises(CorruptIndexError):
        HNSWIndex.load(tmp_path / "bad")


# ---------------------------------------------------------------- properties


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 12)),
        st.tuples(st.just("delete"), st.integers(0, 10**6)),
        st.tuples(st.just("search"), st.integers(1, 15)),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=operations,
    metric=st.sampled_from(["l2", "ip", "cosine"]),
    seed=st.integers(0, 2**16),
)
def test_random_operations_keep_results_consistent_with_brute_force(ops, metric, seed):
    rng = np.random.default_rng(seed)
    index = HNSWIndex(4, metric=metric, M=3, ef_construction=12, ef=8, seed=seed, capacity=4)
    vectors: dict[int, np.ndarray] = {}
    next_id = 0
    searches = hits = 0
    for op, amount in ops:
        if op == "add":
            batch = rng.standard_normal((amount, 4)).astype(np.float32)
            ids = np.arange(next_id, next_id + amount) * 3 - 50  # negative and sparse ids
            next_id += amount
            index.add(batch, ids=ids)
            vectors.update(zip(ids.tolist(), batch))
        elif op == "delete" and vectors:
            victim = sorted(vectors)[amount % len(vectors)]
            index.delete(victim)
            del vectors[victim]
        elif op == "search":
            query = rng.standard_normal(4).astype(np.float32)
            ids, distances = index.search(query, amount, ef=40)
            assert len(ids) == min(amount, len(vectors)) == len(set(ids.tolist()))
            assert set(ids.tolist()) <= set(vectors)
            assert (np.diff(distances) >= 0).all()
            if ids.size:
                stored = np.stack([vectors[i] for i in ids.tolist()])
                expected = exact_distances(metric, query[None], stored)[0]
                np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-4)
                live = np.array(sorted(vectors))
                all_live = np.stack([vectors[i] for i in live])
                every = exact_distances(metric, query[None], all_live)[0]
                truth = set(live[np.argsort(every, kind="stable")[: len(ids)]].tolist())
                searches += len(ids)
                hits += len(truth & set(ids.tolist()))
        assert len(index) == len(vectors)
    # ef=40 covers most of these tiny graphs: nearly every true neighbour must be found.
    assert searches == 0 or hits / searches >= 0.9


# ---------------------------------------------------------------- real data


@pytest.mark.realdata
@pytest.mark.slow
def test_scifact_embeddings_recall(shared_data: Path):
    embeddings = shared_data / "scifact" / "embeddings"
    if not (embeddings / "corpus.npy").is_file():
        pytest.skip(f"SciFact embeddings not found under {embeddings}")
    corpus = np.load(embeddings / "corpus.npy")
    queries = np.load(embeddings / "queries.npy")[:300]
    index = HNSWIndex(corpus.shape[1], metric="cosine", M=16, ef_construction=100, seed=0)
    index.add(corpus)
    truth = np.argsort(-(queries @ corpus.T), axis=1)[:, :10]
    assert recall(index.search_batch(queries, 10, ef=80)[0], truth) >= 0.99
