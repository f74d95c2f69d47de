"""Paged KV cache: block pool, sequences, chained-hash prefix cache, copy-on-write, token budget.

The structure LLM servers use to hold attention keys and values (PagedAttention: Kwon et al.,
"Efficient Memory Management for Large Language Model Serving with PagedAttention", SOSP 2023).
A sequence's KV is not one contiguous reservation of the maximum length but a *block table*: a
list of fixed-size blocks taken from a shared pool, so memory is reserved one block at a time
and only the last block of a sequence is ever partly empty.

Parts, from the bottom up:

- :class:`BlockPool`: ``num_blocks`` blocks of ``block_size`` tokens, an O(1) free list (a
  stack) and one reference count per block. With ``storage=True`` the pool owns a real float16
  array of shape ``(num_blocks, block_size, per_token_width)``, where the per-token width is
  ``2 (K and V) * layers * kv_heads * head_dim`` of a :class:`ModelShape` (presets in
  :data:`MODEL_PRESETS`), so memory profiles show the bytes a server would hold.
- Sequences (:class:`KVCache`): ``allocate`` a prompt, ``append`` decoded tokens (a new block
  when the last one is full), ``fork`` a sequence for parallel sampling or beam search (the
  child shares every block; each physical block's count rises by one), ``free`` it (each of
  its references is released exactly once; freeing a sequence that is not live is an error).
- Copy-on-write: a sequence that writes into a block another sequence also references, or
  into a block it obtained from the prefix cache, first gets a private copy (a real data copy
  when storage is on), so writing through one sequence never changes what another one reads.
- Prefix cache (automatic prefix caching as in vLLM; RadixAttention in SGLang, Zheng et al.,
  "SGLang: Efficient Execution of Structured Language Model Programs", NeurIPS 2024, shares
  prefixes the same way with a radix tree): every *full* block gets a chained hash of
  (parent block's hash, the block's token ids, extra keys such as an adapter id or a tenant
  salt), so equal hashes mean equal prefixes, not merely equal blocks. A lookup returns the
  longest cached prefix of a prompt but never the whole prompt: the last prompt token is always
  recomputed, because the model needs its logits to produce the first output token. When a
  sequence is freed its hashed blocks stay in the cache, unreferenced, until the eviction
  policy (:mod:`llmds.kv_eviction`) gives them back to the free list because a new block is
  needed; sequences release their blocks tail first, so under LRU the deepest blocks of a
  prompt leave before the shared prefix they hang off.
- Token budget: with ``token_budget`` set, the cache keeps the tokens held by live sequences
  within the budget by freeing whole sequences, least recently used first (token-aware LRU
  across sequences); the ids of those sequences are handed to the caller by
  :meth:`KVCache.drain_preempted` so a scheduler can re-queue them.

Why the hash is blake2b truncated to 128 bits (:func:`chain_block_hashes`): a collision in a
prefix cache silently serves one prompt's KV to another prompt, which is both a wrong answer
and, across tenants, a data leak. Python's built-in ``hash`` is salted per process (so hashes
cannot be saved or shared between workers) and is not collision resistant, so a crafted prompt
could collide on purpose. A cryptographic hash rules out crafted collisions; keeping 128 bits
keeps the chance of an accidental collision below 2**-64 even after 2**32 distinct blocks
(birthday bound), while 64 bits would already reach about 1 in 10**10 at a million blocks and
grow quadratically from there. 128-bit Python integers stay cheap dictionary keys.

Hot paths (allocate, free) work on plain Python lists indexed by block id and call the
eviction policy once per sequence with a list of blocks, never once per block: that keeps the
per-block cost to a few list and dict operations, which is what makes replaying a whole
production trace take well under a second.
"""

from __future__ import annotations

import hashlib
import numbers
import os
from array import array
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmds.checks import integer_argument
from llmds.errors import CorruptIndexError, InvalidInputError, LlmdsError
from llmds.kv_eviction import DEFAULT_POLICY, EvictionPolicy, make_policy, policy_names
from llmds.persist import load_arrays, save_arrays

_KIND = "kv_cache"
_FORMAT_VERSION = 1
HASH_BYTES = 16
"""Bytes kept of each blake2b block digest (128 bits; see the module docstring for why)."""
_MAX_HASH = 1 << (8 * HASH_BYTES)
_ROOT_PERSON = b"llmds-kv-root"


class CacheFullError(LlmdsError):
    """Not enough free or evictable blocks for an operation; nothing was changed."""


class KVCacheInvariantError(AssertionError):
    """:meth:`KVCache.check` found the cache's bookkeeping inconsistent (a bug, not bad input)."""


# ----------------------------------------------------------------------------- model shapes


