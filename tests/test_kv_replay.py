"""Tests for llmds.kv_replay: trace replay, the optimum and infinite bounds, memory utilisation."""

from __future__ import annotations

import csv
import itertools
import json
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.errors import InvalidInputError
from llmds.kv_eviction import policy_names
from llmds.kv_replay import (
    BeladyPolicy,
    belady_replay,
    capacity_for,
    check_block_trace,
    distinct_blocks,
    infinite_cache_hits,
    memory_utilisation,
    replay,
)

# ----------------------------------------------------------------------------- small traces


def test_lru_replay_by_hand():
    requests = [[1, 2], [3, 4], [5], [1, 2]]
    result = replay(requests, 4, "lru")
    # Request 2 needs one block: LRU evicts hash 2 (request 0's tail, released first), so
    # request 3 finds only hash 1. MIN evicts a never-used block instead and hits both.
    assert result.hit_blocks == 1 and result.block_references == 7
    assert result.lookups == 1 + 1 + 1 + 2 and result.allocated_blocks == 6 and result.released_blocks == 7
    assert result.block_ops == result.lookups + result.allocated_blocks + result.released_blocks
    assert result.hit_rate == pytest.approx(1 / 7)
    assert belady_replay(requests, 4).hit_blocks == 2
    assert infinite_cache_hits(requests) == 2


def test_infinite_cache_counts_only_prefix_hits():
    requests = [[1, 2, 3], [1, 2, 3], [1, 9], [4, 8]]
    assert infinite_cache_hits(requests) == 3 + 1 + 0
    assert distinct_blocks(requests) == 6
    assert capacity_for(requests, 0.5) == 3
    with pytest.raises(InvalidInputError, match="fraction"):
        capacity_for(requests, 0)


def test_replay_rejects_bad_traces_naming_the_request():
    with pytest.raises(InvalidInputError, match="request 1: the list of block hashes is empty"):
        replay([[1], []], 4)
    with pytest.raises(InvalidInputError, match="request 0"):
        check_block_trace([[1, -5]])
    with pytest.raises(InvalidInputError, match="longest request"):
        replay([[1, 2, 3]], 2)
    with pytest.raises(InvalidInputError, match="per-request"):
        replay("not a trace", 4)


def test_belady_policy_refuses_a_different_trace():
    with pytest.raises(InvalidInputError, match="lookup 1 does not match request 1"):
        replay([[1, 2], [3]], 4, BeladyPolicy([[1, 2], [4]]))


@st.composite
def prefix_traces(draw):
    """Requests that extend a prefix of an earlier request with fresh blocks, so that equal
    hashes always mean equal prefixes, as chained hashes guarantee."""
    requests: list[list[int]] = []
    fresh = itertools.count()
    for _ in range(draw(st.integers(1, 6))):
        prefix: list[int] = []
        if requests and draw(st.booleans()):
            base = draw(st.sampled_from(requests))
            prefix = base[: draw(st.integers(1, len(base)))]
        extra = draw(st.integers(0 if prefix else 1, 3))
        requests.append(prefix + [next(fresh) for _ in range(extra)])
    capacity = draw(st.integers(max(map(len, requests)), max(map(len, requests)) + 4))
    return requests, capacity


def optimal_hits(requests: list[list[int]], capacity: int) -> int:
    """Exhaustive optimum: after each request, try every way to make room."""

    @cache
    def best(index: int, cached: frozenset) -> int:
        if index == len(requests):
            return 0
        hashes = requests[index]
        hits = sum(1 for _ in itertools.takewhile(cached.__contains__, hashes))
        resident = cached | set(hashes)
        excess = len(resident) - capacity
        if excess <= 0:
            return hits + best(index + 1, frozenset(resident))
        optional = sorted(cached - set(hashes))
        return hits + max(
            best(index + 1, resident - set(drop)) for drop in itertools.combinations(optional, excess)
        )

    return best(0, frozenset())


