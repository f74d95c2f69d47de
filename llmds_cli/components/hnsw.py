"""The ``hnsw`` component: vector workloads, adapters (ours, hnswlib, FAISS, usearch, exact),
recall/speed metrics and the ann-benchmarks style charts.

As in ann-benchmarks, one configuration is one *built index* (M, ef_construction) and its run
sweeps the search-time parameter ``ef`` over that same index; each ef gives its own row.
Every peer is pinned to one thread. Exact neighbours are computed once per dataset and cached
on disk next to the dataset cache, keyed by the data's checksum.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from llmds.errors import InvalidInputError
from llmds_cli import datasets, metrics, plots, registry
from llmds_cli.components.base import (
    Adapter, Column, Config, Goal, Workload, WorkloadSpec, checksum_of_files, checksum_of_params,
)

EF_SWEEP = (10, 20, 40, 80, 160)
K = 10


def load_workload(spec: WorkloadSpec) -> Workload:
    if spec.dataset.startswith("synthetic-vectors"):
        from llmds_cli.synthetic import clustered_vectors

        params = dict(datasets.manifest(spec.dataset).params)
        base, queries = clustered_vectors(**params, seed=spec.seed)
        metric = "l2"
        checksum = checksum_of_params(dataset=spec.dataset, seed=spec.seed, **params)
    elif spec.dataset == "scifact":
        base, queries, checksum = _scifact_embeddings(spec)
        metric = "cosine"
    else:
        raise InvalidInputError(
            f"hnsw cannot run on dataset {spec.dataset!r}; it accepts: {', '.join(registry.get('hnsw').workloads)}."
        )
    limit = spec.option("queries")
    if limit:
        queries = queries[:limit]
    truth = exact_neighbours(base, queries, metric, K, checksum)
    description = {"dataset": spec.dataset, "vectors": int(base.shape[0]), "dim": int(base.shape[1]),
                   "queries": int(queries.shape[0]), "metric": metric}
    return Workload(spec.dataset, {"base": base, "queries": queries, "metric": metric}, checksum,
                    description, {"exact": truth.tolist(), "k": K})


def _scifact_embeddings(spec: WorkloadSpec) -> tuple[np.ndarray, np.ndarray, str]:
    """Corpus embeddings and the embeddings of the 300 test queries (qrels/test.tsv order)."""
    folder = datasets.locate("scifact", spec.data_dir)
    emb = folder / "embeddings"
    files = [emb / "corpus.npy", emb / "queries.npy", emb / "query_ids.json", folder / "qrels" / "test.tsv"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InvalidInputError(
            f"SciFact embeddings are missing ({', '.join(missing)}); point --data-dir at a SciFact folder "
            "with embeddings/corpus.npy, queries.npy and query_ids.json (all-MiniLM-L6-v2)."
        )
    base = datasets.load_vectors(emb / "corpus.npy")
    corpus_ids = emb / "corpus_ids.json"
    if corpus_ids.is_file() and len(json.loads(corpus_ids.read_text())) != len(base):
        raise InvalidInputError(f"{emb}: corpus.npy has {len(base)} vectors but corpus_ids.json names "
                                f"{len(json.loads(corpus_ids.read_text()))} documents; re-export the embeddings.")
    all_queries = datasets.load_vectors(emb / "queries.npy")
    query_ids = json.loads((emb / "query_ids.json").read_text())
    if len(query_ids) != len(all_queries):
        raise InvalidInputError(f"{emb}: {len(query_ids)} query ids but {len(all_queries)} query vectors.")
    row = {q: i for i, q in enumerate(query_ids)}
    test_ids = list(datasets.load_qrels(folder / "qrels" / "test.tsv"))
    queries = all_queries[[row[q] for q in test_ids if q in row]]
    return base, queries, checksum_of_files(files)


def _distances(base: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    if metric == "l2":
        return (queries ** 2).sum(1)[:, None] - 2 * queries @ base.T + (base ** 2).sum(1)[None, :]
    if metric == "cosine":
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return 1.0 - queries @ base.T


def exact_neighbours(base: np.ndarray, queries: np.ndarray, metric: str, k: int, checksum: str) -> np.ndarray:
    """Exact k nearest neighbours by brute force, cached on disk per dataset and query set."""
    key = f"{checksum[:16]}_{metric}_{len(queries)}_{k}.npy"
    cache = datasets.cache_dir() / "groundtruth" / key
    if cache.is_file():
        return np.load(cache)
    truth = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 256):
        d = _distances(base, queries[start:start + 256], metric)
        top = np.argpartition(d, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(d, top, 1).argsort(axis=1, kind="stable")
        truth[start:start + 256] = np.take_along_axis(top, order, 1)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache.parent, suffix=".npy", delete=False) as handle:
        np.save(handle, truth)
    os.replace(handle.name, cache)
    return truth


def _threadpoolctl():
    try:
        import threadpoolctl

        return threadpoolctl
    except ImportError:
        return None


def _one_blas_thread():
    """Pin numpy's BLAS to one thread, like every other implementation here."""
    import contextlib

    module = _threadpoolctl()
    return module.threadpool_limits(1) if module else contextlib.nullcontext()