@dataclass(frozen=True)
class ModelShape:
    """The attention shape that fixes how many bytes one token's KV takes.

    ``num_layers``: transformer layers; ``num_kv_heads``: key/value heads per layer (fewer
    than query heads under grouped-query attention); ``head_dim``: size of one head. One token
    stores a key and a value vector per KV head per layer in float16.
    """

    name: str
    num_layers: int
    num_kv_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        for field in ("num_layers", "num_kv_heads", "head_dim"):
            value = getattr(self, field)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(
                    f"model {self.name!r}: {field} must be a positive integer, got {value!r}."
                )

    @property
    def per_token_width(self) -> int:
        """float16 values per token: 2 (K and V) * layers * kv_heads * head_dim."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.per_token_width


MODEL_PRESETS: dict[str, ModelShape] = {
    shape.name: shape
    for shape in (
        # Shapes from the models' published configs (num_hidden_layers, num_key_value_heads,
        # hidden_size / num_attention_heads).
        ModelShape("llama-3-8b", 32, 8, 128),
        ModelShape("mistral-7b", 32, 8, 128),
        ModelShape("qwen2-7b", 28, 4, 128),
        ModelShape("llama-2-7b", 32, 32, 128),
        # Small enough to keep real storage for thousands of blocks in tests and profiles.
        ModelShape("tiny", 2, 2, 8),
    )
}


def resolve_model(model: str | ModelShape | Mapping[str, Any]) -> ModelShape:
    """A :class:`ModelShape` from a preset name, a shape, or a mapping with its three fields."""
    if isinstance(model, ModelShape):
        return model
    if isinstance(model, str):
        try:
            return MODEL_PRESETS[model]
        except KeyError:
            raise InvalidInputError(
                f"unknown model preset {model!r}; use one of {sorted(MODEL_PRESETS)} or pass "
                "a mapping with num_layers, num_kv_heads and head_dim."
            ) from None
    if isinstance(model, Mapping):
        missing = {"num_layers", "num_kv_heads", "head_dim"} - set(model)
        if missing:
            raise InvalidInputError(f"custom model shape is missing {sorted(missing)}.")
        return ModelShape(
            str(model.get("name", "custom")), model["num_layers"], model["num_kv_heads"], model["head_dim"]
        )
    raise InvalidInputError(
        f"model must be a preset name, a ModelShape or a mapping, got {type(model).__name__}."
    )


# ----------------------------------------------------------------------------- hashing


def _encode_extra_key(key: Any) -> bytes:
    if isinstance(key, bool) or not isinstance(key, (str, bytes, numbers.Integral)):
        raise InvalidInputError(
            f"extra key {key!r} must be a str, bytes or int (an adapter id, a tenant salt, ...)."
        )
    if isinstance(key, str):
        tag, payload = b"s", key.encode("utf-8", "surrogatepass")
    elif isinstance(key, bytes):
        tag, payload = b"b", key
    else:
        tag, payload = b"i", str(int(key)).encode()
    # Type tag and length prefix keep ("ab",) and ("a", "b") or 1 and "1" distinct.
    return tag + len(payload).to_bytes(8, "little") + payload


def root_hash(extra_keys: Sequence[Any] = ()) -> int:
    """Parent hash of a sequence's first block: extra keys enter the chain here.

    Because every block's hash covers its parent's, keys mixed into the root (an adapter id,
    a per-tenant salt) separate every block of the sequence, not only the first.
    """
    digest = hashlib.blake2b(digest_size=HASH_BYTES, person=_ROOT_PERSON[:16])
    for key in extra_keys:
        digest.update(_encode_extra_key(key))
    return int.from_bytes(digest.digest(), "little")


def _hash_block(parent: int, tokens: array) -> int:
    digest = hashlib.blake2b(parent.to_bytes(HASH_BYTES, "little"), digest_size=HASH_BYTES)
    digest.update(tokens.tobytes())
    return int.from_bytes(digest.digest(), "little")


def _token_array(tokens: Any, what: str) -> array:
    try:
        packed = array("q", tokens)
    except (TypeError, OverflowError) as exc:
        raise InvalidInputError(
            f"{what}: token ids must be non-negative integers below 2**63 ({exc})."
        ) from None
    if packed and min(packed) < 0:
        raise InvalidInputError(f"{what}: token ids must be non-negative, got {min(packed)}.")
    return packed


def chain_block_hashes(tokens: Sequence[int], block_size: int, extra_keys: Sequence[Any] = ()) -> list[int]:
    """Chained 128-bit hashes of the full blocks of ``tokens`` (a partial tail gets none).

    ``hash[i] = blake2b(hash[i-1] || tokens of block i)`` with ``hash[-1] = root_hash(extra_keys)``.
    """
    block_size = integer_argument("block_size", block_size)
    packed = _token_array(tokens, "chain_block_hashes")
    parent = root_hash(extra_keys)
    hashes = []
    for start in range(0, len(packed) - block_size + 1, block_size):
        parent = _hash_block(parent, packed[start : start + block_size])
        hashes.append(parent)
    return hashes


def check_block_hashes(block_hashes: Any, what: str) -> list[int]:
    """``block_hashes`` as a non-empty list of ints in [0, 2**128), or InvalidInputError
    naming ``what`` (e.g. "request 17")."""
    if isinstance(block_hashes, np.ndarray) and block_hashes.ndim == 1:
        block_hashes = block_hashes.tolist()
    if not isinstance(block_hashes, (list, tuple)):
        if isinstance(block_hashes, (str, bytes)) or not isinstance(block_hashes, Sequence):
            raise InvalidInputError(
                f"{what}: block hashes must be a list of integers, got {type(block_hashes).__name__}."
            )
        block_hashes = list(block_hashes)
    if not block_hashes:
        raise InvalidInputError(
            f"{what}: the list of block hashes is empty; a request needs at least one block."
        )
    if set(map(type, block_hashes)) != {int}:
        if not all(isinstance(h, numbers.Integral) and not isinstance(h, bool) for h in block_hashes):
            raise InvalidInputError(
                f"{what}: block hashes must be integers, got "
                f"{list(block_hashes[:8])}{'...' if len(block_hashes) > 8 else ''}."
            )
        block_hashes = [int(h) for h in block_hashes]
    if min(block_hashes) < 0 or max(block_hashes) >= _MAX_HASH:
        raise InvalidInputError(
            f"{what}: block hashes must lie in [0, 2**128), got min {min(block_hashes)}, "
            f"max {max(block_hashes)}."
        )
    if len(set(block_hashes)) != len(block_hashes):
        # a chained hash names a whole prefix, so a prefix cannot contain its own hash twice;
        # letting it through would register one block under two positions of a sequence
        raise InvalidInputError(
            f"{what}: a block hash appears twice in one request; chained hashes name whole "
            "prefixes, so each must be distinct within a request."
        )
    return block_hashes if isinstance(block_hashes, list) else list(block_hashes)


# ----------------------------------------------------------------------------- block pool


class BlockPool:
    """Fixed-size blocks with an O(1) free list and per-block reference counts.

    Parameters
    ----------
    num_blocks:
        Blocks in the pool (>= 1).
    block_size:
        Tokens per block (>= 1). vLLM's default on GPUs is 16.
    model:
        Preset name, :class:`ModelShape` or mapping; needed only for ``storage`` and for
        :attr:`bytes_per_block`. Default None.
    storage:
        When True, allocate the float16 array ``(num_blocks, block_size, per_token_width)``
        that holds the KV data, so the memory is real. Default False (bookkeeping only).

    ``ref_counts`` and ``free_list`` are plain lists (block id -> count; a stack of free ids)
    because Python indexes a list several times faster than a numpy array; :class:`KVCache`
    updates them in place in batches. Treat them as read-only from outside.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        model: str | ModelShape | Mapping[str, Any] | None = None,
        storage: bool = False,
    ) -> None:
        self.num_blocks = integer_argument("num_blocks", num_blocks)
        self.block_size = integer_argument("block_size", block_size)
        self.model = None if model is None else resolve_model(model)
        if storage and self.model is None:
            raise InvalidInputError(
                "storage=True needs a model shape to size each token; pass model='tiny', "
                f"one of {sorted(MODEL_PRESETS)} or a custom mapping."
            )
        self.ref_counts: list[int] = [0] * self.num_blocks
        # Popped from the end: block 0 is handed out first, which keeps small tests readable.
        self.free_list: list[int] = list(range(self.num_blocks - 1, -1, -1))
        self.storage: np.ndarray | None = None
        if storage:
            shape = (self.num_blocks, self.block_size, self.model.per_token_width)
            try:
                self.storage = np.zeros(shape, dtype=np.float16)
            except MemoryError:
                raise InvalidInputError(
                    f"storage of {self.num_blocks * self.bytes_per_block / 2**30:.1f} GiB "
                    f"({self.num_blocks} blocks x {self.block_size} tokens x "
                    f"{self.model.bytes_per_token} B for {self.model.name}) does not fit in memory; "
                    "use fewer blocks, a smaller model (e.g. 'tiny') or storage=False."
                ) from None

    @property
    def bytes_per_block(self) -> int:
        """KV bytes one block holds (0 without a model shape)."""
        return 0 if self.model is None else self.block_size * self.model.bytes_per_token

    @property
    def num_free(self) -> int:
        return len(self.free_list)

    def allocate(self, count: int) -> list[int]:
        """Take ``count`` free blocks, each with reference count 1."""
        count = integer_argument("count", count, minimum=0)
        free = self.free_list
        if count > len(free):
            raise CacheFullError(
                f"need {count} blocks but only {len(free)} are free; free some blocks first "
                "or build a larger pool."
            )
        if not count:
            return []
        blocks = free[-count:]
        del free[-count:]
        refs = self.ref_counts
        for block in blocks:
            refs[block] = 1
        return blocks

    def free(self, blocks: Iterable[int]) -> None:
        """Release one reference to each block; blocks left unreferenced become free."""
        refs = self.ref_counts
        free = self.free_list
        for block in blocks:
            count = refs[block]
            if count < 1:
                raise InvalidInputError(
                    f"block {block} is not referenced (double free); release each reference once."
                )
            refs[block] = count - 1
            if count == 1:
                free.append(block)

    def copy_block(self, source: int, target: int) -> None:
        """Copy one block's KV data (no-op without storage)."""
        if self.storage is not None:
            self.storage[target] = self.storage[source]


