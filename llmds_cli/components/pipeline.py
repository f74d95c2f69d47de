"""The ``pipeline`` component: hybrid retrieval on SciFact (BM25 + dense, fused), with alpha
chosen on the train judgements only, per-stage latency, and a hot-query cache on a Zipf stream.

Raw records hold, per query, the ranked ids of every retrieval variant and, for the convex
combination, of every alpha on the grid, for train and test queries alike; ``summarize`` picks
alpha on train and reports test, so the choice never sees the test judgements. The peer is
the same pipeline assembled from bm25s (numba backend, one thread) and hnswlib (one thread),
fused by the same functions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from llmds.errors import InvalidInputError
from llmds_cli import datasets, metrics, plots, registry
from llmds_cli.components.base import (
    Adapter, Column, Config, Goal, Workload, WorkloadSpec, checksum_of_files, checksum_of_params,
)

ALPHAS = tuple(round(a, 2) for a in np.arange(0.0, 1.0001, 0.05))
DEPTH = 100
STREAM_LENGTH = 5000
ZIPF_EXPONENT = 1.1


def load_workload(spec: WorkloadSpec) -> Workload:
    if spec.dataset == "synthetic-hybrid":
        return _synthetic_workload(spec)
    if spec.dataset != "scifact":
        raise InvalidInputError(f"pipeline runs on {', '.join(registry.get('pipeline').workloads)}, not {spec.dataset!r}.")
    folder = datasets.locate("scifact", spec.data_dir)
    beir = datasets.load_beir(folder)
    emb = folder / "embeddings"
    needed = [emb / n for n in ("corpus.npy", "corpus_ids.json", "queries.npy", "query_ids.json")]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise InvalidInputError(f"the pipeline needs pre-computed embeddings; missing {', '.join(missing)}. "
                                "Point --data-dir at a SciFact folder with embeddings/ (all-MiniLM-L6-v2).")
    corpus = datasets.load_vectors(emb / "corpus.npy")
    corpus_ids = json.loads((emb / "corpus_ids.json").read_text())
    if corpus_ids != beir.doc_ids or len(corpus) != len(corpus_ids):
        raise InvalidInputError(f"{emb}: corpus embeddings are not aligned with corpus.jsonl "
                                f"({len(corpus)} vectors, {len(corpus_ids)} ids, {len(beir.doc_ids)} documents).")
    query_vectors = datasets.load_vectors(emb / "queries.npy")
    query_ids = json.loads((emb / "query_ids.json").read_text())
    if len(query_ids) != len(query_vectors):
        raise InvalidInputError(f"{emb}: {len(query_ids)} query ids but {len(query_vectors)} query vectors.")
    if query_vectors.shape[1] != corpus.shape[1]:
        raise InvalidInputError(f"query embeddings have dimension {query_vectors.shape[1]}, corpus {corpus.shape[1]}.")
    checksum = checksum_of_files([folder / "corpus.jsonl", emb / "corpus.npy", emb / "queries.npy"])
    return _workload(spec, beir, corpus, dict(zip(query_ids, query_vectors)), checksum)


def _synthetic_workload(spec: WorkloadSpec) -> Workload:
    from llmds_cli.synthetic import hybrid_corpus

    params = dict(datasets.manifest("synthetic-hybrid").params)
    beir, doc_vectors, query_vectors = hybrid_corpus(**params, seed=spec.seed)
    checksum = checksum_of_params(dataset=spec.dataset, seed=spec.seed, **params)
    return _workload(spec, beir, doc_vectors, dict(zip(beir.queries, query_vectors)), checksum)


def _workload(spec: WorkloadSpec, beir, corpus: np.ndarray, vector_of: dict[str, np.ndarray], checksum: str) -> Workload:
    """Train and test queries with their vectors, and the judgements summarize needs."""
    splits = {}
    for split in ("train", "test"):
        ids, _ = beir.split_queries(split)
        ids = [q for q in ids if q in vector_of]
        if spec.option("queries"):
            ids = ids[:spec.option("queries")]
        splits[split] = {"ids": ids, "texts": [beir.queries[q] for q in ids],
                         "vectors": np.stack([vector_of[q] for q in ids]) if ids else np.zeros((0, corpus.shape[1]), np.float32)}
    description = {"dataset": spec.dataset, "documents": len(beir.doc_ids), "train_queries": len(splits["train"]["ids"]),
                   "test_queries": len(splits["test"]["ids"]), "dim": int(corpus.shape[1])}
    context = {"dataset": spec.dataset,
               "qrels": {split: {q: beir.qrels[split][q] for q in splits[split]["ids"]} for split in splits}}
    data = {"doc_ids": beir.doc_ids, "texts": beir.doc_texts, "embeddings": corpus, "splits": splits}
    return Workload(spec.dataset, data, checksum, description, context)


def zipf_stream(count: int, length: int, exponent: float, seed: int) -> np.ndarray:
    """Query positions drawn with Zipf popularity (rank r has weight r^-exponent), shuffled ranks."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, count + 1) ** exponent
    ranks = rng.choice(count, size=length, p=weights / weights.sum())
    return rng.permutation(count)[ranks]


