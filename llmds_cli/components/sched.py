"""The ``sched`` component: continuous-batching simulations of request traces per scheduling
policy and load, and the indexed heap against ``heapq`` with lazy deletion.

Configurations carry a ``measure``: ``simulate`` (one policy at one rate scale; every request's
TTFT, TPOT, end-to-end latency and queue wait are stored raw, so goodput under any SLO can be
recomputed by ``llmds report``) or ``heap`` (operation mixes on ``llmds``'s IndexedHeap and on
the ``heapq`` peer).
"""

from __future__ import annotations

import heapq
import itertools
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from llmds.errors import InvalidInputError
from llmds_cli import datasets, metrics, plots, registry
from llmds_cli.components.base import (
    Adapter, Column, Config, Goal, Workload, WorkloadSpec, checksum_of_files, checksum_of_params,
)

# The default engine (CostModel, 7B-class model on one A100-class GPU) saturates near the
# Azure conversation trace's own rate, so the sweep spans from light load to just past it.
RATE_SCALES = (0.5, 0.65, 0.8, 1.0)
DEFAULT_SLO = "ttft=2s,tpot=150ms"
HEAP_MIXES = ("push-pop", "update-heavy", "cancel-heavy")
HEAP_SIZE = 50_000


def load_workload(spec: WorkloadSpec) -> Workload:
    from llmds.scheduler import RequestTrace, gamma_arrivals

    limit = spec.option("queries")
    if spec.dataset in ("azure-conv", "azure-code"):
        trace = datasets.load_trace(spec.dataset, spec.data_dir)
        folder = datasets.locate(spec.dataset, spec.data_dir)
        checksum = checksum_of_files([folder / next(iter(datasets.manifest(spec.dataset).files))])
        arrival, prompt, output = trace.arrival_s, trace.prompt_tokens, trace.output_tokens
    elif spec.dataset == "sharegpt-lengths":
        trace = datasets.load_trace(spec.dataset, spec.data_dir)
        folder = datasets.locate(spec.dataset, spec.data_dir)
        checksum = checksum_of_files([folder / next(iter(datasets.manifest(spec.dataset).files))])
        count = min(len(trace), 10_000)
        # lengths only: Poisson arrivals at 4 requests/s (rate_scale multiplies it)
        arrival = gamma_arrivals(count, rate=4.0, cv=1.0, seed=spec.seed)
        prompt, output = trace.prompt_tokens[:count], trace.output_tokens[:count]
    elif spec.dataset == "synthetic-requests":
        params = dict(datasets.manifest("synthetic-requests").params)
        rng = np.random.default_rng(spec.seed)
        count = params["requests"]
        arrival = gamma_arrivals(count, rate=params["rate"], cv=params["burstiness_cv"], seed=spec.seed)
        prompt = np.maximum(1, rng.lognormal(np.log(params["prompt_median"]), 0.9, count)).astype(np.int64)
        output = np.maximum(1, rng.lognormal(np.log(params["output_median"]), 1.0, count)).astype(np.int64)
        checksum = checksum_of_params(dataset=spec.dataset, seed=spec.seed, **params)
    else:
        raise InvalidInputError(
            f"sched cannot run on dataset {spec.dataset!r}; it accepts: {', '.join(registry.get('sched').workloads)}."
        )
    if limit:
        arrival, prompt, output = arrival[:limit * 20], prompt[:limit * 20], output[:limit * 20]
    # zero-length outputs exist in the Azure traces; a served request produces at least one token
    trace = RequestTrace.from_arrays(arrival, np.maximum(prompt, 1), np.maximum(output, 1))
    description = {"dataset": spec.dataset, "requests": len(trace),
                   "duration_s": float(trace.arrival_s[-1] - trace.arrival_s[0]) if len(trace) else 0.0}
    return Workload(spec.dataset, trace, checksum, description, {"slo": spec.option("slo", DEFAULT_SLO)})


def _rounded(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 5) for v in values]


