"""Replay request traces through the paged KV cache: hit rates, their bounds, memory use.

Prefix-hit replay (:func:`replay`) follows the convention of the reference figures for the
Mooncake conversation trace (Qin et al., "Mooncake: Trading More Storage for Less Computation",
FAST 2025), whose requests list ``hash_ids``, one id per 512-token block, equal leading ids
meaning a shared prefix: requests are served one at a time; each looks up the longest cached
prefix of its ids (those blocks are hits), allocates the rest (evicting cached blocks as
needed), and is freed at once, tail block first, so its blocks stay cached until evicted.
Every id counts as a cacheable block (the trace's last block is usually partial, but it has
its own id and the reference figures count it). Block hit rate = hit blocks / block
references. With LRU this reproduces vLLM's own block pool, run on the same trace the same
way: 0.0525 / 0.1958 / 0.2789 / 0.3535 of blocks at 1 / 5 / 10 / 25 % of the 182,790
distinct blocks.

Bounds, computed on the same replay:

- :func:`infinite_cache_hits`: every block seen before is still cached; the most any policy
  can hit (for Mooncake 1 - 182,790 / 288,500 = 0.366).
- :class:`BeladyPolicy` / :func:`belady_replay`: the offline optimum at a finite capacity,
  Belady's MIN ("A study of replacement algorithms for a virtual-storage computer", IBM
  Systems Journal 1966): evict the cached block whose next use lies farthest in the future.
  Next uses are positions in the flattened trace, so a child block (later in the same
  request) always looks farther than its parent and leaves first; the cache therefore stays
  prefix-closed and every block MIN keeps for a request is a prefix hit.

Memory utilisation (:func:`memory_utilisation`): tokens stored / tokens reserved, for the
paged cache (a request holds ceil(tokens / block_size) blocks) against the contiguous
pre-allocation baseline that reserves the model's maximum length for every request (what
servers did before PagedAttention, Kwon et al., SOSP 2023).
"""

from __future__ import annotations

import heapq
import itertools
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmds.errors import InvalidInputError
from llmds.kv_cache import KVCache, check_block_hashes
from llmds.kv_eviction import DEFAULT_POLICY, EvictionPolicy

BlockTrace = Sequence[Sequence[int]]
"""A trace for :func:`replay`: one list of chained block hashes per request, in arrival order."""


@dataclass(frozen=True)
class ReplayResult:
    """Outcome of one replay. ``block_ops`` = lookups + allocated + released blocks."""

    policy: str
    capacity_blocks: int
    requests: int
    block_references: int
    hit_blocks: int
    lookups: int
    allocated_blocks: int
    released_blocks: int
    evicted_blocks: int
    seconds: float
    storage_bytes: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit_blocks / self.block_references if self.block_references else 0.0

    @property
    def block_ops(self) -> int:
        return self.lookups + self.allocated_blocks + self.released_blocks

    @property
    def block_ops_per_second(self) -> float:
        return self.block_ops / self.seconds if self.seconds > 0 else float("inf")


def check_block_trace(requests: BlockTrace) -> list[list[int]]:
    """The trace as lists of ints, or InvalidInputError naming the first bad request (0-based)."""
    if isinstance(requests, (str, bytes)) or not isinstance(requests, Sequence):
        raise InvalidInputError("requests must be a list of per-request block-hash lists.")
    return [check_block_hashes(hashes, f"request {index}") for index, hashes in enumerate(requests)]


def distinct_blocks(requests: BlockTrace) -> int:
    """Number of distinct block hashes in the trace."""
    return len(set(itertools.chain.from_iterable(requests)))


def capacity_for(requests: BlockTrace, fraction: float) -> int:
    """Cache capacity as ``int(fraction * distinct blocks)`` (5 % of Mooncake = 9,139 blocks)."""
    if not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise InvalidInputError(f"capacity fraction must lie in (0, 1], got {fraction!r}.")
    return max(1, int(distinct_blocks(requests) * fraction))


def infinite_cache_hits(requests: BlockTrace) -> int:
    """Prefix hits with unlimited capacity: every block seen before is still cached."""
    seen: set[int] = set()
    hits = 0
    for hashes in requests:
        for block_hash in hashes:
            if block_hash not in seen:
                break
            hits += 1
        seen.update(hashes)
    return hits