class _PipelineAdapter(Adapter):
    """Shared run: quality of every variant, alpha grid, timed hybrid queries."""

    variants: tuple[str, ...] = ()

    def run(self, workload: Workload) -> Iterator[dict[str, Any]]:
        from llmds.fusion import convex, rrf

        rrf_k = float(self.params.get("rrf_k", 60))
        for split, queries in workload.data["splits"].items():
            for qid, text, vector in zip(queries["ids"], queries["texts"], queries["vectors"]):
                lists = self.candidates(text, vector)  # name -> (ids, scores), each DEPTH long
                ranked = {name: ids for name, (ids, _) in lists.items()}
                for dense in [n for n in lists if n.startswith("dense")]:
                    tag = dense.removeprefix("dense")
                    ranked[f"rrf{tag}"] = [d for d, _ in rrf([lists["sparse"][0], lists[dense][0]], k=rrf_k)][:DEPTH]
                    sparse_pairs = list(zip(*lists["sparse"]))
                    dense_pairs = list(zip(*lists[dense]))
                    for alpha in ALPHAS:
                        fused = convex(sparse_pairs, dense_pairs, alpha, normalisation="minmax")
                        ranked[f"convex{tag}@{alpha}"] = [d for d, _ in fused[:10]]
                yield {"op": "quality", "split": split, "query": qid, "ranked": ranked}
        yield from self.timed(workload)

    def candidates(self, text: str, vector: np.ndarray) -> dict[str, tuple[list[str], list[float]]]:
        raise NotImplementedError

    def timed(self, workload: Workload) -> Iterator[dict[str, Any]]:
        raise NotImplementedError


