"""Discrete-event simulator of an LLM server's iteration-level (continuous) batching scheduler.

The simulated engine runs one *iteration* (a forward pass over a batch) at a time, the way
Orca (Yu et al., OSDI 2022) introduced and vLLM (Kwon et al., SOSP 2023) and Sarathi-Serve
(Agrawal et al., OSDI 2024) refined:

- Every running sequence in its decode phase contributes one token per iteration.
- A per-iteration token budget (``max_batched_tokens``) is filled, after the decodes, with
  prompt tokens, so long prompts are prefilled in chunks alongside decodes (Sarathi-Serve's
  chunked prefill) instead of stalling them.
- At most ``max_num_seqs`` sequences run at once; the rest wait in a queue ordered by the
  scheduling policy, an :class:`~llmds.indexed_heap.IndexedHeap`.
- KV-cache memory is allocated in fixed-size blocks through a block manager (the ``kv``
  component, PagedAttention's paged cache, with prefix caching). When a running sequence needs
  a block and none is free, a victim chosen by the preemption policy is preempted by
  *recompute*: its blocks are freed and it re-enters the queue; when it is scheduled again its
  prompt plus the tokens it already produced are prefilled again (vLLM's default).
- An optional micro-batching gate lets an idle engine wait up to ``micro_batch_max_wait_s`` for
  ``micro_batch_size`` requests before starting, trading a little latency for fuller batches.
- An optional :class:`~llmds.admission.AdmissionController`, running on simulated time, sits in
  front of the queue (rate limits, queue-length and KV-budget limits).

Each iteration costs ``step overhead + per prefill token + per decode sequence + per KV token
read`` seconds (:class:`CostModel`). Simulated time jumps over idle gaps, and decode progress
is kept as counters (a sequence's length is a function of the iteration number), so the work
per iteration does not grow with the number of running sequences: a sequence costs Python work
only when something happens to it (it needs a new KV block, finishes, or is preempted).

Scheduling policies (``policy``):

``fcfs``
    First come, first served, as in mainstream servers.
``spf``
    Shortest prompt first.
``srwf``
    Shortest remaining work first: remaining prefill iterations plus remaining output tokens,
    with known output lengths or ``predicted_output_tokens``.
``priority-aging``
    Lower ``priority`` first, with aging: waiting ``aging_s`` seconds is worth one unit of
    priority. Linear aging is a static order (serve by ``arrival + aging_s * priority``), so a
    request is never overtaken by one that arrived more than ``aging_s * priority`` seconds
    after it: no starvation. Without explicit priorities, a request's priority is
    ``p / (p + mean p)`` of its prompt length ``p`` (in [0, 1), an average prompt 0.5): the
    prompt is known on arrival, needs no prediction, and is what a request's time to first
    token depends on; so short prompts go first but none waits behind arrivals later than
    ``aging_s`` after it (shortest-prompt-first with a bound).

Preemption victims (``preemption``): ``newest`` (the most recently admitted running sequence,
as vLLM does), ``lowest-priority`` (the running sequence the policy ranks last), or
``most-blocks`` (frees the most memory per preemption).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np

from llmds.admission import QUEUE, REJECT, AdmissionController
from llmds.errors import InvalidInputError
from llmds.indexed_heap import IndexedHeap

POLICIES = ("fcfs", "spf", "srwf", "priority-aging")
_MAX_PREFIX_KEY = 1 << 64  # a key times the pieces per key stays a valid 128-bit block hash
PREEMPTION_VICTIMS = ("newest", "lowest-priority", "most-blocks")


# ============================================================================ cost model


@dataclass(frozen=True)
class CostModel:
    """Seconds one engine iteration takes, as a sum of four terms.

    Defaults are order-of-magnitude figures for a 7-8B-parameter fp16 model (Llama-2-7B shape:
    32 layers, hidden size 4096, no grouped-query attention) on one A100-80GB, derived from
    first principles rather than measured; calibrate them against your own engine's iteration
    times for quantitative claims.

    Parameters
    ----------
    step_overhead_s:
        Paid by every iteration whatever its size: reading ~13.5 GB of fp16 weights at ~1.7
        TB/s achieved HBM bandwidth (the A100-80GB peaks at 2.0 TB/s) is ~8 ms, which is why
        small-batch decoding is memory bound. Default 0.008 s.
    prefill_token_s:
        Per prompt token processed: ~2 x 6.7e9 FLOPs per token (the 2N rule of Kaplan et al.,
        2020) at ~170 TFLOP/s, about 55% of the A100's 312 TFLOP/s dense fp16. Default 8e-5 s
        (so a 2048-token chunk takes ~0.17 s).
    decode_sequence_s:
        Per sequence decoded in the iteration: sampling, the LM head and the part of the
        per-token matrix work not hidden behind the weight read. Default 5e-5 s.
    kv_token_read_s:
        Per token of KV cache read by attention: 0.5 MB per token for this shape (2 x 32
        layers x 4096 x 2 bytes) at ~1.7 TB/s. Default 3e-7 s (a 64-sequence batch at 1,000
        tokens of context reads 19 ms of KV per iteration).
    """

    step_overhead_s: float = 0.008
    prefill_token_s: float = 8e-5
    decode_sequence_s: float = 5e-5
    kv_token_read_s: float = 3e-7

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InvalidInputError(f"CostModel.{item.name} must be a finite number >= 0, got {value!r}.")
        if self.step_overhead_s == 0 and self.prefill_token_s == 0 and self.decode_sequence_s == 0:
            raise InvalidInputError(
                "CostModel would make iterations free (overhead, prefill and decode costs all 0), "
                "so simulated time could not advance; give at least one of them a positive cost."
            )

    def step_time(self, prefill_tokens: int, decode_sequences: int, kv_tokens_read: int) -> float:
        """Duration of one iteration."""
        return (
            self.step_overhead_s
            + self.prefill_token_s * prefill_tokens
            + self.decode_sequence_s * decode_sequences
            + self.kv_token_read_s * kv_tokens_read
        )


# ============================================================================ requests


@dataclass(frozen=True)
class RequestTrace:
    """Requests to simulate, as parallel arrays (one element per request).

    ``arrival_s`` must be sorted (non-decreasing, seconds); ``prompt_tokens`` and
    ``output_tokens`` are positive ints. Optional: ``priority`` (for ``priority-aging``; lower
    is more urgent, >= 0), ``predicted_output_tokens`` (what ``srwf`` and ``priority-aging``
    believe the output length is; default: the true length, an oracle), ``prefix_keys`` (per
    request, non-negative int ids of its prompt's consecutive ``prefix_block_tokens``-token
    pieces, for prefix caching; an id must name a whole prefix, not just a piece, so equal
    leading ids mean a shared prefix, as Mooncake's ``hash_ids`` with 512 tokens per id). Build
    it with :meth:`from_arrays`, which checks everything.
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    priority: np.ndarray | None = None
    predicted_output_tokens: np.ndarray | None = None
    prefix_keys: tuple[tuple[int, ...], ...] | None = None
    prefix_block_tokens: int | None = None

    def __len__(self) -> int:
        return len(self.arrival_s)

    @classmethod
    def from_arrays(
        cls,
        arrival_s: Sequence[float] | np.ndarray,
        prompt_tokens: Sequence[int] | np.ndarray,
        output_tokens: Sequence[int] | np.ndarray,
        *,
        priority: Sequence[float] | np.ndarray | None = None,
        predicted_output_tokens: Sequence[int] | np.ndarray | None = None,
        prefix_keys: Sequence[Sequence[int]] | None = None,
        prefix_block_tokens: int | None = None,
    ) -> RequestTrace:
        """Validate and build a trace; every problem is an :class:`InvalidInputError` naming the row."""
        arrival = _as_float_array("arrival_s", arrival_s)
        count = len(arrival)
        prompt = _as_length_array("prompt_tokens", prompt_tokens, count)
        output = _as_length_array("output_tokens", output_tokens, count)
        if count and not np.all(np.isfinite(arrival)):
            row = int(np.flatnonzero(~np.isfinite(arrival))[0])
            raise InvalidInputError(f"arrival_s[{row}] is {arrival[row]}; arrival times must be finite numbers.")
        if count > 1 and np.any(np.diff(arrival) < 0):
            row = int(np.flatnonzero(np.diff(arrival) < 0)[0]) + 1
            raise InvalidInputError(
                f"arrival times are not sorted: arrival_s[{row}] = {arrival[row]} comes after "
                f"arrival_s[{row - 1}] = {arrival[row - 1]}; sort the requests by arrival time."
            )
        if priority is not None:
            priority = _as_float_array("priority", priority)
            if len(priority) != count:
                raise InvalidInputError(f"priority has {len(priority)} values for {count} requests.")
            bad = ~np.isfinite(priority) | (priority < 0)
            if np.any(bad):
                row = int(np.flatnonzero(bad)[0])
                raise InvalidInputError(f"priority[{row}] is {priority[row]}; priorities must be finite and >= 0.")
        if predicted_output_tokens is not None:
            predicted_output_tokens = _as_length_array("predicted_output_tokens", predicted_output_tokens, count)
        if prefix_keys is not None:
            prefix_keys = _checked_prefix_keys(prefix_keys, prefix_block_tokens, count)
        elif prefix_block_tokens is not None:
            raise InvalidInputError("prefix_block_tokens is given without prefix_keys; pass both or neither.")
        return cls(arrival, prompt, output, priority, predicted_output_tokens, prefix_keys, prefix_block_tokens)

    def rate_scaled(self, factor: float) -> RequestTrace:
        """The same requests arriving ``factor`` times faster (timestamps compressed towards the first).

        Compressing a real trace keeps its burstiness and its length mix while raising the
        load, the usual way to draw a capacity curve from one trace.
        """
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not (0 < factor < math.inf):
            raise InvalidInputError(f"rate scale must be a positive finite number, got {factor!r}.")
        start = self.arrival_s[0] if len(self) else 0.0
        return RequestTrace(
            start + (self.arrival_s - start) / factor,
            self.prompt_tokens,
            self.output_tokens,
            self.priority,
            self.predicted_output_tokens,
            self.prefix_keys,
            self.prefix_block_tokens,
        )


def _checked_prefix_keys(prefix_keys: Any, prefix_block_tokens: Any, count: int) -> tuple[tuple[int, ...], ...]:
    if isinstance(prefix_block_tokens, bool) or not isinstance(prefix_block_tokens, int) or prefix_block_tokens < 1:
        raise InvalidInputError(
            f"prefix_keys need prefix_block_tokens, the tokens each key names (512 for Mooncake's "
            f"hash_ids), as an int >= 1; got {prefix_block_tokens!r}."
        )
    if len(prefix_keys) != count:
        raise InvalidInputError(f"prefix_keys has {len(prefix_keys)} entries for {count} requests.")
    checked = []
    # A key names a whole prefix, so it must always follow the same key (the same parent):
    # otherwise two different prefixes would share cached KV blocks.
    parent_of: dict[int, tuple[int | None, int]] = {}
    for row, keys in enumerate(prefix_keys):
        keys = tuple(keys)
        if not all(_is_prefix_key(key) for key in keys):
            raise InvalidInputError(
                f"prefix_keys[{row}] = {keys[:8]!r}: prefix keys must be ints in [0, 2**64)."
            )
        keys = tuple(int(key) for key in keys)
        for position, key in enumerate(keys):
            parent = keys[position - 1] if position else None
            first = parent_of.setdefault(key, (parent, row))
            if first[0] != parent:
                raise InvalidInputError(
                    f"prefix_keys[{row}]: key {key} follows {parent} here but {first[0]} in "
                    f"prefix_keys[{first[1]}]; a key must name one whole prefix (give the two "
                    "prefixes different keys)."
                )
        checked.append(keys)
    return tuple(checked)


def _is_prefix_key(key: Any) -> bool:
    return isinstance(key, numbers.Integral) and not isinstance(key, bool) and 0 <= key < _MAX_PREFIX_KEY


def _as_float_array(name: str, values: Any) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a sequence of numbers.") from None
    if array.ndim != 1:
        raise InvalidInputError(f"{name} must be one-dimensional, got shape {array.shape}.")
    return array


def _as_length_array(name: str, values: Any, count: int) -> np.ndarray:
    array = _as_float_array(name, values)
    if len(array) != count:
        raise InvalidInputError(f"{name} has {len(array)} values but arrival_s has {count}; give one per request.")
    if count:
        missing = np.isnan(array)
        if np.any(missing):
            row = int(np.flatnonzero(missing)[0])
            raise InvalidInputError(f"{name}[{row}] is missing (NaN); every request needs a length.")
        bad = (array < 1) | (array != np.round(array)) | ~np.isfinite(array)
        if np.any(bad):
            row = int(np.flatnonzero(bad)[0])
            raise InvalidInputError(
                f"{name}[{row}] is {array[row]:g}; token counts must be whole numbers >= 1."
            )
    return array.astype(np.int64)


def gamma_arrivals(count: int, rate: float, cv: float = 1.0, seed: int = 0) -> np.ndarray:
    """Arrival times of ``count`` requests at ``rate`` per second with gamma inter-arrival gaps.

    ``cv`` is the coefficient of variation of the gaps: 1 gives a Poisson process, larger values
    burstier traffic (shape ``1 / cv**2``, the usual model in serving benchmarks).
    """
    for name, value in (("rate", rate), ("cv", cv)):
        if not (isinstance(value, int | float) and 0 < value < math.inf):
            raise InvalidInputError(f"{name} must be a positive finite number, got {value!r}.")
    shape = 1.0 / cv**2
    gaps = np.random.default_rng(seed).gamma(shape, 1.0 / (shape * rate), size=count)
    return np.cumsum(gaps) - gaps[0] if count else np.zeros(0)


def noisy_predictions(output_tokens: np.ndarray, relative_error: float, seed: int = 0) -> np.ndarray:
    """Output-length predictions with log-normal error, to test ``srwf`` without an oracle.

    ``relative_error`` is the standard deviation of ``log(predicted / true)``; 0 returns the
    true lengths.
    """
    if not (isinstance(relative_error, int | float) and 0 <= relative_error < math.inf):
        raise InvalidInputError(f"relative_error must be a finite number >= 0, got {relative_error!r}.")
    noise = np.random.default_rng(seed).lognormal(0.0, relative_error, size=len(output_tokens))
    return np.maximum(1, np.rint(np.asarray(output_tokens) * noise)).astype(np.int64)


# ============================================================================ SLO and summary


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|us|s)?\s*$")
_UNIT_SECONDS = {"s": 1.0, None: 1.0, "ms": 1e-3, "us": 1e-6}
SLO_KEYS = ("ttft", "tpot", "e2e")


