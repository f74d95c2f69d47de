"""The ``bm25`` component: workloads, adapters (ours, bm25s, rank_bm25), metrics and charts.

Every implementation receives the *same token lists*, produced once per tokenizer setting by
our :class:`llmds.tokenizer.Tokenizer`, so that build and query figures compare indexing and
scoring, not tokenizers. Tokenisation throughput is reported on its own.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from llmds.errors import InvalidInputError
from llmds_cli import datasets, metrics, plots, registry
from llmds_cli.components.base import (
    Adapter, Column, Config, Goal, Workload, WorkloadSpec, checksum_of_files, checksum_of_params,
)

QUALITY_DEPTH = 100  # ranked list kept per query: enough for Recall@100 and nDCG@10


def load_workload(spec: WorkloadSpec) -> Workload:
    split = spec.option("split", "test")
    if spec.dataset == "synthetic-text":
        from llmds_cli.synthetic import text_corpus

        params = dict(datasets.manifest("synthetic-text").params)
        beir = text_corpus(**params, seed=spec.seed)
        checksum = checksum_of_params(dataset=spec.dataset, seed=spec.seed, **params)
    elif spec.dataset == "scifact":
        folder = datasets.locate("scifact", spec.data_dir)
        beir = datasets.load_beir(folder)
        checksum = checksum_of_files([folder / rel for rel in datasets.manifest("scifact").files])
    else:
        raise InvalidInputError(
            f"bm25 cannot run on dataset {spec.dataset!r}; it accepts: "
            f"{', '.join(registry.get('bm25').workloads)}."
        )
    query_ids, query_texts = beir.split_queries(split)
    limit = spec.option("queries")
    if limit:
        query_ids, query_texts = query_ids[:limit], query_texts[:limit]
    if not query_ids:
        raise InvalidInputError(f"dataset {spec.dataset} has no judged queries in split {split!r}.")
    data = {"doc_ids": beir.doc_ids, "doc_texts": beir.doc_texts,
            "query_ids": query_ids, "query_texts": query_texts, "tokens": {}}
    description = {"dataset": spec.dataset, "documents": len(beir.doc_ids),
                   "queries": len(query_ids), "split": split}
    context = {"qrels": {q: beir.qrels[split][q] for q in query_ids}}
    return Workload(spec.dataset, data, checksum, description, context)


def tokens_for(workload: Workload, stopwords: str, stemmer: str) -> tuple[list[list[str]], list[list[str]]]:
    """Document and query tokens for a tokenizer setting, computed once per workload."""
    key = (stopwords, stemmer)
    cache = workload.data["tokens"]
    if key not in cache:
        tokenizer = make_tokenizer(stopwords, stemmer)
        t0 = time.perf_counter_ns()
        doc_tokens = tokenizer.tokenize_many(workload.data["doc_texts"])
        elapsed = time.perf_counter_ns() - t0
        query_tokens = tokenizer.tokenize_many(workload.data["query_texts"])
        cache[key] = (doc_tokens, query_tokens, elapsed)
    return cache[key][0], cache[key][1]


def make_tokenizer(stopwords: str, stemmer: str):
    from llmds.tokenizer import Tokenizer

    return Tokenizer(stopwords=None if stopwords == "none" else stopwords,
                     stemmer=None if stemmer == "none" else stemmer)


class _TokenisedAdapter(Adapter):
    """Shared life cycle: same tokens for everyone; quality pass, batch timing, single timing."""

    def _tokens(self, workload: Workload):
        return tokens_for(workload, self.params.get("stopwords", "en"), self.params.get("stemmer", "english"))

    def run(self, workload: Workload) -> Iterator[dict[str, Any]]:
        _, query_tokens = self._tokens(workload)
        query_ids = workload.data["query_ids"]
        k = int(self.params.get("k", 10))
        for query_id, ranked in zip(query_ids, self.ranked_lists(query_tokens, QUALITY_DEPTH)):
            yield {"op": "quality", "query": query_id, "ranked": ranked}
        self.search_batch(query_tokens, k)  # warm caches and compiled paths before timing
        for _ in range(self.timed_repeats()):
            t0 = time.perf_counter_ns()
            self.search_batch(query_tokens, k)
            yield {"op": "search_batch", "queries": len(query_tokens), "ns": time.perf_counter_ns() - t0}
        for query_id, tokens in zip(query_ids, query_tokens):
            t0 = time.perf_counter_ns()
            self.search_one(tokens, k)
            yield {"op": "search_single", "query": query_id, "ns": time.perf_counter_ns() - t0}
        yield from self.index_stats()

    def timed_repeats(self) -> int:
        return self.options.repeats

    def ranked_lists(self, query_tokens, depth: int) -> list[list[str]]:
        raise NotImplementedError

    def search_batch(self, query_tokens, k: int) -> Any:
        raise NotImplementedError

    def search_one(self, tokens, k: int) -> Any:
        raise NotImplementedError

    def index_stats(self) -> Iterator[dict[str, Any]]:
        return iter(())


class LlmdsBM25(_TokenisedAdapter):
    impl = "llmds"

    def warmup(self, workload: Workload) -> None:
        from llmds.bm25 import BM25Index

        doc_tokens, query_tokens = self._tokens(workload)
        index = self._new_index(BM25Index)
        index.index(doc_tokens[:200], workload.data["doc_ids"][:200])
        index.search_batch(query_tokens[:5], k=10)
        index.search(query_tokens[0], k=10)

    def _new_index(self, cls):
        return cls(method=self.params["method"], k1=float(self.params["k1"]),
                   b=float(self.params["b"]), delta=float(self.params["delta"]))

    def build(self, workload: Workload) -> None:
        from llmds.bm25 import BM25Index

        doc_tokens, _ = self._tokens(workload)
        self.index = self._new_index(BM25Index).index(doc_tokens, workload.data["doc_ids"])

    def ranked_lists(self, query_tokens, depth):
        return [list(ids) for ids, _ in self.index.search_batch(query_tokens, k=depth)]

    def search_batch(self, query_tokens, k):
        return self.index.search_batch(query_tokens, k=k)

    def search_one(self, tokens, k):
        return self.index.search(tokens, k=k)

    def index_stats(self):
        yield {"op": "index_stats", "postings": int(self.index.num_postings),
               "bits_per_posting": float(self.index.bits_per_posting)}

    def memory_bytes(self) -> int:
        return self.index.memory_bytes()

    def describe(self) -> dict[str, Any]:
        return {**self.params, **self.index.describe()}

    def close(self) -> None:
        self.index = None


class Bm25sAdapter(_TokenisedAdapter):
    """bm25s at its fastest single-threaded setting: numba backend, ``n_threads=1``."""

    impl = "bm25s"
    requires = ("bm25s",)
    backend = "numba"

    def _new(self):
        import bm25s

        return bm25s.BM25(method=self.params["method"], k1=float(self.params["k1"]),
                          b=float(self.params["b"]), delta=float(self.params["delta"]), backend=self.backend)

    def warmup(self, workload: Workload) -> None:
        doc_tokens, query_tokens = self._tokens(workload)
        retriever = self._new()
        retriever.index(doc_tokens[:200], show_progress=False)
        retriever.retrieve(query_tokens[:5], k=5, show_progress=False, n_threads=1)

    def build(self, workload: Workload) -> None:
        doc_tokens, _ = self._tokens(workload)
        self.retriever = self._new()
        self.retriever.index(doc_tokens, show_progress=False)
        self.doc_ids = workload.data["doc_ids"]

    def _known(self, query_tokens):
        # bm25s rejects queries with no indexed term; we give those an empty result like ours
        vocab = self.retriever.vocab_dict
        return [[t for t in q if t in vocab] for q in query_tokens]

    def _retrieve(self, query_tokens, k):
        known = self._known(query_tokens)
        keep = [i for i, q in enumerate(known) if q]
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, int), np.empty(0))] * len(known)
        if keep:
            k = min(k, len(self.doc_ids))
            docs, scores = self.retriever.retrieve([known[i] for i in keep], k=k,
                                                   show_progress=False, n_threads=1)
            for row, i in enumerate(keep):
                positive = scores[row] > 0
                out[i] = (docs[row][positive], scores[row][positive])
        return out

    def ranked_lists(self, query_tokens, depth):
        return [[self.doc_ids[d] for d in docs] for docs, _ in self._retrieve(query_tokens, depth)]

    def search_batch(self, query_tokens, k):
        return self._retrieve(query_tokens, k)

    def search_one(self, tokens, k):
        return self._retrieve([tokens], k)

    def scores(self, tokens) -> np.ndarray:
        known = self._known([tokens])[0]
        return self.retriever.get_scores(known) if known else np.zeros(len(self.doc_ids))

    def memory_bytes(self) -> int:
        s = self.retriever.scores
        return int(sum(s[key].nbytes for key in ("data", "indices", "indptr")))

    def describe(self) -> dict[str, Any]:
        import bm25s

        return {**self.params, "version": bm25s.__version__, "backend": self.backend, "n_threads": 1}

    def close(self) -> None:
        self.retriever = None


class Bm25sNumpyAdapter(Bm25sAdapter):
    """bm25s with its default numpy backend: what `pip install bm25s` users get out of the box."""

    impl = "bm25s-numpy"
    backend = "numpy"


class RankBm25Adapter(_TokenisedAdapter):
    """rank_bm25's BM25Okapi: one formula only (Robertson idf floored at epsilon x mean idf)."""

    impl = "rank_bm25"
    requires = ("rank_bm25",)

    def warmup(self, workload: Workload) -> None:
        pass

    def build(self, workload: Workload) -> None:
        from rank_bm25 import BM25Okapi

        doc_tokens, _ = self._tokens(workload)
        self.bm25 = BM25Okapi(doc_tokens, k1=float(self.params["k1"]), b=float(self.params["b"]))
        self.doc_ids = workload.data["doc_ids"]

    def _top(self, tokens, k):
        scores = self.bm25.get_scores(tokens)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.argsort(-scores[top], kind="stable")]

    def ranked_lists(self, query_tokens, depth):
        return [[self.doc_ids[d] for d in self._top(q, depth)] for q in query_tokens]

    def search_batch(self, query_tokens, k):
        return [self._top(q, k) for q in query_tokens]

    def search_one(self, tokens, k):
        return self._top(tokens, k)

    def timed_repeats(self) -> int:
        # rank_bm25 scores every document with numpy per term (~24 queries/s on SciFact), so
        # one timed batch stands in for the repeats
        return 1

    def memory_bytes(self) -> int:
        # its index is Python objects: per-document term-frequency dicts, the idf dict and the
        # length list (the token strings themselves are shared with the caller's token lists)
        import sys

        return int(sum(sys.getsizeof(d) for d in self.bm25.doc_freqs) + sys.getsizeof(self.bm25.doc_freqs)
                   + sys.getsizeof(self.bm25.idf) + sys.getsizeof(self.bm25.doc_len))

    def describe(self) -> dict[str, Any]:
        return {**self.params, "method": "okapi (rank_bm25)"}

    def close(self) -> None:
        self.bm25 = None