class LlmdsPipeline(_PipelineAdapter):
    impl = "llmds"

    def _build(self, workload: Workload, cache=None):
        from llmds.pipeline import ExactDenseIndex, HybridRetriever

        retriever = HybridRetriever(fusion="rrf", rrf_k=float(self.params.get("rrf_k", 60)), depth=DEPTH,
                                    ef=int(self.params.get("ef", 200)), cache=cache)
        data = workload.data
        retriever.index(data["doc_ids"], data["texts"], data["embeddings"])
        exact = ExactDenseIndex(data["embeddings"].shape[1], metric="cosine")
        exact.add(data["embeddings"])
        return retriever, exact

    def warmup(self, workload: Workload) -> None:
        from llmds.pipeline import HybridRetriever

        data = workload.data
        small = HybridRetriever(depth=10)
        small.index(data["doc_ids"][:300], data["texts"][:300], data["embeddings"][:300])
        test = data["splits"]["test"]
        small.search(test["texts"][0], test["vectors"][0], k=10)

    def build(self, workload: Workload) -> None:
        self.retriever, self.exact = self._build(workload)

    def candidates(self, text, vector):
        found = self.retriever.candidates(text, vector, depth=DEPTH)
        doc_ids = self.retriever.doc_ids
        exact_pos, exact_dist = self.exact.search(vector, DEPTH)
        return {
            "sparse": ([doc_ids[p] for p in found.sparse_positions.tolist()], found.sparse_scores.tolist()),
            "dense_hnsw": ([doc_ids[p] for p in found.dense_positions.tolist()], found.dense_scores.tolist()),
            "dense_exact": ([doc_ids[p] for p in exact_pos.tolist()], (1.0 - exact_dist).tolist()),
        }

    def timed(self, workload):
        from llmds.pipeline import HotQueryCache

        test = workload.data["splits"]["test"]
        search = self.retriever.search
        for text, vector in zip(test["texts"][:20], test["vectors"][:20]):
            search(text, vector, k=10)  # warm
        stages = []
        t0 = time.perf_counter_ns()
        for text, vector in zip(test["texts"], test["vectors"]):
            stages.append(search(text, vector, k=10).stage_ns)
        total = time.perf_counter_ns() - t0
        yield {"op": "timed", "queries": len(stages), "ns": total, "stage_ns": stages}
        stream = zipf_stream(len(test["ids"]), STREAM_LENGTH, ZIPF_EXPONENT, seed=0).tolist()
        for label, cache in (("no cache", None), ("hot-query cache", HotQueryCache(capacity=256, threshold=2))):
            retriever, _ = self._build(workload, cache) if cache is not None else (self.retriever, None)
            latencies = []
            for position in stream:
                t1 = time.perf_counter_ns()
                retriever.search(test["texts"][position], test["vectors"][position], k=10)
                latencies.append(time.perf_counter_ns() - t1)
            yield {"op": "stream", "cache": label, "queries": len(stream), "ns": latencies,
                   "hit_rate": cache.hit_rate if cache is not None else 0.0,
                   "cache_bytes": cache.memory_bytes() if cache is not None else 0}

    def memory_bytes(self) -> int:
        return self.retriever.memory_bytes()

    def close(self) -> None:
        self.retriever = self.exact = None


class Bm25sHnswlibPipeline(_PipelineAdapter):
    """The same pipeline from bm25s (numba backend, one thread) and hnswlib (one thread)."""

    impl = "bm25s+hnswlib"
    requires = ("bm25s", "hnswlib")

    def build(self, workload: Workload) -> None:
        import bm25s
        import hnswlib

        from llmds.tokenizer import Tokenizer

        data = workload.data
        self.tokenizer = Tokenizer()
        self.bm25 = bm25s.BM25(method="lucene", k1=1.5, b=0.75, backend="numba")
        self.bm25.index(self.tokenizer.tokenize_many(data["texts"]), show_progress=False)
        vectors = data["embeddings"]
        self.hnsw = hnswlib.Index(space="cosine", dim=vectors.shape[1])
        self.hnsw.init_index(max_elements=len(vectors), ef_construction=200, M=16, random_seed=0)
        self.hnsw.set_num_threads(1)
        self.hnsw.add_items(vectors, np.arange(len(vectors)), num_threads=1)
        self.hnsw.set_ef(int(self.params.get("ef", 200)))
        self.doc_ids = data["doc_ids"]

    def candidates(self, text, vector):
        tokens = [t for t in self.tokenizer.tokenize(text) if t in self.bm25.vocab_dict]
        sparse = ([], [])
        if tokens:
            docs, scores = self.bm25.retrieve([tokens], k=DEPTH, show_progress=False, n_threads=1)
            keep = scores[0] > 0
            sparse = ([self.doc_ids[d] for d in docs[0][keep]], scores[0][keep].tolist())
        labels, distances = self.hnsw.knn_query(vector, k=DEPTH, num_threads=1)
        return {"sparse": sparse,
                "dense_hnsw": ([self.doc_ids[d] for d in labels[0]], (1.0 - distances[0]).tolist())}

    def timed(self, workload):
        from llmds.fusion import rrf

        test = workload.data["splits"]["test"]
        rrf_k = float(self.params.get("rrf_k", 60))
        t0 = time.perf_counter_ns()
        for text, vector in zip(test["texts"], test["vectors"]):
            lists = self.candidates(text, vector)
            rrf([lists["sparse"][0], lists["dense_hnsw"][0]], k=rrf_k)[:10]
        yield {"op": "timed", "queries": len(test["texts"]), "ns": time.perf_counter_ns() - t0, "stage_ns": []}

    def close(self) -> None:
        self.bm25 = self.hnsw = None