class _VectorAdapter(Adapter):
    """Shared life cycle: build once, then for each ef: batch timing, one-at-a-time timing, recall."""

    counts_distances = False

    def efs(self) -> list[int]:
        return [int(self.params["ef"])] if "ef" in self.params else list(EF_SWEEP)

    def run(self, workload: Workload) -> Iterator[dict[str, Any]]:
        queries = workload.data["queries"]
        for ef in self.efs():
            self.set_ef(ef)
            self.search_batch(queries[:50])  # warm caches
            for _ in range(self.options.repeats):
                t0 = time.perf_counter_ns()
                self.search_batch(queries)
                yield {"op": "search_batch", "ef": ef, "queries": len(queries), "ns": time.perf_counter_ns() - t0}
            before = self.distance_count()
            found = []
            latencies = np.empty(len(queries), dtype=np.int64)
            search = self.search_one
            clock = time.perf_counter_ns
            for i, query in enumerate(queries):
                t0 = clock()
                ids = search(query)
                latencies[i] = clock() - t0
                found.append(ids)
            record = {"op": "search_single", "ef": ef, "ns": latencies.tolist(),
                      "found": [np.asarray(f, dtype=np.int64).tolist() for f in found]}
            if self.counts_distances:
                record["distances"] = self.distance_count() - before
            yield record

    def distance_count(self) -> int:
        return 0

    def set_ef(self, ef: int) -> None:
        raise NotImplementedError

    def search_one(self, query: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def search_batch(self, queries: np.ndarray) -> Any:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"impl": self.impl, **self.params, "ef_sweep": self.efs(), "threads": 1}


class LlmdsHNSW(_VectorAdapter):
    impl = "llmds"
    counts_distances = True

    def _new(self, workload: Workload):
        from llmds.hnsw import HNSWIndex

        base = workload.data["base"]
        return HNSWIndex(base.shape[1], metric=workload.data["metric"], M=int(self.params["M"]),
                         ef_construction=int(self.params["ef_construction"]), seed=int(self.params.get("seed", 0)),
                         capacity=len(base))

    def warmup(self, workload: Workload) -> None:
        index = self._new(workload)
        index.add(workload.data["base"][:300])
        index.search(workload.data["queries"][0], k=K, ef=20)
        index.search_batch(workload.data["queries"][:4], k=K, ef=20)

    def build(self, workload: Workload) -> None:
        self.index = self._new(workload)
        self.index.add(workload.data["base"])

    def set_ef(self, ef: int) -> None:
        self.ef = ef

    def search_one(self, query):
        return self.index.search(query, K, ef=self.ef)[0]

    def search_batch(self, queries):
        return self.index.search_batch(queries, K, ef=self.ef)

    def distance_count(self) -> int:
        return int(self.index.distance_computations)

    def memory_bytes(self) -> int:
        return self.index.memory_bytes()

    def close(self) -> None:
        self.index = None