def replay(
    requests: BlockTrace,
    capacity_blocks: int,
    policy: str | EvictionPolicy = DEFAULT_POLICY,
    *,
    block_size: int = 512,
    seed: int = 0,
    model: Any = None,
    storage: bool = False,
) -> ReplayResult:
    """Serve ``requests`` one at a time through a :class:`~llmds.kv_cache.KVCache`.

    Parameters
    ----------
    requests:
        One list of chained block hashes per request (Mooncake's ``hash_ids``), in order.
        Every request is checked before the clock starts; an error names the request (0-based).
    capacity_blocks:
        Blocks in the cache; at least the longest request (it must fit while it runs).
    policy:
        Eviction policy name or instance (a :class:`BeladyPolicy` for the optimum). Default LRU.
    block_size:
        Tokens per block; only sizes the token counts (Mooncake: 512). Default 512.
    seed:
        Passed to the cache for randomised policies. Default 0.
    model, storage:
        As for :class:`~llmds.kv_cache.KVCache`: with ``storage=True`` the pool holds real
        float16 KV bytes for ``model`` (a memory profile then sees what a server would hold).
        Default no storage.

    The time covers the allocate / free loop only (the cache is built before the clock starts).
    """
    requests = check_block_trace(requests)
    longest = max(map(len, requests), default=0)
    if not isinstance(capacity_blocks, numbers.Integral) or capacity_blocks < max(1, longest):
        raise InvalidInputError(
            f"capacity_blocks={capacity_blocks!r} cannot hold the longest request ({longest} blocks); "
            "use a larger capacity."
        )
    cache = KVCache(int(capacity_blocks), block_size, policy=policy, seed=seed, model=model, storage=storage)
    # Validated above, so the timed loop skips the per-request checks.
    allocate = cache._allocate_blocks
    free = cache.free
    start = time.perf_counter_ns()
    for request_id, hashes in enumerate(requests):
        allocate(request_id, hashes)
        free(request_id)
    seconds = (time.perf_counter_ns() - start) / 1e9
    stats = cache.stats()
    return ReplayResult(
        policy=cache.policy.name,
        capacity_blocks=int(capacity_blocks),
        requests=len(requests),
        block_references=sum(map(len, requests)),
        hit_blocks=stats.hit_blocks,
        lookups=stats.lookups,
        allocated_blocks=stats.allocated_blocks,
        released_blocks=stats.released_blocks,
        evicted_blocks=stats.evicted_blocks,
        seconds=seconds,
        storage_bytes=0 if cache.storage is None else int(cache.storage.nbytes),
    )


class BeladyPolicy(EvictionPolicy):
    """Belady's MIN for one known trace: evict the block whose next use is farthest away.

    Built from the exact ``requests`` that will be replayed; each ``on_access`` must match the
    next request of the trace (checked), since next uses are positions in it. Evictable blocks
    sit in a max-heap on next use with lazy deletion: a reused block's old entry is skipped
    when it surfaces. Blocks never used again rank farthest.
    """

    name = "belady"
    observes_accesses = True

    def __init__(self, requests: BlockTrace) -> None:
        super().__init__()
        self._requests = [list(hashes) for hashes in requests]
        flat = list(itertools.chain.from_iterable(self._requests))
        never = len(flat)
        following = [never] * len(flat)
        last_seen: dict[int, int] = {}
        for position in range(len(flat) - 1, -1, -1):
            following[position] = last_seen.get(flat[position], never)
            last_seen[flat[position]] = position
        self._following = following
        self._next_use: dict[int, int] = {}
        self._request_index = 0
        self._position = 0
        self._heap: list[tuple[int, int, int]] = []
        self._stamp: list[int] = []
        self._evictable: list[bool] = []
        self._size = 0

    def bind(self, num_blocks: int, block_hashes: list[Any]) -> None:
        super().bind(num_blocks, block_hashes)
        self._stamp = [0] * num_blocks
        self._evictable = [False] * num_blocks

    def on_access(self, hashes: Sequence[int], num_hit: int) -> None:
        index = self._request_index
        if index >= len(self._requests) or self._requests[index] != list(hashes):
            raise InvalidInputError(
                f"BeladyPolicy replays a fixed trace, but lookup {index} does not match request "
                f"{index} of that trace; build the policy from the requests you replay."
            )
        next_use = self._next_use
        start = self._position
        following = self._following
        for offset, block_hash in enumerate(hashes):
            next_use[block_hash] = following[start + offset]
        self._position = start + len(hashes)
        self._request_index = index + 1

    def on_release(self, blocks: list[int]) -> None:
        next_use = self._next_use
        block_hashes = self.block_hashes
        stamp = self._stamp
        evictable = self._evictable
        heap = self._heap
        for block in blocks:
            stamp[block] += 1
            evictable[block] = True
            heapq.heappush(heap, (-next_use[block_hashes[block]], block, stamp[block]))
        self._size += len(blocks)
        if len(heap) > 4 * self._size + 1024:
            # Drop stale entries so the heap stays proportional to the evictable set.
            self._heap = [entry for entry in heap if evictable[entry[1]] and stamp[entry[1]] == entry[2]]
            heapq.heapify(self._heap)

    def on_reuse(self, blocks: list[int]) -> None:
        evictable = self._evictable
        for block in blocks:
            evictable[block] = False
        self._size -= len(blocks)

    def evict(self, count: int) -> list[int]:
        heap = self._heap
        evictable = self._evictable
        stamp = self._stamp
        victims = []
        while len(victims) < count:
            _, block, entry_stamp = heapq.heappop(heap)
            if evictable[block] and stamp[block] == entry_stamp:
                evictable[block] = False
                victims.append(block)
        self._size -= count
        return victims

    def __len__(self) -> int:
        return self._size

    def __iter__(self):
        return (block for block in range(self.num_blocks) if self._evictable[block])


