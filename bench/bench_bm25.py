from __future__ import annotations

import pytest

from llmds.bm25 import BM25Index
from llmds_cli.synthetic import text_corpus


@pytest.fixture
def bm25_setup(size):
    corpus = text_corpus(documents=size, queries=50, topics=50, vocabulary=5000, mean_length=60, seed=1)
    index = BM25Index().index(corpus.doc_texts, corpus.doc_ids)
    tokens = [index.tokenizer.tokenize(q) for q in corpus.queries.values()]
    return index, tokens


@pytest.mark.benchmark(group="bm25")
def test_bm25_single_query(benchmark, bm25_setup):
    index, tokens = bm25_setup
    ids, _ = benchmark(index.search, tokens[0], 10)
    assert len(ids) <= 10


@pytest.mark.benchmark(group="bm25")
def test_bm25_batch_50_queries(benchmark, bm25_setup):
    index, tokens = bm25_setup
    results = benchmark(index.search_batch, tokens, 10)
    assert len(results) == len(tokens)
