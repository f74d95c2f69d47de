"""The component registry: the single description of every component the toolkit knows.

The CLI sub-commands, the sweep runner, ``compare``, the report and the architecture diagram
are all generated from :data:`COMPONENTS`, so adding a component is one entry here plus its
modules (``llmds/<structure>.py`` for the structure, ``llmds_cli/components/<name>.py`` for
its workloads, adapters and metrics). Nothing in this module imports a heavy package: it is
read by ``llmds --help`` and ``llmds list``, which must answer instantly.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from llmds.errors import InvalidInputError

READY = "ready"
PLANNED = "planned"


@dataclass(frozen=True)
class Param:
    """A tunable parameter of a component, with the default the CLI and the runner use."""

    name: str
    default: Any
    help: str
    sweep: tuple = ()  # values a default `bench` sweep tries; empty = only the default


@dataclass(frozen=True)
class Peer:
    """A reference implementation that `compare` runs beside ours.

    ``module`` is the import name used to check availability, ``package`` the pip name to
    install it. ``exact`` marks a ground truth (exact search, exact counts, offline optimum)
    rather than a competing implementation.
    """

    name: str
    package: str
    module: str
    exact: bool = False
    note: str = ""

    def available(self) -> bool:
        if not self.module:
            return True
        return importlib.util.find_spec(self.module) is not None


@dataclass(frozen=True)
class Structure:
    """A data structure inside a component, with its complexity, as drawn in the diagram."""

    name: str
    complexity: str


@dataclass(frozen=True)
class Component:
    name: str
    title: str
    summary: str
    status: str
    group: str  # box of the architecture diagram the component belongs to
    implementation: str  # "module:Class" of the structure in llmds/
    module: str  # llmds_cli.components.<name>: workloads, adapters, metrics, charts
    params: tuple[Param, ...] = ()
    workloads: tuple[str, ...] = ()  # dataset names it accepts; first = default
    metrics: tuple[str, ...] = ()
    peers: tuple[Peer, ...] = ()
    depends_on: tuple[str, ...] = ()
    structures: tuple[Structure, ...] = ()
    features: tuple[str, ...] = ()
    issue: int | None = None

    @property
    def ready(self) -> bool:
        return self.status == READY

    @property
    def default_workload(self) -> str:
        return self.workloads[0]

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.params)
        raise InvalidInputError(f"{self.name} has no parameter {name!r}; its parameters are: {known}.")

    def load(self) -> ModuleType:
        """Import the component's toolkit module (workloads, adapters, metrics)."""
        return importlib.import_module(self.module)


@dataclass(frozen=True)
class Flow:
    """A data-flow arrow of the architecture diagram."""

    source: str
    target: str
    label: str


_DIAGRAM_GROUPS = {
    "kv-system": "KV cache system",
    "scheduling": "Scheduler and batching",
    "retrieval": "Retrieval pipeline",
}

COMPONENTS: dict[str, Component] = {}


def _register(component: Component) -> None:
    COMPONENTS[component.name] = component


_register(
    Component(
        name="bm25",
        title="BM25 inverted index",
        summary="Tokenizer, inverted index with bit-packed postings, BM25 variants, exact top-k.",
        status=READY,
        group="retrieval",
        implementation="llmds.bm25:BM25Index",
        module="llmds_cli.components.bm25",
        params=(
            Param("method", "lucene", "BM25 variant: robertson, lucene, atire, bm25l, bm25+.",
                  sweep=("lucene", "robertson", "atire", "bm25l", "bm25+")),
            Param("k1", 1.5, "Term-frequency saturation.", sweep=(0.9, 1.2, 1.5)),
            Param("b", 0.75, "Length normalisation (0 = none, 1 = full).", sweep=(0.4, 0.75)),
            Param("delta", 0.5, "Lower bound on the tf part, used by bm25l and bm25+."),
            Param("stopwords", "en", "Stop-word list: en or none."),
            Param("stemmer", "english", "Snowball stemmer language, or none."),
            Param("k", 10, "Results per query."),
        ),
        workloads=("synthetic-text", "scifact"),
        metrics=("ndcg@10", "recall@100", "qps_batch", "qps_single", "build_s", "index_bytes",
                 "bits_per_posting", "peak_build_bytes"),
        peers=(
            Peer("bm25s", "bm25s", "bm25s", note="sparse-matrix BM25 with eager scoring, numba backend"),
            Peer("bm25s-numpy", "bm25s", "bm25s", note="the same with its default numpy backend"),
            Peer("rank_bm25", "rank-bm25", "rank_bm25", note="pure-Python BM25Okapi"),
        ),
        structures=(
            Structure("Tokenizer", "O(text length)"),
            Structure("Inverted index", "top-k O(postings read)"),
        ),
        features=("Bit-packed postings", "Block-max early termination, exact top-k"),
        issue=2,
    )
)