class LlmdsScheduler(Adapter):
    impl = "llmds"

    def build(self, workload: Workload) -> None:
        """The simulator builds its engine at each run."""

    def warmup(self, workload: Workload) -> None:
        if self.params["measure"] == "simulate":
            self._simulate(workload.data, "fcfs", 1.0, limit=200)

    def _simulate(self, trace, policy: str, rate_scale: float, limit: int | None = None):
        from llmds.scheduler import RequestTrace, Scheduler, SchedulerConfig

        if limit:
            trace = RequestTrace.from_arrays(trace.arrival_s[:limit], trace.prompt_tokens[:limit], trace.output_tokens[:limit])
        scheduler = Scheduler(SchedulerConfig(policy=policy))
        return scheduler.run(trace.rate_scaled(rate_scale))

    def run(self, workload: Workload) -> Iterator[dict[str, Any]]:
        if self.params["measure"] == "heap":
            yield from heap_mixes(self.impl)
            return
        policy, scale = self.params["policy"], float(self.params["rate_scale"])
        t0 = time.perf_counter_ns()
        result = self._simulate(workload.data, policy, scale)
        wall = time.perf_counter_ns() - t0
        finished = result.finished
        yield {"op": "simulate", "policy": policy, "rate_scale": scale, "wall_ns": wall,
               "requests": len(result.arrival_s), "arrival_s": _rounded(result.arrival_s),
               "ttft_s": _rounded(result.ttft_s), "tpot_s": _rounded(result.tpot_s), "e2e_s": _rounded(result.e2e_s),
               "queue_wait_s": _rounded(result.queue_wait_s),
               "rejections": [r for r in result.rejection if r is not None],
               "preemptions": int(result.preemptions.sum()),
               "output_tokens": int(result.generated_tokens.sum()),
               "finish_s": float(np.nanmax(result.finish_s)) if finished.any() else None,
               "kv_utilisation_mean": float(np.average(result.step_kv_utilisation, weights=result.step_duration_s))
               if len(result.step_duration_s) else None}

    def describe(self) -> dict[str, Any]:
        return {"impl": self.impl, **self.params}


class HeapqAdapter(Adapter):
    """``heapq`` with lazy deletion: updates push a new entry, cancels mark, pops skip stale ones."""

    impl = "heapq"

    def build(self, workload: Workload) -> None:
        """Nothing to build."""

    def run(self, workload: Workload) -> Iterator[dict[str, Any]]:
        yield from heap_mixes(self.impl)