# ----------------------------------------------------------------------------- sequences


class _Sequence:
    """One live sequence. Slots, not a dict: there may be many thousands of them."""

    __slots__ = ("blocks", "num_tokens", "num_hit_blocks", "parent_hash", "pending")

    def __init__(
        self,
        blocks: list[int],
        num_tokens: int,
        num_hit_blocks: int,
        parent_hash: int | None,
        pending: list[int] | None,
    ) -> None:
        self.blocks = blocks
        # Tokens held; ceil(num_tokens / block_size) == len(blocks) always.
        self.num_tokens = num_tokens
        # Leading blocks served by the prefix cache: they belong to the cache, not to this
        # sequence, so writing into one copies it first.
        self.num_hit_blocks = num_hit_blocks
        # Hash of the last full block (or the root), the parent of the next block to fill;
        # None once the chain is unknown (tokens appended as a bare count).
        self.parent_hash = parent_hash
        # Token ids already in the partial last block (None when unknown).
        self.pending = pending


@dataclass(frozen=True)
class KVCacheStats:
    """Counters since construction. ``block_ops`` = lookups + allocated + released, the
    definition used for vLLM's replay rate (about 0.5 million per second)."""

    lookups: int
    hit_blocks: int
    allocated_blocks: int
    released_blocks: int
    evicted_blocks: int
    cow_copies: int
    preempted_sequences: int

    @property
    def block_ops(self) -> int:
        return self.lookups + self.allocated_blocks + self.released_blocks


