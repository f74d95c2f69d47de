from __future__ import annotations

import pytest

from llmds.hnsw import HNSWIndex
from llmds_cli.synthetic import clustered_vectors


@pytest.fixture
def hnsw_setup(size):
    base, queries = clustered_vectors(size, 100, dim=64, clusters=50, seed=2)
    index = HNSWIndex(64, metric="l2", M=16, ef_construction=100, seed=0)
    index.add(base)
    return index, queries


@pytest.mark.benchmark(group="hnsw")
def test_hnsw_single_search_ef50(benchmark, hnsw_setup):
    index, queries = hnsw_setup
    ids, _ = benchmark(index.search, queries[0], 10, ef=50)
    assert len(ids) == 10
