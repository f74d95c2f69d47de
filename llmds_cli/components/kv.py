"""The ``kv`` component: trace replays of the paged KV cache against LRU, Belady and the
infinite-cache bound, memory utilisation against contiguous pre-allocation, and the cost of
each cache operation.

Configurations carry a ``measure``:

- ``hits``: replay the workload's block trace at a capacity (share of distinct blocks) with an
  eviction policy (``llmds``: any of ours; peers ``lru`` = plain LRU, ``belady`` = offline
  optimum, ``infinite`` = unbounded cache).
- ``memory``: tokens stored / tokens reserved over the request lengths at a block size
  (``llmds``: paged; ``contiguous``: max-length pre-allocation).
- ``ops``: allocate / append / fork / lookup / free latencies on a synthetic chat workload.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from llmds.errors import InvalidInputError
from llmds_cli import datasets, metrics, plots, registry
from llmds_cli.components.base import (
    Adapter, Column, Config, Goal, RunOptions, Workload, WorkloadSpec, checksum_of_files, checksum_of_params,
)

CAPACITIES = (0.01, 0.05, 0.10, 0.25)
BLOCK_SIZES = (8, 16, 32, 64)
MAX_MODEL_LEN = 8192
# vLLM v1 BlockPool with prefix caching on the Mooncake conversation trace (issue 4): hit rates
# at 1 / 5 / 10 / 25 % of the distinct blocks. Drawn on the chart as the reference line.
VLLM_MOONCAKE_HITS = {0.01: 0.0525, 0.05: 0.1958, 0.10: 0.2789, 0.25: 0.3535}


def load_workload(spec: WorkloadSpec) -> Workload:
    if spec.dataset == "synthetic-kv":
        params = dict(datasets.manifest("synthetic-kv").params)
        blocks, prompts, outputs = synthetic_chat_trace(**params, seed=spec.seed)
        checksum = checksum_of_params(dataset=spec.dataset, seed=spec.seed, **params)
        block_tokens = params["block_tokens"]
    elif spec.dataset in ("mooncake-conversation", "azure-conv", "azure-code"):
        trace = datasets.load_trace(spec.dataset, spec.data_dir)
        folder = datasets.locate(spec.dataset, spec.data_dir)
        checksum = checksum_of_files([folder / next(iter(datasets.manifest(spec.dataset).files))])
        blocks = trace.block_hashes
        prompts, outputs = trace.prompt_tokens, trace.output_tokens
        block_tokens = trace.hash_block_tokens
    else:
        raise InvalidInputError(
            f"kv cannot run on dataset {spec.dataset!r}; it accepts: {', '.join(registry.get('kv').workloads)}."
        )
    description = {"dataset": spec.dataset, "requests": len(prompts),
                   "block_references": sum(map(len, blocks)) if blocks else None,
                   "distinct_blocks": len({h for r in blocks for h in r}) if blocks else None}
    data = {"blocks": blocks, "prompts": np.asarray(prompts), "outputs": np.asarray(outputs),
            "block_tokens": block_tokens}
    return Workload(spec.dataset, data, checksum, description, {"dataset": spec.dataset})


def synthetic_chat_trace(users: int = 400, turns: int = 6, system_prompts: int = 8,
                         block_tokens: int = 512, seed: int = 0) -> tuple[list[list[int]], list[int], list[int]]:
    """Multi-turn chats sharing system prompts, as block-hash lists (Mooncake's shape).

    Each user picks a system prompt (Zipf popularity, 1-6 blocks) and holds a conversation of
    up to ``turns`` turns; turn t re-sends the whole history, so its blocks extend turn t-1's.
    Users interleave at random, as concurrent sessions do.
    """
    rng = np.random.default_rng(seed)
    next_id = [0]

    def fresh(n: int) -> list[int]:
        ids = list(range(next_id[0], next_id[0] + n))
        next_id[0] += n
        return ids

    prompts = [fresh(int(rng.integers(1, 7))) for _ in range(system_prompts)]
    popularity = 1.0 / np.arange(1, system_prompts + 1)
    sessions = []
    for _ in range(users):
        history = list(prompts[rng.choice(system_prompts, p=popularity / popularity.sum())])
        session = []
        for _ in range(int(rng.integers(1, turns + 1))):
            history = history + fresh(int(rng.integers(1, 4)))
            session.append(list(history))
        sessions.append(session)
    order = np.concatenate([[u] * len(s) for u, s in enumerate(sessions)])
    rng.shuffle(order)
    cursor = [0] * users
    requests = []
    for user in order:
        requests.append(sessions[user][cursor[user]])
        cursor[user] += 1
    prompt_tokens = [len(r) * block_tokens - int(rng.integers(0, block_tokens)) for r in requests]
    output_tokens = rng.integers(16, 512, len(requests)).tolist()
    return requests, prompt_tokens, output_tokens


def _require_blocks(workload: Workload) -> list[list[int]]:
    if not workload.data["blocks"]:
        raise InvalidInputError(
            f"dataset {workload.name} has no block hashes, so prefix hit rates cannot be replayed; "
            "use mooncake-conversation or synthetic-kv for -p measure=hits."
        )
    return workload.data["blocks"]


class _KVAdapter(Adapter):
    def build(self, workload: Workload) -> None:
        """Nothing to build ahead: each measurement constructs its own cache."""

    def run(self, workload: Workload) -> Iterator[dict[str, Any]]:
        measure = self.params["measure"]
        if measure == "hits":
            yield from self.hits(workload)
        elif measure == "memory":
            yield from self.memory(workload)
        elif measure == "ops":
            yield from self.ops(workload)
        else:
            raise InvalidInputError(f"unknown measure {measure!r}; use hits, memory or ops.")

    def hits(self, workload: Workload) -> Iterator[dict[str, Any]]:
        raise InvalidInputError(f"{self.impl} does not replay hit rates.")

    def memory(self, workload: Workload) -> Iterator[dict[str, Any]]:
        raise InvalidInputError(f"{self.impl} does not measure memory utilisation.")

    def ops(self, workload: Workload) -> Iterator[dict[str, Any]]:
        raise InvalidInputError(f"{self.impl} does not time cache operations.")

    @staticmethod
    def replay_record(result, capacity: float) -> dict[str, Any]:
        return {"op": "replay", "capacity": capacity, "capacity_blocks": result.capacity_blocks,
                "policy": result.policy, "hit_blocks": result.hit_blocks,
                "block_references": result.block_references, "block_ops": result.block_ops,
                "evicted_blocks": result.evicted_blocks, "ns": int(result.seconds * 1e9)}


class LlmdsKV(_KVAdapter):
    impl = "llmds"

    def warmup(self, workload: Workload) -> None:
        from llmds.kv_replay import replay

        if self.params["measure"] == "hits":
            blocks = _require_blocks(workload)[:200]
            replay(blocks, max(64, max(map(len, blocks))), self.params.get("policy", "lru"))

    def hits(self, workload):
        from llmds.kv_replay import capacity_for, replay

        blocks = _require_blocks(workload)
        capacity = float(self.params["capacity"])
        storage = bool(self.params.get("storage", False))
        result = replay(blocks, max(capacity_for(blocks, capacity), max(map(len, blocks))),
                        self.params["policy"], block_size=workload.data["block_tokens"] or 512,
                        model=self.params.get("model", "tiny") if storage else None, storage=storage)
        self.storage_bytes = result.storage_bytes
        yield self.replay_record(result, capacity)

    def memory(self, workload):
        from llmds.kv_replay import memory_utilisation

        result = memory_utilisation(workload.data["prompts"], workload.data["outputs"],
                                    int(self.params["block_size"]), MAX_MODEL_LEN)
        yield {"op": "utilisation", "block_size": result.block_size, "paged": result.paged,
               "contiguous": result.contiguous, "too_long": result.too_long, "requests": result.requests}

    def ops(self, workload):
        from llmds.kv_cache import KVCache

        rng = np.random.default_rng(0)
        block_size = int(self.params.get("block_size", 16))
        cache = KVCache(8192, block_size, policy="lru")
        clock = time.perf_counter_ns
        timings: dict[str, list[int]] = {"allocate": [], "append": [], "fork": [], "lookup": [], "free": []}
        system = rng.integers(0, 32000, 512).tolist()
        for round_ in range(300):
            prompt = system + rng.integers(0, 32000, int(rng.integers(16, 512))).tolist()
            parent = ("p", round_)
            t0 = clock()
            cache.match_prefix(prompt)
            timings["lookup"].append(clock() - t0)
            t0 = clock()
            cache.allocate(parent, prompt)
            timings["allocate"].append(clock() - t0)
            children = [("c", round_, i) for i in range(4)]  # parallel sampling, n = 4
            for child in children:
                t0 = clock()
                cache.fork(parent, child)
                timings["fork"].append(clock() - t0)
            for step in range(32):
                for child in children:
                    t0 = clock()
                    cache.append(child, [step])
                    timings["append"].append(clock() - t0)
            for seq in (parent, *children):
                t0 = clock()
                cache.free(seq)
                timings["free"].append(clock() - t0)
        for op, values in timings.items():
            yield {"op": "kv_op", "name": op, "ns": values}
        cache.check()

    def memory_bytes(self) -> int:
        return getattr(self, "storage_bytes", 0)

    def describe(self) -> dict[str, Any]:
        return {"impl": self.impl, **self.params}


class LruKV(LlmdsKV):
    """Plain LRU, as mainstream servers evict cached prefix blocks: the baseline policy.

    It is our cache with the LRU policy (which reproduces vLLM's BlockPool hit counts on
    Mooncake), so it is a baseline for hit rates, not an outside implementation."""

    impl = "lru"

    def __init__(self, params: dict[str, Any], options: RunOptions = RunOptions()):
        super().__init__({**params, "policy": "lru"}, options)


class BeladyKV(_KVAdapter):
    """The offline optimum (Belady's MIN) at the same capacity: an upper bound for any policy."""

    impl = "belady"

    def hits(self, workload):
        from llmds.kv_replay import belady_replay, capacity_for

        blocks = _require_blocks(workload)
        capacity = float(self.params["capacity"])
        result = belady_replay(blocks, max(capacity_for(blocks, capacity), max(map(len, blocks))))
        yield self.replay_record(result, capacity)


class InfiniteKV(_KVAdapter):
    """Every block seen before is still cached: the most any policy can hit."""

    impl = "infinite"

    def hits(self, workload):
        from llmds.kv_replay import infinite_cache_hits

        blocks = _require_blocks(workload)
        yield {"op": "replay", "capacity": 1.0, "policy": "infinite", "hit_blocks": infinite_cache_hits(blocks),
               "block_references": sum(map(len, blocks)), "block_ops": 0, "ns": 0}


class ContiguousKV(LlmdsKV):
    """Contiguous pre-allocation of the model's maximum length per request (pre-PagedAttention)."""

    impl = "contiguous"

    def memory(self, workload):
        for record in super().memory(workload):
            yield {**record, "paged": None}


ADAPTERS: dict[str, type[Adapter]] = {a.impl: a for a in (LlmdsKV, LruKV, BeladyKV, InfiniteKV, ContiguousKV)}


def configurations(mode: str, params: dict[str, Any], sweep: bool, impls: list[str]) -> list[Config]:
    from llmds.kv_eviction import DEFAULT_POLICY, policy_names

    policy = params.get("policy", DEFAULT_POLICY)
    capacities = (params["capacity"],) if "capacity" in params else CAPACITIES
    block_sizes = (params["block_size"],) if "block_size" in params else BLOCK_SIZES
    measures = (params["measure"],) if "measure" in params else ("hits", "memory", "ops")
    policies = policy_names() if (mode == "bench" and sweep and "policy" not in params) else [policy]
    configs = []
    for measure in measures:
        if measure == "hits":
            for capacity in capacities:
                configs += [Config.of("llmds", {"measure": "hits", "policy": p, "capacity": capacity}) for p in policies]
                if mode == "compare":
                    configs += [Config.of(impl, {"measure": "hits", "capacity": capacity})
                                for impl in impls if impl in ("lru", "belady")]
            if mode == "compare" and "infinite" in impls:
                configs.append(Config.of("infinite", {"measure": "hits"}))
        elif measure == "memory":
            for block_size in block_sizes:
                configs.append(Config.of("llmds", {"measure": "memory", "block_size": block_size}))
            if mode == "compare" and "contiguous" in impls:
                configs.append(Config.of("contiguous", {"measure": "memory", "block_size": block_sizes[0]}))
        elif measure == "ops":
            configs.append(Config.of("llmds", {"measure": "ops", "block_size": 16}))
    return configs


TABLE = (
    Column("block_hit_rate", "block hits"),
    Column("share_of_optimum", "of optimum"),
    Column("block_ops_per_s", "block ops/s", "{:,.0f}"),
    Column("replay_s", "replay s", "{:.2f}"),
    Column("memory_utilisation", "mem util"),
    Column("ops_per_s", "ops/s", "{:,.0f}"),
    Column("p50_ns", "p50 ns", "{:,.0f}"),
    Column("p99_ns", "p99 ns", "{:,.0f}"),    Column("peak_build_mib", "build peak MiB", "{:.1f}"),
    Column("peak_query_mib", "query peak MiB", "{:.1f}"),
)
# vLLM's figures are quoted to 4 digits, so a hit rate within half a unit of the last digit
# is equal to them, not below.
_QUOTED = 0.00005
GOALS = (
    *(Goal(f"default policy >= vLLM's quoted {VLLM_MOONCAKE_HITS[c]} at {round(c * 100)}% capacity",
           f"block_hit_rate@{round(c * 100)}%", at_least=VLLM_MOONCAKE_HITS[c] - _QUOTED,
           datasets=("mooncake-conversation",)) for c in CAPACITIES),
    Goal("best policy >= 0.25 block hits at 5% capacity (stretch goal)", "best_block_hit_rate@5%", at_least=0.25,
         datasets=("mooncake-conversation",)),
    Goal("replay >= 1M block ops/s (2x vLLM's 0.5M)", "block_ops_per_s", at_least=1.0e6, datasets=("mooncake-conversation",)),
    Goal("memory utilisation >= 0.95 with 16-token blocks", "memory_utilisation@16", at_least=0.95, datasets=("azure-conv",)),
)
# `llmds profile kv`: replay one capacity with real float16 storage (the 'tiny' model shape keeps
# a 512-token block at 64 KiB), so the profile's peak can be checked against the pool's size.
PROFILE_PARAMS = {"measure": "hits", "policy": "lru", "capacity": 0.05, "storage": True, "model": "tiny"}
# Ratios only where the peer is another way of doing the same job: hit rates against LRU and
# the optimum, utilisation against contiguous. Speed against an oracle or against our own LRU
# policy would only show noise.
HIGHER_IS_BETTER = {"block_hit_rate": True, "memory_utilisation": True}


def summarize(records: list[dict[str, Any]], context: dict[str, Any]) -> list[dict[str, Any]]:
    from llmds.kv_eviction import DEFAULT_POLICY

    rows = []
    optimum = {r["capacity"]: r["hit_blocks"] for r in records if r.get("impl") == "belady" and r["op"] == "replay"}
    for r in records:
        if "config" not in r or r["op"] in ("failed", "describe"):
            continue
        add = lambda metric, value, unit="", op=r["op"], config=r["config"]: rows.append(  # noqa: E731
            metrics.row(r["impl"], config, op, metric, value, unit))
        if r["op"] == "replay":
            add("block_hit_rate", r["hit_blocks"] / r["block_references"])
            if optimum.get(r["capacity"]):
                add("share_of_optimum", r["hit_blocks"] / optimum[r["capacity"]])
            if r["ns"]:
                add("block_ops_per_s", metrics.rate_per_second(r["block_ops"], r["ns"]), "1/s")
                add("replay_s", r["ns"] / 1e9, "s")
            if r["impl"] == "llmds" and r["policy"] == DEFAULT_POLICY:
                add(f"block_hit_rate@{round(r['capacity'] * 100)}%", r["hit_blocks"] / r["block_references"],
                    config=f"default policy ({DEFAULT_POLICY})")
            if r["impl"] == "llmds":  # any policy of ours: the goal reads the best of them
                add(f"best_block_hit_rate@{round(r['capacity'] * 100)}%", r["hit_blocks"] / r["block_references"])
        elif r["op"] == "utilisation":
            value = r["contiguous"] if r["impl"] == "contiguous" else r["paged"]
            add("memory_utilisation", value)
            if r["impl"] == "llmds":
                add(f"memory_utilisation@{r['block_size']}", value, config="paged, by block size")
        elif r["op"] == "kv_op":
            lat = metrics.latency_summary(r["ns"])
            name = f"{r['config']} {r['name']}"
            add("ops_per_s", metrics.rate_per_second(len(r["ns"]), float(np.sum(r["ns"]))), "1/s", config=name)
            add("p50_ns", lat["p50_ns"], "ns", config=name)
            add("p99_ns", lat["p99_ns"], "ns", config=name)
    return rows


def charts(rows: list[dict[str, Any]], records: list[dict[str, Any]], context: dict[str, Any],
           folder: Path) -> list[Path]:
    curves: dict[str, list[tuple[float, float, str]]] = {}
    for r in records:
        if r.get("op") == "replay" and r.get("impl") != "infinite":
            label = r["policy"] if r["impl"] == "llmds" else f"{r['impl']} (peer)" if r["impl"] != "belady" else "Belady optimum"
            curves.setdefault(label, []).append((r["capacity"] * 100, r["hit_blocks"] / r["block_references"], ""))
    infinite = next((r for r in records if r.get("impl") == "infinite" and r.get("op") == "replay"), None)
    if infinite and curves:
        xs = sorted({x for points in curves.values() for x, _, _ in points})
        curves["infinite cache"] = [(x, infinite["hit_blocks"] / infinite["block_references"], "") for x in xs]
    if context.get("dataset") == "mooncake-conversation":
        curves["vLLM BlockPool (quoted in issue 4, not run here)"] = [(c * 100, h, "") for c, h in VLLM_MOONCAKE_HITS.items()]
    written = []
    if curves:
        written += plots.scatter_tradeoff(folder, "hit_rate_vs_capacity", "Prefix block hit rate against cache capacity",
                                          curves, "capacity (% of distinct blocks, log)", "block hit rate",
                                          logx=True, connect=True)
    paged = sorted((r["block_size"], r["paged"]) for r in records if r.get("op") == "utilisation" and r.get("impl") == "llmds")
    contiguous = [r["contiguous"] for r in records if r.get("op") == "utilisation" and r.get("impl") == "contiguous"]
    if paged:
        series = {"paged (ours)": [v for _, v in paged]}
        if contiguous:
            series["contiguous max-length"] = [contiguous[0]] * len(paged)
        written += plots.grouped_bars(folder, "memory_utilisation", "Memory utilisation (tokens stored / reserved)",
                                      [f"{b}-token blocks" for b, _ in paged], series, "utilisation", annotate="{:.3f}")
    return written