@settings(max_examples=150, deadline=None)
@given(prefix_traces())
def test_belady_is_optimal_and_bounds_every_online_policy(trace):
    requests, capacity = trace
    optimum = belady_replay(requests, capacity).hit_blocks
    assert optimum == optimal_hits(requests, capacity)
    assert optimum <= infinite_cache_hits(requests)
    for name in policy_names():
        assert replay(requests, capacity, name).hit_blocks <= optimum


def test_infinite_bound_is_reached_by_a_cache_that_holds_everything():
    requests = [[0, 1, 2], [0, 1, 3], [4], [0, 1, 2, 5], [4, 6]]
    everything = distinct_blocks(requests)
    for name in policy_names():
        assert replay(requests, everything, name).hit_blocks == infinite_cache_hits(requests) == 2 + 3 + 1


# ----------------------------------------------------------------------------- memory utilisation


def test_memory_utilisation_by_hand():
    result = memory_utilisation([10, 30, 5000], [5, 3, 5000], block_size=16, max_model_len=64)
    assert result.too_long == 1 and result.tokens == 15 + 33
    assert result.paged_reserved_tokens == 16 + 48
    assert result.contiguous_reserved_tokens == 2 * 64
    assert result.paged == pytest.approx(48 / 64) and result.contiguous == pytest.approx(48 / 128)


def test_memory_utilisation_rejects_bad_lengths():
    with pytest.raises(InvalidInputError, match=r"context_tokens\[1\] = -4"):
        memory_utilisation([3, -4], [1, 1])
    with pytest.raises(InvalidInputError, match="one of each per request"):
        memory_utilisation([3], [1, 1])
    with pytest.raises(InvalidInputError, match="block_size"):
        memory_utilisation([3], [1], block_size=0)


# ----------------------------------------------------------------------------- real data


def _mooncake(shared_data: Path) -> list[list[int]]:
    path = shared_data / "traces" / "mooncake_conversation_trace.jsonl"
    with open(path) as handle:
        return [json.loads(line)["hash_ids"] for line in handle]


@pytest.mark.realdata
def test_mooncake_reproduces_the_reference_figures(shared_data):
    requests = _mooncake(shared_data)
    assert sum(map(len, requests)) == 288_500 and distinct_blocks(requests) == 182_790
    assert infinite_cache_hits(requests) == 288_500 - 182_790  # every repeated block is a prefix hit
    capacity = capacity_for(requests, 0.05)
    assert capacity == 9_139
    lru = replay(requests, capacity, "lru")
    assert lru.hit_rate == pytest.approx(0.1958, abs=0.002)  # vLLM's block pool: 0.1958
    optimum = belady_replay(requests, capacity)
    assert optimum.hit_rate == pytest.approx(0.3664, abs=0.002)  # the infinite-cache bound
    assert optimum.hit_blocks >= lru.hit_blocks


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.10, 0.25])
def test_hit_density_is_no_worse_than_lru_on_mooncake(shared_data, fraction):
    requests = _mooncake(shared_data)
    capacity = capacity_for(requests, fraction)
    learned = replay(requests, capacity, "hit-density")
    lru = replay(requests, capacity, "lru")
    assert learned.hit_blocks >= lru.hit_blocks
    if fraction <= 0.05:
        assert learned.hit_rate >= lru.hit_rate + 0.015  # where the cache is tight it clearly helps


@pytest.mark.realdata
def test_azure_conversation_memory_utilisation(shared_data):
    with open(shared_data / "traces" / "AzureLLMInferenceTrace_conv.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    context = [int(row["ContextTokens"]) for row in rows]
    generated = [int(row["GeneratedTokens"]) for row in rows]
    result = memory_utilisation(context, generated, block_size=16, max_model_len=16384)
    assert result.too_long == 0 and result.requests == 19_366
    assert result.paged >= 0.95
    assert result.contiguous < 0.15  # max-length reservation wastes most of the memory