class KVCache:
    """Paged KV cache with prefix caching, copy-on-write and pluggable eviction.

    Parameters
    ----------
    num_blocks:
        Physical blocks in the pool (>= 1).
    block_size:
        Tokens per block (>= 1); default 16, vLLM's GPU default. Smaller blocks waste less of
        the last block but make block tables longer and prefix hits coarser.
    policy:
        Eviction policy for cached, unreferenced blocks: a name from
        :func:`llmds.kv_eviction.policy_names` or an :class:`~llmds.kv_eviction.EvictionPolicy`
        instance (not shared with another cache). Default ``"lru"``, the mainstream servers'
        choice and the fastest; ``"hit-density"`` hits more often when the cache is tight, at
        a few times LRU's bookkeeping cost.
    model, storage:
        As for :class:`BlockPool`: with ``storage=True`` the cache holds real float16 KV data
        that :meth:`write` fills and :meth:`read` returns. Default no storage.
    enable_prefix_caching:
        Hash full blocks and reuse them across sequences. Default True. When False, freed
        blocks go straight back to the free list.
    token_budget:
        Upper bound on the tokens held by live sequences (each sequence counts its own tokens,
        shared blocks included); exceeding it frees whole sequences, least recently used
        first, never the one being grown. Default None (no budget).
    seed:
        Seed of the policy's random generator, for policies that use one. Default 0.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int = 16,
        *,
        policy: str | EvictionPolicy = DEFAULT_POLICY,
        model: str | ModelShape | Mapping[str, Any] | None = None,
        storage: bool = False,
        enable_prefix_caching: bool = True,
        token_budget: int | None = None,
        seed: int = 0,
    ) -> None:
        self.pool = BlockPool(num_blocks, block_size, model, storage)
        self.num_blocks = self.pool.num_blocks
        self.block_size = self.pool.block_size
        self.enable_prefix_caching = bool(enable_prefix_caching)
        self.token_budget = None if token_budget is None else integer_argument("token_budget", token_budget)
        if isinstance(policy, str):
            policy = make_policy(policy, seed=seed)
        elif not isinstance(policy, EvictionPolicy):
            raise InvalidInputError(
                f"policy must be one of {policy_names()} or an EvictionPolicy, got {policy!r}."
            )
        self.policy = policy
        self._block_hash: list[int | None] = [None] * self.num_blocks
        self.policy.bind(self.num_blocks, self._block_hash)
        self._cached: dict[int, int] = {}
        self._sequences: dict[Hashable, _Sequence] = {}
        # Sequences in least-recently-used order, kept only when a token budget is set.
        self._recency: OrderedDict[Hashable, None] | None = (
            None if self.token_budget is None else OrderedDict()
        )
        self._preempted: list[Hashable] = []
        self._live_tokens = 0
        self._lookups = 0
        self._hit_blocks = 0
        self._allocated = 0
        self._released = 0
        self._evicted = 0
        self._cow_copies = 0
        self._preempted_count = 0

    # ------------------------------------------------------------------ introspection

    @property
    def num_free_blocks(self) -> int:
        """Blocks on the free list (no data worth keeping)."""
        return len(self.pool.free_list)

    @property
    def num_cached_blocks(self) -> int:
        """Unreferenced blocks kept for prefix reuse (evictable)."""
        return len(self.policy)

    @property
    def num_used_blocks(self) -> int:
        """Blocks referenced by at least one live sequence."""
        return self.num_blocks - len(self.pool.free_list) - len(self.policy)

    @property
    def live_tokens(self) -> int:
        """Tokens held by live sequences (shared blocks counted once per sequence)."""
        return self._live_tokens

    @property
    def storage(self) -> np.ndarray | None:
        return self.pool.storage

    def __contains__(self, seq_id: Hashable) -> bool:
        return seq_id in self._sequences

    def __len__(self) -> int:
        return len(self._sequences)

    def sequences(self) -> list[Hashable]:
        return list(self._sequences)

    def block_table(self, seq_id: Hashable) -> list[int]:
        """A copy of the sequence's block ids, in token order."""
        return list(self._live(seq_id, "read the block table of").blocks)

    def num_tokens(self, seq_id: Hashable) -> int:
        return self._live(seq_id, "count the tokens of").num_tokens

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens."""
        return -(-integer_argument("num_tokens", num_tokens, 0) // self.block_size)

    def can_allocate(self, num_tokens: int) -> bool:
        """Whether a new sequence of ``num_tokens`` tokens fits, counting no prefix hits."""
        return self.blocks_for(num_tokens) <= len(self.pool.free_list) + len(self.policy)

    def stats(self) -> KVCacheStats:
        return KVCacheStats(
            self._lookups,
            self._hit_blocks,
            self._allocated,
            self._released,
            self._evicted,
            self._cow_copies,
            self._preempted_count,
        )

    def drain_preempted(self) -> list[Hashable]:
        """Ids of sequences the token budget freed since the last call (oldest first)."""
        preempted, self._preempted = self._preempted, []
        return preempted

    # ------------------------------------------------------------------ lookup

    def match_prefix(self, tokens: Sequence[int], extra_keys: Sequence[Any] = ()) -> int:
        """Prompt tokens a new sequence would find cached (a multiple of ``block_size``,
        always less than ``len(tokens)``). Changes nothing, not even recency."""
        if not self.enable_prefix_caching:
            return 0
        packed = _token_array(tokens, "match_prefix")
        hashes = chain_block_hashes(
            packed[: (len(packed) - 1) // self.block_size * self.block_size], self.block_size, extra_keys
        )
        return self._cached_prefix_length(hashes) * self.block_size

    def match_prefix_blocks(self, block_hashes: Sequence[int]) -> int:
        """Leading blocks of ``block_hashes`` that are cached. Changes nothing."""
        return self._cached_prefix_length(block_hashes) if self.enable_prefix_caching else 0

    def _cached_prefix_length(self, hashes: Iterable[int]) -> int:
        cached = self._cached
        length = 0
        for block_hash in hashes:
            if block_hash not in cached:
                break
            length += 1
        return length

    # ------------------------------------------------------------------ allocate

    def allocate(self, seq_id: Hashable, tokens: Sequence[int] | int, extra_keys: Sequence[Any] = ()) -> int:
        """Create sequence ``seq_id`` holding a prompt; return the prompt tokens served from cache.

        ``tokens`` is the prompt's token ids, or a bare count when the ids are unknown (then
        nothing is hashed, looked up or cached for this sequence). ``extra_keys`` (adapter id,
        tenant salt, ...) separate otherwise equal prompts. The longest cached prefix of full
        blocks is reused, but never the whole prompt; the rest gets new blocks, evicting cached
        ones if the free list is empty. Raises :class:`CacheFullError` (changing nothing) if
        the prompt does not fit.
        """
        self._check_new_id(seq_id)
        if isinstance(tokens, numbers.Integral) and not isinstance(tokens, bool):
            num_tokens = integer_argument(f"sequence {seq_id!r}: token count", tokens, 0)
            self._allocate(seq_id, [], 0, num_tokens, None, None)
            return 0
        packed = _token_array(tokens, f"sequence {seq_id!r}")
        num_tokens = len(packed)
        if not self.enable_prefix_caching:
            self._allocate(seq_id, [], 0, num_tokens, None, None)
            return 0
        hashes = chain_block_hashes(packed, self.block_size, extra_keys)
        parent = hashes[-1] if hashes else root_hash(extra_keys)
        pending = packed[len(hashes) * self.block_size :].tolist()
        # Blocks wholly before the last token: the last token is always recomputed.
        lookup_limit = (num_tokens - 1) // self.block_size if num_tokens else 0
        return self._allocate(seq_id, hashes, lookup_limit, num_tokens, parent, pending) * self.block_size

    def allocate_blocks(self, seq_id: Hashable, block_hashes: Sequence[int]) -> int:
        """Create sequence ``seq_id`` from precomputed chained block hashes; return cached blocks.

        The fast path for traces that name blocks instead of tokens (Mooncake's ``hash_ids``):
        each hash stands for one full block and must already cover its whole prefix (equal
        hash = equal prefix). All blocks may hit; the last-token rule of :meth:`allocate` is
        the caller's business here. Hashes are non-negative integers below 2**128.
        """
        return self._allocate_blocks(seq_id, check_block_hashes(block_hashes, f"sequence {seq_id!r}"))

    def _allocate_blocks(self, seq_id: Hashable, block_hashes: list[int]) -> int:
        """:meth:`allocate_blocks` for hashes that passed :func:`check_block_hashes`."""
        self._check_new_id(seq_id)
        if not self.enable_prefix_caching:
            return self._allocate(seq_id, [], 0, len(block_hashes) * self.block_size, None, None)
        return self._allocate(
            seq_id, block_hashes, len(block_hashes), len(block_hashes) * self.block_size, block_hashes[-1], []
        )

    def _allocate(
        self,
        seq_id: Hashable,
        hashes: Sequence[int],
        lookup_limit: int,
        num_tokens: int,
        parent_hash: int | None,
        pending: list[int] | None,
    ) -> int:
        cached = self._cached
        refs = self.pool.ref_counts
        policy = self.policy
        blocks: list[int] = []
        cached_get = cached.get
        for block_hash in hashes if lookup_limit == len(hashes) else hashes[:lookup_limit]:
            block = cached_get(block_hash)
            if block is None:
                break
            blocks.append(block)
        num_hit = len(blocks)
        num_new = -(-num_tokens // self.block_size) - num_hit
        revived = [block for block in blocks if not refs[block]]
        available = len(self.pool.free_list) + len(policy) - len(revived)
        if num_new > available:
            raise CacheFullError(
                f"sequence {seq_id!r} needs {num_new} new blocks but only {available} are free or "
                "evictable; free finished sequences, admit fewer at once or build a larger cache."
            )
        self._lookups += num_hit + (num_hit < lookup_limit)
        self._hit_blocks += num_hit
        if policy.observes_accesses and hashes:
            policy.on_access(hashes, num_hit)
        if revived:
            policy.on_reuse(revived)
        for block in blocks:
            refs[block] += 1
        if num_new:
            new_blocks = self._take_blocks(num_new)
            if len(hashes) > num_hit:
                self._register(hashes[num_hit:] if num_hit else hashes, new_blocks)
            blocks += new_blocks
        self._sequences[seq_id] = _Sequence(blocks, num_tokens, num_hit, parent_hash, pending)
        self._grew(seq_id, num_tokens)
        return num_hit

    def _take_blocks(self, count: int) -> list[int]:
        """``count`` blocks with reference count 1: from the free list, then by eviction.

        The caller has checked that enough blocks are free or evictable.
        """
        free = self.pool.free_list
        self._allocated += count
        if count <= len(free):
            taken = free[-count:]
            del free[-count:]
        else:
            taken = free[:]
            free.clear()
            victims = self.policy.evict(count - len(taken))
            self._evicted += len(victims)
            cached = self._cached
            block_hash = self._block_hash
            for block in victims:
                del cached[block_hash[block]]
                block_hash[block] = None
            taken += victims
        refs = self.pool.ref_counts
        for block in taken:
            refs[block] = 1
        return taken

    def _register(self, hashes: Iterable[int], blocks: list[int]) -> None:
        """Enter full blocks into the prefix cache under ``hashes`` (zip stops at the shorter).
        A hash already cached keeps its block; the new block then stays anonymous and returns
        to the free list when released."""
        setdefault = self._cached.setdefault
        block_hash = self._block_hash
        for hash_value, block in zip(hashes, blocks, strict=False):
            # Identity, not equality: setdefault hands back our own int object iff it stored it.
            if setdefault(hash_value, block) is block:
                block_hash[block] = hash_value

    # ------------------------------------------------------------------ free

    def free(self, seq_id: Hashable) -> None:
        """Release every block reference of ``seq_id``, tail first; the id becomes unknown.

        Hashed blocks nobody references any more stay cached (evictable); the others return
        to the free list. Freeing an id that is not live raises :class:`InvalidInputError`.
        """
        try:
            sequence = self._sequences.pop(seq_id, None)
        except TypeError:  # unhashable: certainly not a live id
            sequence = None
        if sequence is None:
            raise InvalidInputError(
                f"cannot free sequence {seq_id!r}: it is not live (never allocated, already freed "
                "or preempted by the token budget); free each sequence exactly once."
            )
        self._release(sequence)
        self._live_tokens -= sequence.num_tokens
        if self._recency is not None:
            del self._recency[seq_id]

    def _release(self, sequence: _Sequence) -> None:
        refs = self.pool.ref_counts
        unreferenced = []
        for block in reversed(sequence.blocks):
            count = refs[block] - 1
            refs[block] = count
            if not count:
                unreferenced.append(block)
        self._released += len(sequence.blocks)
        if not unreferenced:
            return
        block_hash = self._block_hash
        if None not in map(block_hash.__getitem__, unreferenced):  # the usual case, at C speed
            self.policy.on_release(unreferenced)
            return
        cacheable = [block for block in unreferenced if block_hash[block] is not None]
        self.pool.free_list.extend(block for block in unreferenced if block_hash[block] is None)
        if cacheable:
            self.policy.on_release(cacheable)

    # ------------------------------------------------------------------ grow and share

    def append(self, seq_id: Hashable, tokens: Sequence[int] | int) -> None:
        """Add decoded tokens (ids, or a bare count) to ``seq_id``, taking blocks as needed.

        A partly filled last block that is shared is copied first (copy-on-write). Blocks that
        fill up while the token ids are known are hashed and enter the prefix cache. Raises
        :class:`CacheFullError` (changing nothing) if the blocks are not available.
        """
        sequence = self._live(seq_id, "append to")
        if isinstance(tokens, numbers.Integral) and not isinstance(tokens, bool):
            count = integer_argument(f"sequence {seq_id!r}: appended token count", tokens, 0)
            packed = None
        else:
            packed = _token_array(tokens, f"sequence {seq_id!r}")
            count = len(packed)
        if not count:
            return
        block_size = self.block_size
        room = len(sequence.blocks) * block_size - sequence.num_tokens
        copy_last = room > 0 and self._must_copy(sequence, len(sequence.blocks) - 1)
        num_new = -(-(count - room) // block_size) if count > room else 0
        available = len(self.pool.free_list) + len(self.policy)
        if num_new + copy_last > available:
            raise CacheFullError(
                f"sequence {seq_id!r} needs {num_new + copy_last} more blocks but only {available} "
                "are free or evictable; free or preempt other sequences first."
            )
        if copy_last:
            self._copy_on_write(sequence, len(sequence.blocks) - 1)
        if num_new:
            sequence.blocks += self._take_blocks(num_new)
        first_new_token = sequence.num_tokens
        sequence.num_tokens += count
        if packed is None or sequence.pending is None or not self.enable_prefix_caching:
            sequence.pending = None
            sequence.parent_hash = None
        else:
            self._hash_filled_blocks(sequence, first_new_token, packed)
        self._grew(seq_id, count)

    def _hash_filled_blocks(self, sequence: _Sequence, first_new_token: int, packed: array) -> None:
        block_size = self.block_size
        pending = sequence.pending
        pending.extend(packed)
        first_block = first_new_token // block_size
        filled = len(pending) // block_size
        if not filled:
            return
        hashes = []
        parent = sequence.parent_hash
        for index in range(filled):
            parent = _hash_block(parent, array("q", pending[index * block_size : (index + 1) * block_size]))
            hashes.append(parent)
        sequence.parent_hash = parent
        del pending[: filled * block_size]
        self._register(hashes, sequence.blocks[first_block : first_block + filled])

    def fork(self, parent_id: Hashable, child_id: Hashable) -> None:
        """Create ``child_id`` sharing every block of ``parent_id`` (parallel sampling, beam
        search). Each physical block's reference count rises by one; the first write into a
        shared block by either sequence copies it."""
        parent = self._sequences.get(parent_id)
        if parent is None:
            raise InvalidInputError(
                f"cannot fork sequence {parent_id!r}: it is not live (never allocated, already freed "
                "or preempted); fork a live sequence."
            )
        self._check_new_id(child_id)
        refs = self.pool.ref_counts
        for block in parent.blocks:
            refs[block] += 1
        self._sequences[child_id] = _Sequence(
            list(parent.blocks),
            parent.num_tokens,
            parent.num_hit_blocks,
            parent.parent_hash,
            None if parent.pending is None else list(parent.pending),
        )
        self._grew(child_id, parent.num_tokens)

    def _must_copy(self, sequence: _Sequence, index: int) -> bool:
        block = sequence.blocks[index]
        return self.pool.ref_counts[block] > 1 or (
            index < sequence.num_hit_blocks and self._block_hash[block] is not None
        )

    def _copy_on_write(self, sequence: _Sequence, index: int) -> None:
        """Give ``sequence`` a private copy of its block ``index`` (caller checked capacity)."""
        old = sequence.blocks[index]
        (new,) = self._take_blocks(1)
        self.pool.copy_block(old, new)
        sequence.blocks[index] = new
        self._cow_copies += 1
        refs = self.pool.ref_counts
        refs[old] -= 1
        if not refs[old]:
            if self._block_hash[old] is None:
                self.pool.free_list.append(old)
            else:
                self.policy.on_release([old])

    # ------------------------------------------------------------------ data

    def _require_storage(self, action: str) -> np.ndarray:
        if self.pool.storage is None:
            raise InvalidInputError(
                f"cannot {action}: this cache has no storage; build it with storage=True and a model."
            )
        return self.pool.storage

    def write(self, seq_id: Hashable, start: int, values: np.ndarray) -> None:
        """Store KV vectors for positions ``start .. start + len(values) - 1`` of ``seq_id``.

        ``values`` has shape ``(n, per_token_width)``. Blocks shared with another sequence or
        obtained from the prefix cache are copied first, so no other sequence sees the change.
        """
        storage = self._require_storage("write KV data")
        sequence = self._live(seq_id, "write to")
        values = np.asarray(values)
        width = storage.shape[2]
        if values.ndim != 2 or values.shape[1] != width:
            raise InvalidInputError(
                f"sequence {seq_id!r}: values must have shape (n, {width}), got {values.shape}."
            )
        start = integer_argument("start", start, 0)
        stop = start + len(values)
        if stop > sequence.num_tokens:
            raise InvalidInputError(
                f"sequence {seq_id!r} holds {sequence.num_tokens} tokens; cannot write positions "
                f"{start}..{stop - 1}. Append the tokens first."
            )
        if not len(values):
            return
        block_size = self.block_size
        first_block, last_block = start // block_size, (stop - 1) // block_size
        to_copy = [index for index in range(first_block, last_block + 1) if self._must_copy(sequence, index)]
        available = len(self.pool.free_list) + len(self.policy)
        if len(to_copy) > available:
            raise CacheFullError(
                f"sequence {seq_id!r}: copy-on-write needs {len(to_copy)} blocks but only {available} "
                "are free or evictable; free other sequences first."
            )
        for index in to_copy:
            self._copy_on_write(sequence, index)
        position = start
        for index in range(first_block, last_block + 1):
            offset = position - index * block_size
            chunk = min(block_size - offset, stop - position)
            storage[sequence.blocks[index], offset : offset + chunk] = values[
                position - start : position - start + chunk
            ]
            position += chunk

    def read(self, seq_id: Hashable, start: int = 0, stop: int | None = None) -> np.ndarray:
        """A copy of the KV vectors of positions ``start .. stop - 1``, shape ``(n, width)``."""
        storage = self._require_storage("read KV data")
        sequence = self._live(seq_id, "read")
        stop = sequence.num_tokens if stop is None else stop
        start = integer_argument("start", start, 0)
        stop = integer_argument("stop", stop, 0)
        if not start <= stop <= sequence.num_tokens:
            raise InvalidInputError(
                f"sequence {seq_id!r} holds {sequence.num_tokens} tokens; cannot read {start}..{stop}."
            )
        block_size = self.block_size
        rows = np.arange(start, stop)
        blocks = np.asarray(sequence.blocks, dtype=np.int64)[rows // block_size]
        return storage[blocks, rows % block_size]

    # ------------------------------------------------------------------ eviction and budget

    def evict_cached(self, count: int) -> int:
        """Drop up to ``count`` cached, unreferenced blocks to the free list; return how many."""
        count = min(integer_argument("count", count, 0), len(self.policy))
        if not count:
            return 0
        victims = self.policy.evict(count)
        self._evicted += len(victims)
        for block in victims:
            del self._cached[self._block_hash[block]]
            self._block_hash[block] = None
        self.pool.free_list.extend(victims)
        return len(victims)

    def clear_prefix_cache(self) -> int:
        """Evict every cached, unreferenced block; return how many."""
        return self.evict_cached(len(self.policy))

    def _grew(self, seq_id: Hashable, count: int) -> None:
        self._live_tokens += count
        if self._recency is None:
            return
        recency = self._recency
        recency[seq_id] = None
        recency.move_to_end(seq_id)
        # seq_id is last, so the front is never the sequence being grown while two remain.
        while self._live_tokens > self.token_budget and len(recency) > 1:
            victim = next(iter(recency))
            self.free(victim)
            self._preempted.append(victim)
            self._preempted_count += 1

    def touch(self, seq_id: Hashable) -> None:
        """Mark ``seq_id`` as just used, for the token budget's LRU order."""
        self._live(seq_id, "touch")
        if self._recency is not None:
            self._recency.move_to_end(seq_id)

    def _check_new_id(self, seq_id: Hashable) -> None:
        try:
            live = seq_id in self._sequences
        except TypeError:
            raise InvalidInputError(
                f"sequence id {seq_id!r} is not hashable; use an int, a str or a tuple of them."
            ) from None
        if live:
            raise InvalidInputError(f"sequence {seq_id!r} is already live; free it first or use a new id.")

    def _live(self, seq_id: Hashable, action: str) -> _Sequence:
        try:
            sequence = self._sequences.get(seq_id)
        except TypeError:  # unhashable: certainly not a live id
            sequence = None
        if sequence is None:
            raise InvalidInputError(
                f"cannot {action} sequence {seq_id!r}: it is not live (never allocated, already freed "
                "or preempted by the token budget)."
            )
        return sequence

    # ------------------------------------------------------------------ invariants

    def check(self) -> None:
        """Verify the bookkeeping; raise :class:`KVCacheInvariantError` naming the first fault.

        free + cached + in use == num_blocks; no negative counts; a free block is neither
        referenced nor hashed; every reference is held by exactly one slot of one sequence's
        block table; the hash map and the per-block hashes agree; the policy holds exactly
        the cached, unreferenced blocks; token totals add up. O(blocks + table entries).
        """
        refs = self.pool.ref_counts
        free = self.pool.free_list

        def fail(message: str) -> None:
            raise KVCacheInvariantError(message)

        if any(count < 0 for count in refs):
            fail(f"negative reference count on block {next(b for b, c in enumerate(refs) if c < 0)}")
        free_set = set(free)
        if len(free_set) != len(free):
            fail("a block is on the free list twice")
        for block in free:
            if refs[block]:
                fail(f"block {block} is free and referenced ({refs[block]})")
            if self._block_hash[block] is not None:
                fail(f"block {block} is free but still hashed")
        evictable = list(self.policy)
        evictable_set = set(evictable)
        if len(evictable_set) != len(evictable) or len(evictable) != len(self.policy):
            fail("the eviction policy lists a block twice or miscounts its blocks")
        if evictable_set & free_set:
            fail(f"blocks both free and evictable: {sorted(evictable_set & free_set)[:5]}")
        in_use = sum(1 for count in refs if count)
        if len(free) + len(evictable) + in_use != self.num_blocks:
            fail(
                f"free {len(free)} + cached {len(evictable)} + in use {in_use} != capacity {self.num_blocks}"
            )
        for block in evictable:
            if refs[block] or self._block_hash[block] is None:
                fail(f"evictable block {block} is referenced or has no hash")
        held = [0] * self.num_blocks
        tokens = 0
        for seq_id, sequence in self._sequences.items():
            for block in sequence.blocks:
                held[block] += 1
            tokens += sequence.num_tokens
            if len(sequence.blocks) != -(-sequence.num_tokens // self.block_size):
                fail(
                    f"sequence {seq_id!r} holds {sequence.num_tokens} tokens in {len(sequence.blocks)} blocks"
                )
        if held != refs:
            block = next(b for b in range(self.num_blocks) if held[b] != refs[b])
            fail(f"block {block} has count {refs[block]} but {held[block]} table entries")
        if tokens != self._live_tokens:
            fail(f"live tokens {self._live_tokens} != sum over sequences {tokens}")
        for hash_value, block in self._cached.items():
            if self._block_hash[block] != hash_value:
                fail(f"hash map sends a hash to block {block}, which carries another hash")
        if sum(1 for value in self._block_hash if value is not None) != len(self._cached):
            fail("a block carries a hash the hash map does not know")
        for block in range(self.num_blocks):
            if not refs[block] and self._block_hash[block] is not None and block not in evictable_set:
                fail(f"cached block {block} is unreferenced but unknown to the eviction policy")
        if self._recency is not None and set(self._recency) != set(self._sequences):
            fail("token-budget recency list and live sequences differ")

    # ------------------------------------------------------------------ save / load

    def save(self, path: str | os.PathLike) -> None:
        """Save pool, prefix cache, sequences (and storage, if on) as .npy + JSON (no pickle).

        Sequence ids must be ints or strs. The eviction policy's own statistics are not saved:
        :meth:`load` gives the cached blocks to a fresh policy in the saved eviction order, and
        the :meth:`stats` counters restart at zero.
        """
        for seq_id in self._sequences:
            if isinstance(seq_id, bool) or not isinstance(seq_id, (int, str)):
                raise InvalidInputError(
                    f"cannot save sequence id {seq_id!r}: only int and str ids can be saved."
                )
        sequences = list(self._sequences.items())
        table = [block for _, sequence in sequences for block in sequence.blocks]
        pending = [token for _, sequence in sequences for token in (sequence.pending or ())]
        arrays = {
            "ref_counts": np.asarray(self.pool.ref_counts, dtype=np.int64),
            "free_list": np.asarray(self.pool.free_list, dtype=np.int64),
            "evictable": np.asarray(list(self.policy), dtype=np.int64),
            "block_hash": _hashes_to_bytes(self._block_hash),
            "seq_blocks": np.asarray(table, dtype=np.int64),
            "seq_lengths": np.asarray([len(s.blocks) for _, s in sequences], dtype=np.int64),
            "seq_tokens": np.asarray([s.num_tokens for _, s in sequences], dtype=np.int64),
            "seq_hit_blocks": np.asarray([s.num_hit_blocks for _, s in sequences], dtype=np.int64),
            "seq_parent_hash": _hashes_to_bytes([s.parent_hash for _, s in sequences]),
            "seq_pending": np.asarray(pending, dtype=np.int64),
            "seq_pending_lengths": np.asarray(
                [-1 if s.pending is None else len(s.pending) for _, s in sequences], dtype=np.int64
            ),
        }
        if self.pool.storage is not None:
            arrays["storage"] = self.pool.storage
        meta = {
            "num_blocks": self.num_blocks,
            "block_size": self.block_size,
            "model": None if self.pool.model is None else vars(self.pool.model),
            "enable_prefix_caching": self.enable_prefix_caching,
            "token_budget": self.token_budget,
            "policy": self.policy.name,
            "seq_ids": [seq_id for seq_id, _ in sequences],
            "recency": None if self._recency is None else list(self._recency),
        }
        save_arrays(path, _KIND, _FORMAT_VERSION, meta, arrays)

    @classmethod
    def load(
        cls, path: str | os.PathLike, policy: str | EvictionPolicy | None = None, seed: int = 0
    ) -> KVCache:
        """Load a cache written by :meth:`save`; ``policy`` defaults to the saved policy's name."""
        meta, arrays = load_arrays(path, _KIND, _FORMAT_VERSION)
        try:
            cache = cls(
                meta["num_blocks"],
                meta["block_size"],
                policy=meta["policy"] if policy is None else policy,
                model=meta["model"],
                storage="storage" in arrays,
                enable_prefix_caching=meta["enable_prefix_caching"],
                token_budget=meta["token_budget"],
                seed=seed,
            )
            cache._restore(meta, arrays)
            cache.check()
        except (KeyError, ValueError, TypeError, IndexError, KVCacheInvariantError) as exc:
            raise CorruptIndexError(
                f"{path}: saved KV cache is inconsistent ({exc}); save it again."
            ) from exc
        return cache

    def _restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.pool.ref_counts[:] = arrays["ref_counts"].tolist()
        self.pool.free_list[:] = arrays["free_list"].tolist()
        self._block_hash[:] = _hashes_from_bytes(arrays["block_hash"])
        self._cached = {value: block for block, value in enumerate(self._block_hash) if value is not None}
        evictable = arrays["evictable"].tolist()
        if evictable:
            self.policy.on_release(evictable)
        if self.pool.storage is not None:
            self.pool.storage[...] = arrays["storage"]
        table = arrays["seq_blocks"].tolist()
        pending = arrays["seq_pending"].tolist()
        parents = _hashes_from_bytes(arrays["seq_parent_hash"])
        table_at = pending_at = 0
        for index, seq_id in enumerate(meta["seq_ids"]):
            length = int(arrays["seq_lengths"][index])
            pending_length = int(arrays["seq_pending_lengths"][index])
            sequence_pending = (
                None if pending_length < 0 else pending[pending_at : pending_at + pending_length]
            )
            pending_at += max(pending_length, 0)
            self._sequences[seq_id] = _Sequence(
                table[table_at : table_at + length],
                int(arrays["seq_tokens"][index]),
                int(arrays["seq_hit_blocks"][index]),
                parents[index],
                sequence_pending,
            )
            table_at += length
            self._live_tokens += int(arrays["seq_tokens"][index])
        if self._recency is not None:
            self._recency.update((seq_id, None) for seq_id in meta["recency"])


def _hashes_to_bytes(hashes: Sequence[int | None]) -> np.ndarray:
    """Hashes (or None) as rows of HASH_BYTES + 1 bytes: a presence flag, then little-endian."""
    out = np.zeros((len(hashes), HASH_BYTES + 1), dtype=np.uint8)
    for row, value in enumerate(hashes):
        if value is not None:
            out[row, 0] = 1
            out[row, 1:] = np.frombuffer(value.to_bytes(HASH_BYTES, "little"), dtype=np.uint8)
    return out


def _hashes_from_bytes(rows: np.ndarray) -> list[int | None]:
    if rows.ndim != 2 or rows.shape[1] != HASH_BYTES + 1:
        raise ValueError(f"hash array has shape {rows.shape}, expected (n, {HASH_BYTES + 1})")
    return [int.from_bytes(row[1:].tobytes(), "little") if row[0] else None for row in rows]