_register(
    Component(
        name="hnsw",
        title="HNSW vector index",
        summary="Hierarchical navigable small-world graph for approximate nearest neighbours.",
        status=READY,
        group="retrieval",
        implementation="llmds.hnsw:HNSWIndex",
        module="llmds_cli.components.hnsw",
        params=(
            Param("M", 16, "Links per node on upper layers (2M on layer 0); bench also builds M=8 and 32.", sweep=(8, 32)),
            Param("ef_construction", 200, "Candidate list size while building."),
            Param("ef", 50, "Candidate list size while searching; bench sweeps 10-160 unless fixed with -p ef=N."),
        ),
        workloads=("synthetic-vectors-10k", "synthetic-vectors-100k", "scifact"),
        metrics=("recall@10", "qps_single", "qps_batch", "build_s", "index_bytes",
                 "distances_per_query"),
        peers=(
            Peer("hnswlib", "hnswlib", "hnswlib"),
            Peer("faiss", "faiss-cpu", "faiss", note="IndexHNSWFlat"),
            Peer("usearch", "usearch", "usearch"),
            Peer("exact", "", "", exact=True, note="brute force, numpy"),
        ),
        structures=(Structure("HNSW graph", "search ~O(log n)"),),
        issue=3,
    )
)

_register(
    Component(
        name="kv",
        title="Paged KV cache",
        summary="Block pool with free list, ref counts, chained-hash prefix cache, copy-on-write.",
        status=READY,
        group="kv-system",
        implementation="llmds.kv_cache:KVCache",
        module="llmds_cli.components.kv",
        params=(
            Param("measure", "hits", "hits (trace replay), memory (utilisation) or ops (operation costs); default: all three."),
            Param("policy", "lru", "Eviction policy of cached blocks; bench sweeps every policy unless fixed."),
            Param("capacity", 0.05, "Cache capacity as a share of distinct blocks; default sweep 1, 5, 10, 25%."),
            Param("block_size", 16, "Tokens per block for memory utilisation; default sweep 8, 16, 32, 64."),
            Param("storage", False, "Back the replayed pool with real float16 KV bytes (llmds profile kv turns it on)."),
            Param("model", "tiny", "Model shape sizing the storage: tiny, llama-3-8b, mistral-7b, qwen2-7b, llama-2-7b."),
        ),
        workloads=("synthetic-kv", "mooncake-conversation", "azure-conv", "azure-code"),
        metrics=("block_hit_rate", "token_hit_rate", "memory_utilisation", "block_ops_per_s"),
        peers=(
            Peer("contiguous", "", "", note="max-length pre-allocation baseline"),
            Peer("lru", "", "", note="plain LRU: our cache with the LRU policy, vLLM's eviction order"),
            Peer("belady", "", "", exact=True, note="offline optimum"),
            Peer("infinite", "", "", exact=True, note="infinite-cache bound"),
        ),
        structures=(
            Structure("Paged allocator", "alloc/free O(1)"),
            Structure("Prefix cache", "lookup O(blocks)"),
            Structure("Token-aware LRU", "touch/evict O(1)"),
        ),
        features=("Copy-on-write prefix sharing", "Reference counting"),
        issue=4,
    )
)