@dataclass(frozen=True)
class SLO:
    """Latency targets a request must meet to count towards goodput (``None``: not checked)."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def __str__(self) -> str:
        targets = ((key, getattr(self, f"{key}_s")) for key in SLO_KEYS)
        return ",".join(f"{key}={seconds * 1000:g}ms" for key, seconds in targets if seconds is not None) or "none"


def parse_slo(text: str) -> SLO:
    """Parse ``"ttft=2s,tpot=100ms"`` into an :class:`SLO`.

    Keys: ``ttft`` (time to first token), ``tpot`` (time per output token after the first),
    ``e2e`` (end-to-end latency). Values: a number with unit ``s``, ``ms`` or ``us`` (bare
    numbers are seconds). Anything else raises :class:`InvalidInputError` with an example.
    """
    example = "write it like ttft=2s,tpot=100ms (keys: ttft, tpot, e2e; units: s, ms, us)"
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"empty SLO {text!r}; {example}.")
    values: dict[str, float] = {}
    for part in text.split(","):
        key, separator, value = part.partition("=")
        key = key.strip().lower()
        if not separator:
            raise InvalidInputError(f"SLO part {part.strip()!r} has no '='; {example}.")
        if key not in SLO_KEYS:
            raise InvalidInputError(f"unknown SLO key {key!r} in {text!r}; {example}.")
        if key in values:
            raise InvalidInputError(f"SLO key {key!r} given twice in {text!r}; give each once.")
        match = _DURATION.match(value)
        if match is None:
            raise InvalidInputError(f"SLO value {value.strip()!r} for {key} is not a duration; {example}.")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        if seconds <= 0:
            raise InvalidInputError(f"SLO {key} must be positive, got {value.strip()!r}.")
        values[key] = seconds
    return SLO(**{f"{key}_s": seconds for key, seconds in values.items()})


# ============================================================================ KV interface


class BlockManager(Protocol):
    """What the simulator needs from a paged KV cache; :class:`KVCacheBlockManager` adapts the
    ``kv`` component's :class:`~llmds.kv_cache.KVCache` to it.

    A sequence's *computed* tokens are those whose KV the simulator has produced; the manager
    holds blocks for at least that many. ``free_blocks`` counts blocks that can be handed out
    now, including cached blocks no sequence references (evicted on demand).
    """

    block_size: int
    num_blocks: int

    def free_blocks(self) -> int: ...

    def start(
        self, seq_id: int, prompt_tokens: int, prefix_keys: tuple[int, ...] | None, key_tokens: int | None
    ) -> int | None:
        """Begin a sequence that will compute ``prompt_tokens`` tokens, reusing cached prefix blocks.

        Returns the tokens found cached (they count as computed), or ``None`` if the blocks it
        must take at once are not available (then nothing changed).
        """

    def blocks_needed(self, seq_id: int, num_tokens: int) -> int:
        """New blocks ``extend(seq_id, num_tokens)`` would take."""

    def extend(self, seq_id: int, num_tokens: int) -> None:
        """Mark ``num_tokens`` more tokens computed, taking blocks; the caller checked there are enough."""

    def finish(self, seq_id: int) -> None:
        """Release every block the sequence holds (cached ones stay reusable)."""


class KVCacheBlockManager:
    """The ``kv`` component's :class:`~llmds.kv_cache.KVCache` as the simulator's block manager.

    Without prefix keys a sequence starts empty and grows by token counts, one prompt chunk or
    one decode block at a time. With prefix keys, each key names ``key_tokens`` tokens and is
    split into ``key_tokens / block_size`` block hashes (``key * pieces + i``, unique because
    a key names a whole prefix); at ``start`` the sequence takes every full block of its
    prompt at once through ``KVCache.allocate_blocks`` (hits are shared, misses allocated and
    entered in the prefix cache), because ``KVCache`` registers hashed blocks only when they
    are allocated. A prompt is therefore reserved whole at admission when it has prefix keys,
    and chunk by chunk when it has none.

    Parameters
    ----------
    cache:
        The :class:`~llmds.kv_cache.KVCache` to allocate from (empty, prefix caching on or off).
    """

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.block_size = cache.block_size
        self.num_blocks = cache.num_blocks
        # seq_id -> [computed tokens, tokens the cache holds blocks for]
        self._tokens: dict[int, list[int]] = {}

    def free_blocks(self) -> int:
        cache = self.cache
        return cache.num_free_blocks + cache.num_cached_blocks

    def start(
        self, seq_id: int, prompt_tokens: int, prefix_keys: tuple[int, ...] | None, key_tokens: int | None
    ) -> int | None:
        from llmds.kv_cache import CacheFullError

        block_size = self.block_size
        full_blocks = prompt_tokens // block_size
        if not prefix_keys or not full_blocks:
            self.cache.allocate(seq_id, 0)
            self._tokens[seq_id] = [0, 0]
            return 0
        if key_tokens % block_size:
            raise InvalidInputError(
                f"prefix keys name {key_tokens} tokens each, not a multiple of the KV block size "
                f"{block_size}; use a block size that divides {key_tokens}."
            )
        pieces = key_tokens // block_size
        hashes = [key * pieces + piece for key in prefix_keys for piece in range(pieces)][:full_blocks]
        # The last prompt token is always computed: a hit may not cover it.
        hit_blocks = min(self.cache.match_prefix_blocks(hashes), (prompt_tokens - 1) // block_size)
        try:
            self.cache.allocate_blocks(seq_id, hashes)
        except CacheFullError:
            return None
        self._tokens[seq_id] = [hit_blocks * block_size, len(hashes) * block_size]
        return hit_blocks * block_size

    def blocks_needed(self, seq_id: int, num_tokens: int) -> int:
        computed, held = self._tokens[seq_id]
        block_size = self.block_size
        return max(0, -(-(computed + num_tokens) // block_size) - -(-held // block_size))

    def extend(self, seq_id: int, num_tokens: int) -> None:
        tokens = self._tokens[seq_id]
        computed = tokens[0] + num_tokens
        tokens[0] = computed
        if computed > tokens[1]:
            self.cache.append(seq_id, computed - tokens[1])
            tokens[1] = computed

    def finish(self, seq_id: int) -> None:
        del self._tokens[seq_id]
        self.cache.free(seq_id)


# ============================================================================ results


@dataclass
class SimulationResult:
    """Per-request and per-iteration outputs of one simulation (times in simulated seconds).

    Per request (arrays in trace order): ``arrival_s``, ``first_token_s`` and ``finish_s``
    (NaN for rejected requests), ``prompt_tokens``, ``output_tokens`` (as requested),
    ``generated_tokens`` (as produced; equals ``output_tokens`` for every finished request),
    ``preemptions``, ``queue_wait_s`` (total time spent waiting in the scheduler's queue,
    including waits after preemptions; NaN for rejected requests), ``admission_wait_s`` (time
    held by the admission controller), ``rejection`` (``None``, or the reason).

    Per iteration: ``step_start_s``, ``step_duration_s``, ``step_prefill_tokens``,
    ``step_decode_sequences`` and ``step_kv_utilisation`` (blocks in use / all blocks, after
    the iteration's allocations).
    """

    arrival_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    generated_tokens: np.ndarray
    preemptions: np.ndarray
    queue_wait_s: np.ndarray
    admission_wait_s: np.ndarray
    rejection: list[str | None]
    step_start_s: np.ndarray
    step_duration_s: np.ndarray
    step_prefill_tokens: np.ndarray
    step_decode_sequences: np.ndarray
    step_kv_utilisation: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> np.ndarray:
        return ~np.isnan(self.finish_s)

    @property
    def ttft_s(self) -> np.ndarray:
        """Time to first token (arrival to first token), NaN when rejected."""
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> np.ndarray:
        """Time per output token after the first; NaN for one-token outputs and rejections."""
        with np.errstate(invalid="ignore", divide="ignore"):
            tpot = (self.finish_s - self.first_token_s) / (self.output_tokens - 1)
        tpot[self.output_tokens <= 1] = np.nan
        return tpot

    @property
    def e2e_s(self) -> np.ndarray:
        """End-to-end latency (arrival to last token), NaN when rejected."""
        return self.finish_s - self.arrival_s

    def meets(self, slo: SLO) -> np.ndarray:
        """Boolean per request: finished and within every target of ``slo``."""
        ok = self.finished.copy()
        for latency, target in ((self.ttft_s, slo.ttft_s), (self.tpot_s, slo.tpot_s), (self.e2e_s, slo.e2e_s)):
            if target is not None:
                with np.errstate(invalid="ignore"):
                    ok &= np.isnan(latency) | (latency <= target)
        return ok


def summarize(result: SimulationResult, slo: SLO | None = None) -> dict[str, float]:
    """Headline figures: latency percentiles, throughput, goodput, preemptions, longest wait.

    Throughput and goodput divide by the makespan (first arrival to last finish). Goodput is the
    rate of requests that finish within every target of ``slo`` (the definition of DistServe,
    Zhong et al., OSDI 2024, at one load); ``slo_attainment`` is their share of all requests,
    rejected ones included.
    """
    finished = result.finished
    count = len(result.arrival_s)
    if count and finished.any():
        makespan = float(np.nanmax(result.finish_s) - result.arrival_s[0])
    else:
        makespan = 0.0
    summary: dict[str, float] = {
        "requests": float(count),
        "finished": float(finished.sum()),
        "rejected": float(sum(reason is not None for reason in result.rejection)),
        "makespan_s": makespan,
    }
    for name, values in (("ttft", result.ttft_s), ("tpot", result.tpot_s), ("e2e", result.e2e_s)):
        values = values[~np.isnan(values)]
        for q in (50, 90, 99):
            summary[f"{name}_p{q}_s"] = float(np.percentile(values, q)) if len(values) else math.nan
    output_tokens = float(result.generated_tokens.sum())
    total_tokens = output_tokens + float(result.prompt_tokens[finished].sum())
    summary["output_tokens_per_s"] = output_tokens / makespan if makespan else math.nan
    summary["total_tokens_per_s"] = total_tokens / makespan if makespan else math.nan
    if slo is not None:
        good = result.meets(slo)
        summary["goodput_rps"] = float(good.sum()) / makespan if makespan else math.nan
        summary["slo_attainment"] = float(good.mean()) if count else math.nan
    summary["preemptions"] = float(result.preemptions.sum())
    waits = result.queue_wait_s[~np.isnan(result.queue_wait_s)]
    summary["max_queue_wait_s"] = float(waits.max()) if len(waits) else math.nan
    summary["mean_kv_utilisation"] = (
        float(np.average(result.step_kv_utilisation, weights=result.step_duration_s))
        if len(result.step_duration_s)
        else math.nan
    )
    return summary


# ============================================================================ the simulator


_WAITING, _RUNNING, _DONE, _REJECTED = 0, 1, 2, 3


@dataclass(frozen=True)
class SchedulerConfig:
    """Parameters of the simulated engine and its scheduler.

    Parameters
    ----------
    policy:
        Queue order: ``fcfs`` (default), ``spf``, ``srwf`` or ``priority-aging`` (see the module
        docstring).
    preemption:
        Victim when KV blocks run out: ``newest`` (default, vLLM's choice),
        ``lowest-priority`` or ``most-blocks``.
    max_num_seqs:
        Sequences running at once (vLLM's ``max_num_seqs``, default 256).
    max_batched_tokens:
        Token budget of one iteration: decodes take one each, prompt chunks fill the rest
        (vLLM's ``max_num_batched_tokens``; Sarathi-Serve uses budgets of 512 to 2048;
        default 2048).
    num_blocks, block_size:
        Size of the KV cache when the simulator builds its own block manager: 7,000 blocks of
        16 tokens = 112,000 tokens, what is left of an A100-80GB for a Llama-2-7B-shaped model
        (0.5 MB per token) after weights and activations at vLLM's 0.9 memory utilisation.
    watermark_blocks:
        Blocks kept free when admitting a new request, so running sequences can grow without
        immediate preemption (vLLM keeps 1% of blocks; default 70).
    micro_batch_size, micro_batch_max_wait_s:
        An idle engine waits until ``micro_batch_size`` requests are queued or the oldest has
        waited ``micro_batch_max_wait_s`` (default 1 and 0: start at once).
    aging_s:
        For ``priority-aging``: seconds of waiting worth one unit of priority (default 120 s:
        with derived priorities, in [0, 1), no request yields to arrivals more than two
        minutes after it; on the Azure conversation trace near saturation this kept most of
        shortest-prompt-first's goodput gain over FCFS while bounding the longest wait).
    cost:
        The iteration :class:`CostModel`.
    """

    policy: str = "fcfs"
    preemption: str = "newest"
    max_num_seqs: int = 256
    max_batched_tokens: int = 2048
    num_blocks: int = 7000
    block_size: int = 16
    watermark_blocks: int = 70
    micro_batch_size: int = 1
    micro_batch_max_wait_s: float = 0.0
    aging_s: float = 120.0
    cost: CostModel = field(default_factory=CostModel)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise InvalidInputError(f"unknown policy {self.policy!r}; choose one of {', '.join(POLICIES)}.")
        if self.preemption not in PREEMPTION_VICTIMS:
            raise InvalidInputError(
                f"unknown preemption victim rule {self.preemption!r}; choose one of {', '.join(PREEMPTION_VICTIMS)}."
            )
        for name in ("max_num_seqs", "max_batched_tokens", "num_blocks", "block_size", "micro_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be an int >= 1, got {value!r}.")
        if isinstance(self.watermark_blocks, bool) or not isinstance(self.watermark_blocks, int) or not (
            0 <= self.watermark_blocks < self.num_blocks
        ):
            raise InvalidInputError(
                f"watermark_blocks must be an int in [0, num_blocks), got {self.watermark_blocks!r}."
            )
        for name in ("micro_batch_max_wait_s", "aging_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not (0 <= value < math.inf):
                raise InvalidInputError(f"{name} must be a finite number >= 0, got {value!r}.")


class Scheduler:
    """Simulates continuous batching of a :class:`RequestTrace` on one engine.

    Parameters
    ----------
    config:
        :class:`SchedulerConfig` (defaults: FCFS on a 7B-model / A100-80GB-like engine).
    kv:
        A :class:`BlockManager`; by default a :class:`KVCacheBlockManager` over the ``kv``
        component's ``KVCache`` with ``config.num_blocks`` blocks of ``config.block_size``
        tokens, prefix caching on and LRU eviction.
        Its blocks must all be free when ``run`` starts, and are all free again when it ends.
    admission:
        Optional :class:`~llmds.admission.AdmissionController`. Its clock must be the
        simulator's: build it with ``clock=scheduler.clock``.

    ``run`` may be called more than once; each call starts from an empty engine at the first
    arrival.
    """

    def __init__(
        self,
        config: SchedulerConfig | None = None,
        *,
        kv: BlockManager | None = None,
        admission: AdmissionController | None = None,
    ) -> None:
        self.config = config or SchedulerConfig()
        self.kv = kv if kv is not None else _default_block_manager(self.config)
        self.admission = admission
        self.now = 0.0

    def clock(self) -> float:
        """Current simulated time, for an :class:`AdmissionController` driven by this simulator."""
        return self.now

    def run(self, trace: RequestTrace) -> SimulationResult:
        """Simulate ``trace`` to completion and return per-request and per-iteration outputs."""
        if not isinstance(trace, RequestTrace):
            raise InvalidInputError(
                f"run() needs a RequestTrace, got {type(trace).__name__}; build one with "
                "RequestTrace.from_arrays(arrival_s, prompt_tokens, output_tokens)."
            )
        kv = self.kv
        if kv.free_blocks() != kv.num_blocks:
            raise InvalidInputError(
                f"the block manager has {kv.num_blocks - kv.free_blocks()} blocks in use before the "
                "run; give the simulator an empty KV cache."
            )
        return _Simulation(self, trace).run()


def _default_block_manager(config: SchedulerConfig) -> BlockManager:
    from llmds.kv_cache import KVCache

    return KVCacheBlockManager(KVCache(config.num_blocks, config.block_size))


class _Simulation:
    """State of one run. Per-request state lives in Python lists indexed by request number.

    Decode progress is implicit: a sequence that entered the decode phase before iteration
    ``join_step`` with ``join_length`` tokens of KV and ``join_generated`` output tokens has,
    before iteration ``s``, ``join_length + s - join_step`` tokens of KV. So it needs a new KV
    block exactly at the iterations ``s`` with ``s = join_step - join_length (mod block_size)``:
    decoding sequences are kept in ``block_size`` buckets by that residue, and an iteration
    visits only the bucket that needs blocks. Finishing iterations are known in advance too.
    """

    def __init__(self, scheduler: Scheduler, trace: RequestTrace) -> None:
        self.scheduler = scheduler
        self.config = config = scheduler.config
        self.kv = scheduler.kv
        self.admission = scheduler.admission
        self.cost = config.cost
        self.trace = trace
        count = len(trace)
        self.count = count
        self.arrival = trace.arrival_s.tolist()
        self.prompt = trace.prompt_tokens.tolist()
        self.output = trace.output_tokens.tolist()
        self.prefix_keys = trace.prefix_keys
        predicted = trace.predicted_output_tokens
        self.predicted_output = (predicted if predicted is not None else trace.output_tokens).tolist()
        self.block_size = self.kv.block_size
        self.aging_priority = self._aging_priorities(trace)

        self.state = [_WAITING] * count
        self.kv_length = [0] * count  # tokens in KV (prefill phase; decode phase: at join)
        self.target = [0] * count  # tokens to prefill: prompt + output already produced
        self.generated = [0] * count  # output tokens produced (prefill phase; decode: at join)
        self.join_step = [0] * count
        self.admitted_order = [0] * count  # when it last entered the running set
        self.enqueued_at = [0.0] * count
        self.queue_wait = [0.0] * count
        self.admission_wait = [0.0] * count
        self.first_token = [math.nan] * count
        self.finish = [math.nan] * count
        self.preemptions = [0] * count
        self.rejection: list[str | None] = [None] * count

        self.waiting = IndexedHeap("min")
        self.prefilling: dict[int, None] = {}  # running, prompt not yet fully in KV (ordered set)
        self.decoding: dict[int, None] = {}  # running, one token per iteration
        self.residue_buckets: list[dict[int, None]] = [{} for _ in range(self.block_size)]
        self.finishing_at: dict[int, list[int]] = {}  # iteration -> decoding sequences finishing in it
        self.decode_kv_total = 0  # sum of decoding sequences' KV lengths before the current iteration
        self.step = 0
        self.admissions = 0
        self.next_arrival = 0
        self.scheduled_chunks: dict[int, int] = {}

        self.steps_start: list[float] = []
        self.steps_duration: list[float] = []
        self.steps_prefill: list[int] = []
        self.steps_decode: list[int] = []
        self.steps_used_blocks: list[int] = []

    # ------------------------------------------------------------------ policy

    def _aging_priorities(self, trace: RequestTrace) -> list[float]:
        if self.config.policy != "priority-aging":
            return []
        if trace.priority is not None:
            return trace.priority.tolist()
        prompts = trace.prompt_tokens.astype(np.float64)
        mean_prompt = float(prompts.mean()) if len(prompts) else 1.0
        return (prompts / (prompts + mean_prompt)).tolist()

    def _queue_key(self, request: int) -> float:
        """The policy's rank of ``request`` (smaller runs first), from its current progress."""
        policy = self.config.policy
        if policy == "fcfs":
            return self.arrival[request]
        if policy == "spf":
            return self.prompt[request]
        if policy == "srwf":
            # Remaining work in iterations: prompt chunks to (re)compute plus one iteration
            # per output token still to come (at least one, when a prediction fell short).
            generated = self._current_generated(request)
            remaining_output = max(self.predicted_output[request] - generated, 1)
            prefill = self.prompt[request] + generated
            return prefill / self.config.max_batched_tokens + remaining_output
        return self.arrival[request] + self.config.aging_s * self.aging_priority[request]

    # ------------------------------------------------------------------ main loop

    def run(self) -> SimulationResult:
        sim = self.scheduler
        count = self.count
        sim.now = self.events_done_until = self.arrival[0] if count else 0.0
        self._reject_oversized()
        while True:
            self._process_events_until(sim.now)
            if not (self.prefilling or self.decoding):
                wake = self._idle_until(self._next_event_time())
                if wake is not None:
                    if wake == math.inf:
                        break
                    sim.now = max(sim.now, wake)
                    continue
            self._iterate()
        return self._result()

    def _next_event_time(self) -> float:
        """Time of the next arrival or admission-queue release (``inf`` if none is pending)."""
        upcoming = self.arrival[self.next_arrival] if self.next_arrival < self.count else math.inf
        if self.admission is not None:
            upcoming = min(upcoming, self.admission.next_release_time())
        return upcoming

    def _process_events_until(self, now: float) -> None:
        """Handle arrivals and admission releases up to ``now``, each at its own instant.

        They fell inside the last iteration; deciding at the true instants keeps queue waits
        exact and the admission controller's clock monotonic.
        """
        sim = self.scheduler
        arrival = self.arrival
        sim.now = self.events_done_until  # the clock replays the interval since the last call
        while True:
            upcoming_arrival = arrival[self.next_arrival] if self.next_arrival < self.count else math.inf
            upcoming_release = self.admission.next_release_time() if self.admission is not None else math.inf
            instant = min(upcoming_arrival, upcoming_release)
            if instant > now:
                break
            sim.now = instant
            if upcoming_arrival <= upcoming_release:
                self._arrive(self.next_arrival)
                self.next_arrival += 1
            else:
                for decision in self.admission.release():
                    self._enqueue(decision.request_id)
        sim.now = self.events_done_until = now

    def _idle_until(self, wake: float) -> float | None:
        """With nothing running: ``None`` to start an iteration now, else the time to wake up."""
        now = self.scheduler.now
        if not self.waiting:
            return wake
        config = self.config
        if len(self.waiting) < config.micro_batch_size and config.micro_batch_max_wait_s > 0:
            oldest = min(self.enqueued_at[request] for request in self.waiting.keys())
            gate_opens = oldest + config.micro_batch_max_wait_s
            if now < gate_opens:
                return min(wake, gate_opens)
        return None

    def _iterate(self) -> None:
        """Schedule and run one iteration: decodes, prompt chunks, new admissions."""
        kv = self.kv
        step = self.step
        preempted = self._allocate_decode_blocks(step)
        self.scheduled_chunks = chunks = {}  # request -> prompt tokens computed in this iteration
        budget = self.config.max_batched_tokens - len(self.decoding)
        for request in list(self.prefilling):
            if budget <= 0:
                break
            if request not in self.prefilling:  # preempted to make room for an earlier one
                continue
            chunk = self._prefill_chunk(request, budget)
            if chunk == 0:
                preempted = True
                continue
            chunks[request] = chunk
            budget = self.config.max_batched_tokens - len(self.decoding) - sum(chunks.values())
        # vLLM admits no new request in an iteration that had to preempt: memory is short.
        while not preempted and budget > 0 and self.waiting:
            if len(self.prefilling) + len(self.decoding) >= self.config.max_num_seqs:
                break
            request, chunk = self._admit(budget)
            if chunk == 0:
                break
            chunks[request] = chunk
            budget -= chunk
        decode_count = len(self.decoding)
        if not chunks and not decode_count:
            return  # every running sequence was preempted; the next loop admits from the queue
        prefill_tokens = 0
        kv_read = self.decode_kv_total + decode_count
        for request, chunk in chunks.items():
            prefill_tokens += chunk
            kv_read += self.kv_length[request] + chunk
        duration = self.cost.step_time(prefill_tokens, decode_count, kv_read)
        start = self.scheduler.now
        end = start + duration
        self.steps_start.append(start)
        self.steps_duration.append(duration)
        self.steps_prefill.append(prefill_tokens)
        self.steps_decode.append(decode_count)
        self.steps_used_blocks.append(kv.num_blocks - kv.free_blocks())
        self.scheduler.now = end
        self.decode_kv_total += decode_count
        for request in self.finishing_at.pop(step, ()):
            self._leave_decoding(request, step + 1)
            self._complete(request, end)
        for request, chunk in chunks.items():
            self.kv_length[request] += chunk
            if self.kv_length[request] == self.target[request]:
                self._prefill_done(request, step, end)
        self.step = step + 1

    # ------------------------------------------------------------------ KV allocation

    def _allocate_decode_blocks(self, step: int) -> bool:
        """Give a block to every decoding sequence that fills its last one in this iteration.

        Preempts victims while blocks are short. Returns whether anything was preempted.
        """
        bucket = self.residue_buckets[step % self.block_size]
        if not bucket:
            return False
        kv = self.kv
        preempted = False
        while len(bucket) > kv.free_blocks():
            self._preempt(self._victim(), step)
            preempted = True
        block_size = self.block_size
        for request in bucket:
            kv.extend(request, block_size)
        return preempted

    def _prefill_chunk(self, request: int, budget: int) -> int:
        """Prompt tokens ``request`` gets in this iteration, its blocks allocated (0 if preempted)."""
        kv = self.kv
        length = self.kv_length[request]
        chunk = min(self.target[request] - length, budget)
        needed = kv.blocks_needed(request, chunk)
        while needed > kv.free_blocks():
            victim = self._victim()
            self._preempt(victim, self.step)
            if victim == request:
                return 0
        kv.extend(request, chunk)
        return chunk

    def _admit(self, budget: int) -> tuple[int, int]:
        """Start the request at the head of the queue if its first chunk fits: ``(request, chunk)``.

        The chunk is 0 when it does not fit. While other sequences run, ``watermark_blocks``
        must stay free after the allocation.
        """
        kv = self.kv
        request, _ = self.waiting.peek()
        keys = self.prefix_keys[request] if self.prefix_keys is not None else None
        target = self.target[request]
        cached = kv.start(request, target, keys, self.trace.prefix_block_tokens)
        if cached is None:
            return request, 0
        chunk = min(target - cached, budget)
        watermark = self.config.watermark_blocks if (self.prefilling or self.decoding) else 0
        if kv.blocks_needed(request, chunk) + watermark > kv.free_blocks():
            kv.finish(request)
            return request, 0
        self.waiting.pop()
        now = self.scheduler.now
        self.queue_wait[request] += now - self.enqueued_at[request]
        self.state[request] = _RUNNING
        self.kv_length[request] = cached
        self.admissions += 1
        self.admitted_order[request] = self.admissions
        self.prefilling[request] = None
        kv.extend(request, chunk)
        return request, chunk

    def _victim(self) -> int:
        """The running sequence to preempt, by the configured rule.

        One running sequence is protected, so that preemptions cannot cycle forever: the
        best-ranked by the policy for ``lowest-priority``, the longest-running otherwise. It
        runs to completion (if it alone needed more blocks than the cache has, it would have
        been rejected on arrival), then another one is protected.
        """
        rule = self.config.preemption
        running = list(self.prefilling) + list(self.decoding)
        order = self.admitted_order.__getitem__
        if rule == "newest":
            return max(running, key=order)
        if rule == "lowest-priority":
            return max(running, key=lambda request: (self._queue_key(request), order(request)))
        if len(running) > 1:
            running.remove(min(running, key=order))
        return max(running, key=lambda request: (self._current_length(request), order(request)))

    def _current_length(self, request: int) -> int:
        if request in self.decoding:
            return self.kv_length[request] + self.step - self.join_step[request]
        return self.kv_length[request]

    def _current_generated(self, request: int) -> int:
        if request in self.decoding:
            return self.generated[request] + self.step - self.join_step[request]
        return self.generated[request]

    # ------------------------------------------------------------------ request life cycle

    def _reject_oversized(self) -> None:
        """Reject up front the requests that cannot fit even in an empty cache."""
        capacity = self.kv.num_blocks * self.block_size
        for request in range(self.count):
            peak = self.prompt[request] + self.output[request] - 1
            if peak > capacity:
                self.state[request] = _REJECTED
                self.rejection[request] = (
                    f"needs {peak} tokens of KV cache (prompt {self.prompt[request]} + output "
                    f"{self.output[request]} - 1) but the whole cache holds {capacity}"
                )

    def _arrive(self, request: int) -> None:
        if self.state[request] == _REJECTED:
            return
        if self.admission is None:
            self._enqueue(request)
            return
        decision = self.admission.submit(
            request, self.prompt[request] + self.output[request], scheduler_waiting=len(self.waiting)
        )
        if decision.action == REJECT:
            self.state[request] = _REJECTED
            self.rejection[request] = f"admission: {decision.reason}"
        elif decision.action != QUEUE:
            self._enqueue(request)

    def _enqueue(self, request: int) -> None:
        now = self.scheduler.now
        if self.preemptions[request] == 0:
            self.admission_wait[request] = now - self.arrival[request]
            self.target[request] = self.prompt[request]
        self.enqueued_at[request] = now
        self.state[request] = _WAITING
        self.waiting.push(request, self._queue_key(request))

    def _prefill_done(self, request: int, step: int, end: float) -> None:
        """The whole (re)computed prompt is in KV: that iteration also produced one output token."""
        del self.prefilling[request]
        self.generated[request] += 1
        if math.isnan(self.first_token[request]):
            self.first_token[request] = end
        if self.generated[request] == self.output[request]:
            self._complete(request, end)
            return
        join = step + 1
        self.join_step[request] = join
        self.decoding[request] = None
        length = self.kv_length[request]
        self.residue_buckets[(join - length) % self.block_size][request] = None
        remaining = self.output[request] - self.generated[request]
        self.finishing_at.setdefault(join + remaining - 1, []).append(request)
        self.decode_kv_total += length

    def _leave_decoding(self, request: int, step: int) -> None:
        """Fold the implicit decode progress up to iteration ``step`` back into the counters."""
        del self.decoding[request]
        join = self.join_step[request]
        progress = step - join
        length = self.kv_length[request]
        del self.residue_buckets[(join - length) % self.block_size][request]
        self.decode_kv_total -= length + progress
        self.kv_length[request] = length + progress
        self.generated[request] += progress

    def _complete(self, request: int, end: float) -> None:
        self.kv.finish(request)
        self.state[request] = _DONE
        self.finish[request] = end
        if self.admission is not None:
            self.admission.release_tokens(self.prompt[request] + self.output[request])

    def _preempt(self, request: int, step: int) -> None:
        """Preempt by recompute: free the KV, requeue with prompt + produced output to prefill."""
        if request in self.decoding:
            finishing = self.join_step[request] + self.output[request] - self.generated[request] - 1
            self.finishing_at[finishing].remove(request)
            self._leave_decoding(request, step)
        else:
            del self.prefilling[request]
            self.scheduled_chunks.pop(request, None)
        self.kv.finish(request)
        self.preemptions[request] += 1
        self.target[request] = self.prompt[request] + self.generated[request]
        self.kv_length[request] = 0
        self._enqueue(request)

    def _result(self) -> SimulationResult:
        kv = self.kv
        unfinished = [r for r in range(self.count) if self.state[r] not in (_DONE, _REJECTED)]
        if unfinished:  # a bug, never an input problem: every request must end one way or the other
            raise RuntimeError(f"simulation ended with {len(unfinished)} requests unfinished, e.g. {unfinished[:5]}")
        if kv.free_blocks() != kv.num_blocks:
            raise RuntimeError(f"simulation ended with {kv.num_blocks - kv.free_blocks()} KV blocks still held")
        rejected = np.array([reason is not None for reason in self.rejection], dtype=bool)
        queue_wait = np.asarray(self.queue_wait, dtype=np.float64)
        queue_wait[rejected] = np.nan
        used = np.asarray(self.steps_used_blocks, dtype=np.float64)
        return SimulationResult(
            arrival_s=np.asarray(self.arrival, dtype=np.float64),
            first_token_s=np.asarray(self.first_token, dtype=np.float64),
            finish_s=np.asarray(self.finish, dtype=np.float64),
            prompt_tokens=np.asarray(self.prompt, dtype=np.int64),
            output_tokens=np.asarray(self.output, dtype=np.int64),
            generated_tokens=np.asarray(self.generated, dtype=np.int64),
            preemptions=np.asarray(self.preemptions, dtype=np.int64),
            queue_wait_s=queue_wait,
            admission_wait_s=np.asarray(self.admission_wait, dtype=np.float64),
            rejection=list(self.rejection),
            step_start_s=np.asarray(self.steps_start, dtype=np.float64),
            step_duration_s=np.asarray(self.steps_duration, dtype=np.float64),
            step_prefill_tokens=np.asarray(self.steps_prefill, dtype=np.int64),
            step_decode_sequences=np.asarray(self.steps_decode, dtype=np.int64),
            step_kv_utilisation=used / kv.num_blocks,
            config={"policy": self.config.policy, "preemption": self.config.preemption},
        )
