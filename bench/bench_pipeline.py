from __future__ import annotations

import pytest

from llmds.pipeline import HybridRetriever
from llmds_cli.synthetic import hybrid_corpus


@pytest.fixture
def retriever(size):
    corpus, doc_vectors, query_vectors = hybrid_corpus(documents=size, queries=20, topics=50, vocabulary=5000,
                                                       mean_length=60, dim=32, seed=6)
    hybrid = HybridRetriever(depth=50).index(corpus.doc_ids, corpus.doc_texts, doc_vectors)
    return hybrid, list(corpus.queries.values()), query_vectors


@pytest.mark.benchmark(group="pipeline")
def test_pipeline_hybrid_query(benchmark, retriever):
    hybrid, texts, vectors = retriever
    result = benchmark(hybrid.search, texts[0], vectors[0], 10)
    assert len(result.ids) == 10
