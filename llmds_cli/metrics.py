"""Quality and latency metrics computed from raw records (never inside the timed code)."""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int = 10) -> float:
    """nDCG@k with graded gains and a log2 discount (Järvelin & Kekäläinen, 2002).

    The ideal ranking is built from all judged documents of the query, as trec_eval does.
    """
    gains = [relevance.get(doc, 0.0) for doc in ranked[:k]]
    dcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(gains) if g > 0)
    ideal = sorted((g for g in relevance.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, float], k: int) -> float:
    relevant = {doc for doc, g in relevance.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def neighbour_recall(found: Sequence[int], exact: Sequence[int], k: int) -> float:
    """Share of the exact k nearest neighbours that were returned (ann-benchmarks' recall)."""
    truth = list(exact)[:k]
    if not truth:
        return 1.0
    return len(set(truth).intersection(list(found)[:k])) / len(truth)


def latency_summary(nanoseconds: Iterable[float]) -> dict[str, float]:
    """Median, tail percentiles and spread of per-operation latencies, in nanoseconds."""
    values = np.asarray(list(nanoseconds), dtype=np.float64)
    if values.size == 0:
        return {}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50_ns": float(p50), "p95_ns": float(p95), "p99_ns": float(p99),
            "mean_ns": float(values.mean()), "std_ns": float(values.std())}


def rate_per_second(count: int, nanoseconds: float) -> float:
    return count / (nanoseconds / 1e9) if nanoseconds > 0 else float("nan")


def row(impl: str, config: str, op: str, metric: str, value: float, unit: str = "") -> dict:
    """One tidy result row, the shape of results.csv."""
    return {"impl": impl, "config": config, "op": op, "metric": metric,
            "value": float(value), "unit": unit}


def records_by_config(records: list[dict]) -> dict[str, list[dict]]:
    """A run's measurement records grouped by configuration, in the order they ran.

    Records that are not measurements of a configuration (failures, parity checks, peers
    reported unavailable, the runner's ``done`` marks) are left out.
    """
    grouped: dict[str, list[dict]] = {}
    for record in records:
        if "config" in record and record.get("op") not in ("failed", "parity", "unavailable", "done"):
            grouped.setdefault(record["config"], []).append(record)
    return grouped