def belady_replay(requests: BlockTrace, capacity_blocks: int, *, block_size: int = 512) -> ReplayResult:
    """:func:`replay` under :class:`BeladyPolicy`: the offline optimum's hits at this capacity."""
    return replay(requests, capacity_blocks, BeladyPolicy(requests), block_size=block_size)


# ----------------------------------------------------------------------------- memory utilisation


@dataclass(frozen=True)
class MemoryUtilisation:
    """Tokens stored / tokens reserved, paged against contiguous max-length reservation.

    Each request is measured at its end (prompt plus all generated tokens), when its footprint
    is largest. ``too_long`` requests exceed ``max_model_len`` and are left out of both
    figures (neither layout could serve them with that model).
    """

    block_size: int
    max_model_len: int
    requests: int
    too_long: int
    tokens: int
    paged_reserved_tokens: int
    contiguous_reserved_tokens: int

    @property
    def paged(self) -> float:
        return self.tokens / self.paged_reserved_tokens if self.paged_reserved_tokens else 1.0

    @property
    def contiguous(self) -> float:
        return self.tokens / self.contiguous_reserved_tokens if self.contiguous_reserved_tokens else 1.0


def _token_counts(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise InvalidInputError(
            f"{name} must be a 1-D sequence of integers, got dtype {array.dtype}, shape {array.shape}."
        )
    if array.size and array.min() < 0:
        row = int(np.argmin(array))
        raise InvalidInputError(f"{name}[{row}] = {array[row]} is negative; token counts must be >= 0.")
    return array.astype(np.int64)


def memory_utilisation(
    context_tokens: Sequence[int],
    generated_tokens: Sequence[int],
    block_size: int = 16,
    max_model_len: int = 8192,
) -> MemoryUtilisation:
    """Utilisation of a paged cache vs contiguous pre-allocation over a trace's lengths.

    Parameters
    ----------
    context_tokens, generated_tokens:
        Prompt and output lengths per request (Azure traces: ContextTokens, GeneratedTokens).
    block_size:
        Tokens per block of the paged cache. Default 16.
    max_model_len:
        What the contiguous baseline reserves for every request: the model's context window.
        Default 8192 (Llama-3-8B); longer requests are counted in ``too_long`` and skipped.

    The paged figure is measured by driving a real :class:`~llmds.kv_cache.KVCache` (allocate
    the prompt, append the output, read the block table, free), one request at a time.
    """
    context = _token_counts("context_tokens", context_tokens)
    generated = _token_counts("generated_tokens", generated_tokens)
    if len(context) != len(generated):
        raise InvalidInputError(
            f"context_tokens has {len(context)} entries but generated_tokens has {len(generated)}; "
            "pass one of each per request."
        )
    for name, value in (("block_size", block_size), ("max_model_len", max_model_len)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise InvalidInputError(f"{name} must be a positive integer, got {value!r}.")
    cache = KVCache(-(-int(max_model_len) // int(block_size)), int(block_size), enable_prefix_caching=False)
    tokens = paged_reserved = served = 0
    for request, (prompt, output) in enumerate(zip(context.tolist(), generated.tolist(), strict=True)):
        if prompt + output > max_model_len:
            continue
        cache.allocate(request, prompt)
        cache.append(request, output)
        paged_reserved += len(cache.block_table(request)) * cache.block_size
        tokens += prompt + output
        served += 1
        cache.free(request)
    return MemoryUtilisation(
        block_size=cache.block_size,
        max_model_len=int(max_model_len),
        requests=len(context),
        too_long=len(context) - served,
        tokens=tokens,
        paged_reserved_tokens=paged_reserved,
        contiguous_reserved_tokens=served * int(max_model_len),
    )