ADAPTERS: dict[str, type[Adapter]] = {a.impl: a for a in (LlmdsPipeline, Bm25sHnswlibPipeline)}


def configurations(mode: str, params: dict[str, Any], sweep: bool, impls: list[str]) -> list[Config]:
    base = {"rrf_k": params.get("rrf_k", 60), "ef": params.get("ef", 200)}
    return [Config.of(impl, base) for impl in (impls if mode == "compare" else ["llmds"])]


TABLE = (
    Column("ndcg@10", "nDCG@10"),
    Column("recall@100", "R@100"),
    Column("alpha", "alpha (train)", "{:.2f}"),
    Column("qps", "q/s", "{:,.0f}"),
    Column("latency_p50_us", "p50 µs", "{:,.0f}"),
    Column("latency_p99_us", "p99 µs", "{:,.0f}"),
    Column("cache_hit_rate", "cache hits"),    Column("peak_build_mib", "build peak MiB", "{:.1f}"),
    Column("peak_query_mib", "query peak MiB", "{:.1f}"),
)
GOALS = (
    Goal("hybrid nDCG@10 >= 0.725 with alpha picked on train (HNSW)", "ndcg@10@convex_hnsw", at_least=0.725,
         datasets=("scifact",)),
    Goal("HNSW instead of exact costs <= 0.005 nDCG (convex)", "hnsw_cost_ndcg", at_most=0.005),
    Goal("pipeline queries/s >= bm25s + hnswlib's", "qps", "bm25s+hnswlib", at_least=1.0),
)
HIGHER_IS_BETTER = {"ndcg@10": True, "recall@100": True, "qps": True}


def _mean_ndcg(records, qrels, variant, k=10):
    scores = [metrics.ndcg_at_k(r["ranked"][variant], qrels[r["query"]], k) for r in records if variant in r["ranked"]]
    return float(np.mean(scores)) if scores else float("nan")


