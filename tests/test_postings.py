"""Compressed postings: bit helpers, encode/decode round trips in both layouts (packed blocks
and bitmaps) across block boundaries and extreme values, inversion of a tokenised corpus,
and detection of damaged streams."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.postings import (
    BITMAP_DENSITY,
    BLOCK_SIZE,
    CompressedPostings,
    concatenate_postings,
    decode_bitmap_masked,
    num_chunks,
    postings_from_tokens,
    read_bits,
    write_bits,
)


def _term_major(lists):
    """[(docs, tfs), ...] per term -> (term_starts, docs, tfs)."""
    starts = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(docs) for docs, _ in lists], out=starts[1:])
    docs = np.concatenate([np.asarray(d, dtype=np.int64) for d, _ in lists] or [np.zeros(0)])
    tfs = np.concatenate([np.asarray(t, dtype=np.int64) for _, t in lists] or [np.zeros(0)])
    return starts, docs.astype(np.int32), tfs.astype(np.int32)


def _assert_round_trip(lists, num_documents):
    starts, docs, tfs = _term_major(lists)
    compressed = CompressedPostings.from_postings(starts, docs, tfs, num_documents)
    assert compressed.first_damaged_term() is None
    got_starts, got_docs, got_tfs = compressed.to_postings()
    np.testing.assert_array_equal(got_starts, starts)
    np.testing.assert_array_equal(got_docs, docs)
    np.testing.assert_array_equal(got_tfs, tfs)
    for term, (term_docs, term_tfs) in enumerate(lists):
        one_docs, one_tfs = compressed.postings(term)
        np.testing.assert_array_equal(one_docs, term_docs)
        np.testing.assert_array_equal(one_tfs, term_tfs)
    return compressed


@st.composite
def posting_lists(draw):
    """A collection size and lists with random gaps (small and huge) and frequencies."""
    num_documents = draw(st.integers(1, 3000))
    lists = []
    for _ in range(draw(st.integers(0, 6))):
        size = draw(st.sampled_from([0, 1, 2, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 300]))
        size = min(size, num_documents)
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        docs = np.sort(rng.choice(num_documents, size=size, replace=False))
        heavy = draw(st.booleans())
        tfs = rng.integers(1, 2**20 if heavy else 4, size=size)
        lists.append((docs, tfs))
    return num_documents, lists


@settings(max_examples=60, deadline=None)
@given(posting_lists())
def test_round_trip_random_lists(case):
    num_documents, lists = case
    _assert_round_trip(lists, num_documents)


def test_round_trip_extremes_in_packed_layout():
    last = 2**31 - 2
    lists = [
        ([0], [1]),  # single posting, smallest values
        ([last], [2**31 - 1]),  # largest document number and frequency: 31-bit fields
        ([0, last], [1, 1]),  # one gap of 31 bits
        ([], []),  # a term without postings
        (list(range(0, 4 * BLOCK_SIZE, 4)), [1] * BLOCK_SIZE),  # one full block, zero-width tfs
    ]
    compressed = _assert_round_trip(lists, num_documents=2**31 - 1)
    assert compressed.num_bitmaps == 0


def test_dense_lists_become_bitmaps_and_round_trip():
    num_documents = 1000
    rng = np.random.default_rng(7)
    smallest_bitmap = -(-num_documents // BITMAP_DENSITY)
    dense = np.sort(rng.choice(num_documents, size=smallest_bitmap, replace=False))
    sparse = dense[:-1]  # one posting fewer: stays packed
    everything = np.arange(num_documents)
    lists = [
        (dense, rng.integers(1, 50, size=len(dense))),
        (sparse, rng.integers(1, 3, size=len(sparse))),
        (everything, np.ones(num_documents, dtype=np.int64)),
    ]
    compressed = _assert_round_trip(lists, num_documents)
    assert compressed.num_bitmaps == 2
    # A full bitmap with tf = 1 everywhere costs one bit per posting plus a few header bits.
    all_ones = CompressedPostings.from_postings(*_term_major(lists[2:]), num_documents)
    assert all_ones.stream_bits <= num_documents + 64


def test_bitmap_masked_decode_returns_only_masked_documents_with_their_tf():
    num_documents = 300
    docs = np.arange(0, num_documents, 3)
    tfs = (docs % 7) + 1
    compressed = CompressedPostings.from_postings(*_term_major([(docs, tfs)]), num_documents)
    wanted = np.array([0, 3, 4, 63, 64, 66, 129, 297, 299])
    mask = np.zeros((num_documents + 63) // 64, dtype=np.uint64)
    for doc in wanted:
        mask[doc >> 6] |= np.uint64(1) << np.uint64(doc & 63)
    got_docs, got_tfs, rank = [], [], 0
    doc_buffer = np.empty(BLOCK_SIZE, dtype=np.int64)
    tf_buffer = np.empty(BLOCK_SIZE, dtype=np.int64)
    for chunk in range(num_chunks(len(docs), num_documents)):
        size, rank = decode_bitmap_masked(
            compressed.words,
            compressed.term_offsets[0],
            num_documents,
            chunk,
            rank,
            mask,
            doc_buffer,
            tf_buffer,
        )
        got_docs += doc_buffer[:size].tolist()
        got_tfs += tf_buffer[:size].tolist()
    expected = [doc for doc in wanted if doc % 3 == 0]
    assert got_docs == expected
    assert got_tfs == [doc % 7 + 1 for doc in expected]
    assert rank == len(docs)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 62), st.integers(0, 2**62 - 1)), max_size=40))
def test_bits_written_are_read_back(fields):
    fields = [(width, value & ((1 << width) - 1)) for width, value in fields]
    words = np.zeros(sum(width for width, _ in fields) // 64 + 2, dtype=np.uint64)
    position = 0
    for width, value in fields:
        write_bits(words, position, width, value)
        position += width
    position = 0
    for width, value in fields:
        assert read_bits(words, position, width) == value
        position += width


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 9), max_size=30), min_size=1, max_size=20), st.integers(0, 5)
)
def test_inversion_counts_every_term_of_every_document(documents, first_doc):
    token_ids = np.array([t for doc in documents for t in doc], dtype=np.int32)
    doc_starts = np.zeros(len(documents) + 1, dtype=np.int64)
    np.cumsum([len(doc) for doc in documents], out=doc_starts[1:])
    starts, docs, tfs = postings_from_tokens(token_ids, doc_starts, first_doc, 10)
    expected = {}
    for position, doc in enumerate(documents):
        for term, tf in Counter(doc).items():
            expected.setdefault(term, []).append((first_doc + position, tf))
    for term in range(10):
        got = list(
            zip(
                docs[starts[term] : starts[term + 1]].tolist(),
                tfs[starts[term] : starts[term + 1]].tolist(),
            )
        )
        assert got == expected.get(term, [])


def test_concatenation_appends_per_term_and_adds_new_terms():
    a = _term_major([([0, 2], [1, 3]), ([1], [2])])
    b = _term_major([([3], [1]), ([], []), ([4, 5], [1, 1])])
    starts, docs, tfs = concatenate_postings(*a, *b)
    assert starts.tolist() == [0, 3, 4, 6]
    assert docs.tolist() == [0, 2, 3, 1, 4, 5]
    assert tfs.tolist() == [1, 3, 1, 2, 1, 1]


def _compressed_sample():
    rng = np.random.default_rng(3)
    num_documents = 500
    lists = [
        (
            np.sort(rng.choice(num_documents, size=size, replace=False)),
            rng.integers(1, 5, size=size),
        )
        for size in (3, 200, 40, 1)
    ]
    return CompressedPostings.from_postings(*_term_major(lists), num_documents)


def _with(compressed, **changes):
    fields = {
        "words": compressed.words.copy(),
        "term_offsets": compressed.term_offsets.copy(),
        "term_df": compressed.term_df.copy(),
        "num_documents": compressed.num_documents,
    }
    fields.update(changes)
    return CompressedPostings(**fields)


def test_damaged_streams_are_detected():
    good = _compressed_sample()
    assert good.first_damaged_term() is None
    truncated = _with(good, words=good.words[: len(good.words) // 2])
    assert truncated.first_damaged_term() is not None
    more_postings = good.term_df.copy()
    more_postings[2] += 1
    assert _with(good, term_df=more_postings).first_damaged_term() is not None
    shifted = good.term_offsets.copy()
    shifted[1] += 1
    assert _with(good, term_offsets=shifted).first_damaged_term() is not None
    # The same stream read as a smaller collection holds documents beyond its end.
    assert _with(good, num_documents=50).first_damaged_term() is not None
    assert _with(good, words=good.words.astype(np.int64)).first_damaged_term() == 0


@pytest.mark.parametrize("num_documents", [64, 65, 1000])
def test_bitmap_bits_beyond_the_collection_are_detected(num_documents):
    docs = np.arange(num_documents)
    good = CompressedPostings.from_postings(
        *_term_major([(docs, np.ones_like(docs))]), num_documents
    )
    assert good.num_bitmaps == 1 and good.first_damaged_term() is None
    words = good.words.copy()
    last_word = (num_documents + 63) // 64 - 1
    if num_documents % 64:
        words[last_word] |= np.uint64(1) << np.uint64(63)
    else:
        words[last_word] &= ~np.uint64(1)  # one posting fewer than df
    assert _with(good, words=words).first_damaged_term() == 0
