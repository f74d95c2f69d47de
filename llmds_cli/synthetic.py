"""Deterministic synthetic workloads: the built-in data every benchmark can run on offline.

Each generator takes a seed and builds its own ``numpy.random.Generator``, so the same
parameters always give the same data on every machine.
"""

from __future__ import annotations

import numpy as np

from llmds_cli.datasets import BeirDataset

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "qu", "pa", "do", "fi", "gu", "ha", "jo")


def _pseudo_words(count: int, rng: np.random.Generator) -> list[str]:
    """Distinct pronounceable words (3-5 syllables), so tokenizers and stemmers see real-looking text."""
    words: set[str] = set()
    ordered = []
    while len(ordered) < count:
        size = int(rng.integers(3, 6))
        word = "".join(_SYLLABLES[i] for i in rng.integers(0, len(_SYLLABLES), size))
        if word not in words:
            words.add(word)
            ordered.append(word)
    return ordered


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def text_corpus(documents: int = 10000, queries: int = 300, topics: int = 100,
                vocabulary: int = 20000, mean_length: int = 120, seed: int = 0,
                query_words: tuple[int, int] = (3, 8)) -> BeirDataset:
    """A topical corpus with one judged-relevant document per query.

    Every document mixes background words (a global Zipf law, like function words and common
    terms) with words of its topic (a topic-specific Zipf law over a random subset of the
    vocabulary) in a 1:1 ratio. A query takes 3-8 topic words of one document, so lexical
    matching can find it but must rank it against the other documents of the same topic.
    """
    rng = np.random.default_rng(seed)
    words = np.array(_pseudo_words(vocabulary, rng))
    background = _zipf_weights(vocabulary, 1.1)
    topic_words = [rng.choice(vocabulary, size=300, replace=False) for _ in range(topics)]
    topic_weights = _zipf_weights(300, 0.9)
    doc_topic = rng.integers(0, topics, documents)
    lengths = np.maximum(8, rng.lognormal(np.log(mean_length), 0.5, documents).astype(int))
    doc_ids = [f"d{i}" for i in range(documents)]
    topical_counts = lengths // 2
    # one draw for the whole corpus, split per document: per-document draws cost O(vocabulary) each
    topical_ranks = rng.choice(300, size=int(topical_counts.sum()), p=topic_weights)
    common_terms = rng.choice(vocabulary, size=int((lengths - topical_counts).sum()), p=background)
    topical_ends = np.cumsum(topical_counts)
    common_ends = np.cumsum(lengths - topical_counts)
    doc_texts = []
    doc_topic_terms = []
    for doc in range(documents):
        ranks = topical_ranks[topical_ends[doc] - topical_counts[doc]:topical_ends[doc]]
        topical = topic_words[doc_topic[doc]][ranks]
        common = common_terms[common_ends[doc] - (lengths[doc] - topical_counts[doc]):common_ends[doc]]
        terms = np.concatenate([topical, common])
        rng.shuffle(terms)
        doc_texts.append(" ".join(words[terms]))
        doc_topic_terms.append(np.unique(topical))
    query_texts = {}
    qrels = {}
    targets = rng.choice(documents, size=min(queries, documents), replace=False)
    for number, doc in enumerate(targets):
        pool = doc_topic_terms[doc]
        picked = rng.choice(pool, size=min(len(pool), int(rng.integers(query_words[0], query_words[1] + 1))), replace=False)
        query_id = f"q{number}"
        query_texts[query_id] = " ".join(words[picked])
        qrels[query_id] = {doc_ids[doc]: 1.0}
    dataset = BeirDataset(doc_ids, doc_texts, query_texts, {"test": qrels})
    dataset.doc_topics = doc_topic  # for generators that add vectors (hybrid_corpus)
    dataset.query_targets = targets
    return dataset


def hybrid_corpus(documents: int = 5000, queries: int = 600, topics: int = 100, vocabulary: int = 20000,
                  mean_length: int = 120, dim: int = 64, seed: int = 0) -> tuple[BeirDataset, np.ndarray, np.ndarray]:
    """A topical corpus with embeddings, for hybrid retrieval without a model download.

    Text as :func:`text_corpus`. A document's vector is its topic's centre plus noise; a
    query's vector mixes its target document's vector with noise, so dense search ranks the
    target's topic high but not always the target itself, and lexical search finds the exact
    words but confuses documents that share them: each retriever misses what the other
    catches, which is the situation fusion is for. The queries are split in two halves,
    ``train`` (to pick fusion weights) and ``test``. Returns (dataset, document vectors,
    query vectors in the order of ``dataset.queries``).
    """
    # two-word queries: lexical matching alone often ties the target with its topic's others
    dataset = text_corpus(documents, queries, topics, vocabulary, mean_length, seed, query_words=(2, 2))
    rng = np.random.default_rng(seed + 1)
    centres = rng.standard_normal((topics, dim))
    doc_vectors = centres[dataset.doc_topics] + 1.0 * rng.standard_normal((documents, dim))
    targets = np.asarray(dataset.query_targets)
    query_vectors = 0.5 * doc_vectors[targets] + 0.5 * centres[dataset.doc_topics[targets]] \
        + 1.3 * rng.standard_normal((len(targets), dim))
    qrels = dataset.qrels["test"]
    query_ids = list(dataset.queries)
    half = len(query_ids) // 2
    dataset.qrels = {"train": {q: qrels[q] for q in query_ids[:half]},
                     "test": {q: qrels[q] for q in query_ids[half:]}}
    return dataset, doc_vectors.astype(np.float32), query_vectors.astype(np.float32)


def clustered_vectors(count: int, queries: int, dim: int = 128, clusters: int = 100,
                      spread: float = 0.35, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Base and query vectors drawn from the same mixture of isotropic Gaussian clusters.

    Cluster centres are standard normal; points add noise of standard deviation ``spread`` per
    coordinate, so neighbourhoods are local (like real embeddings) rather than uniform, which
    is the case graph indexes are built for. Queries are fresh draws, not base points.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)

    def draw(n: int) -> np.ndarray:
        members = rng.integers(0, clusters, n)
        return (centres[members] + spread * rng.standard_normal((n, dim)).astype(np.float32)).astype(np.float32)

    return draw(count), draw(queries)


def zipf_stream(items: int = 1_000_000, keys: int = 100_000, exponent: float = 1.1, seed: int = 0) -> list[str]:
    """``items`` string keys whose popularity follows a Zipf law over ``keys`` distinct keys.

    Key ranks are shuffled before naming, so a key's name says nothing about its popularity.
    """
    rng = np.random.default_rng(seed)
    ranks = rng.choice(keys, size=items, p=_zipf_weights(keys, exponent))
    names = np.array([f"key{i}" for i in rng.permutation(keys)])
    return names[ranks].tolist()
