"""Tests of llmds.scheduler: hand-computed schedules, invariants, policies, bad input, real traces."""

from __future__ import annotations

import itertools

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.admission import AdmissionController
from llmds.errors import InvalidInputError
from llmds.kv_cache import KVCache
from llmds.scheduler import (
    POLICIES,
    PREEMPTION_VICTIMS,
    SLO,
    CostModel,
    KVCacheBlockManager,
    RequestTrace,
    Scheduler,
    SchedulerConfig,
    gamma_arrivals,
    noisy_predictions,
    parse_slo,
    summarize,
)
from llmds_cli.datasets import load_azure_trace

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class CountingBlockManager:
    """Strict test double of the BlockManager protocol: counts blocks, refuses misuse."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.tokens: dict[int, int] = {}
        self.blocks: dict[int, int] = {}
        self.free = num_blocks
        self.peak_used = 0

    def free_blocks(self) -> int:
        return self.free

    def start(self, seq_id, prompt_tokens, prefix_keys, key_tokens):
        assert seq_id not in self.tokens, f"sequence {seq_id} started twice"
        self.tokens[seq_id] = 0
        self.blocks[seq_id] = 0
        return 0

    def blocks_needed(self, seq_id, num_tokens):
        return -(-(self.tokens[seq_id] + num_tokens) // self.block_size) - self.blocks[seq_id]

    def extend(self, seq_id, num_tokens):
        assert num_tokens > 0
        needed = self.blocks_needed(seq_id, num_tokens)
        assert needed <= self.free, "the simulator allocated blocks that are not free"
        self.free -= needed
        self.tokens[seq_id] += num_tokens
        self.blocks[seq_id] += needed
        self.peak_used = max(self.peak_used, self.num_blocks - self.free)

    def finish(self, seq_id):
        self.free += self.blocks.pop(seq_id)
        del self.tokens[seq_id]


def simulate(trace: RequestTrace, **config) -> tuple:
    config = SchedulerConfig(**config)
    kv = CountingBlockManager(config.num_blocks, config.block_size)
    return Scheduler(config, kv=kv).run(trace), kv


UNIT_COST = CostModel(step_overhead_s=1.0, prefill_token_s=0.1, decode_sequence_s=0.01, kv_token_read_s=0.001)


# ---------------------------------------------------------------- hand-computed schedules


def test_small_schedule_step_by_step():
    # A: prompt 10, output 3; B: prompt 3, output 2 (both at t=0); C: prompt 4, output 1 at t=0.5.
    # Budget 8 tokens per iteration, 2 sequences at most, 6 blocks of 4 tokens.
    trace = RequestTrace.from_arrays([0.0, 0.0, 0.5], [10, 3, 4], [3, 2, 1])
    result, kv = simulate(
        trace, max_batched_tokens=8, max_num_seqs=2, num_blocks=6, block_size=4, watermark_blocks=0, cost=UNIT_COST
    )
    # it 0: A prefills 8 tokens (2 blocks): 1 + 8*0.1 + 8 KV tokens*0.001 = 1.808
    # it 1: A's last 2 tokens (3rd block) + B's 3 (1 block); C waits (2 sequences already):
    #       1 + 5*0.1 + (10 + 3)*0.001 = 1.513; both prompts done: first tokens at 3.321
    # it 2: two decodes, no new block (A has 10 of 12 slots, B 3 of 4): 1 + 2*0.01 + 15*0.001;
    #       B has produced its 2 tokens and finishes at 4.356
    # it 3: A decodes (11 of 12 slots), C prefills 4 tokens (1 block): 1 + 0.4 + 0.01 + (12 + 4)*0.001;
    #       A finishes and C's single token is its first and last, at 5.782
    np.testing.assert_allclose(result.step_duration_s, [1.808, 1.513, 1.035, 1.426])
    np.testing.assert_allclose(result.step_start_s, [0.0, 1.808, 3.321, 4.356])
    assert result.step_prefill_tokens.tolist() == [8, 5, 0, 4]
    assert result.step_decode_sequences.tolist() == [0, 0, 2, 1]
    np.testing.assert_allclose(result.step_kv_utilisation, [2 / 6, 4 / 6, 4 / 6, 4 / 6])
    np.testing.assert_allclose(result.first_token_s, [3.321, 3.321, 5.782])
    np.testing.assert_allclose(result.finish_s, [5.782, 4.356, 5.782])
    np.testing.assert_allclose(result.queue_wait_s, [0.0, 1.808, 4.356 - 0.5])
    np.testing.assert_allclose(result.ttft_s, [3.321, 3.321, 5.282])
    np.testing.assert_allclose(result.tpot_s[:2], [(5.782 - 3.321) / 2, 4.356 - 3.321])
    assert math.isnan(result.tpot_s[2])  # one output token: no time per output token
    assert result.generated_tokens.tolist() == [3, 2, 1]
    assert kv.free == kv.num_blocks


def test_preemption_by_recompute_step_by_step():
    # Two requests of prompt 3, output 4 each need 3 blocks of 2 tokens at their peak; the cache
    # has 4. Cost: 1 s per iteration + 0.1 s per prompt token + 0.01 s per decode.
    trace = RequestTrace.from_arrays([0.0, 0.0], [3, 3], [4, 4])
    cost = CostModel(step_overhead_s=1.0, prefill_token_s=0.1, decode_sequence_s=0.01, kv_token_read_s=0.0)
    result, kv = simulate(
        trace, max_batched_tokens=8, max_num_seqs=2, num_blocks=4, block_size=2, watermark_blocks=0, cost=cost
    )
    # it 0: both prompts (2 blocks each, cache full), first tokens at 1.6
    # it 1: both decode into their second block's free slot
    # it 2: both need a third block, none is free: the newest (B) is preempted; A gets a block
    # it 3: A decodes; B (prompt 3 + 2 produced = 5 tokens to recompute, 3 blocks) cannot fit yet
    #       A finishes at 4.64
    # it 4: B recomputes 5 tokens, which also yields its 3rd token
    # it 5: B's 4th and last token at 7.15
    np.testing.assert_allclose(result.step_start_s, [0.0, 1.6, 2.62, 3.63, 4.64, 6.14])
    assert result.step_prefill_tokens.tolist() == [6, 0, 0, 0, 5, 0]
    assert result.step_decode_sequences.tolist() == [0, 2, 1, 1, 0, 1]
    assert result.preemptions.tolist() == [0, 1]
    np.testing.assert_allclose(result.first_token_s, [1.6, 1.6])  # recompute does not reset TTFT
    np.testing.assert_allclose(result.finish_s, [4.64, 7.15])
    np.testing.assert_allclose(result.queue_wait_s, [0.0, 4.64 - 2.62])
    assert result.generated_tokens.tolist() == [4, 4]
    assert kv.peak_used == 4 and kv.free == 4


# ---------------------------------------------------------------- invariants


@st.composite
def small_workloads(draw):
    count = draw(st.integers(1, 25))
    gaps = draw(st.lists(st.floats(0, 3), min_size=count, max_size=count))
    prompts = draw(st.lists(st.integers(1, 60), min_size=count, max_size=count))
    outputs = draw(st.lists(st.integers(1, 40), min_size=count, max_size=count))
    return RequestTrace.from_arrays(np.cumsum(gaps), prompts, outputs)


@settings(max_examples=80, deadline=None)
@given(
    trace=small_workloads(),
    policy=st.sampled_from(POLICIES),
    preemption=st.sampled_from(PREEMPTION_VICTIMS),
    num_blocks=st.integers(3, 40),
    block_size=st.sampled_from([1, 2, 4, 16]),
    budget=st.integers(1, 64),
    max_seqs=st.integers(1, 6),
    watermark=st.integers(0, 2),
)
def test_invariants_hold_for_any_workload(
    trace, policy, preemption, num_blocks, block_size, budget, max_seqs, watermark
):
    result, kv = simulate(
        trace,
        policy=policy,
        preemption=preemption,
        num_blocks=num_blocks,
        block_size=block_size,
        max_batched_tokens=budget,
        max_num_seqs=max_seqs,
        watermark_blocks=min(watermark, num_blocks - 1),
        cost=UNIT_COST,
    )
    rejected = np.array([reason is not None for reason in result.rejection])
    finished = result.finished
    # Every request either finishes or is rejected with a reason, never both.
    assert np.all(finished ^ rejected)
    for request in np.flatnonzero(rejected):
        assert "KV cache" in result.rejection[request]
        assert trace.prompt_tokens[request] + trace.output_tokens[request] - 1 > num_blocks * block_size
    # Tokens are conserved: each finished request produced exactly its output, rejected ones none.
    assert np.array_equal(result.generated_tokens[finished], trace.output_tokens[finished])
    assert np.all(result.generated_tokens[rejected] == 0)
    # Every iteration emits one token per decode plus one per completed prompt.
    assert result.step_decode_sequences.sum() <= result.generated_tokens.sum()
    assert result.step_prefill_tokens.sum() >= trace.prompt_tokens[finished].sum()
    if result.preemptions.sum() == 0:
        assert result.step_prefill_tokens.sum() == trace.prompt_tokens[finished].sum()
        assert result.step_decode_sequences.sum() == (trace.output_tokens[finished] - 1).sum()
    # KV blocks are all returned and were never over-committed.
    assert kv.free == kv.num_blocks and not kv.tokens
    assert np.all(result.step_kv_utilisation <= 1.0)
    # Iterations respect the token budget and the sequence limit, and never overlap in time.
    assert np.all(result.step_prefill_tokens + result.step_decode_sequences <= budget)
    assert np.all(result.step_decode_sequences <= max_seqs)
    ends = result.step_start_s + result.step_duration_s
    assert np.all(result.step_start_s[1:] >= ends[:-1] - 1e-9)
    # Causality: arrival <= first token <= finish; queue waits are non-negative.
    assert np.all(result.first_token_s[finished] > result.arrival_s[finished])
    assert np.all(result.finish_s[finished] >= result.first_token_s[finished])
    assert np.all(result.queue_wait_s[finished] >= 0)
    assert np.all(result.e2e_s[finished] >= result.queue_wait_s[finished] - 1e-9)


@st.composite
def shared_prefix_workloads(draw):
    """Requests whose prompts start with one of a few shared prefixes (keys of 8 tokens)."""
    count = draw(st.integers(1, 20))
    gaps = draw(st.lists(st.floats(0, 3), min_size=count, max_size=count))
    prompts, outputs, keys = [], [], []
    own_keys = itertools.count(10**6)
    for _ in range(count):
        family = draw(st.integers(0, 2))
        shared = draw(st.integers(0, 4))
        own = draw(st.integers(0, 3))
        # A key names a whole prefix: shared keys are family-specific, own keys unique.
        request_keys = [1000 * family + depth for depth in range(shared)]
        request_keys += [next(own_keys) for _ in range(own)]
        prompts.append(max(1, 8 * len(request_keys) - draw(st.integers(0, 7))))
        outputs.append(draw(st.integers(1, 30)))
        keys.append(request_keys)
    return RequestTrace.from_arrays(np.cumsum(gaps), prompts, outputs, prefix_keys=keys, prefix_block_tokens=8)


@settings(max_examples=60, deadline=None)
@given(
    trace=st.one_of(small_workloads(), shared_prefix_workloads()),
    policy=st.sampled_from(POLICIES),
    preemption=st.sampled_from(PREEMPTION_VICTIMS),
    num_blocks=st.integers(8, 40),
    block_size=st.sampled_from([2, 4, 8]),
    budget=st.integers(1, 64),
    max_seqs=st.integers(1, 6),
)
def test_invariants_with_the_kv_component(trace, policy, preemption, num_blocks, block_size, budget, max_seqs):
    cache = KVCache(num_blocks, block_size)
    config = SchedulerConfig(
        policy=policy, preemption=preemption, num_blocks=num_blocks, block_size=block_size,
        max_batched_tokens=budget, max_num_seqs=max_seqs, watermark_blocks=1, cost=UNIT_COST,
    )
    result = Scheduler(config, kv=KVCacheBlockManager(cache)).run(trace)
    finished = result.finished
    assert np.all(finished ^ np.array([reason is not None for reason in result.rejection]))
    assert np.array_equal(result.generated_tokens[finished], trace.output_tokens[finished])
    # Every block is back: free, or cached for reuse but referenced by no sequence.
    cache.check()
    assert len(cache) == 0 and cache.num_used_blocks == 0
    assert np.all(result.step_kv_utilisation <= 1.0)
    assert np.all(result.step_prefill_tokens + result.step_decode_sequences <= budget)


def test_prefix_caching_through_the_kv_component():
    # Request 1 shares its first two 16-token keys with request 0 and runs after it; request 2
    # shares nothing. Keys name 16 tokens; the cache has 4-token blocks.
    trace = RequestTrace.from_arrays(
        [0.0, 100.0, 200.0], [40, 40, 40], [2, 2, 2],
        prefix_keys=[(1, 2, 3), (1, 2, 4), (5, 6, 7)], prefix_block_tokens=16,
    )
    cache = KVCache(100, 4)
    config = SchedulerConfig(num_blocks=100, block_size=4, watermark_blocks=0, cost=UNIT_COST)
    result = Scheduler(config, kv=KVCacheBlockManager(cache)).run(trace)
    # Request 1 finds 32 tokens cached and computes 8; the others compute all 40.
    assert result.step_prefill_tokens[result.step_prefill_tokens > 0].tolist() == [40, 8, 40]
    assert cache.stats().hit_blocks == 8
    assert result.ttft_s[1] < result.ttft_s[0] == pytest.approx(result.ttft_s[2])
    with pytest.raises(InvalidInputError, match="multiple of the KV block size"):
        Scheduler(
            SchedulerConfig(num_blocks=100, block_size=3, watermark_blocks=0), kv=KVCacheBlockManager(KVCache(100, 3))
        ).run(trace)


def test_kv_component_and_block_counter_give_the_same_schedule():
    # Without prefix keys the kv component only counts blocks, so both managers must agree.
    rng = np.random.default_rng(5)
    arrivals = np.sort(rng.uniform(0, 20, 80))
    trace = RequestTrace.from_arrays(arrivals, rng.integers(1, 300, 80), rng.integers(1, 200, 80))
    config = SchedulerConfig(num_blocks=120, block_size=16, watermark_blocks=2, max_batched_tokens=256, cost=UNIT_COST)
    counted = Scheduler(config, kv=CountingBlockManager(120, 16)).run(trace)
    real = Scheduler(config, kv=KVCacheBlockManager(KVCache(120, 16))).run(trace)
    assert counted.preemptions.sum() > 0
    for name in ("first_token_s", "finish_s", "queue_wait_s", "step_start_s", "step_kv_utilisation"):
        np.testing.assert_array_equal(getattr(counted, name), getattr(real, name))


def test_an_empty_trace_simulates_to_an_empty_result():
    result, _ = simulate(RequestTrace.from_arrays([], [], []))
    assert len(result.arrival_s) == 0 and len(result.step_start_s) == 0
    summary = summarize(result, parse_slo("ttft=1s"))
    assert summary["requests"] == 0 and math.isnan(summary["ttft_p99_s"])


def test_default_block_manager_is_the_kv_component():
    trace = RequestTrace.from_arrays([0.0, 0.5], [30, 50], [5, 9])
    scheduler = Scheduler(SchedulerConfig(num_blocks=64, watermark_blocks=1))
    result = scheduler.run(trace)
    assert isinstance(scheduler.kv, KVCacheBlockManager)
    assert result.finished.all()
    scheduler.kv.cache.check()
    # run() may be called again: the cache is empty (cached blocks count as free).
    assert scheduler.run(trace).finished.all()


# ---------------------------------------------------------------- policies


def order_of_service(trace: RequestTrace, **config) -> list[int]:
    """Requests in the order they were first admitted, on an engine that runs one at a time."""
    result, _ = simulate(trace, max_num_seqs=1, cost=UNIT_COST, num_blocks=100, **config)
    return np.argsort(result.arrival_s + result.queue_wait_s, kind="stable").tolist()


def test_policies_order_the_queue_as_documented():
    # Request 0 occupies the engine while 1-3 queue up; then the policy decides among them.
    trace = RequestTrace.from_arrays(
        [0.0, 0.1, 0.2, 0.3], [5, 40, 10, 30], [2, 1, 30, 2], predicted_output_tokens=[2, 1, 30, 2]
    )
    assert order_of_service(trace, policy="fcfs") == [0, 1, 2, 3]
    assert order_of_service(trace, policy="spf") == [0, 2, 3, 1]  # prompts 10 < 30 < 40
    # Remaining work in iterations: 40/2048 + 1 < 30/2048 + 2 < 10/2048 + 30.
    assert order_of_service(trace, policy="srwf") == [0, 1, 3, 2]


def test_srwf_follows_predictions_not_the_truth():
    trace = RequestTrace.from_arrays(
        [0.0, 0.1, 0.2], [5, 5, 5], [2, 50, 3], predicted_output_tokens=[2, 3, 50]
    )
    assert order_of_service(trace, policy="srwf") == [0, 1, 2]


def test_priority_aging_uses_explicit_priorities_with_aging():
    # Request 1 is not urgent (priority 1), 2 and 3 are (0). With aging_s=10, request 1 ranks as
    # if it arrived 10 s late: before request 3, which arrives at 12.2 s, and after request 2.
    # With aging_s=100 its rank is 100.1 s, so request 3 overtakes it too.
    trace = RequestTrace.from_arrays([0.0, 0.1, 0.2, 12.2], [5, 5, 5, 5], [30, 2, 2, 2], priority=[0, 1, 0, 0])
    assert order_of_service(trace, policy="priority-aging", aging_s=10.0) == [0, 2, 1, 3]
    assert order_of_service(trace, policy="priority-aging", aging_s=100.0) == [0, 2, 3, 1]


def test_aging_prevents_the_starvation_that_shortest_first_causes():
    # Short requests arrive every 0.4 s for 160 s, more than the engine serves (one at a time,
    # 0.5 s each); one long request (number 1, priority 1 where the short ones have 0) arrives
    # at 0.01 s.
    arrivals = [0.0, 0.01] + [0.4 * i for i in range(1, 400)]
    prompts = [20, 400] + [20] * 399
    priority = [0, 1] + [0] * 399
    trace = RequestTrace.from_arrays(arrivals, prompts, [4] * 401, priority=priority)
    cost = CostModel(step_overhead_s=0.1, prefill_token_s=0.005, decode_sequence_s=0.0, kv_token_read_s=0.0)
    common = dict(max_num_seqs=1, num_blocks=1000, cost=cost)
    spf, _ = simulate(trace, policy="spf", **common)
    aging, _ = simulate(trace, policy="priority-aging", aging_s=20.0, **common)
    # Shortest-prompt-first serves the long request only when the short backlog has drained.
    assert spf.queue_wait_s[1] > 150
    # With aging it waits only behind requests that arrived before 0.01 + 20 * 1 s: ~50 of them.
    assert 20 < aging.queue_wait_s[1] < 40
    assert np.nanmax(aging.queue_wait_s) < np.nanmax(spf.queue_wait_s)


@pytest.mark.parametrize("preemption", PREEMPTION_VICTIMS)
def test_every_victim_rule_completes_under_memory_pressure(preemption):
    rng = np.random.default_rng(3)
    trace = RequestTrace.from_arrays(np.sort(rng.uniform(0, 5, 60)), rng.integers(5, 50, 60), rng.integers(5, 30, 60))
    result, kv = simulate(trace, num_blocks=20, block_size=4, max_batched_tokens=64, preemption=preemption,
        watermark_blocks=0, cost=UNIT_COST,
    )
    assert result.finished.all() and result.preemptions.sum() > 0
    assert kv.free == kv.num_blocks


# ---------------------------------------------------------------- micro-batching and admission


def test_idle_engine_waits_for_a_micro_batch():
    trace = RequestTrace.from_arrays([0.0, 0.3, 0.5, 10.0], [4, 4, 4, 4], [1, 1, 1, 1])
    result, _ = simulate(trace, micro_batch_size=3, micro_batch_max_wait_s=2.0, cost=UNIT_COST)
    # The first three start together when the third arrives; the last one alone after 2 s.
    np.testing.assert_allclose(result.step_start_s, [0.5, 12.0])
    assert result.step_prefill_tokens.tolist() == [12, 4]


def test_admission_controller_runs_on_simulated_time():
    trace = RequestTrace.from_arrays([0.0, 0.0, 0.0, 0.0], [10, 10, 10, 10], [2, 2, 2, 2])
    config = SchedulerConfig(cost=UNIT_COST, num_blocks=100, block_size=16)
    scheduler = Scheduler(config, kv=CountingBlockManager(100, 16))
    scheduler.admission = AdmissionController(
        requests_per_second=1, request_burst=1, max_queue_length=3, clock=scheduler.clock
    )
    result = scheduler.run(trace)
    # One admitted at once, two held by the rate limit, the fourth rejected: 2 held + 1 waiting.
    assert result.rejection[:3] == [None, None, None]
    assert result.rejection[3].startswith("admission: queue full")
    np.testing.assert_allclose(result.admission_wait_s[:3], [0.0, 1.0, 2.0], atol=1.1)
    assert np.all(np.diff(result.admission_wait_s[:3]) > 0)
    assert result.finished[:3].all() and not result.finished[3]


# ---------------------------------------------------------------- bad input


def test_a_request_larger_than_the_whole_cache_is_rejected_with_its_reason():
    trace = RequestTrace.from_arrays([0.0, 1.0], [100, 10], [30, 5])
    result, kv = simulate(trace, num_blocks=8, block_size=16, watermark_blocks=0, cost=UNIT_COST)
    assert result.rejection[0] == (
        "needs 129 tokens of KV cache (prompt 100 + output 30 - 1) but the whole cache holds 128"
    )
    assert result.rejection[1] is None and result.finished.tolist() == [False, True]
    assert math.isnan(result.ttft_s[0])
    summary = summarize(result, SLO(ttft_s=100))
    assert summary["rejected"] == 1 and summary["slo_attainment"] == 0.5


@pytest.mark.parametrize(
    "arrays, message",
    [
        (([0, 1], [10, -5], [3, 3]), r"prompt_tokens\[1\] is -5"),
        (([0, 1], [10, 5], [3, 0]), r"output_tokens\[1\] is 0"),
        (([0, 1], [10, math.nan], [3, 3]), r"prompt_tokens\[1\] is missing"),
        (([0, 1], [10, 5.5], [3, 3]), "whole numbers"),
        (([0, 2, 1], [1, 1, 1], [1, 1, 1]), r"not sorted: arrival_s\[2\] = 1.0"),
        (([0, math.inf], [1, 1], [1, 1]), "finite"),
        (([0, 1], [1, 1, 1], [1, 1]), "one per request"),
        (([0, 1], ["a", 1], [1, 1]), "sequence of numbers"),
    ],
)
def test_bad_traces_raise_clear_errors(arrays, message):
    with pytest.raises(InvalidInputError, match=message):
        RequestTrace.from_arrays(*arrays)


def test_bad_configuration_and_optional_arrays():
    with pytest.raises(InvalidInputError, match="unknown policy"):
        SchedulerConfig(policy="lifo")
    with pytest.raises(InvalidInputError, match="preemption"):
        SchedulerConfig(preemption="random")
    with pytest.raises(InvalidInputError, match="max_num_seqs"):
        SchedulerConfig(max_num_seqs=0)
    with pytest.raises(InvalidInputError, match="watermark"):
        SchedulerConfig(num_blocks=10, watermark_blocks=10)
    with pytest.raises(InvalidInputError, match="kv_token_read_s"):
        CostModel(kv_token_read_s=-1)
    with pytest.raises(InvalidInputError, match="free"):
        CostModel(step_overhead_s=0, prefill_token_s=0, decode_sequence_s=0)
    with pytest.raises(InvalidInputError, match="priority"):
        RequestTrace.from_arrays([0], [1], [1], priority=[-1])
    with pytest.raises(InvalidInputError, match="prefix_keys"):
        RequestTrace.from_arrays([0], [1], [1], prefix_keys=[(1,), (2,)])
    with pytest.raises(InvalidInputError, match="rate scale"):
        RequestTrace.from_arrays([0], [1], [1]).rate_scaled(0)
    with pytest.raises(InvalidInputError, match="RequestTrace"):
        Scheduler(kv=CountingBlockManager(10, 16)).run([(0, 1, 1)])
    kv = CountingBlockManager(10, 16)
    kv.start(99, 1, None, None)
    kv.extend(99, 1)
    with pytest.raises(InvalidInputError, match="empty KV cache"):
        Scheduler(SchedulerConfig(num_blocks=10, watermark_blocks=0), kv=kv).run(
            RequestTrace.from_arrays([0], [1], [1])
        )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ttft=2s,tpot=100ms", SLO(ttft_s=2.0, tpot_s=0.1)),
        (" TTFT = 500ms , e2e=30 ", SLO(ttft_s=0.5, e2e_s=30.0)),
        ("tpot=1.5e2us", SLO(tpot_s=1.5e-4)),
    ],
)
def test_parse_slo(text, expected):
    assert parse_slo(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty SLO"),
        ("ttft", "no '='"),
        ("latency=2s", "unknown SLO key 'latency'"),
        ("ttft=2s,ttft=1s", "given twice"),
        ("ttft=fast", "not a duration"),
        ("ttft=2h", "not a duration"),
        ("ttft=0ms", "must be positive"),
        ("ttft=-1s", "not a duration"),
    ],
)
def test_parse_slo_rejects_bad_strings(text, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_slo(text)


# ---------------------------------------------------------------- summary and workload helpers


def test_summary_of_a_hand_computed_run():
    trace = RequestTrace.from_arrays([0.0, 0.0, 0.5], [10, 3, 4], [3, 2, 1])
    result, _ = simulate(
        trace, max_batched_tokens=8, max_num_seqs=2, num_blocks=6, block_size=4, watermark_blocks=0, cost=UNIT_COST
    )
    summary = summarize(result, parse_slo("ttft=4s,tpot=1.1s"))
    assert summary["makespan_s"] == pytest.approx(5.782)
    assert summary["output_tokens_per_s"] == pytest.approx(6 / 5.782)
    assert summary["total_tokens_per_s"] == pytest.approx(23 / 5.782)
    # A: ttft 3.321, tpot 1.2305 (misses tpot); B: ttft 3.321, tpot 1.035; C: ttft 5.282 (misses).
    assert summary["slo_attainment"] == pytest.approx(1 / 3)
    assert summary["goodput_rps"] == pytest.approx(1 / 5.782)
    assert summary["max_queue_wait_s"] == pytest.approx(3.856)
    assert summary["ttft_p50_s"] == pytest.approx(3.321)
    assert summary["preemptions"] == 0


def test_rate_scaling_gamma_arrivals_and_noisy_predictions():
    trace = RequestTrace.from_arrays([10.0, 12.0, 20.0], [1, 1, 1], [1, 1, 1])
    np.testing.assert_allclose(trace.rate_scaled(2).arrival_s, [10.0, 11.0, 15.0])
    arrivals = gamma_arrivals(20000, rate=4.0, cv=2.0, seed=1)
    gaps = np.diff(arrivals)
    assert arrivals[0] == 0 and np.all(gaps >= 0)
    assert np.mean(gaps) == pytest.approx(0.25, rel=0.05)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(2.0, rel=0.1)
    assert np.array_equal(gamma_arrivals(5, 1.0, seed=7), gamma_arrivals(5, 1.0, seed=7))
    outputs = np.full(10000, 100)
    assert np.array_equal(noisy_predictions(outputs, 0.0), outputs)
    noisy = noisy_predictions(outputs, 0.5, seed=2)
    assert np.std(np.log(noisy / outputs)) == pytest.approx(0.5, rel=0.05)


# ---------------------------------------------------------------- real traces


@pytest.mark.realdata
def test_azure_conversation_trace_loads_and_simulates():
    path = DATA / "traces" / "AzureLLMInferenceTrace_conv.csv"
    if not path.exists():
        pytest.skip(f"{path} is absent (shared real data not mounted)")
    loaded = load_azure_trace(path)  # the toolkit's loader; its bad-row errors are tested in test_datasets
    trace = RequestTrace.from_arrays(loaded.arrival_s, loaded.prompt_tokens, loaded.output_tokens)
    assert len(trace) == 19366
    assert trace.arrival_s[0] == 0 and 3400 < trace.arrival_s[-1] < 3600
    assert trace.prompt_tokens.mean() == pytest.approx(1155, abs=1)
    head = RequestTrace.from_arrays(trace.arrival_s[:400], trace.prompt_tokens[:400], trace.output_tokens[:400])
    result, kv = simulate(head, policy="srwf")
    assert result.finished.all() and kv.free == kv.num_blocks
    assert np.array_equal(result.generated_tokens, head.output_tokens)


def test_prefix_keys_must_name_one_prefix_each():
    with pytest.raises(InvalidInputError, match="must name one whole prefix"):
        RequestTrace.from_arrays([0, 1], [16, 16], [1, 1], prefix_keys=[[5], [7, 5]], prefix_block_tokens=8)
    with pytest.raises(InvalidInputError, match="must name one whole prefix"):
        RequestTrace.from_arrays([0], [16], [1], prefix_keys=[[5, 5]], prefix_block_tokens=8)
