"""Compressed postings lists: bit-packed blocks for rare terms, bitmaps for common ones.

Each term's postings (increasing document numbers, each with its term frequency ``tf``) are
stored in one of two layouts, chosen by density as Roaring bitmaps do (Chambi, Lemire,
Kaser & Godin, "Better bitmap performance with Roaring bitmaps", SPE 2016):

**Packed** (fewer than ``num_documents / BITMAP_DENSITY`` postings). The list is cut into
blocks of :data:`BLOCK_SIZE` postings. Inside a block, a posting is one fixed-width integer
holding the gap to the previous document minus one (high bits) and ``tf - 1`` (low bits);
each field gets the smallest bit width that holds its largest value in the block ("frame of
reference" binary packing: Anh & Moffat, "Index compression using 64-bit words", SPE 2010;
Lemire & Boytsov, "Decoding billions of integers per second through vectorization", SPE
2015). Small gaps cost a few bits and the usual ``tf = 1`` costs none; one extraction per
posting decodes both fields. Layout: a block table holding the two 5-bit widths of every
block, then the blocks one after the other (the first gap of a block continues from the
previous block's last document).

**Bitmap** (at least ``num_documents / BITMAP_DENSITY`` postings, starting on a word
boundary). One bit per document of the collection, a 5-bit width, then ``tf - 1`` of every
posting in document order at that width. A bitmap costs at most ``BITMAP_DENSITY`` bits per
posting, and intersecting it with a set of candidate documents (itself a bitmap) is one AND
per 64 documents, plus a POPCNT to find each hit's frequency: top-k search uses that to
update its candidates in the long lists of common terms without decoding them.

The number of postings of each term (``term_df``) and the collection size pick the layout
and the number of blocks, so neither is stored in the stream. Decoding goes chunk by chunk
(a block, or the 128 documents of two bitmap words) into small buffers. Everything here runs
in numba; :class:`CompressedPostings` is the Python-side holder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

BLOCK_SIZE = 128
"""Postings per packed block: large enough to amortise the block header, small enough that a
single large gap only widens its own block (the value used by Lucene and PISA)."""

BITMAP_DENSITY = 8
"""A list holding at least one document in this many is stored as a bitmap: at that density
the bitmap costs at most 8 bits per posting for the document numbers, close to what packed
gaps cost, and it lets top-k search update candidates without decoding the list. (On
SciFact, 4, 8, 16 and 32 gave 10.8, 10.9, 11.9 and 14.5 bits per posting; 8 searched
fastest, though within the noise of 4 and 16.)"""

WIDTH_BITS = 5
"""Bits storing one bit width (0..31)."""

CHUNK_WORDS = 2
"""Bitmap words decoded per chunk, so a bitmap chunk holds at most BLOCK_SIZE postings."""

MAX_DOCUMENTS = 1 << 31
"""Document numbers must fit the 31-bit gap field."""


@intrinsic
def popcount(typingctx, value):
    """Number of set bits of a uint64 (one POPCNT instruction)."""
    signature = types.uint64(types.uint64)

    def codegen(context, builder, sig, args):
        return builder.ctpop(args[0])

    return signature, codegen


@intrinsic
def trailing_zeros(typingctx, value):
    """Index of the lowest set bit of a non-zero uint64 (one TZCNT instruction)."""
    signature = types.uint64(types.uint64)

    def codegen(context, builder, sig, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return signature, codegen


@njit(cache=True)
def bit_width(value):
    """Number of bits needed to write the non-negative integer ``value`` (0 needs 0 bits)."""
    width = 0
    while value > 0:
        width += 1
        value >>= 1
    return width


@njit(cache=True)
def write_bits(words, position, width, value):
    """OR ``value`` (< 2**width, width <= 62) into ``words`` starting at bit ``position``."""
    if width == 0:
        return
    word = position >> 6
    shift = position & 63
    bits = np.uint64(value)
    words[word] |= bits << np.uint64(shift)
    if shift + width > 64:
        words[word + 1] |= bits >> np.uint64(64 - shift)


@njit(cache=True)
def read_bits(words, position, width):
    """Read the ``width``-bit (<= 62) unsigned value starting at bit ``position``.

    Branch-free: the high part is shifted in two steps so that a value lying entirely in one
    word shifts the next word out completely instead of by the undefined 64 places, and the
    unsigned word index spares numba its negative-index wrap-around test.
    """
    position = np.uint64(position)
    word = position >> np.uint64(6)
    shift = position & np.uint64(63)
    low = words[word] >> shift
    high = (words[word + np.uint64(1)] << (np.uint64(63) - shift)) << np.uint64(1)
    return np.int64((low | high) & ((np.uint64(1) << np.uint64(width)) - np.uint64(1)))


# ----------------------------------------------------------------------------------------
# Layout arithmetic


@njit(cache=True)
def is_bitmap(df, num_documents):
    return df > 0 and df * BITMAP_DENSITY >= num_documents


@njit(cache=True)
def num_blocks(df):
    return (df + BLOCK_SIZE - 1) // BLOCK_SIZE


@njit(cache=True)
def num_chunks(df, num_documents):
    """Chunks :func:`decode_chunk` splits a list into."""
    if is_bitmap(df, num_documents):
        return (bitmap_words(num_documents) + CHUNK_WORDS - 1) // CHUNK_WORDS
    return num_blocks(df)


@njit(cache=True)
def block_table_bits(blocks):
    """Size of a packed list's block table: the two bit widths of every block."""
    return blocks * 2 * WIDTH_BITS