ADAPTERS: dict[str, type[Adapter]] = {
    LlmdsBM25.impl: LlmdsBM25,
    Bm25sAdapter.impl: Bm25sAdapter,
    Bm25sNumpyAdapter.impl: Bm25sNumpyAdapter,
    RankBm25Adapter.impl: RankBm25Adapter,
}


def configurations(mode: str, params: dict[str, Any], sweep: bool, impls: list[str]) -> list[Config]:
    component = registry.get("bm25")
    base = {**component.defaults(), **params}
    if mode == "compare":
        # rank_bm25 has one formula (Okapi): its row does not pretend to take method or delta
        okapi = {k: v for k, v in base.items() if k not in ("method", "delta")}
        return [Config.of(impl, okapi if impl == "rank_bm25" else base) for impl in impls]
    configs = [Config.of("llmds", base)]
    if sweep:
        seen = {configs[0]}
        for param in component.params:
            if param.name in params:  # a value the user fixed is not swept
                continue
            for value in param.sweep:
                config = Config.of("llmds", {**base, param.name: value})
                if config not in seen:
                    seen.add(config)
                    configs.append(config)
    return configs


def parity(workload: Workload, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Before ratios: our scores must equal bm25s's on the same tokens, for every document.

    Checked for the Lucene formula, where both implement the same definition (Kamphuis et al.,
    ECIR 2020), on up to 50 queries. rank_bm25's Okapi floors negative idf values at a fraction
    of the mean idf, a formula none of ours reproduces, so it is compared on quality only.
    """
    if Bm25sAdapter.missing():
        return [{"op": "parity", "impl": "bm25s", "status": "unavailable"}]
    from llmds.bm25 import BM25Index

    checked = {**registry.get("bm25").defaults(), **params, "method": "lucene"}
    doc_tokens, query_tokens = tokens_for(workload, checked["stopwords"], checked["stemmer"])
    ours = BM25Index(method="lucene", k1=float(checked["k1"]), b=float(checked["b"]))
    ours.index(doc_tokens, workload.data["doc_ids"])
    peer = Bm25sAdapter(checked)
    peer.build(workload)
    worst = 0.0
    for tokens in query_tokens[:50]:
        diff = np.abs(np.asarray(ours.get_scores(tokens), np.float64) - np.asarray(peer.scores(tokens), np.float64))
        worst = max(worst, float(diff.max(initial=0.0)))
    tolerance = 1e-4
    return [{"op": "parity", "impl": "bm25s", "config": "lucene", "queries": min(50, len(query_tokens)),
             "max_abs_diff": worst, "tolerance": tolerance, "passed": worst <= tolerance},
            {"op": "parity", "impl": "rank_bm25", "status": "not comparable",
             "reason": "BM25Okapi floors negative idf at epsilon x mean idf; compared on quality only"}]


TABLE = (
    Column("ndcg@10", "nDCG@10"),
    Column("recall@100", "R@100"),
    Column("qps_batch", "q/s batch", "{:,.0f}"),
    Column("qps_single", "q/s single", "{:,.0f}"),
    Column("latency_p99_us", "p99 µs", "{:,.0f}"),
    Column("build_s", "build s", "{:.2f}"),
    Column("index_mib", "index MiB", "{:.1f}"),
    Column("bits_per_posting", "bits/post", "{:.1f}"),
    Column("peak_build_mib", "build peak MiB", "{:.0f}"),
    Column("peak_query_mib", "query peak MiB", "{:.1f}"),
)

GOALS = (
    Goal("nDCG@10 >= 0.686 on SciFact test (bm25s: 0.686)", "ndcg@10", at_least=0.686, datasets=("scifact",)),
    Goal("queries/s (batch, k=10) >= 2x bm25s (numba backend, its fastest)", "qps_batch", "bm25s", at_least=2.0),
    Goal("queries/s (one at a time, k=10) >= 2x bm25s (numba backend)", "qps_single", "bm25s", at_least=2.0),
    Goal("queries/s (batch, k=10) >= 2x bm25s (default numpy backend)", "qps_batch", "bm25s-numpy", at_least=2.0),
    Goal("index build time <= bm25s's", "build_s", "bm25s", at_most=1.0),
    Goal("index size <= 16 bits per posting", "bits_per_posting", at_most=16.0),
)

# For ratios against peers: which way is better.
HIGHER_IS_BETTER = {"ndcg@10": True, "recall@100": True, "qps_batch": True, "qps_single": True,
                    "build_s": False, "index_mib": False, "peak_build_mib": False}


def summarize(records: list[dict[str, Any]], context: dict[str, Any]) -> list[dict[str, Any]]:
    qrels = context["qrels"]
    by_config = metrics.records_by_config(records)
    rows = []
    for config, recs in by_config.items():
        impl = recs[0]["impl"]
        row = lambda op, metric, value, unit="": rows.append(metrics.row(impl, config, op, metric, value, unit))  # noqa: E731
        quality = [r for r in recs if r["op"] == "quality"]
        if quality:
            row("search", "ndcg@10", np.mean([metrics.ndcg_at_k(r["ranked"], qrels[r["query"]], 10) for r in quality]))
            row("search", "recall@100", np.mean([metrics.recall_at_k(r["ranked"], qrels[r["query"]], 100) for r in quality]))
        batches = [r for r in recs if r["op"] == "search_batch"]
        if batches:
            row("search", "qps_batch", metrics.rate_per_second(batches[0]["queries"], float(np.median([r["ns"] for r in batches]))), "1/s")
        singles = [r["ns"] for r in recs if r["op"] == "search_single"]
        if singles:
            row("search", "qps_single", metrics.rate_per_second(len(singles), float(np.sum(singles))), "1/s")
            lat = metrics.latency_summary(singles)
            row("search", "latency_p50_us", lat["p50_ns"] / 1e3, "us")
            row("search", "latency_p99_us", lat["p99_ns"] / 1e3, "us")
        for r in recs:
            if r["op"] == "build":
                row("build", "build_s", r["ns"] / 1e9, "s")
            elif r["op"] == "warmup":
                row("build", "compile_s", r["ns"] / 1e9, "s")
            elif r["op"] == "memory" and "structure_bytes" in r:
                row("build", "index_mib", r["structure_bytes"] / 2**20, "MiB")
            elif r["op"] == "memory" and "peak_build_bytes" in r:
                row("build", "peak_build_mib", r["peak_build_bytes"] / 2**20, "MiB")
            elif r["op"] == "index_stats":
                row("build", "bits_per_posting", r["bits_per_posting"], "bit")
    return rows


def charts(rows: list[dict[str, Any]], records: list[dict[str, Any]], context: dict[str, Any],
           folder: Path) -> list[Path]:
    values: dict[str, dict[str, float]] = {}
    for r in rows:
        values.setdefault(r["config"], {"impl": r["impl"]})[r["metric"]] = r["value"]
    written = []
    labels = list(values)
    short = [values[label]["impl"] if values[label]["impl"] != "llmds" or len(labels) == 1
             else _short_params(label[label.find("(") + 1:-1]) for label in labels]
    written += plots.grouped_bars(
        folder, "throughput", "BM25 queries per second at k=10 (single thread)", short,
        {"batch": [values[c].get("qps_batch", float("nan")) for c in labels],
         "one at a time": [values[c].get("qps_single", float("nan")) for c in labels]},
        "queries / s", log=True)
    points: dict[str, list[tuple[float, float, str]]] = {}
    for config, v in values.items():
        if "qps_batch" in v and "ndcg@10" in v:
            label = config[config.find("(") + 1:-1] if v["impl"] == "llmds" else v["impl"]
            points.setdefault(v["impl"], []).append((v["qps_batch"], v["ndcg@10"], _short_params(label)))
    written += plots.scatter_tradeoff(folder, "quality_vs_speed", "nDCG@10 against queries/s (batch)",
                                      points, "queries / s (log)", "nDCG@10", logx=True)
    return written


def _short_params(text: str) -> str:
    keep = ("method", "k1", "b")
    return ",".join(p for p in text.split(",") if p.split("=")[0] in keep)