_register(
    Component(
        name="sched",
        title="Scheduler",
        summary="Indexed heap, admission control and a continuous-batching simulator.",
        status=READY,
        group="scheduling",
        implementation="llmds.scheduler:Scheduler",
        module="llmds_cli.components.sched",
        params=(
            Param("measure", "simulate", "simulate (policies x load) or heap (indexed heap vs heapq); default: both."),
            Param("policy", "fcfs", "fcfs, spf, srwf or priority-aging; default: all four."),
            Param("rate_scale", 1.0, "Arrival-rate multiplier (timestamps / factor); bench/compare sweep 0.5-1.0x unless fixed."),
        ),
        workloads=("synthetic-requests", "azure-conv", "azure-code", "sharegpt-lengths"),
        metrics=("ttft_p99", "tpot_p99", "e2e_p99", "throughput", "goodput"),
        peers=(
            Peer("heapq", "", "heapq", note="heapq with lazy deletion"),
        ),
        depends_on=("kv",),
        structures=(
            Structure("Indexed heap", "push/pop/update O(log n)"),
            Structure("Admission controller", "decide O(1)"),
        ),
        features=(),
        issue=5,
    )
)

_register(
    Component(
        name="cms",
        title="Count-Min Sketch",
        summary="Vectorised count-min sketch with conservative update and heavy hitters.",
        status=READY,
        group="retrieval",
        implementation="llmds.cms:CountMinSketch",
        module="llmds_cli.components.cms",
        params=(
            Param("epsilon", 0.001, "Additive error as a share of the stream length (width = ceil(e/epsilon)).",
                  sweep=(0.01, 0.003, 0.001, 0.0003)),
            Param("delta", 0.01, "Probability of exceeding the error (depth = ceil(ln(1/delta)))."),
            Param("conservative", False, "Conservative update."),
        ),
        workloads=("synthetic-zipf", "scifact"),
        metrics=("updates_per_s", "queries_per_s", "max_error", "mean_error", "share_over_bound"),
        peers=(
            Peer("datasketches", "datasketches", "datasketches"),
            Peer("pyprobables", "pyprobables", "probables"),
            Peer("counter", "", "", exact=True, note="exact collections.Counter"),
        ),
        structures=(Structure("Count-min sketch", "update/query O(depth)"),),
        features=(),
        issue=6,
    )
)

_register(
    Component(
        name="pipeline",
        title="Hybrid retrieval pipeline",
        summary="BM25 + HNSW with score fusion and a CMS-admitted hot-query cache.",
        status=READY,
        group="retrieval",
        implementation="llmds.pipeline:HybridRetriever",
        module="llmds_cli.components.pipeline",
        params=(
            Param("rrf_k", 60, "Rank constant of reciprocal rank fusion."),
            Param("ef", 200, "HNSW candidate-list size at search (>= the fusion depth of 100)."),
        ),
        workloads=("synthetic-hybrid", "scifact"),
        metrics=("ndcg@10", "recall@100", "qps", "cache_hit_rate"),
        peers=(Peer("bm25s+hnswlib", "bm25s hnswlib", "bm25s"),),
        depends_on=("bm25", "hnsw", "cms"),
        structures=(Structure("Score fusion", "O(candidates)"),),
        features=("Hybrid dense + sparse retrieval", "Score fusion with configurable weights"),
        issue=7,
    )
)

# Arrows of the architecture diagram that are not plain dependencies.
FLOWS: tuple[Flow, ...] = (
    Flow("sched", "kv", "allocates blocks"),
    Flow("sched", "pipeline", "schedules retrieval"),
    Flow("pipeline", "bm25", "sparse search"),
    Flow("pipeline", "hnsw", "dense search"),
    Flow("pipeline", "cms", "hot-query admission"),
)


def diagram_groups() -> dict[str, str]:
    return dict(_DIAGRAM_GROUPS)


def get(name: str) -> Component:
    """Look a component up by name, with a message listing the known ones."""
    try:
        return COMPONENTS[name]
    except KeyError:
        known = ", ".join(COMPONENTS)
        raise InvalidInputError(f"unknown component {name!r}; known components: {known}.") from None


def require_ready(name: str) -> Component:
    component = get(name)
    if not component.ready:
        raise InvalidInputError(
            f"component {name!r} ({component.title}) is planned, not built yet"
            + (f" (issue {component.issue})" if component.issue else "")
            + "; `llmds list` shows which components are ready."
        )
    return component


def names() -> list[str]:
    return list(COMPONENTS)


def _check_registry() -> None:
    for flow in FLOWS:
        assert flow.source in COMPONENTS and flow.target in COMPONENTS, flow
    for component in COMPONENTS.values():
        assert component.group in _DIAGRAM_GROUPS, component.name
        assert component.workloads, component.name
        assert all(dep in COMPONENTS for dep in component.depends_on), component.name


_check_registry()
