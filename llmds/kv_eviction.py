"""Eviction policies for the cached, unreferenced blocks of a paged KV cache.

A block whose sequences have all finished keeps its KV and its prefix hash, so a later prompt
with the same prefix can reuse it. Such blocks are *evictable*: when the free list runs dry the
cache asks its policy for victims, drops their hashes and reuses them. The policy sees only
evictable blocks; blocks in use are pinned and never offered.

The interface (:class:`EvictionPolicy`) is called by :class:`llmds.kv_cache.KVCache` once per
sequence operation with a *list* of blocks, never once per block, so a policy pays one Python
call per request plus its per-block work:

- ``on_release(blocks)``: the blocks just became evictable, listed tail first (the deepest
  block of the sequence first, its first block last).
- ``on_reuse(blocks)``: evictable blocks a new sequence found in the prefix cache; they are in
  use again and must not be returned by ``evict`` until released again.
- ``evict(n)``: choose ``n`` victims among the evictable blocks and forget them.
- ``on_access(hashes, num_hit)``: only for policies with ``observes_accesses = True``: every
  new sequence's block hashes (the cached prefix of ``num_hit`` blocks first, then the
  blocks that missed), so a policy can learn frequencies and reuse distances from misses too.

Policies (name for :func:`make_policy`):

- ``lru``: least recently released first. With tail-first release this is what vLLM and other
  mainstream servers do: a finished prompt's deepest blocks leave before its shared prefix.
- ``lfu``: fewest uses (allocation plus prefix hits while cached) first, LRU among equals.
- ``tinylfu``: W-TinyLFU (Einziger, Friedman & Manes, "TinyLFU: A Highly Efficient Cache
  Admission Policy", ACM TOS 2017): a small LRU window for new blocks, then an LRU main region
  that a block from the window enters only if a count-min frequency sketch (Cormode &
  Muthukrishnan 2005) of recent block accesses rates it above the main region's victim.
- ``hit-density``: the workload-aware policy (see :class:`HitDensityPolicy`). It learns from
  every lookup, hits and misses alike, how often and how soon blocks of each kind come back
  (a prompt's first-seen tail block; other blocks by how often they were reused and by the
  length of their prompt) and evicts the block with the fewest expected hits per unit of
  cache space-time, after LHD (Beckmann, Chen & Cidon, "LHD: Improving Cache Hit Rate by
  Maximizing Hit Density", NSDI 2018).

The offline optimum (Belady's MIN) needs the future and lives in :mod:`llmds.kv_replay`.
"""

from __future__ import annotations

import bisect
import itertools
import math
import numbers
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from llmds.errors import InvalidInputError

_MASK64 = (1 << 64) - 1


def _drain(iterator: Iterator[Any]) -> None:
    """Run an iterator for its side effects at C speed (a map over ``dict.pop``, say)."""
    deque(iterator, maxlen=0)


