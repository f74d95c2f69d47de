"""The ``cms`` component: key streams, adapters (ours, Apache DataSketches, pyprobables, exact
Counter), error against exact counts, throughput and heavy hitters.

All sketches get the same shape from (epsilon, delta): width = ceil(e / epsilon),
depth = ceil(ln(1 / delta)) — the convention of Cormode & Muthukrishnan that DataSketches'
``suggest_num_buckets`` / ``suggest_num_hashes`` also follow — so error figures compare like
with like. Peers are fed item by item from Python (their only interface); ours is timed both
batched and item by item, with and without string hashing.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from llmds.errors import InvalidInputError
from llmds_cli import datasets, metrics, plots, registry
from llmds_cli.components.base import (
    Adapter, Column, Config, Goal, Workload, WorkloadSpec, checksum_of_files, checksum_of_params,
)

TOP = 100
_TOKEN = re.compile(r"\w+")


def shape(epsilon: float, delta: float) -> tuple[int, int]:
    if not (0 < epsilon < 1 and 0 < delta < 1):
        raise InvalidInputError(f"epsilon and delta must lie in (0, 1); got epsilon={epsilon}, delta={delta}.")
    return math.ceil(math.e / epsilon), math.ceil(math.log(1 / delta))


def load_workload(spec: WorkloadSpec) -> Workload:
    if spec.dataset == "synthetic-zipf":
        from llmds_cli.synthetic import zipf_stream

        params = dict(datasets.manifest("synthetic-zipf").params)
        if spec.option("queries"):  # --quick: a shorter stream
            params["items"] = min(params["items"], 200_000)
        stream = zipf_stream(**params, seed=spec.seed)
        checksum = checksum_of_params(dataset=spec.dataset, seed=spec.seed, **params)
    elif spec.dataset == "scifact":
        folder = datasets.locate("scifact", spec.data_dir)
        beir = datasets.load_beir(folder)
        stream = [t for text in beir.doc_texts for t in _TOKEN.findall(text.lower())]
        if spec.option("queries"):
            stream = stream[:200_000]
        checksum = checksum_of_files([folder / "corpus.jsonl"])
    else:
        raise InvalidInputError(
            f"cms cannot run on dataset {spec.dataset!r}; it accepts: {', '.join(registry.get('cms').workloads)}."
        )
    exact = Counter(stream)
    keys = list(exact)
    description = {"dataset": spec.dataset, "items": len(stream), "distinct": len(keys),
                   "stream": "lower-case \\w+ tokens of title + text" if spec.dataset == "scifact" else "zipf"}
    context = {"keys": keys, "counts": [exact[k] for k in keys], "items": len(stream)}
    return Workload(spec.dataset, {"stream": stream, "keys": keys}, checksum, description, context)


class _SketchAdapter(Adapter):
    """Life cycle: build = feed the whole stream (timed by the runner); run = queries + estimates."""

    def width_depth(self) -> tuple[int, int]:
        return shape(float(self.params["epsilon"]), float(self.params["delta"]))

    def run(self, workload: Workload) -> Iterator[dict[str, Any]]:
        keys = workload.data["keys"]
        t0 = time.perf_counter_ns()
        estimates = self.estimates(keys)
        elapsed = time.perf_counter_ns() - t0
        yield {"op": "query", "keys": len(keys), "ns": elapsed}
        yield {"op": "estimates", "values": np.asarray(estimates, dtype=np.int64).tolist()}
        # the implementation's own best ingestion path (ours: batched; peers: item by item)
        yield {"op": "update", "items": len(workload.data["stream"]), "ns": self.update_ns,
               "mode": self.update_mode, "primary": True}
        yield from self.extra(workload)

    def extra(self, workload: Workload) -> Iterator[dict[str, Any]]:
        return iter(())

    def estimates(self, keys: list[str]) -> list[int]:
        raise NotImplementedError


class LlmdsCMS(_SketchAdapter):
    impl = "llmds"
    update_mode = "batch (strings hashed inside)"

    def _new(self, track: int = TOP * 4):
        from llmds.cms import CountMinSketch

        width, depth = self.width_depth()
        return CountMinSketch(width, depth, seed=int(self.params.get("seed", 0)),
                              conservative=bool(self.params["conservative"]), track_top=track)

    def warmup(self, workload: Workload) -> None:
        from llmds.cms import fingerprint

        sketch = self._new()
        sketch.update_batch(workload.data["stream"][:1000])
        sketch.update_batch(fingerprint(workload.data["stream"][:1000]))
        sketch.query_batch(workload.data["keys"][:100])
        sketch.heavy_hitters(10)

    def build(self, workload: Workload) -> None:
        self.sketch = self._new()
        t0 = time.perf_counter_ns()
        self.sketch.update_batch(workload.data["stream"])
        self.update_ns = time.perf_counter_ns() - t0

    def estimates(self, keys):
        return self.sketch.query_batch(keys)

    def extra(self, workload: Workload) -> Iterator[dict[str, Any]]:
        from llmds.cms import fingerprint

        stream = workload.data["stream"]
        t0 = time.perf_counter_ns()
        prints = fingerprint(stream)
        hash_ns = time.perf_counter_ns() - t0
        yield {"op": "hash", "items": len(stream), "ns": hash_ns}
        for track, label in ((0, "batch, pre-hashed, no tracking"), (TOP * 4, "batch, pre-hashed")):
            sketch = self._new(track)
            t0 = time.perf_counter_ns()
            sketch.update_batch(prints)
            yield {"op": "update", "items": len(stream), "ns": time.perf_counter_ns() - t0, "mode": label}
        sample = stream[:200_000]
        sketch = self._new()
        update = sketch.update
        t0 = time.perf_counter_ns()
        for item in sample:
            update(item)
        yield {"op": "update", "items": len(sample), "ns": time.perf_counter_ns() - t0, "mode": "item by item"}
        yield {"op": "heavy_hitters", "keys": [k for k, _ in self.sketch.heavy_hitters(TOP)]}

    def memory_bytes(self) -> int:
        return self.sketch.memory_bytes()

    def describe(self) -> dict[str, Any]:
        return {**self.params, **self.sketch.describe()}

    def close(self) -> None:
        self.sketch = None


class DataSketchesAdapter(_SketchAdapter):
    impl = "datasketches"
    requires = ("datasketches",)
    update_mode = "item by item"

    def build(self, workload: Workload) -> None:
        import datasketches

        width, depth = self.width_depth()
        self.sketch = datasketches.count_min_sketch(depth, width, int(self.params.get("seed", 0)) + 1)
        update = self.sketch.update
        t0 = time.perf_counter_ns()
        for item in workload.data["stream"]:
            update(item)
        self.update_ns = time.perf_counter_ns() - t0

    def estimates(self, keys):
        get = self.sketch.get_estimate
        return [int(get(k)) for k in keys]

    def memory_bytes(self) -> int:
        return int(self.sketch.get_serialized_size_bytes())

    def close(self) -> None:
        self.sketch = None


class PyprobablesAdapter(_SketchAdapter):
    impl = "pyprobables"
    requires = ("probables",)
    update_mode = "item by item"

    def build(self, workload: Workload) -> None:
        from probables import CountMinSketch

        width, depth = self.width_depth()
        self.width, self.depth = width, depth
        self.sketch = CountMinSketch(width=width, depth=depth)
        add = self.sketch.add
        t0 = time.perf_counter_ns()
        for item in workload.data["stream"]:
            add(item)
        self.update_ns = time.perf_counter_ns() - t0

    def estimates(self, keys):
        check = self.sketch.check
        return [int(check(k)) for k in keys]

    def memory_bytes(self) -> int:
        return self.width * self.depth * 4  # int32 bins

    def close(self) -> None:
        self.sketch = None


class CounterAdapter(_SketchAdapter):
    """Exact counts with ``collections.Counter`` item by item: the ground truth and a speed reference."""

    impl = "counter"
    update_mode = "item by item"

    def build(self, workload: Workload) -> None:
        self.counter: Counter = Counter()
        counter = self.counter
        t0 = time.perf_counter_ns()
        for item in workload.data["stream"]:
            counter[item] += 1
        self.update_ns = time.perf_counter_ns() - t0

    def estimates(self, keys):
        counter = self.counter
        return [counter[k] for k in keys]

    def extra(self, workload: Workload) -> Iterator[dict[str, Any]]:
        t0 = time.perf_counter_ns()
        Counter(workload.data["stream"])
        yield {"op": "update", "items": len(workload.data["stream"]), "ns": time.perf_counter_ns() - t0,
               "mode": "batch (Counter(list), C loop)"}

    def memory_bytes(self) -> int:
        import sys

        return sys.getsizeof(self.counter) + sum(sys.getsizeof(k) for k in self.counter)

    def describe(self) -> dict[str, Any]:
        return {"impl": self.impl, "exact": True}

    def close(self) -> None:
        self.counter = None


ADAPTERS: dict[str, type[Adapter]] = {a.impl: a for a in (LlmdsCMS, DataSketchesAdapter, PyprobablesAdapter, CounterAdapter)}


def configurations(mode: str, params: dict[str, Any], sweep: bool, impls: list[str]) -> list[Config]:
    component = registry.get("cms")
    base = {**component.defaults(), **params}
    if mode == "compare":
        configs = []
        for impl in impls:
            if impl == "llmds" and "conservative" not in params:
                configs += [Config.of(impl, {**base, "conservative": c}) for c in (False, True)]
            elif impl == "counter":
                configs.append(Config.of(impl, {}))
            else:
                configs.append(Config.of(impl, {k: v for k, v in base.items() if k != "conservative"}))
        return configs
    epsilons = component.param("epsilon").sweep if sweep and "epsilon" not in params else (base["epsilon"],)
    conservative = (False, True) if "conservative" not in params else (base["conservative"],)
    return [Config.of("llmds", {**base, "epsilon": e, "conservative": c}) for e in epsilons for c in conservative]


TABLE = (
    Column("updates_per_s", "updates/s", "{:,.0f}"),
    Column("updates_per_s_prehashed_untracked", "pre-hashed/s", "{:,.0f}"),
    Column("updates_per_s_prehashed", "+top-k/s", "{:,.0f}"),
    Column("updates_per_s_single", "item-by-item/s", "{:,.0f}"),
    Column("queries_per_s", "queries/s", "{:,.0f}"),
    Column("max_error", "max err", "{:,.0f}"),
    Column("mean_error", "mean err", "{:.2f}"),
    Column("share_over_bound", "P(err>εN)", "{:.4f}"),
    Column("bound_delta", "δ", "{:.3f}"),
    Column("hh_precision", "top-100 P", "{:.3f}"),
    Column("hh_recall", "top-100 R", "{:.3f}"),
    Column("memory_kib", "KiB", "{:,.0f}"),    Column("peak_build_mib", "build peak MiB", "{:.1f}"),
    Column("peak_query_mib", "query peak MiB", "{:.1f}"),
)
GOALS = (
    Goal("batched updates of pre-hashed keys >= 10x DataSketches item by item", "updates_per_s_prehashed_untracked",
         "datasketches", peer_metric="updates_per_s", at_least=10.0),
    Goal("batched updates of Python strings (hashing included) >= 10x DataSketches", "updates_per_s",
         "datasketches", at_least=10.0),
    Goal("share of keys with error > epsilon*N <= delta (0.01)", "share_over_bound", at_most=0.01),
    Goal("top-100 heavy hitters precision >= 0.99", "hh_precision", at_least=0.99),
    Goal("top-100 heavy hitters recall >= 0.99", "hh_recall", at_least=0.99),
)
HIGHER_IS_BETTER = {"updates_per_s": True, "queries_per_s": True, "mean_error": False, "max_error": False,
                    "memory_kib": False}


def summarize(records: list[dict[str, Any]], context: dict[str, Any]) -> list[dict[str, Any]]:
    counts = np.asarray(context["counts"], dtype=np.int64)
    keys = context["keys"]
    n = int(context["items"])
    true_top_threshold = np.sort(counts)[-TOP] if len(counts) >= TOP else 0
    true_top = {k for k, c in zip(keys, counts) if c >= true_top_threshold}
    rows = []
    by_config = metrics.records_by_config(records)
    for config, recs in by_config.items():
        impl = recs[0]["impl"]
        add = lambda op, metric, value, unit="": rows.append(metrics.row(impl, config, op, metric, value, unit))  # noqa: E731
        params = dict(p.split("=", 1) for p in config[config.find("(") + 1:-1].split(",") if "=" in p)
        for r in recs:
            if r["op"] == "update":
                rate = metrics.rate_per_second(r["items"], r["ns"])
                metric = "updates_per_s" if r.get("primary") else {"item by item": "updates_per_s_single", "batch, pre-hashed": "updates_per_s_prehashed",
                          "batch, pre-hashed, no tracking": "updates_per_s_prehashed_untracked",
                          "batch (Counter(list), C loop)": "updates_per_s_batch"}.get(r["mode"], "updates_per_s")
                add("update", metric, rate, "1/s")
            elif r["op"] == "query":
                add("query", "queries_per_s", metrics.rate_per_second(r["keys"], r["ns"]), "1/s")
            elif r["op"] == "hash":
                add("update", "hash_per_s", metrics.rate_per_second(r["items"], r["ns"]), "1/s")
            elif r["op"] == "estimates":
                error = np.asarray(r["values"], dtype=np.int64) - counts
                add("query", "max_error", float(error.max()))
                add("query", "mean_error", float(error.mean()))
                add("query", "underestimates", float((error < 0).sum()))
                if "epsilon" in params:
                    epsilon, delta = float(params["epsilon"]), float(params["delta"])
                    width = math.ceil(math.e / epsilon)
                    add("query", "share_over_bound", float((error > math.e / width * n).mean()))
                    add("query", "bound_delta", delta)
            elif r["op"] == "heavy_hitters":
                found = set(r["keys"])
                hits = len(found & true_top)
                add("query", "hh_precision", hits / len(found) if found else 0.0)
                add("query", "hh_recall", min(1.0, hits / TOP))
            elif r["op"] == "memory" and "structure_bytes" in r:
                add("build", "memory_kib", r["structure_bytes"] / 1024, "KiB")
            elif r["op"] == "warmup":
                add("build", "compile_s", r["ns"] / 1e9, "s")
    return rows


def charts(rows: list[dict[str, Any]], records: list[dict[str, Any]], context: dict[str, Any],
           folder: Path) -> list[Path]:
    values: dict[str, dict[str, Any]] = {}
    for r in rows:
        values.setdefault(r["config"], {"impl": r["impl"]})[r["metric"]] = r["value"]
    error_points: dict[str, list[tuple[float, float, str]]] = {}
    speed_points: dict[str, list[tuple[float, float, str]]] = {}
    for config, v in values.items():
        label = v["impl"] + (" conservative" if "conservative=True" in config else "")
        if "memory_kib" in v and "mean_error" in v and v["impl"] != "counter":
            error_points.setdefault(label, []).append((v["memory_kib"], v["mean_error"], ""))
        if "memory_kib" in v and "updates_per_s" in v:
            speed_points.setdefault(label, []).append((v["memory_kib"], v["updates_per_s"], ""))
    written = plots.scatter_tradeoff(folder, "error_vs_memory", "Mean over-count against sketch memory",
                                     error_points, "memory (KiB, log)", "mean error (log)", logx=True, logy=True, connect=True)
    written += plots.scatter_tradeoff(folder, "throughput_vs_memory", "Updates per second against sketch memory (width)",
                                      speed_points, "memory (KiB, log)", "updates / s (log)", logx=True, logy=True, connect=True)
    return written