class HnswlibAdapter(_VectorAdapter):
    impl = "hnswlib"
    requires = ("hnswlib",)
    _SPACES = {"l2": "l2", "ip": "ip", "cosine": "cosine"}

    def build(self, workload: Workload) -> None:
        import hnswlib

        base = workload.data["base"]
        self.index = hnswlib.Index(space=self._SPACES[workload.data["metric"]], dim=base.shape[1])
        self.index.init_index(max_elements=len(base), ef_construction=int(self.params["ef_construction"]),
                              M=int(self.params["M"]), random_seed=int(self.params.get("seed", 0)))
        self.index.set_num_threads(1)
        self.index.add_items(base, np.arange(len(base)), num_threads=1)

    def set_ef(self, ef: int) -> None:
        self.index.set_ef(ef)

    def search_one(self, query):
        return self.index.knn_query(query, k=K, num_threads=1)[0][0]

    def search_batch(self, queries):
        return self.index.knn_query(queries, k=K, num_threads=1)

    def memory_bytes(self) -> int:
        return int(self.index.index_file_size())

    def close(self) -> None:
        self.index = None


class FaissAdapter(_VectorAdapter):
    """FAISS ``IndexHNSWFlat``; cosine = inner product on normalised vectors."""

    impl = "faiss"
    requires = ("faiss",)
    counts_distances = True

    def build(self, workload: Workload) -> None:
        import faiss

        faiss.omp_set_num_threads(1)
        base = workload.data["base"]
        self.metric = workload.data["metric"]
        kind = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        self.index = faiss.IndexHNSWFlat(base.shape[1], int(self.params["M"]), kind)
        self.index.hnsw.efConstruction = int(self.params["ef_construction"])
        self.index.add(self._prepare(base))
        self.stats = faiss.cvar.hnsw_stats

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.metric == "cosine":
            vectors = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
        return vectors

    def set_ef(self, ef: int) -> None:
        self.index.hnsw.efSearch = ef

    def search_one(self, query):
        return self.index.search(self._prepare(query[None, :]), K)[1][0]

    def search_batch(self, queries):
        return self.index.search(self._prepare(queries), K)

    def distance_count(self) -> int:
        return int(self.stats.ndis)

    def memory_bytes(self) -> int:
        import faiss

        return int(faiss.serialize_index(self.index).nbytes)

    def close(self) -> None:
        self.index = None


class UsearchAdapter(_VectorAdapter):
    impl = "usearch"
    requires = ("usearch",)
    _METRICS = {"l2": "l2sq", "ip": "ip", "cosine": "cos"}

    def build(self, workload: Workload) -> None:
        from usearch.index import Index

        base = workload.data["base"]
        self.index = Index(ndim=base.shape[1], metric=self._METRICS[workload.data["metric"]], dtype="f32",
                           connectivity=int(self.params["M"]), expansion_add=int(self.params["ef_construction"]))
        self.index.add(np.arange(len(base)), base, threads=1)

    def set_ef(self, ef: int) -> None:
        self.index.expansion_search = ef

    def search_one(self, query):
        return self.index.search(query, K, threads=1).keys

    def search_batch(self, queries):
        return self.index.search(queries, K, threads=1)

    def memory_bytes(self) -> int:
        return int(self.index.memory_usage)

    def close(self) -> None:
        self.index = None


class ExactAdapter(_VectorAdapter):
    """Brute force with numpy (BLAS pinned by the environment): the exact reference."""

    impl = "exact"

    def efs(self) -> list[int]:
        return [0]  # no search parameter: one row

    def build(self, workload: Workload) -> None:
        self.metric = workload.data["metric"]
        self.base = np.ascontiguousarray(workload.data["base"], dtype=np.float32)
        if self.metric == "cosine":
            self.base = self.base / np.linalg.norm(self.base, axis=1, keepdims=True)
        self.norms = (self.base ** 2).sum(1)

    def set_ef(self, ef: int) -> None:
        pass

    def _top(self, queries: np.ndarray) -> np.ndarray:
        with _one_blas_thread():
            return self._top_unpinned(queries)

    def _top_unpinned(self, queries: np.ndarray) -> np.ndarray:
        if self.metric == "l2":
            d = self.norms[None, :] - 2 * queries @ self.base.T
        else:
            if self.metric == "cosine":
                queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
            d = -(queries @ self.base.T)
        top = np.argpartition(d, K - 1, axis=1)[:, :K]
        return np.take_along_axis(top, np.take_along_axis(d, top, 1).argsort(axis=1), 1)

    def search_one(self, query):
        return self._top(query[None, :])[0]

    def search_batch(self, queries):
        return self._top(queries)

    def memory_bytes(self) -> int:
        return int(self.base.nbytes)

    def describe(self) -> dict[str, Any]:
        return {"impl": self.impl, "threads": 1 if _threadpoolctl() else "as BLAS is configured (threadpoolctl missing)"}

    def close(self) -> None:
        self.base = None