class EvictionPolicy(ABC):
    """Chooses which cached, unreferenced blocks to evict. See the module docstring.

    A policy instance serves one cache: :meth:`bind` is called once by the cache with the
    number of blocks and the cache's live list of per-block hashes (``block_hashes[b]`` is the
    prefix hash block ``b`` holds, or None), which policies may read but never modify.
    ``len(policy)`` is the number of evictable blocks and iterating yields them.
    """

    name: ClassVar[str] = ""
    observes_accesses: ClassVar[bool] = False

    def __init__(self) -> None:
        self.num_blocks = 0
        self.block_hashes: list[Any] = []

    def bind(self, num_blocks: int, block_hashes: list[Any]) -> None:
        if self.num_blocks:
            raise InvalidInputError(
                f"this {self.name} policy already serves a cache; give each cache its own policy instance."
            )
        self.num_blocks = num_blocks
        self.block_hashes = block_hashes

    def on_access(self, hashes: Sequence[int], num_hit: int) -> None:
        """A new sequence looked up ``hashes``; the first ``num_hit`` were cached."""

    @abstractmethod
    def on_release(self, blocks: list[int]) -> None:
        """``blocks`` (tail first) just became evictable."""

    @abstractmethod
    def on_reuse(self, blocks: list[int]) -> None:
        """Evictable ``blocks`` are in use again."""

    @abstractmethod
    def evict(self, count: int) -> list[int]:
        """Remove and return ``count`` evictable blocks (the caller ensures enough exist)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __iter__(self) -> Iterator[int]: ...


class LRUPolicy(EvictionPolicy):
    """Least recently released first.

    The queue is a plain list of blocks in release order, consumed from a head index, with
    lazy deletion: a block taken back into use is not searched for; its queue entry is marked
    superseded (``_stale[block] += 1``) and skipped when the head reaches it, and its next
    release appends a fresh entry. Releases are then one C-level ``list.extend`` per sequence
    and evictions a short scan from the head, several times cheaper in Python than an
    ordered dict's per-block node updates. O(1) amortised per operation; the consumed prefix
    is cut off once it is the larger half of the list.
    """

    name = "lru"

    def __init__(self) -> None:
        super().__init__()
        self._queue: list[int] = []
        self._head = 0
        self._stale: list[int] = []
        self._num_stale = 0

    def bind(self, num_blocks: int, block_hashes: list[Any]) -> None:
        super().bind(num_blocks, block_hashes)
        self._stale = [0] * num_blocks

    def on_release(self, blocks: list[int]) -> None:
        self._queue += blocks

    def on_reuse(self, blocks: list[int]) -> None:
        stale = self._stale
        for block in blocks:
            stale[block] += 1
        self._num_stale += len(blocks)

    def evict(self, count: int) -> list[int]:
        queue, head = self._queue, self._head
        stale = self._stale
        victims = queue[head : head + count]
        # Usually no entry in reach is superseded: then the victims are one slice.
        if not self._num_stale or not any(map(stale.__getitem__, victims)):
            head += count
        else:
            victims = []
            while len(victims) < count:
                block = queue[head]
                head += 1
                if stale[block]:
                    stale[block] -= 1
                    self._num_stale -= 1
                else:
                    victims.append(block)
        if head > 1024 and 2 * head > len(queue):
            del queue[:head]
            head = 0
        self._head = head
        return victims

    def __len__(self) -> int:
        return len(self._queue) - self._head - self._num_stale

    def __iter__(self) -> Iterator[int]:
        """Evictable blocks in eviction order (replays the head's skipping on a copy)."""
        skips = list(self._stale)
        for block in itertools.islice(self._queue, self._head, None):
            if skips[block]:
                skips[block] -= 1
            else:
                yield block


class LFUPolicy(EvictionPolicy):
    """Fewest uses first (allocation and each prefix hit count one use), LRU among equals.

    Uses are counted while the block stays cached and forgotten when it is evicted, the
    classic in-cache LFU. Blocks wait in one LRU queue per use count; the smallest non-empty
    count is found with ``min`` over the few distinct counts present.
    """

    name = "lfu"

    def __init__(self) -> None:
        super().__init__()
        self._buckets: dict[int, OrderedDict[int, None]] = {}
        self._uses: list[int] = []
        self._size = 0

    def bind(self, num_blocks: int, block_hashes: list[Any]) -> None:
        super().bind(num_blocks, block_hashes)
        self._uses = [0] * num_blocks

    def on_release(self, blocks: list[int]) -> None:
        uses = self._uses
        buckets = self._buckets
        for block in blocks:
            count = uses[block] + 1
            uses[block] = count
            bucket = buckets.get(count)
            if bucket is None:
                bucket = buckets[count] = OrderedDict()
            bucket[block] = None
        self._size += len(blocks)

    def on_reuse(self, blocks: list[int]) -> None:
        uses = self._uses
        buckets = self._buckets
        for block in blocks:
            bucket = buckets[uses[block]]
            del bucket[block]
            if not bucket:
                del buckets[uses[block]]
        self._size -= len(blocks)

    def evict(self, count: int) -> list[int]:
        victims: list[int] = []
        buckets = self._buckets
        while len(victims) < count:
            least = min(buckets)
            bucket = buckets[least]
            chunk = list(itertools.islice(bucket, count - len(victims)))
            _drain(map(bucket.pop, chunk))
            if not bucket:
                del buckets[least]
            victims += chunk
        uses = self._uses
        for block in victims:
            uses[block] = 0
        self._size -= len(victims)
        return victims

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[int]:
        return itertools.chain.from_iterable(self._buckets[count] for count in sorted(self._buckets))


class FrequencySketch:
    """TinyLFU's frequency histogram: a doorkeeper plus a count-min sketch of 4-bit counters,
    halved periodically.

    The first access of a key only enters the *doorkeeper* (TinyLFU paper, section 3.4.2: a
    Bloom filter there; an exact set here, simpler and small at these sizes); later accesses
    increment ``depth`` counters of ``width`` (a power of two >= ``capacity``), saturating at
    15, and the estimate is the smallest of them plus one for the doorkeeper. Keeping one-time
    keys out of the counters is what makes the estimates usable on block traces, where most
    blocks are seen once. Every ``sample_factor * capacity`` accesses all counters are halved
    and the doorkeeper is cleared (TinyLFU's *reset*), so the sketch ranks keys by recent
    popularity. Row hashes are multiply-shift (Dietzfelbinger et al. 1997) with odd 64-bit
    multipliers from ``np.random.default_rng(seed)``. Pure Python: an estimate is a handful of
    list reads, cheaper than any call into numpy or numba.
    """

    MAX_COUNT = 15

    def __init__(self, capacity: int, depth: int = 4, sample_factor: int = 10, seed: int = 0) -> None:
        if capacity < 1 or depth < 1 or sample_factor < 1:
            raise InvalidInputError("FrequencySketch needs capacity, depth and sample_factor >= 1.")
        self.width_bits = max(4, (capacity - 1).bit_length())
        self.width = 1 << self.width_bits
        self.depth = depth
        rng = np.random.default_rng(seed)
        self._multipliers = [int(value) | 1 for value in rng.integers(1, 2**63, size=depth, dtype=np.int64)]
        self._shift = 64 - self.width_bits
        self._row_offsets = [row * self.width for row in range(depth)]
        self._counters = bytearray(depth * self.width)
        self._doorkeeper: set[int] = set()
        self.sample_size = sample_factor * capacity
        self._additions = 0

    def _slots(self, key: int) -> list[int]:
        folded = (key ^ (key >> 64)) & _MASK64
        shift = self._shift
        return [
            offset + (((folded * multiplier) & _MASK64) >> shift)
            for offset, multiplier in zip(self._row_offsets, self._multipliers, strict=True)
        ]

    def increment(self, key: int) -> None:
        if key in self._doorkeeper:
            counters = self._counters
            for slot in self._slots(key):
                if counters[slot] < self.MAX_COUNT:
                    counters[slot] += 1
        else:
            self._doorkeeper.add(key)
        self._additions += 1
        if self._additions >= self.sample_size:
            self._counters[:] = (np.frombuffer(self._counters, dtype=np.uint8) >> 1).tobytes()
            self._doorkeeper.clear()
            self._additions //= 2

    def estimate(self, key: int) -> int:
        return min(map(self._counters.__getitem__, self._slots(key))) + (key in self._doorkeeper)


class TinyLFUPolicy(EvictionPolicy):
    """W-TinyLFU over evictable blocks: an LRU window, TinyLFU admission, an LRU main region.

    Parameters
    ----------
    window_fraction:
        Share of the cache's blocks kept as the admission window; default 0.01, the paper's
        and Caffeine's choice.
    seed:
        Seed of the sketch's hash multipliers. Default 0.

    Released blocks enter the window (most recent last), except blocks already admitted,
    which return to main's most recent end. When the window outgrows its share, its oldest
    block faces TinyLFU's admission test against main's oldest block, the one main would give
    up next: if the sketch rates the newcomer more frequent it joins main's most recent end,
    otherwise it moves to a *rejected* queue, the first place victims are taken from (the
    paper's "not admitted", in a cache that evicts only when blocks in use need room).
    Victims come from the rejected queue, then main, then the window, oldest first. The
    sketch counts every block hash looked up, hits and misses alike (``on_access``), so a
    prefix that keeps being asked for is admitted even if it was evicted before.
    """

    name = "tinylfu"
    observes_accesses = True
    _WINDOW, _MAIN, _REJECTED = 0, 1, 2

    def __init__(self, window_fraction: float = 0.01, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(window_fraction, numbers.Real) or not 0.0 < window_fraction < 1.0:
            raise InvalidInputError(f"window_fraction must lie in (0, 1), got {window_fraction!r}.")
        self.window_fraction = float(window_fraction)
        self.seed = seed
        self._queues: tuple[OrderedDict[int, None], ...] = (OrderedDict(), OrderedDict(), OrderedDict())
        self._region = bytearray()
        self._window_target = 1
        self.sketch: FrequencySketch | None = None

    def bind(self, num_blocks: int, block_hashes: list[Any]) -> None:
        super().bind(num_blocks, block_hashes)
        self._region = bytearray(num_blocks)
        self._window_target = max(1, round(self.window_fraction * num_blocks))
        self.sketch = FrequencySketch(num_blocks, seed=self.seed)

    def on_access(self, hashes: Sequence[int], num_hit: int) -> None:
        increment = self.sketch.increment
        for block_hash in hashes:
            increment(block_hash)

    def on_release(self, blocks: list[int]) -> None:
        window, main, rejected = self._queues
        region = self._region
        for block in blocks:
            if region[block] == self._MAIN:  # admitted before: back to main's most recent end
                main[block] = None
            else:
                region[block] = self._WINDOW
                window[block] = None
        estimate = self.sketch.estimate
        block_hashes = self.block_hashes
        # Winners join main's far end, so main's oldest block, and its estimate, stay put.
        incumbent = estimate(block_hashes[next(iter(main))]) if main else None
        while len(window) > self._window_target:
            candidate = window.popitem(last=False)[0]
            if incumbent is not None and estimate(block_hashes[candidate]) <= incumbent:
                region[candidate] = self._REJECTED
                rejected[candidate] = None
            else:
                if incumbent is None:
                    incumbent = estimate(block_hashes[candidate])
                region[candidate] = self._MAIN
                main[candidate] = None

    def on_reuse(self, blocks: list[int]) -> None:
        queues, region = self._queues, self._region
        for block in blocks:
            del queues[region[block]][block]

    def evict(self, count: int) -> list[int]:
        victims: list[int] = []
        for queue in (self._queues[self._REJECTED], self._queues[self._MAIN], self._queues[self._WINDOW]):
            chunk = list(itertools.islice(queue, count - len(victims)))
            _drain(map(queue.pop, chunk))
            victims += chunk
            if len(victims) == count:
                break
        region = self._region
        for block in victims:
            region[block] = self._WINDOW  # a new tenant starts in the window
        return victims

    def __len__(self) -> int:
        return sum(map(len, self._queues))

    def __iter__(self) -> Iterator[int]:
        window, main, rejected = self._queues
        return itertools.chain(rejected, main, window)


class HitDensityPolicy(EvictionPolicy):
    """Evict the block with the lowest learned hit density, by block class and age.

    The open question of prefix caching on conversation traces is which finished prompts will
    be continued. Most blocks are never reused, and that is hard to tell at release time; what
    the workload does reveal online is how often, and how soon, blocks *of a kind* come back.
    This policy learns that and ranks evictable blocks by a *hit density* in the manner of LHD
    (Beckmann, Chen & Cidon, "LHD: Improving Cache Hit Rate by Maximizing Hit Density", NSDI
    2018): expected hits per unit of cache space-time, as a function of the block's class and
    of its age since release.

    Classes, from what a lookup reveals about a block:

    - a prompt's *tail* block seen for the first time is a class of its own: the next turn of
      a conversation rewrites it (the reply and the next message follow it), so it is almost
      never reused, while the interior blocks are the next turn's prefix (a tail seen before
      belongs to a repeated prompt and is classed like any other block);
    - other blocks are classed by how often their hash was looked up before within the
      learning horizon (0, 1, 2 or more: a prefix that was already reused is a conversation or
      a shared document still in play) and by the length of the prompt that last used them
      (under 8, under 32, 32 or more blocks: long prompts are continued less often).

    Learning is independent of what the cache keeps: the block hashes of every new sequence,
    hits and misses alike (``on_access``), go into a *ghost* table of hash -> (class, time of
    last access) that forgets entries older than the horizon (``horizon_factor * num_blocks``
    accesses, the clock counting block accesses). A lookup of a hash found in the ghost is a
    reuse at that age and enters its class's histogram of reuse ages (log2 buckets); an entry
    that expires counts as not reused. Every ``refresh_factor * num_blocks`` accesses the
    policy tabulates, per class c and age a,

        density(c, a) = (reuses of c at ages a .. a + T) /
                        (space-time those reuses occupy + unreused survivors * T)

    where T is the cache's recent mean eviction age (how long an ordinary block stays, kept as
    a moving average of victims' ages): the value of keeping a block is the hits it may bring
    before it would be evicted anyway. Histograms decay with a half-life of
    ``half_life_factor * num_blocks`` accesses, so the policy follows a changing workload.

    Blocks wait in one queue per class, oldest first; eviction takes the class head with the
    lowest density, together with the blocks behind it in the same age bucket (same density),
    then compares the heads again. Until the first table exists the order is LRU (by age
    bucket). Costs: O(1) amortised per access and per release; each run of victims compares
    the ten class heads. On Mooncake this bookkeeping makes a replay about three times as slow
    as LRU's.

    Measured on the Mooncake conversation trace (block hit rate at 1 / 5 / 10 / 25 % of its
    distinct blocks): LRU 0.0525 / 0.1958 / 0.2789 / 0.3535, this policy 0.1040 / 0.2145 /
    0.2807 / 0.3536, the offline optimum 0.2398 / 0.3664 / 0.3664 / 0.3664. The same policy fed
    tables computed from the whole trace in advance reaches only 0.227 at 5 %: which
    first turns get a follow-up is not predictable from what a lookup shows, and that, not the
    learning, bounds every class-based policy here.

    Parameters
    ----------
    horizon_factor:
        Ghost horizon in multiples of the cache's block count; reuse later than this counts as
        no reuse. Default 16.
    refresh_factor:
        Recompute the density tables every ``refresh_factor * num_blocks`` accesses. Default 0.25.
    half_life_factor:
        Half-life of the learned histograms, in multiples of the block count. Default 16.
    """

    name = "hit-density"
    observes_accesses = True
    _AGE_BUCKETS = 48  # bucket b holds ages [2**(b-1), 2**b); bucket 0 holds age 0
    _REUSE_LEVELS = 3  # looked up before 0, 1, 2+ times
    _LENGTH_LIMITS = (8, 32)  # prompt length classes: < 8, < 32, longer (in blocks)
    _NEW_TAIL = 0
    _CLASSES = 1 + _REUSE_LEVELS * (len(_LENGTH_LIMITS) + 1)
    _EVICTION_AGE_WEIGHT = 0.02  # of each eviction batch in the moving average

    def __init__(
        self, horizon_factor: float = 16.0, refresh_factor: float = 0.25, half_life_factor: float = 16.0
    ) -> None:
        super().__init__()
        for name, value in (
            ("horizon_factor", horizon_factor),
            ("refresh_factor", refresh_factor),
            ("half_life_factor", half_life_factor),
        ):
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 < value < math.inf:
                raise InvalidInputError(f"{name} must be a positive number, got {value!r}.")
        self.horizon_factor = float(horizon_factor)
        self.refresh_factor = float(refresh_factor)
        self.half_life_factor = float(half_life_factor)
        self._decay = 0.5 ** (self.refresh_factor / self.half_life_factor)
        self._queues: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(self._CLASSES)]
        self._class_of: list[int] = []
        self._released_at: list[int] = []
        self._ghost: OrderedDict[int, tuple[int, int, int]] = OrderedDict()
        # Reuse-age histogram, class-major (index class * buckets + bucket), and resolved
        # counts (reused or expired) per class: plain lists, updated once per access.
        self._histogram = [0.0] * (self._CLASSES * self._AGE_BUCKETS)
        self._resolved = [0.0] * self._CLASSES
        self._density: list[list[float]] | None = None
        self._eviction_age: float | None = None
        self._clock = 0
        self._next_refresh = 0
        self._size = 0
        self.horizon = 0
        self.refresh_every = 0

    def bind(self, num_blocks: int, block_hashes: list[Any]) -> None:
        super().bind(num_blocks, block_hashes)
        self._class_of = [0] * num_blocks
        self._released_at = [0] * num_blocks
        self.horizon = max(1, int(self.horizon_factor * num_blocks))
        self.refresh_every = max(1, int(self.refresh_factor * num_blocks))
        self._next_refresh = self.refresh_every

    # learning

    def on_access(self, hashes: Sequence[int], num_hit: int) -> None:
        if not hashes:
            return
        ghost = self._ghost
        clock = self._clock
        resolved = self._resolved
        expiry = clock - self.horizon
        while ghost:
            oldest_hash, oldest = ghost.popitem(last=False)
            if oldest[1] >= expiry:
                ghost[oldest_hash] = oldest
                ghost.move_to_end(oldest_hash, last=False)
                break
            resolved[oldest[0]] += 1  # expired: not reused within the horizon
        histogram = self._histogram
        buckets = self._AGE_BUCKETS
        top = self._REUSE_LEVELS - 1
        first_class = 1 + self._REUSE_LEVELS * sum(len(hashes) >= limit for limit in self._LENGTH_LIMITS)
        first_seen = (first_class, clock, 0)  # shared by every new hash of this request
        get = ghost.get
        move_to_end = ghost.move_to_end
        reuses = 0
        for block_hash in hashes:
            seen = get(block_hash)
            if seen is None:
                reuses = 0
                ghost[block_hash] = first_seen
            else:
                block_class, accessed_at, reuses = seen
                histogram[block_class * buckets + (clock - accessed_at).bit_length()] += 1
                resolved[block_class] += 1
                if reuses < top:
                    reuses += 1
                ghost[block_hash] = (first_class + reuses, clock, reuses)
                move_to_end(block_hash)
        if not reuses:  # the tail (the last hash), seen for the first time
            ghost[block_hash] = (self._NEW_TAIL, clock, 0)
        self._clock = clock + len(hashes)
        if self._clock >= self._next_refresh:
            self._refresh()

    def _refresh(self) -> None:
        """Tabulate density(class, age bucket) from the histograms, then decay them."""
        self._next_refresh = self._clock + self.refresh_every
        window = float(self.horizon if self._eviction_age is None else min(self._eviction_age, self.horizon))
        buckets = self._AGE_BUCKETS
        start = np.zeros(buckets)
        start[1:] = 2.0 ** np.arange(buckets - 1)
        middle = 1.5 * start  # mean age in a bucket, roughly
        reuses = np.asarray(self._histogram).reshape(self._CLASSES, buckets)
        resolved = np.asarray(self._resolved)
        zeros = np.zeros((self._CLASSES, 1))
        reuses_before = np.hstack([zeros, np.cumsum(reuses, axis=1)])  # [:, b] = reuses at buckets < b
        weighted_before = np.hstack([zeros, np.cumsum(reuses * middle, axis=1)])
        first = np.arange(buckets)
        last = np.searchsorted(start, start + window)  # buckets first .. last - 1 fall in the window
        hits = reuses_before[:, last] - reuses_before[:, first]
        survivors = resolved[:, None] - reuses_before[:, first]  # not reused before age a
        occupancy = (
            (weighted_before[:, last] - weighted_before[:, first])
            - hits * start
            + (survivors - hits) * window
        )
        self._density = np.where(occupancy > 0, hits / np.maximum(occupancy, 1e-12), 0.0).tolist()
        self._histogram = (reuses.ravel() * self._decay).tolist()
        self._resolved = (resolved * self._decay).tolist()

    # queues

    def on_release(self, blocks: list[int]) -> None:
        ghost = self._ghost
        block_hashes = self.block_hashes
        class_of = self._class_of
        released_at = self._released_at
        queues = self._queues
        clock = self._clock
        for block in blocks:
            seen = ghost.get(block_hashes[block])
            # A block outside the ghost (its lookup predates the horizon) is as good as new.
            block_class = seen[0] if seen is not None else self._NEW_TAIL
            class_of[block] = block_class
            released_at[block] = clock
            queues[block_class][block] = None
        self._size += len(blocks)

    def on_reuse(self, blocks: list[int]) -> None:
        queues = self._queues
        class_of = self._class_of
        for block in blocks:
            del queues[class_of[block]][block]
        self._size -= len(blocks)

    def evict(self, count: int) -> list[int]:
        queues = self._queues
        released_at = self._released_at
        clock = self._clock
        density = self._density
        last_bucket = self._AGE_BUCKETS - 1
        victims: list[int] = []
        while len(victims) < count:
            best_class, best = -1, math.inf
            for block_class, queue in enumerate(queues):
                if queue:
                    age = clock - released_at[next(iter(queue))]
                    # Before the first table: oldest first, i.e. LRU across classes.
                    value = (
                        -age if density is None else density[block_class][min(age.bit_length(), last_bucket)]
                    )
                    if value < best:
                        best_class, best = block_class, value
            queue = queues[best_class]
            # The queue is in release order, so the blocks that share the head's age bucket
            # (and so its density) form a run at its front: evict that run in one go.
            chunk = list(itertools.islice(queue, count - len(victims)))
            bucket = (clock - released_at[chunk[0]]).bit_length()
            youngest_release = clock - (1 << (bucket - 1)) if bucket else clock
            if released_at[chunk[-1]] > youngest_release:
                chunk = chunk[: bisect.bisect_right(chunk, youngest_release, key=released_at.__getitem__)]
            _drain(map(queue.pop, chunk))
            victims += chunk
        self._size -= count
        mean_age = clock - sum(map(released_at.__getitem__, victims)) / count
        weight = self._EVICTION_AGE_WEIGHT
        self._eviction_age = (
            mean_age if self._eviction_age is None else (1 - weight) * self._eviction_age + weight * mean_age
        )
        return victims

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[int]:
        return itertools.chain.from_iterable(self._queues)


_POLICIES: dict[str, type[EvictionPolicy]] = {
    policy.name: policy for policy in (LRUPolicy, LFUPolicy, TinyLFUPolicy, HitDensityPolicy)
}
DEFAULT_POLICY = "lru"
"""The default: as fast as the cache's own bookkeeping and what mainstream servers do.
``hit-density`` hits more often when the cache is tight (Mooncake at 1 % of its distinct
blocks: about twice LRU's hits; never fewer at 1-25 %) but spends a few times LRU's time per
block, mostly learning from every lookup."""


def policy_names() -> list[str]:
    """Names accepted by :func:`make_policy` (and by ``KVCache(policy=...)``)."""
    return list(_POLICIES)


def make_policy(name: str, seed: int = 0, **params: Any) -> EvictionPolicy:
    """A new policy instance by name; ``params`` go to its constructor; ``seed`` to those that
    draw random numbers."""
    try:
        policy_class = _POLICIES[name]
    except KeyError:
        raise InvalidInputError(f"unknown eviction policy {name!r}; use one of {policy_names()}.") from None
    if policy_class is TinyLFUPolicy:
        params.setdefault("seed", seed)
    try:
        return policy_class(**params)
    except TypeError as exc:
        raise InvalidInputError(f"policy {name!r}: {exc}") from None