@njit(cache=True)
def block_table_entry(term_offset, block):
    """Bit position of the table entry of ``block`` within the list starting at ``term_offset``."""
    return term_offset + block * 2 * WIDTH_BITS


@njit(cache=True)
def block_size(df, block):
    return min(BLOCK_SIZE, df - block * BLOCK_SIZE)


@njit(cache=True)
def bitmap_words(num_documents):
    return (num_documents + 63) // 64


@njit(cache=True)
def _tf_width_position(term_offset, num_documents):
    """Where a bitmap list's tf width is: right after the bitmap."""
    return term_offset + bitmap_words(num_documents) * 64


@njit(cache=True)
def _bitmap_list_bits(df, num_documents, tf_width):
    return _tf_width_position(0, num_documents) + WIDTH_BITS + df * tf_width


@njit(cache=True)
def chunk_start(term_offset, df, num_documents):
    """Decoding state before the first chunk: (bit position, previous document)."""
    if is_bitmap(df, num_documents):
        return _tf_width_position(term_offset, num_documents) + WIDTH_BITS, -1
    return term_offset + block_table_bits(num_blocks(df)), -1


# ----------------------------------------------------------------------------------------
# Decoding


@njit(cache=True)
def decode_chunk(
    words, term_offset, df, num_documents, chunk, position, previous_doc, docs_out, tfs_out
):
    """Decode chunk ``chunk`` of a list into ``docs_out`` / ``tfs_out`` (documents and term
    frequencies). ``position`` and ``previous_doc`` are the state returned by the previous
    chunk (or :func:`chunk_start`); returns the chunk's size and the next state."""
    if is_bitmap(df, num_documents):
        return _decode_bitmap_chunk(
            words, term_offset, num_documents, chunk, position, docs_out, tfs_out
        )
    return _decode_block(words, term_offset, df, chunk, position, previous_doc, docs_out, tfs_out)


@njit(cache=True)
def _decode_block(words, term_offset, df, block, payload, previous_doc, docs_out, tfs_out):
    entry = block_table_entry(term_offset, block)
    gap_width = read_bits(words, entry, WIDTH_BITS)
    tf_width = read_bits(words, entry + WIDTH_BITS, WIDTH_BITS)
    size = block_size(df, block)
    width = gap_width + tf_width
    tf_mask = (1 << tf_width) - 1
    position = payload
    doc = previous_doc
    for i in range(size):
        value = read_bits(words, position, width)
        doc += (value >> tf_width) + 1
        docs_out[i] = doc
        tfs_out[i] = (value & tf_mask) + 1
        position += width
    return size, position, doc