ADAPTERS: dict[str, type[Adapter]] = {a.impl: a for a in (LlmdsHNSW, HnswlibAdapter, FaissAdapter, UsearchAdapter, ExactAdapter)}


def configurations(mode: str, params: dict[str, Any], sweep: bool, impls: list[str]) -> list[Config]:
    component = registry.get("hnsw")
    base = {"M": params.get("M", component.param("M").default),
            "ef_construction": params.get("ef_construction", component.param("ef_construction").default)}
    if "ef" in params:  # a fixed ef replaces the sweep over EF_SWEEP
        base["ef"] = params["ef"]
    if mode == "compare":  # brute force has no build or search parameters
        return [Config.of(impl, {} if impl == "exact" else base) for impl in impls]
    builds = [base]
    if sweep and "M" not in params:
        builds += [{**base, "M": m} for m in component.param("M").sweep]
    return [Config.of("llmds", b) for b in builds]


def relative_cost(config: Config) -> float:
    """Building dominates a configuration; its work grows with M x ef_construction."""
    params = config.as_dict()
    return float(params.get("M", 16) * params.get("ef_construction", 200))


TABLE = (
    Column("recall@10", "recall@10"),
    Column("qps_single", "q/s single", "{:,.0f}"),
    Column("qps_batch", "q/s batch", "{:,.0f}"),
    Column("latency_p99_us", "p99 µs", "{:,.0f}"),
    Column("distances_per_query", "dist/query", "{:,.0f}"),
    Column("build_s", "build s", "{:.2f}"),
    Column("index_mib", "index MiB", "{:.1f}"),
    Column("peak_query_mib", "query peak MiB", "{:.1f}"),
    Column("qps_at_recall_0.95", "q/s @R.95", "{:,.0f}"),
    Column("qps_at_recall_0.99", "q/s @R.99", "{:,.0f}"),
)
GOALS = (
    Goal("queries/s at recall@10 >= 0.95 >= 0.7x hnswlib's (one query at a time)", "qps_at_recall_0.95", "hnswlib", at_least=0.7),
    Goal("queries/s at recall@10 >= 0.99 >= 0.7x hnswlib's (one query at a time)", "qps_at_recall_0.99", "hnswlib", at_least=0.7),
    Goal("build time <= 1.5x hnswlib's", "build_s", "hnswlib", at_most=1.5),
    Goal("recall@10 >= 0.99 reachable (SciFact)", "recall@10", at_least=0.99, datasets=("scifact",)),
)
RECALL_TARGETS = (0.95, 0.99)
HIGHER_IS_BETTER = {"recall@10": True, "qps_single": True, "qps_batch": True, "build_s": False, "index_mib": False,
                    "qps_at_recall_0.95": True, "qps_at_recall_0.99": True}


