"""English stop words for the BM25 tokenizer.

The list is the classic 33-word English stop set that Lucene's ``StandardAnalyzer`` and
Elasticsearch's ``_english_`` stop filter use by default: articles, conjunctions,
prepositions and pronouns so frequent that their idf carries almost no signal. It is kept
short on purpose: larger lists (for example the 179 words of NLTK) also drop words such as
"not", "no" or "against" that change the meaning of a scientific claim. Using the same set
as the reference systems keeps our SciFact figures comparable with published BM25 baselines.
"""

from __future__ import annotations

ENGLISH_STOP_WORDS: frozenset[str] = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "if",
        "in",
        "into",
        "is",
        "it",
        "no",
        "not",
        "of",
        "on",
        "or",
        "such",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "will",
        "with",
    }
)

STOP_WORD_LISTS: dict[str, frozenset[str]] = {"en": ENGLISH_STOP_WORDS}
"""Named stop lists accepted by :class:`llmds.tokenizer.Tokenizer` (``stopwords="en"``)."""