@njit(cache=True)
def _decode_bitmap_chunk(words, term_offset, num_documents, chunk, position, docs_out, tfs_out):
    base = term_offset >> 6
    size = 0
    for word_index in range(
        chunk * CHUNK_WORDS, min((chunk + 1) * CHUNK_WORDS, bitmap_words(num_documents))
    ):
        bits = words[base + word_index]
        while bits:
            docs_out[size] = word_index * 64 + np.int64(trailing_zeros(bits))
            bits &= bits - np.uint64(1)
            size += 1
    tf_width = read_bits(words, _tf_width_position(term_offset, num_documents), WIDTH_BITS)
    for i in range(size):
        tfs_out[i] = read_bits(words, position, tf_width) + 1
        position += tf_width
    return size, position, -1


@njit(cache=True)
def decode_bitmap_masked(words, term_offset, num_documents, chunk, rank, mask, docs_out, tfs_out):
    """Decode only the postings of bitmap chunk ``chunk`` whose document is set in ``mask``
    (a bitmap of the collection); ``rank`` is the number of postings in earlier chunks.
    Returns the number decoded and the rank after the chunk."""
    base = term_offset >> 6
    width_position = _tf_width_position(term_offset, num_documents)
    tf_width = read_bits(words, width_position, WIDTH_BITS)
    size = 0
    for word_index in range(
        chunk * CHUNK_WORDS, min((chunk + 1) * CHUNK_WORDS, bitmap_words(num_documents))
    ):
        bits = words[base + word_index]
        hits = bits & mask[word_index]
        while hits:
            bit = trailing_zeros(hits)
            posting = rank + np.int64(popcount(bits & ((np.uint64(1) << bit) - np.uint64(1))))
            docs_out[size] = word_index * 64 + np.int64(bit)
            tfs_out[size] = (
                read_bits(words, width_position + WIDTH_BITS + posting * tf_width, tf_width) + 1
            )
            hits &= hits - np.uint64(1)
            size += 1
        rank += np.int64(popcount(bits))
    return size, rank


@njit(cache=True)
def decode_list(words, term_offset, df, num_documents, docs_out, tfs_out):
    """Decode a whole list into ``docs_out[:df]`` and ``tfs_out[:df]``."""
    position, previous_doc = chunk_start(term_offset, df, num_documents)
    written = 0
    for chunk in range(num_chunks(df, num_documents)):
        size, position, previous_doc = decode_chunk(
            words,
            term_offset,
            df,
            num_documents,
            chunk,
            position,
            previous_doc,
            docs_out[written:],
            tfs_out[written:],
        )
        written += size


@njit(cache=True)
def _decode_all(words, term_offsets, term_df, num_documents):
    terms = len(term_df)
    term_starts = np.zeros(terms + 1, dtype=np.int64)
    for term in range(terms):
        term_starts[term + 1] = term_starts[term] + term_df[term]
    docs = np.empty(term_starts[terms], dtype=np.int32)
    tfs = np.empty(term_starts[terms], dtype=np.int32)
    for term in range(terms):
        start = term_starts[term]
        decode_list(
            words, term_offsets[term], term_df[term], num_documents, docs[start:], tfs[start:]
        )
    return term_starts, docs, tfs


# ----------------------------------------------------------------------------------------
# Encoding


@njit(cache=True)
def _block_widths(docs, tfs, start, end, previous_doc):
    max_gap = docs[start] - previous_doc - 1
    max_tf = tfs[start] - 1
    for i in range(start + 1, end):
        max_gap = max(max_gap, docs[i] - docs[i - 1] - 1)
        max_tf = max(max_tf, tfs[i] - 1)
    return bit_width(max_gap), bit_width(max_tf)


@njit(cache=True)
def _max_tf_width(tfs, start, end):
    largest = 0
    for i in range(start, end):
        largest = max(largest, tfs[i] - 1)
    return bit_width(largest)