def summarize(records: list[dict[str, Any]], context: dict[str, Any]) -> list[dict[str, Any]]:
    exact = context["exact"]
    k = context["k"]
    rows = []
    by_config = metrics.records_by_config(records)
    for config, recs in by_config.items():
        impl = recs[0]["impl"]
        build = {}
        for r in recs:
            if r["op"] == "build":
                build["build_s"] = (r["ns"] / 1e9, "s")
            elif r["op"] == "warmup":
                build["compile_s"] = (r["ns"] / 1e9, "s")
            elif r["op"] == "memory" and "structure_bytes" in r:
                build["index_mib"] = (r["structure_bytes"] / 2**20, "MiB")
            elif r["op"] == "memory" and "peak_build_bytes" in r:
                build["peak_build_mib"] = (r["peak_build_bytes"] / 2**20, "MiB")
        efs = sorted({r["ef"] for r in recs if "ef" in r})
        for ef in efs:
            name = f"{config} ef={ef}" if ef else config
            add = lambda metric, value, unit="", op="search": rows.append(metrics.row(impl, name, op, metric, value, unit))  # noqa: E731
            single = next((r for r in recs if r["op"] == "search_single" and r["ef"] == ef), None)
            if single:
                recall = np.mean([metrics.neighbour_recall(f, t, k) for f, t in zip(single["found"], exact)])
                add("recall@10", recall)
                add("qps_single", metrics.rate_per_second(len(single["ns"]), float(np.sum(single["ns"]))), "1/s")
                lat = metrics.latency_summary(single["ns"])
                add("latency_p50_us", lat["p50_ns"] / 1e3, "us")
                add("latency_p99_us", lat["p99_ns"] / 1e3, "us")
                if "distances" in single:
                    add("distances_per_query", single["distances"] / len(single["ns"]))
            batches = [r["ns"] for r in recs if r["op"] == "search_batch" and r["ef"] == ef]
            if batches:
                n = next(r["queries"] for r in recs if r["op"] == "search_batch")
                add("qps_batch", metrics.rate_per_second(n, float(np.median(batches))), "1/s")
            for metric, (value, unit) in build.items():
                add(metric, value, unit, "build")
        swept = [(r["value"], next(q["value"] for q in rows if q["config"] == r["config"] and q["metric"] == "qps_single"))
                 for r in rows if r["impl"] == impl and r["config"].startswith(config) and r["metric"] == "recall@10"]
        for target in RECALL_TARGETS:
            reaching = [qps for recall, qps in swept if recall >= target]
            if reaching:  # "at equal recall": the fastest setting of this build that reaches it
                rows.append(metrics.row(impl, config, "search", f"qps_at_recall_{target}", max(reaching), "1/s"))
        if efs != [0]:  # a swept build also gets one row of its own, for build-level figures
            for metric, (value, unit) in build.items():
                rows.append(metrics.row(impl, config, "build", metric, value, unit))
    return rows


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (recall, qps) not dominated by another with higher recall and higher speed."""
    frontier = []
    for recall, qps in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not frontier or qps > frontier[-1][1]:
            frontier.append((recall, qps))
    return sorted(frontier)


def charts(rows: list[dict[str, Any]], records: list[dict[str, Any]], context: dict[str, Any],
           folder: Path) -> list[Path]:
    values: dict[str, dict[str, Any]] = {}
    for r in rows:
        values.setdefault(r["config"], {"impl": r["impl"]})[r["metric"]] = r["value"]
    by_impl: dict[str, list[tuple[float, float]]] = {}
    builds: dict[str, list[tuple[float, float, str]]] = {}
    for config, v in values.items():
        if "recall@10" in v and "qps_single" in v:
            by_impl.setdefault(v["impl"], []).append((v["recall@10"], v["qps_single"]))
        if "build_s" in v and "recall@10" in v:
            builds.setdefault(v["impl"], []).append((v["build_s"], v["recall@10"], ""))
    frontiers = {impl: [(r, q, "") for r, q in pareto(points)] for impl, points in by_impl.items()}
    written = plots.scatter_tradeoff(folder, "recall_vs_qps", "Recall@10 against queries/s, one query at a time (Pareto frontier)",
                                     frontiers, "recall@10", "queries / s (log)", logy=True, connect=True)
    best_recall = {impl: [max(points, key=lambda p: p[1])] for impl, points in builds.items()}
    written += plots.scatter_tradeoff(folder, "build_vs_recall", "Build time against best recall@10",
                                      {impl: [(b, r, impl) for b, r, _ in pts] for impl, pts in best_recall.items()},
                                      "build time (s)", "recall@10")
    return written