def _ops(mix: str, rng: np.random.Generator) -> list[tuple[str, int, float]]:
    n = HEAP_SIZE
    priorities = rng.random(n)
    ops = [("push", key, float(p)) for key, p in enumerate(priorities)]
    if mix == "update-heavy":
        keys = rng.integers(0, n, 3 * n)
        ops += [("update", int(k), float(p)) for k, p in zip(keys, rng.random(3 * n))]
    elif mix == "cancel-heavy":
        ops += [("remove", int(k), 0.0) for k in rng.permutation(n)[: n * 3 // 4]]
    ops += [("pop", -1, 0.0)] * n
    return ops


def _run_indexed(ops) -> int:
    from llmds.indexed_heap import IndexedHeap

    heap = IndexedHeap()
    push, update, remove, pop = heap.push, heap.update, heap.remove, heap.pop
    popped = 0
    for op, key, priority in ops:
        if op == "push":
            push(key, priority)
        elif op == "update":
            update(key, priority)
        elif op == "remove":
            remove(key)
        elif heap:
            pop()
            popped += 1
    return popped


def _run_heapq(ops) -> int:
    heap: list = []
    current: dict[int, float] = {}
    counter = itertools.count()
    push, pop = heapq.heappush, heapq.heappop
    popped = 0
    for op, key, priority in ops:
        if op == "push" or op == "update":
            current[key] = priority
            push(heap, (priority, next(counter), key))
        elif op == "remove":
            del current[key]
        else:
            while heap:
                p, _, k = pop(heap)
                if current.get(k) == p:
                    del current[k]
                    popped += 1
                    break
    return popped


def heap_mixes(impl: str) -> Iterator[dict[str, Any]]:
    run = _run_indexed if impl == "llmds" else _run_heapq
    for mix in HEAP_MIXES:
        ops = _ops(mix, np.random.default_rng(7))
        run(ops[: len(ops) // 10])  # warm up
        times = []
        for _ in range(3):
            t0 = time.perf_counter_ns()
            popped = run(ops)
            times.append(time.perf_counter_ns() - t0)
        yield {"op": "heap", "mix": mix, "operations": len(ops), "popped": popped, "ns": times}


# FCFS, the policy of mainstream servers, is the baseline among the simulated policies (rows
# with policy=fcfs); heapq is the outside peer of the heap.
ADAPTERS: dict[str, type[Adapter]] = {a.impl: a for a in (LlmdsScheduler, HeapqAdapter)}


def configurations(mode: str, params: dict[str, Any], sweep: bool, impls: list[str]) -> list[Config]:
    from llmds.scheduler import POLICIES

    scales = (params["rate_scale"],) if "rate_scale" in params else (RATE_SCALES if sweep or mode == "compare" else (1.0,))
    policies = (params["policy"],) if "policy" in params else POLICIES
    configs = [Config.of("llmds", {"measure": "simulate", "policy": p, "rate_scale": s}) for s in scales for p in policies]
    configs.append(Config.of("llmds", {"measure": "heap"}))
    if mode == "compare" and "heapq" in impls:
        configs.append(Config.of("heapq", {"measure": "heap"}))
    return configs


TABLE = (
    Column("ttft_p50_s", "TTFT p50 s", "{:.2f}"),
    Column("ttft_p99_s", "TTFT p99 s", "{:.2f}"),
    Column("tpot_p99_s", "TPOT p99 s", "{:.3f}"),
    Column("e2e_p99_s", "E2E p99 s", "{:.1f}"),
    Column("throughput_tok_s", "tok/s", "{:,.0f}"),
    Column("goodput_rps", "goodput r/s", "{:.2f}"),
    Column("slo_attainment", "SLO met", "{:.3f}"),
    Column("preemptions", "preempt", "{:,.0f}"),
    Column("max_queue_wait_s", "max wait s", "{:.1f}"),
    Column("sim_requests_per_s", "sim req/s", "{:,.0f}"),
    Column("heap_ops_per_s", "heap ops/s", "{:,.0f}"),    Column("peak_build_mib", "build peak MiB", "{:.1f}"),
    Column("peak_query_mib", "query peak MiB", "{:.1f}"),
)
GOALS = (
    Goal("Azure conversation trace simulates in < 10 s (slowest policy and load; full trace only with --full)",
         "sim_wall_s_max", at_most=10.0, datasets=("azure-conv",)),
    Goal("indexed heap >= heapq (lazy) on update-heavy mix", "heap_ops_per_s@update-heavy", "heapq", at_least=1.0),
    Goal("indexed heap >= heapq (lazy) on cancel-heavy mix", "heap_ops_per_s@cancel-heavy", "heapq", at_least=1.0),
    Goal("indexed heap within 3x of heapq on push/pop only", "heap_ops_per_s@push-pop", "heapq", at_least=1 / 3),
)
HIGHER_IS_BETTER = {"goodput_rps": True, "throughput_tok_s": True, "heap_ops_per_s": True, "ttft_p99_s": False}


def summarize(records: list[dict[str, Any]], context: dict[str, Any]) -> list[dict[str, Any]]:
    from llmds.scheduler import parse_slo

    slo = parse_slo(context.get("slo", DEFAULT_SLO))
    rows = []
    for r in records:
        if "config" not in r:
            continue
        add = lambda metric, value, unit="", config=r["config"]: rows.append(  # noqa: E731
            metrics.row(r["impl"], config, r["op"], metric, value, unit))
        if r["op"] == "simulate":
            ttft, tpot, e2e = (np.array([np.nan if v is None else v for v in r[k]], dtype=float) for k in ("ttft_s", "tpot_s", "e2e_s"))
            waits = np.array([np.nan if v is None else v for v in r["queue_wait_s"]], dtype=float)
            done = ~np.isnan(e2e)
            makespan = (r["finish_s"] - r["arrival_s"][0]) if r["finish_s"] is not None else float("nan")
            for name, values in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e)):
                finite = values[~np.isnan(values)]
                for q in (50, 90, 99):
                    add(f"{name}_p{q}_s", float(np.percentile(finite, q)) if finite.size else float("nan"), "s")
            good = done.copy()  # the simulator's SimulationResult.meets, on the stored arrays
            for latency, target in ((ttft, slo.ttft_s), (tpot, slo.tpot_s), (e2e, slo.e2e_s)):
                if target is not None:
                    with np.errstate(invalid="ignore"):
                        good &= np.isnan(latency) | (latency <= target)
            add("throughput_tok_s", r["output_tokens"] / makespan if makespan else float("nan"), "1/s")
            add("goodput_rps", good.sum() / makespan if makespan else float("nan"), "1/s")
            add("slo_attainment", good.mean())
            add("preemptions", r["preemptions"])
            add("rejected", len(r["rejections"]))
            add("max_queue_wait_s", float(np.nanmax(waits)) if (~np.isnan(waits)).any() else float("nan"), "s")
            add("sim_wall_s", r["wall_ns"] / 1e9, "s")
            add("sim_requests_per_s", metrics.rate_per_second(r["requests"], r["wall_ns"]), "1/s")
            if r["kv_utilisation_mean"] is not None:
                add("kv_utilisation_mean", r["kv_utilisation_mean"])
        elif r["op"] == "heap":
            rate = metrics.rate_per_second(r["operations"], float(np.median(r["ns"])))
            add("heap_ops_per_s", rate, "1/s", config=f"{r['config']} {r['mix']}")
            add(f"heap_ops_per_s@{r['mix']}", rate, "1/s")
    walls = [r["wall_ns"] for r in records if r.get("op") == "simulate" and r.get("impl") == "llmds"]
    if walls:  # the goal reads the slowest simulation of the run
        rows.append(metrics.row("llmds", "goals", "simulate", "sim_wall_s_max", max(walls) / 1e9, "s"))
    return rows


def charts(rows: list[dict[str, Any]], records: list[dict[str, Any]], context: dict[str, Any],
           folder: Path) -> list[Path]:
    sims = [r for r in records if r.get("op") == "simulate"]
    written = []
    if not sims:
        return written
    import matplotlib

    matplotlib.use("Agg")
    fig, ax = plots.figure()
    scales = sorted({r["rate_scale"] for r in sims})
    shown = scales[len(scales) // 2]
    for index, r in enumerate(s for s in sims if s["rate_scale"] == shown):
        ttft = np.sort([v for v in r["ttft_s"] if v is not None])
        if ttft.size:
            ax.plot(ttft, np.arange(1, ttft.size + 1) / ttft.size, label=r["policy"], color=plots.colour(index))
    ax.set_xscale("log")
    ax.set_xlabel("time to first token (s, log)")
    ax.set_ylabel("share of requests")
    ax.set_title(f"TTFT distribution per policy at rate x{shown:g}")
    ax.legend(fontsize=8)
    written += plots.save(fig, folder, "ttft_cdf")
    values: dict[str, dict[str, Any]] = {}
    for row in rows:
        values.setdefault(row["config"], {})[row["metric"]] = row["value"]
    goodput: dict[str, list[tuple[float, float, str]]] = {}
    p99: dict[str, list[tuple[float, float, str]]] = {}
    for r in sims:
        v = values.get(r["config"], {})
        goodput.setdefault(r["policy"], []).append((r["rate_scale"], v.get("goodput_rps", float("nan")), ""))
        p99.setdefault(r["policy"], []).append((r["rate_scale"], v.get("ttft_p99_s", float("nan")), ""))
    written += plots.scatter_tradeoff(folder, "capacity_goodput", f"Goodput under SLO {context.get('slo', DEFAULT_SLO)} against load",
                                      goodput, "arrival rate scale (x trace rate)", "goodput (requests/s)", connect=True)
    written += plots.scatter_tradeoff(folder, "capacity_ttft_p99", "p99 time to first token against load",
                                      p99, "arrival rate scale (x trace rate)", "p99 TTFT (s, log)", logy=True, connect=True)
    return written