def summarize(records: list[dict[str, Any]], context: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    by_config = metrics.records_by_config(records)
    for config, recs in by_config.items():
        impl = recs[0]["impl"]
        train = [r for r in recs if r["op"] == "quality" and r["split"] == "train"]
        test = [r for r in recs if r["op"] == "quality" and r["split"] == "test"]
        qrels_train, qrels_test = context["qrels"]["train"], context["qrels"]["test"]
        variants = sorted({v for r in test for v in r["ranked"] if "@" not in v})
        ndcg_by_variant = {}
        for variant in variants:
            name = f"{config} {variant}"
            ndcg_by_variant[variant] = _mean_ndcg(test, qrels_test, variant)
            rows.append(metrics.row(impl, name, "search", "ndcg@10", ndcg_by_variant[variant]))
            recall = np.mean([metrics.recall_at_k(r["ranked"][variant], qrels_test[r["query"]], 100) for r in test])
            rows.append(metrics.row(impl, name, "search", "recall@100", float(recall)))
        for tag in sorted({v.split("@")[0] for r in test for v in r["ranked"] if "@" in v}):
            train_curve = [_mean_ndcg(train, qrels_train, f"{tag}@{a}") for a in ALPHAS]
            test_curve = [_mean_ndcg(test, qrels_test, f"{tag}@{a}") for a in ALPHAS]
            best = int(np.nanargmax(train_curve)) if train else len(ALPHAS) // 2
            name = f"{config} {tag} (alpha from train)"
            ndcg_by_variant[tag] = test_curve[best]
            rows.append(metrics.row(impl, name, "search", "ndcg@10", test_curve[best]))
            rows.append(metrics.row(impl, name, "search", "alpha", ALPHAS[best]))
            if impl == "llmds":
                rows.append(metrics.row(impl, "goals", "search", f"ndcg@10@{tag}", test_curve[best]))
            for alpha, train_v, test_v in zip(ALPHAS, train_curve, test_curve):
                rows.append(metrics.row(impl, f"{config} {tag}@{alpha}", "sweep", "ndcg@10_train", train_v))
                rows.append(metrics.row(impl, f"{config} {tag}@{alpha}", "sweep", "ndcg@10_test", test_v))
        if impl == "llmds" and "convex_hnsw" in ndcg_by_variant and "convex_exact" in ndcg_by_variant:
            rows.append(metrics.row(impl, "goals", "search", "hnsw_cost_ndcg",
                                    ndcg_by_variant["convex_exact"] - ndcg_by_variant["convex_hnsw"]))
        for r in recs:
            if r["op"] == "timed":
                rows.append(metrics.row(impl, config, "search", "qps", metrics.rate_per_second(r["queries"], r["ns"]), "1/s"))
                for stage in (r["stage_ns"][0] if r["stage_ns"] else {}):
                    values = [s[stage] for s in r["stage_ns"]]
                    lat = metrics.latency_summary(values)
                    rows.append(metrics.row(impl, f"{config} stage {stage}", "search", "latency_p50_us", lat["p50_ns"] / 1e3, "us"))
                    rows.append(metrics.row(impl, f"{config} stage {stage}", "search", "latency_p99_us", lat["p99_ns"] / 1e3, "us"))
            elif r["op"] == "stream":
                name = f"{config} zipf stream, {r['cache']}"
                lat = metrics.latency_summary(r["ns"])
                rows.append(metrics.row(impl, name, "stream", "cache_hit_rate", r["hit_rate"]))
                rows.append(metrics.row(impl, name, "stream", "latency_p50_us", lat["p50_ns"] / 1e3, "us"))
                rows.append(metrics.row(impl, name, "stream", "latency_mean_us", lat["mean_ns"] / 1e3, "us"))
                rows.append(metrics.row(impl, name, "stream", "latency_p99_us", lat["p99_ns"] / 1e3, "us"))
    return rows


def charts(rows: list[dict[str, Any]], records: list[dict[str, Any]], context: dict[str, Any],
           folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    fig, ax = plots.figure()
    ours = [r for r in rows if r["impl"] == "llmds"]
    index = 0
    for tag in ("convex_hnsw", "convex_exact"):
        curve = sorted((float(r["config"].rsplit("@", 1)[1]), r["value"]) for r in ours
                       if r["metric"] == "ndcg@10_test" and f" {tag}@" in r["config"])
        if curve:
            ax.plot([a for a, _ in curve], [v for _, v in curve], marker="o", label=f"{tag.replace('_', ' ')} (test)", color=plots.colour(index))
            index += 1
    for r in ours:
        if r["metric"] == "ndcg@10" and r["config"].endswith((" sparse", " dense_exact", " rrf_hnsw")):
            label = r["config"].rsplit(" ", 1)[1]
            ax.axhline(r["value"], linestyle="--", color=plots.colour(index), label=f"{label}: {r['value']:.3f}")
            index += 1
    chosen = [r for r in ours if r["metric"] == "alpha" and "convex_hnsw" in r["config"]]
    if chosen:
        ax.axvline(chosen[0]["value"], color="#6b7280", linestyle=":", label=f"alpha chosen on train: {chosen[0]['value']:.2f}")
    ax.set_xlabel("alpha (weight of the dense score)")
    ax.set_ylabel(f"nDCG@10 on {context.get('dataset', 'the')} test queries")
    ax.set_title("Convex fusion: nDCG@10 against alpha")
    ax.legend(fontsize=7)
    written = plots.save(fig, folder, "ndcg_vs_alpha")
    stages = [r for r in ours if " stage " in r["config"] and r["metric"] == "latency_p50_us"]
    if stages:
        fig, ax = plots.figure(6, 4)
        bottom = 0.0
        for i, r in enumerate(stages):
            stage = r["config"].rsplit(" ", 1)[1]
            ax.bar(["hybrid query (p50)"], [r["value"]], bottom=bottom, label=f"{stage}: {r['value']:.0f} µs", color=plots.colour(i))
            bottom += r["value"]
        ax.set_ylabel("µs")
        ax.set_title("Per-stage latency of one hybrid query")
        ax.legend(fontsize=8)
        written += plots.save(fig, folder, "stage_latency")
    return written
