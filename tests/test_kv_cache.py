"""Tests for llmds.kv_cache: block pool, sequences, prefix cache, copy-on-write, token budget."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from llmds.errors import CorruptIndexError, InvalidInputError
from llmds.kv_cache import (
    MODEL_PRESETS,
    BlockPool,
    CacheFullError,
    KVCache,
    KVCacheInvariantError,
    ModelShape,
    chain_block_hashes,
    resolve_model,
    root_hash,
)
from llmds.kv_eviction import policy_names

BS = 4  # block size used throughout: small, so prompts span several blocks


def tokens(n: int, start: int = 0) -> list[int]:
    return list(range(start, start + n))


# ----------------------------------------------------------------------------- model shapes


def test_presets_give_the_published_kv_width():
    llama = MODEL_PRESETS["llama-3-8b"]
    assert llama.per_token_width == 2 * 32 * 8 * 128
    assert llama.bytes_per_token == 128 * 1024  # 128 KiB per token in float16
    assert MODEL_PRESETS["qwen2-7b"].per_token_width == 2 * 28 * 4 * 128


def test_custom_model_from_mapping_and_errors():
    shape = resolve_model({"num_layers": 2, "num_kv_heads": 3, "head_dim": 5})
    assert shape.per_token_width == 60
    with pytest.raises(InvalidInputError, match="unknown model preset"):
        resolve_model("gpt-9")
    with pytest.raises(InvalidInputError, match="missing"):
        resolve_model({"num_layers": 2})
    with pytest.raises(InvalidInputError, match="head_dim"):
        ModelShape("bad", 2, 2, 0)


# ----------------------------------------------------------------------------- block pool


def test_block_pool_allocates_and_frees_in_constant_time_lists():
    pool = BlockPool(4, BS)
    first = pool.allocate(3)
    assert first == [2, 1, 0]  # block 0 is handed out first from the end of the stack
    assert pool.num_free == 1 and all(pool.ref_counts[b] == 1 for b in first)
    pool.free(first[:2])
    assert pool.num_free == 3
    with pytest.raises(InvalidInputError, match="double free"):
        pool.free([first[0]])
    with pytest.raises(CacheFullError):
        pool.allocate(4)


def test_block_pool_storage_shape_and_bad_sizes():
    pool = BlockPool(3, BS, model="tiny", storage=True)
    assert pool.storage.shape == (3, BS, MODEL_PRESETS["tiny"].per_token_width)
    assert pool.storage.dtype == np.float16
    assert pool.bytes_per_block == BS * MODEL_PRESETS["tiny"].bytes_per_token
    with pytest.raises(InvalidInputError, match="block_size"):
        BlockPool(3, 0)
    with pytest.raises(InvalidInputError, match="num_blocks"):
        BlockPool(0, 4)
    with pytest.raises(InvalidInputError, match="needs a model"):
        BlockPool(3, 4, storage=True)


# ----------------------------------------------------------------------------- hashing


def test_chain_hashes_cover_the_prefix_and_extra_keys():
    a = chain_block_hashes(tokens(8), BS)
    b = chain_block_hashes([99, 98, 97, 96] + tokens(4, 4), BS)
    assert len(a) == 2 and len(chain_block_hashes(tokens(7), BS)) == 1  # partial tail unhashed
    assert a[1] != b[1]  # same second block, different prefix
    assert chain_block_hashes(tokens(8), BS, ("tenant-a",)) != a
    assert chain_block_hashes(tokens(8), BS, ("a", "b")) != chain_block_hashes(tokens(8), BS, ("ab",))
    assert root_hash((1,)) != root_hash(("1",))
    assert all(0 <= h < 2**128 for h in a)
    with pytest.raises(InvalidInputError, match="non-negative"):
        chain_block_hashes([1, -2, 3], BS)
    with pytest.raises(InvalidInputError, match="extra key"):
        chain_block_hashes(tokens(4), BS, (1.5,))


# ----------------------------------------------------------------------------- allocate / lookup


def test_prefix_hits_after_free_and_last_token_recomputed():
    cache = KVCache(16, BS)
    assert cache.allocate("a", tokens(10)) == 0
    cache.free("a")
    assert cache.num_cached_blocks == 2  # two full blocks stay cached, the partial one is freed
    assert cache.match_prefix(tokens(10)) == 8
    assert cache.allocate("b", tokens(10)) == 8
    cache.free("b")
    # A prompt of exactly two blocks may only reuse the first: its last token is recomputed.
    assert cache.allocate("c", tokens(8)) == 4
    cache.check()


def test_extra_keys_and_chaining_separate_prefixes():
    cache = KVCache(16, BS)
    cache.allocate("a", tokens(9), extra_keys=("lora-1",))
    assert cache.match_prefix(tokens(9)) == 0
    assert cache.match_prefix(tokens(9), ("lora-1",)) == 8
    assert cache.match_prefix([7, 7, 7, 7] + tokens(5, 4)) == 0  # second block differs in prefix
    cache.check()


def test_live_sequences_share_blocks_through_the_prefix_cache():
    cache = KVCache(16, BS)
    cache.allocate("a", tokens(9))
    assert cache.allocate("b", tokens(9)) == 8
    table_a, table_b = cache.block_table("a"), cache.block_table("b")
    assert table_a[:2] == table_b[:2] and table_a[2] != table_b[2]
    assert [cache.pool.ref_counts[b] for b in table_a[:2]] == [2, 2]
    cache.check()


def test_eviction_reuses_cached_blocks_when_the_free_list_is_empty():
    cache = KVCache(4, BS, policy="lru")
    cache.allocate("a", tokens(16))
    cache.free("a")
    assert cache.num_free_blocks == 0 and cache.num_cached_blocks == 4
    assert cache.allocate("b", tokens(8, 100)) == 0
    stats = cache.stats()
    assert stats.evicted_blocks == 2 and cache.num_cached_blocks == 2
    # LRU with tail-first release: blocks 3 and 2 of "a" went first, its prefix survives.
    assert cache.match_prefix(tokens(9)) == 8
    cache.check()


def test_cache_full_changes_nothing():
    cache = KVCache(3, BS)
    cache.allocate("a", tokens(8))
    before = (cache.num_free_blocks, cache.num_cached_blocks, list(cache.pool.ref_counts))
    with pytest.raises(CacheFullError, match="needs 2 new blocks"):
        cache.allocate("b", tokens(8, 50))
    assert (cache.num_free_blocks, cache.num_cached_blocks, list(cache.pool.ref_counts)) == before
    assert "b" not in cache
    assert cache.can_allocate(4) and not cache.can_allocate(5)
    cache.check()


def test_count_only_sequences_are_never_cached():
    cache = KVCache(8, BS)
    assert cache.allocate("a", 9) == 0
    assert len(cache.block_table("a")) == 3
    cache.free("a")
    assert cache.num_cached_blocks == 0 and cache.num_free_blocks == 8
    cache.check()


def test_allocate_blocks_fast_path_counts_hits_and_validates():
    cache = KVCache(8, 512)
    assert cache.allocate_blocks(0, [1, 2, 3]) == 0
    cache.free(0)
    assert cache.allocate_blocks(1, np.array([1, 2, 4])) == 2
    assert cache.allocate_blocks(2, (1, 2, 3)) == 3  # trace convention: every block may hit
    stats = cache.stats()
    assert stats.hit_blocks == 5 and stats.lookups == 1 + 3 + 3  # 1 miss; 2 hits + 1 miss; 3 hits
    for bad, message in (
        ([], "empty"),
        ([1, -1], r"\[0, 2\*\*128\)"),
        ([1, "x"], "integers"),
        ("123", "list"),
    ):
        with pytest.raises(InvalidInputError, match=message):
            cache.allocate_blocks(9, bad)
    with pytest.raises(InvalidInputError, match="already live"):
        cache.allocate_blocks(1, [5])
    cache.check()


def test_bad_inputs_name_the_sequence():
    cache = KVCache(8, BS)
    with pytest.raises(InvalidInputError, match="'ghost'"):
        cache.free("ghost")
    cache.allocate("a", tokens(3))
    cache.free("a")
    with pytest.raises(InvalidInputError, match="cannot free sequence 'a'"):
        cache.free("a")  # double free
    with pytest.raises(InvalidInputError, match="cannot fork sequence 'a'"):
        cache.fork("a", "b")  # forking a freed sequence
    with pytest.raises(InvalidInputError, match="token count"):
        cache.allocate("n", -3)
    with pytest.raises(InvalidInputError, match="'t'.*non-negative"):
        cache.allocate("t", [1, -1])
    with pytest.raises(InvalidInputError, match="unknown eviction policy"):
        KVCache(4, BS, policy="random")
    with pytest.raises(InvalidInputError, match="not hashable"):
        cache.allocate(["list", "id"], 3)
    with pytest.raises(InvalidInputError, match="not live"):
        cache.free(["list", "id"])


# ----------------------------------------------------------------------------- append / fork / free


def test_append_takes_blocks_and_hashes_filled_blocks():
    cache = KVCache(16, BS)
    cache.allocate("a", tokens(6))
    cache.append("a", tokens(3, 6))  # fills block 1 and starts block 2
    assert cache.num_tokens("a") == 9 and len(cache.block_table("a")) == 3
    cache.free("a")
    # The block filled by decoding is in the prefix cache too.
    assert cache.match_prefix(tokens(9)) == 8
    cache.allocate("b", 5)
    cache.append("b", 4)  # bare counts: no hashing
    cache.free("b")
    cache.check()


def test_fork_raises_each_count_once_and_free_releases_each_once():
    cache = KVCache(16, BS)
    cache.allocate("p", tokens(10))
    cache.fork("p", "c1")
    cache.fork("p", "c2")
    table = cache.block_table("p")
    assert [cache.pool.ref_counts[b] for b in table] == [3, 3, 3]
    cache.free("p")
    assert [cache.pool.ref_counts[b] for b in table] == [2, 2, 2]
    cache.append("c1", [42])  # the shared partial last block is copied first
    assert cache.block_table("c1")[:2] == table[:2] and cache.block_table("c1")[2] != table[2]
    assert cache.stats().cow_copies == 1
    cache.free("c1")
    cache.free("c2")
    assert all(count == 0 for count in cache.pool.ref_counts)
    cache.allocate("x", 1)
    cache.allocate("y", 1)
    with pytest.raises(InvalidInputError, match="already live"):
        cache.fork("y", "x")
    cache.check()


# ----------------------------------------------------------------------------- copy-on-write with storage


def _cache_with_storage(num_blocks: int = 16) -> KVCache:
    return KVCache(num_blocks, BS, model="tiny", storage=True)


def _values(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    return rng.standard_normal((n, width)).astype(np.float16)


def test_writing_through_a_fork_never_changes_the_parent():
    cache = _cache_with_storage()
    width = cache.storage.shape[2]
    rng = np.random.default_rng(0)
    cache.allocate("p", tokens(10))
    original = _values(rng, 10, width)
    cache.write("p", 0, original)
    cache.fork("p", "c")
    np.testing.assert_array_equal(cache.read("c"), original)
    update = _values(rng, 6, width)
    cache.write("c", 2, update)  # positions 2..7 span blocks 0 and 1: both shared, both copied
    np.testing.assert_array_equal(cache.read("p"), original)
    expected = original.copy()
    expected[2:8] = update
    np.testing.assert_array_equal(cache.read("c"), expected)
    assert cache.stats().cow_copies == 2
    cache.write("c", 2, update)  # now private: no more copies
    assert cache.stats().cow_copies == 2
    cache.check()


def test_writing_into_a_prefix_hit_never_changes_the_cached_block():
    cache = _cache_with_storage()
    width = cache.storage.shape[2]
    rng = np.random.default_rng(1)
    cache.allocate("a", tokens(9))
    kv_a = _values(rng, 9, width)
    cache.write("a", 0, kv_a)
    cache.free("a")
    assert cache.allocate("b", tokens(9)) == 8
    np.testing.assert_array_equal(cache.read("b", 0, 8), kv_a[:8])
    cache.write("b", 0, _values(rng, 4, width))  # block 0 came from the cache: copied first
    assert cache.allocate("c", tokens(9)) == 8
    np.testing.assert_array_equal(cache.read("c", 0, 8), kv_a[:8])
    cache.check()


def test_write_and_read_errors():
    cache = KVCache(4, BS)
    cache.allocate("a", 3)
    with pytest.raises(InvalidInputError, match="no storage"):
        cache.write("a", 0, np.zeros((1, 2)))
    cache = _cache_with_storage()
    cache.allocate("a", 3)
    width = cache.storage.shape[2]
    with pytest.raises(InvalidInputError, match="shape"):
        cache.write("a", 0, np.zeros((1, width + 1)))
    with pytest.raises(InvalidInputError, match="holds 3 tokens"):
        cache.write("a", 2, np.zeros((2, width)))
    with pytest.raises(InvalidInputError, match="cannot read"):
        cache.read("a", 2, 5)


# ----------------------------------------------------------------------------- eviction and budget


def test_evict_cached_and_clear():
    cache = KVCache(8, BS, policy="lru")
    cache.allocate("a", tokens(17))
    cache.free("a")
    assert cache.num_cached_blocks == 4
    assert cache.evict_cached(1) == 1 and cache.num_cached_blocks == 3
    assert cache.match_prefix(tokens(17)) == 12  # the tail block went first
    assert cache.clear_prefix_cache() == 3 and cache.num_free_blocks == 8
    cache.check()


def test_token_budget_preempts_least_recently_used_sequences():
    cache = KVCache(64, BS, token_budget=100)
    cache.allocate("a", 40)
    cache.allocate("b", 40)
    cache.touch("a")  # b is now the least recently used
    cache.allocate("c", 40)
    assert cache.drain_preempted() == ["b"] and "b" not in cache
    assert cache.live_tokens == 80
    cache.append("a", 30)  # a grows; c is older than a now
    assert cache.drain_preempted() == ["c"]
    cache.append("a", 100)  # alone over budget: the sequence being grown is never preempted
    assert cache.drain_preempted() == [] and cache.live_tokens == 170
    assert cache.stats().preempted_sequences == 2
    cache.check()


# ----------------------------------------------------------------------------- invariants and persistence


def test_check_detects_broken_bookkeeping():
    cache = KVCache(4, BS)
    cache.allocate("a", tokens(8))
    cache.pool.ref_counts[cache.block_table("a")[0]] += 1
    with pytest.raises(KVCacheInvariantError, match="table entries"):
        cache.check()
    cache = KVCache(4, BS)
    cache.pool.free_list.append(0)
    with pytest.raises(KVCacheInvariantError):
        cache.check()


def test_save_and_load_round_trip(tmp_path):
    cache = KVCache(16, BS, model="tiny", storage=True, token_budget=1000)
    cache.allocate("a", tokens(10))
    cache.write("a", 0, np.ones((10, cache.storage.shape[2]), dtype=np.float16))
    cache.fork("a", 7)
    cache.allocate("z", tokens(9, 50))
    cache.free("z")
    cache.save(tmp_path / "kv")
    loaded = KVCache.load(tmp_path / "kv")
    assert loaded.block_table("a") == cache.block_table("a") and loaded.block_table(7) == cache.block_table(7)
    assert loaded.num_cached_blocks == cache.num_cached_blocks == 2
    np.testing.assert_array_equal(loaded.read(7), cache.read(7))
    assert loaded.match_prefix(tokens(9, 50)) == 8
    loaded.append("a", [10, 11])  # fills block 2: hashed on the restored chain and tokens
    loaded.free("a")
    loaded.free(7)
    assert loaded.match_prefix(tokens(13)) == 12
    loaded.check()
    (tmp_path / "kv" / "ref_counts.npy").write_bytes(b"garbage")
    with pytest.raises(CorruptIndexError):
        KVCache.load(tmp_path / "kv")
    other = KVCache(4, BS)
    other.allocate(("tuple", 1), 2)
    with pytest.raises(InvalidInputError, match="only int and str"):
        other.save(tmp_path / "other")


# ----------------------------------------------------------------------------- state machine


class KVCacheMachine(RuleBasedStateMachine):
    """Random allocate / append / fork / free / lookup / evict / write sequences.

    ``check()`` runs after every step, and a shadow copy of each live sequence's KV data
    proves that writing through one sequence never changes what another one reads.
    """

    policy = "lru"

    def __init__(self) -> None:
        super().__init__()
        self.cache = KVCache(12, BS, policy=self.policy, model="tiny", storage=True, token_budget=60)
        self.width = self.cache.storage.shape[2]
        self.shadow: dict[int, np.ndarray] = {}
        self.next_id = 0
        self.rng = np.random.default_rng(0)

    def _sync_preempted(self) -> None:
        for seq_id in self.cache.drain_preempted():
            del self.shadow[seq_id]

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    @rule(length=st.integers(0, 14), vocab=st.integers(1, 3), salt=st.sampled_from([(), ("t",)]))
    def allocate(self, length, vocab, salt):
        seq_id = self._new_id()
        prompt = [i % vocab for i in range(length)]  # small vocabularies repeat prefixes
        try:
            cached = self.cache.allocate(seq_id, prompt, salt)
        except CacheFullError:
            assert seq_id not in self.cache
            return
        assert cached % BS == 0 and (cached < length or length == 0)
        self.shadow[seq_id] = self.cache.read(seq_id)
        self._sync_preempted()

    @precondition(lambda self: self.shadow)
    @rule(data=st.data(), count=st.integers(1, 6), as_ids=st.booleans())
    def append(self, data, count, as_ids):
        seq_id = data.draw(st.sampled_from(sorted(self.shadow)))
        try:
            self.cache.append(seq_id, [1] * count if as_ids else count)
        except CacheFullError:
            return
        self._sync_preempted()
        if seq_id in self.shadow:
            old = self.shadow[seq_id]
            new = self.cache.read(seq_id)
            np.testing.assert_array_equal(new[: len(old)], old)  # appending never alters old tokens
            self.shadow[seq_id] = new

    @precondition(lambda self: self.shadow)
    @rule(data=st.data())
    def fork(self, data):
        parent = data.draw(st.sampled_from(sorted(self.shadow)))
        child = self._new_id()
        self.cache.fork(parent, child)
        self.shadow[child] = self.shadow[parent].copy()
        self._sync_preempted()

    @precondition(lambda self: self.shadow)
    @rule(data=st.data())
    def free(self, data):
        seq_id = data.draw(st.sampled_from(sorted(self.shadow)))
        self.cache.free(seq_id)
        del self.shadow[seq_id]
        with pytest.raises(InvalidInputError):
            self.cache.free(seq_id)

    @precondition(lambda self: self.shadow)
    @rule(data=st.data())
    def write(self, data):
        seq_id = data.draw(st.sampled_from(sorted(self.shadow)))
        length = len(self.shadow[seq_id])
        if not length:
            return
        start = data.draw(st.integers(0, length - 1))
        stop = data.draw(st.integers(start + 1, length))
        values = _values(self.rng, stop - start, self.width)
        try:
            self.cache.write(seq_id, start, values)
        except CacheFullError:
            return
        self.shadow[seq_id][start:stop] = values

    @rule(length=st.integers(1, 14))
    def lookup(self, length):
        before = (self.cache.num_free_blocks, self.cache.num_cached_blocks)
        assert self.cache.match_prefix([0] * length) % BS == 0
        assert (self.cache.num_free_blocks, self.cache.num_cached_blocks) == before

    @rule(count=st.integers(0, 5))
    def evict(self, count):
        cached = self.cache.num_cached_blocks
        assert self.cache.evict_cached(count) == min(count, cached)

    @invariant()
    def consistent(self):
        self.cache.check()
        assert set(self.cache.sequences()) == set(self.shadow)
        for seq_id, expected in self.shadow.items():
            np.testing.assert_array_equal(self.cache.read(seq_id), expected)


_MACHINE_SETTINGS = settings(
    max_examples=25, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize("policy", policy_names())
def test_state_machine(policy):
    machine = type(f"KVCacheMachine_{policy}", (KVCacheMachine,), {"policy": policy})
    run_state_machine_as_test(machine, settings=_MACHINE_SETTINGS)


def test_a_hash_repeated_within_one_request_is_rejected():
    from llmds.kv_cache import KVCache

    cache = KVCache(8, 4)
    with pytest.raises(InvalidInputError, match="appears twice"):
        cache.allocate_blocks("r", [3, 3])
    cache.check()