@njit(cache=True)
def _packed_list_bits(docs, tfs, start, end):
    df = end - start
    bits = block_table_bits(num_blocks(df))
    previous_doc = -1
    for block in range(num_blocks(df)):
        block_start = start + block * BLOCK_SIZE
        block_end = min(block_start + BLOCK_SIZE, end)
        gap_width, tf_width = _block_widths(docs, tfs, block_start, block_end, previous_doc)
        bits += (block_end - block_start) * (gap_width + tf_width)
        previous_doc = docs[block_end - 1]
    return bits


@njit(cache=True)
def _write_packed_list(words, position, docs, tfs, start, end):
    df = end - start
    blocks = num_blocks(df)
    payload = position + block_table_bits(blocks)
    previous_doc = -1
    for block in range(blocks):
        block_start = start + block * BLOCK_SIZE
        block_end = min(block_start + BLOCK_SIZE, end)
        gap_width, tf_width = _block_widths(docs, tfs, block_start, block_end, previous_doc)
        entry = block_table_entry(position, block)
        write_bits(words, entry, WIDTH_BITS, gap_width)
        write_bits(words, entry + WIDTH_BITS, WIDTH_BITS, tf_width)
        width = gap_width + tf_width
        for i in range(block_start, block_end):
            gap = np.int64(docs[i] - previous_doc - 1)
            write_bits(words, payload, width, (gap << tf_width) | (tfs[i] - 1))
            payload += width
            previous_doc = docs[i]


@njit(cache=True)
def _write_bitmap_list(words, position, docs, tfs, start, end, num_documents):
    base = position >> 6
    for i in range(start, end):
        words[base + (docs[i] >> 6)] |= np.uint64(1) << np.uint64(docs[i] & 63)
    tf_width = _max_tf_width(tfs, start, end)
    width_position = _tf_width_position(position, num_documents)
    write_bits(words, width_position, WIDTH_BITS, tf_width)
    for i in range(start, end):
        write_bits(
            words, width_position + WIDTH_BITS + (i - start) * tf_width, tf_width, tfs[i] - 1
        )


@njit(cache=True)
def _list_end(term_offset, docs, tfs, start, end, num_documents):
    """Bit where a list starting at ``term_offset`` ends."""
    if is_bitmap(end - start, num_documents):
        return term_offset + _bitmap_list_bits(
            end - start, num_documents, _max_tf_width(tfs, start, end)
        )
    return term_offset + _packed_list_bits(docs, tfs, start, end)


