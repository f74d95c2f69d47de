"""Tests for llmds.kv_eviction: the policy contract, each policy's order, and what they learn."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.errors import InvalidInputError
from llmds.kv_cache import KVCache
from llmds.kv_eviction import (
    DEFAULT_POLICY,
    FrequencySketch,
    HitDensityPolicy,
    LFUPolicy,
    LRUPolicy,
    make_policy,
    policy_names,
)
from llmds.kv_replay import replay


def bound(policy, num_blocks=16):
    """A policy bound to a fake cache whose block b carries hash 1000 + b."""
    policy.bind(num_blocks, [1000 + block for block in range(num_blocks)])
    return policy


# ----------------------------------------------------------------------------- the contract


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(policy_names()),
    script=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 15)), max_size=80),
)
def test_every_policy_tracks_exactly_the_evictable_blocks(name, script):
    """Random release / reuse / evict scripts against a set model of the evictable blocks."""
    policy = bound(make_policy(name))
    evictable: set[int] = set()
    in_use = set(range(16))
    for action, block in script:
        if action == 0 and block in in_use:
            in_use.discard(block)
            evictable.add(block)
            if policy.observes_accesses:
                policy.on_access([1000 + block], 0)
            policy.on_release([block])
        elif action == 1 and block in evictable:
            evictable.discard(block)
            in_use.add(block)
            policy.on_reuse([block])
        elif action == 2 and evictable:
            count = 1 + block % len(evictable)
            victims = policy.evict(count)
            assert len(victims) == count and len(set(victims)) == count
            assert set(victims) <= evictable
            evictable -= set(victims)
            in_use |= set(victims)
        assert len(policy) == len(evictable)
        assert sorted(policy) == sorted(evictable)


def test_make_policy_errors_and_names():
    assert set(policy_names()) == {"lru", "lfu", "tinylfu", "hit-density"}
    assert DEFAULT_POLICY in policy_names()
    with pytest.raises(InvalidInputError, match="unknown eviction policy"):
        make_policy("fifo")
    with pytest.raises(InvalidInputError, match="policy 'lru'"):
        make_policy("lru", capacity=3)
    with pytest.raises(InvalidInputError, match="window_fraction"):
        make_policy("tinylfu", window_fraction=1.5)
    with pytest.raises(InvalidInputError, match="horizon_factor"):
        make_policy("hit-density", horizon_factor=0)


def test_a_policy_serves_one_cache_only():
    policy = LRUPolicy()
    KVCache(4, 4, policy=policy)
    with pytest.raises(InvalidInputError, match="already serves a cache"):
        KVCache(4, 4, policy=policy)


# ----------------------------------------------------------------------------- orders


def test_lru_evicts_in_release_order_and_reuse_moves_to_the_back():
    policy = bound(LRUPolicy())
    policy.on_release([3, 2, 1])  # tail first, as the cache releases a sequence
    policy.on_release([5, 4])
    policy.on_reuse([2])
    policy.on_release([2])
    assert list(policy) == [3, 1, 5, 4, 2]
    assert policy.evict(2) == [3, 1]
    assert policy.evict(3) == [5, 4, 2]
    assert len(policy) == 0


def test_lru_compacts_its_queue():
    policy = bound(LRUPolicy(), num_blocks=4)
    for _ in range(3000):
        policy.on_release([0, 1])
        policy.on_reuse([1])
        policy.on_release([1])
        assert policy.evict(2) == [0, 1]
    assert len(policy._queue) < 2100  # the consumed head is cut off, not kept forever


def test_lfu_evicts_the_least_used_first():
    policy = bound(LFUPolicy())
    policy.on_release([1, 2, 3])
    policy.on_reuse([2])
    policy.on_release([2])  # block 2 used twice
    policy.on_reuse([1])
    policy.on_release([1])  # block 1 used twice, more recently
    assert policy.evict(1) == [3]
    assert policy.evict(2) == [2, 1]


def test_frequency_sketch_never_underestimates_and_halves():
    sketch = FrequencySketch(capacity=64, sample_factor=10, seed=3)
    counts = {key: key % 7 for key in range(100)}
    for key, count in counts.items():
        for _ in range(count):
            sketch.increment(key)
    assert all(sketch.estimate(key) >= min(count, FrequencySketch.MAX_COUNT) for key, count in counts.items())
    assert sketch.estimate(5000) == 0 and sketch._counters.count(0) > 0
    sketch.increment(5000)
    assert sketch.estimate(5000) == 1  # the doorkeeper absorbs a first access
    key = 1000
    while sketch._additions < sketch.sample_size - 1:
        sketch.increment(key)  # one-time keys: they never reach the counters
        key += 1
    expected = np.frombuffer(bytes(sketch._counters), dtype=np.uint8).copy()
    for slot in sketch._slots(6):
        expected[slot] = min(expected[slot] + 1, FrequencySketch.MAX_COUNT)
    sketch.increment(6)  # the sample is full: every counter is halved (TinyLFU's reset)
    np.testing.assert_array_equal(np.frombuffer(bytes(sketch._counters), dtype=np.uint8), expected >> 1)
    assert sketch._additions == sketch.sample_size // 2
    assert (
        sketch.estimate(5000) == min(expected[slot] for slot in sketch._slots(5000)) >> 1
    )  # doorkeeper cleared


def test_tinylfu_protects_a_popular_prefix_from_a_scan():
    """A prefix asked for again and again survives one-time scans that flush it from LRU."""
    rng = np.random.default_rng(7)
    hot = [0, 1, 2, 3]
    requests = []
    next_id = 100
    for turn in range(300):
        if turn % 3 == 0:
            requests.append(hot + [next_id])
            next_id += 1
        else:
            length = int(rng.integers(8, 16))
            requests.append(list(range(next_id, next_id + length)))
            next_id += length
    lru = replay(requests, 24, "lru")
    tinylfu = replay(requests, 24, "tinylfu")
    assert tinylfu.hit_blocks > 2 * lru.hit_blocks


# ----------------------------------------------------------------------------- hit density


def _conversations_among_long_one_shots(seed: int) -> list[list[int]]:
    """Short conversations whose next turn comes back after a delay, interleaved with long
    one-shot prompts that are never reused: LRU wastes its space on the one-shots."""
    rng = np.random.default_rng(seed)
    next_id = 1
    conversations = []
    requests = []
    for step in range(2500):
        if step % 2 == 0 and (len(conversations) < 40 or rng.random() < 0.3):
            prompt = list(range(next_id, next_id + 4))
            next_id += 4
            conversations.append(prompt)
            requests.append(prompt)
        elif step % 2 == 0:
            index = int(rng.integers(len(conversations)))
            prompt = conversations[index] + [next_id]
            next_id += 1
            conversations[index] = prompt[:-1] + [next_id]  # the next turn rewrites the tail
            next_id += 1
            requests.append(prompt)
        else:
            requests.append(list(range(next_id, next_id + 40)))  # long, never seen again
            next_id += 40
    return requests


def test_hit_density_learns_what_comes_back():
    requests = _conversations_among_long_one_shots(seed=11)
    lru = replay(requests, 200, "lru")
    learned = replay(requests, 200, "hit-density")
    assert learned.hit_blocks > 1.5 * lru.hit_blocks


def test_hit_density_starts_as_lru():
    policy = bound(HitDensityPolicy(), num_blocks=64)  # first density table after 16 accesses
    policy.on_access([1003, 1002, 1001], 0)
    policy.on_release([3, 2, 1])
    policy.on_access([1004, 1005], 0)
    policy.on_release([5, 4])
    # No statistics yet: oldest release first, ties broken by class (the new tail first).
    assert policy.evict(3) == [1, 3, 2]
