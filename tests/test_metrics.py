from __future__ import annotations

import math

import pytest

from llmds_cli import metrics


def test_ndcg_hand_computed():
    # relevant docs a (grade 2) and b (grade 1); ranking puts b first, a third
    ranked = ["b", "x", "a"]
    dcg = 1 / math.log2(2) + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert metrics.ndcg_at_k(ranked, {"a": 2, "b": 1}, 10) == pytest.approx(dcg / idcg)


def test_ndcg_perfect_and_empty():
    assert metrics.ndcg_at_k(["a", "b"], {"a": 1, "b": 1}) == pytest.approx(1.0)
    assert metrics.ndcg_at_k([], {"a": 1}) == 0.0
    assert metrics.ndcg_at_k(["a"], {}) == 0.0


def test_ndcg_cuts_at_k():
    assert metrics.ndcg_at_k(["x"] * 10 + ["a"], {"a": 1}, 10) == 0.0


def test_recall_at_k():
    assert metrics.recall_at_k(["a", "x", "b"], {"a": 1, "b": 1, "c": 1}, 2) == pytest.approx(1 / 3)
    assert metrics.recall_at_k(["a"], {"a": 0}, 10) == 0.0


def test_neighbour_recall():
    assert metrics.neighbour_recall([1, 2, 9], [1, 2, 3], 3) == pytest.approx(2 / 3)


def test_latency_summary_percentiles():
    summary = metrics.latency_summary(range(1, 101))
    assert summary["p50_ns"] == pytest.approx(50.5)
    assert summary["p99_ns"] == pytest.approx(99.01)
    assert metrics.latency_summary([]) == {}