@njit(cache=True)
def _encode(term_starts, docs, tfs, num_documents):
    terms = len(term_starts) - 1
    term_offsets = np.zeros(terms + 1, dtype=np.int64)
    end = 0
    for term in range(terms):
        start_bit = end
        if is_bitmap(term_starts[term + 1] - term_starts[term], num_documents):
            start_bit = (end + 63) // 64 * 64  # bitmaps start on a word boundary
        term_offsets[term] = start_bit
        end = _list_end(
            start_bit, docs, tfs, term_starts[term], term_starts[term + 1], num_documents
        )
    term_offsets[terms] = end
    # Two spare words let readers look at ``word + 1`` even for a zero-width value at the very
    # end of the stream, without a bounds test.
    words = np.zeros(end // 64 + 2, dtype=np.uint64)
    for term in range(terms):
        start, stop = term_starts[term], term_starts[term + 1]
        if is_bitmap(stop - start, num_documents):
            _write_bitmap_list(words, term_offsets[term], docs, tfs, start, stop, num_documents)
        else:
            _write_packed_list(words, term_offsets[term], docs, tfs, start, stop)
    return words, term_offsets


# ----------------------------------------------------------------------------------------
# Validation of loaded data


@njit(cache=True)
def _packed_list_end(words, start, df, num_documents):
    """End bit of a well-formed packed list, or -1 if it is malformed."""
    payload = start + block_table_bits(num_blocks(df))
    if payload >= (len(words) - 1) * 64:
        return -1
    doc = -1
    for block in range(num_blocks(df)):
        entry = block_table_entry(start, block)
        gap_width = read_bits(words, entry, WIDTH_BITS)
        tf_width = read_bits(words, entry + WIDTH_BITS, WIDTH_BITS)
        if gap_width > 31 or tf_width > 31:
            return -1
        for _ in range(block_size(df, block)):
            doc += (read_bits(words, payload, gap_width + tf_width) >> tf_width) + 1
            payload += gap_width + tf_width
            if payload >= (len(words) - 1) * 64:
                return -1
        if doc >= num_documents:
            return -1
    return payload


@njit(cache=True)
def _bitmap_list_end(words, start, df, num_documents):
    """End bit of a well-formed bitmap list, or -1 if it is malformed."""
    if (
        start % 64 != 0
        or _tf_width_position(start, num_documents) + WIDTH_BITS >= (len(words) - 1) * 64
    ):
        return -1
    base = start >> 6
    total_words = bitmap_words(num_documents)
    if (
        num_documents % 64 != 0
        and words[base + total_words - 1] >> np.uint64(num_documents % 64) != 0
    ):
        return -1  # documents beyond the collection
    postings = 0
    for word_index in range(total_words):
        postings += np.int64(popcount(words[base + word_index]))
    tf_width = read_bits(words, _tf_width_position(start, num_documents), WIDTH_BITS)
    if postings != df or tf_width > 31:
        return -1
    return start + _bitmap_list_bits(df, num_documents, tf_width)


@njit(cache=True)
def _check_stream(words, term_offsets, term_df, num_documents):
    """Return -1 if every list is well formed and lies inside the stream, else the first bad
    term; a damaged index can then never make a search read out of bounds."""
    readable_bits = (len(words) - 1) * 64
    end = 0
    for term in range(len(term_df)):
        start = term_offsets[term]
        df = term_df[term]
        if df < 0:
            return term
        # Lists follow each other; a bitmap starts at the next word boundary.
        bitmap = is_bitmap(df, num_documents)
        if start != ((end + 63) // 64 * 64 if bitmap else end) or start >= readable_bits:
            return term
        if bitmap:
            end = _bitmap_list_end(words, start, df, num_documents)
        else:
            end = _packed_list_end(words, start, df, num_documents)
        if end < 0 or end >= readable_bits:
            return term
    if term_offsets[len(term_df)] != end:
        return len(term_df)
    return -1


# ----------------------------------------------------------------------------------------
# Building postings from a tokenised corpus


@njit(cache=True)
def postings_from_tokens(token_ids, doc_starts, first_doc, num_terms):
    """Invert a tokenised corpus: term-major postings with term frequencies.

    ``token_ids[doc_starts[i]:doc_starts[i + 1]]`` are the term ids of document
    ``first_doc + i``. Returns ``(term_starts, docs, tfs)`` where the postings of term ``t``
    are ``docs[term_starts[t]:term_starts[t + 1]]`` in increasing document order. A counting
    sort by term keeps the documents of each term in corpus order, so the whole inversion is
    linear in the number of tokens.
    """
    documents = len(doc_starts) - 1
    occurrences = np.zeros(num_terms + 1, dtype=np.int64)
    for token in token_ids:
        occurrences[token + 1] += 1
    for term in range(num_terms):
        occurrences[term + 1] += occurrences[term]
    cursor = occurrences[:-1].copy()
    doc_of_occurrence = np.empty(len(token_ids), dtype=np.int32)
    for doc in range(documents):
        for i in range(doc_starts[doc], doc_starts[doc + 1]):
            term = token_ids[i]
            doc_of_occurrence[cursor[term]] = first_doc + doc
            cursor[term] += 1
    # Runs of the same document inside a term's occurrences are that document's frequency.
    term_starts = np.zeros(num_terms + 1, dtype=np.int64)
    docs = np.empty(len(token_ids), dtype=np.int32)
    tfs = np.empty(len(token_ids), dtype=np.int32)
    postings = 0
    for term in range(num_terms):
        previous = -1
        for i in range(occurrences[term], occurrences[term + 1]):
            doc = doc_of_occurrence[i]
            if doc == previous:
                tfs[postings - 1] += 1
            else:
                docs[postings] = doc
                tfs[postings] = 1
                postings += 1
                previous = doc
        term_starts[term + 1] = postings
    return term_starts, docs[:postings].copy(), tfs[:postings].copy()


@njit(cache=True)
def concatenate_postings(starts_a, docs_a, tfs_a, starts_b, docs_b, tfs_b):
    """Per term, the postings of ``a`` followed by those of ``b`` (which has at least as many
    terms, and whose documents all come after those of ``a``)."""
    terms = len(starts_b) - 1
    terms_a = len(starts_a) - 1
    term_starts = np.zeros(terms + 1, dtype=np.int64)
    total = len(docs_a) + len(docs_b)
    docs = np.empty(total, dtype=np.int32)
    tfs = np.empty(total, dtype=np.int32)
    out = 0
    for term in range(terms):
        if term < terms_a:
            for i in range(starts_a[term], starts_a[term + 1]):
                docs[out] = docs_a[i]
                tfs[out] = tfs_a[i]
                out += 1
        for i in range(starts_b[term], starts_b[term + 1]):
            docs[out] = docs_b[i]
            tfs[out] = tfs_b[i]
            out += 1
        term_starts[term + 1] = out
    return term_starts, docs, tfs


@dataclass(frozen=True)
class CompressedPostings:
    """The postings of every term of a collection of ``num_documents`` documents, compressed.

    ``words`` is the bit stream, ``term_offsets[t]`` the bit where term ``t``'s list starts
    (``term_offsets[-1]`` is the stream length in bits) and ``term_df[t]`` its number of
    postings.
    """

    words: np.ndarray
    term_offsets: np.ndarray
    term_df: np.ndarray
    num_documents: int

    @classmethod
    def from_postings(
        cls, term_starts: np.ndarray, docs: np.ndarray, tfs: np.ndarray, num_documents: int
    ) -> CompressedPostings:
        """Compress term-major postings (``docs`` increasing within each term and below
        ``num_documents``, ``tfs >= 1``)."""
        term_starts = np.ascontiguousarray(term_starts, dtype=np.int64)
        docs = np.ascontiguousarray(docs, dtype=np.int32)
        tfs = np.ascontiguousarray(tfs, dtype=np.int32)
        words, term_offsets = _encode(term_starts, docs, tfs, num_documents)
        return cls(words, term_offsets, np.diff(term_starts).astype(np.int32), num_documents)

    def to_postings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decompress everything back to ``(term_starts, docs, tfs)``."""
        return _decode_all(self.words, self.term_offsets, self.term_df, self.num_documents)

    def postings(self, term: int) -> tuple[np.ndarray, np.ndarray]:
        """Documents and frequencies of one term."""
        df = int(self.term_df[term])
        docs = np.empty(df, dtype=np.int64)
        tfs = np.empty(df, dtype=np.int64)
        decode_list(self.words, self.term_offsets[term], df, self.num_documents, docs, tfs)
        return docs, tfs

    @property
    def num_terms(self) -> int:
        return len(self.term_df)

    @property
    def num_postings(self) -> int:
        return int(self.term_df.sum())

    @property
    def stream_bits(self) -> int:
        """Bits of the encoded stream: document numbers, frequencies, bit widths and the
        padding that aligns bitmaps."""
        return int(self.term_offsets[-1])

    @property
    def num_bitmaps(self) -> int:
        return int(np.count_nonzero(self.term_df * BITMAP_DENSITY >= max(self.num_documents, 1)))

    @property
    def nbytes(self) -> int:
        return self.words.nbytes + self.term_offsets.nbytes + self.term_df.nbytes

    def first_damaged_term(self) -> int | None:
        """The first term whose list is malformed (or None): checked before loaded data is used."""
        if (
            self.words.dtype != np.uint64
            or self.term_offsets.dtype != np.int64
            or self.term_df.dtype != np.int32
            or self.words.ndim != 1
            or len(self.words) < 2
            or self.term_offsets.shape != (len(self.term_df) + 1,)
        ):
            return 0
        bad = _check_stream(self.words, self.term_offsets, self.term_df, self.num_documents)
        return None if bad < 0 else int(bad)
