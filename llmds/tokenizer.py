"""Text to terms for lexical retrieval: regex tokens, lower-casing, stop words, Snowball stems.

The pipeline is the one used by Lucene's ``EnglishAnalyzer`` and by bm25s (Lù, "BM25S:
Orders of magnitude faster lexical search via eager sparse scoring", 2024): split the text
into word tokens with a Unicode-aware regular expression, lower-case them, drop stop words
(before stemming, so that the stop list is written in plain words), then reduce each token to
its Snowball stem (Porter, "Snowball: A language for stemming algorithms", 2001) with
PyStemmer. Identical settings give identical tokens to bm25s, which is what makes score parity
tests between the two meaningful.

:class:`Vocabulary` maps terms to dense integer ids, the form the inverted index works with.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from llmds.errors import InvalidInputError, NotAvailableError
from llmds.stopwords import STOP_WORD_LISTS

DEFAULT_PATTERN = r"(?u)\b\w\w+\b"
"""Runs of two or more Unicode word characters (scikit-learn's and bm25s's default)."""

_STEM_CACHE_LIMIT = 1 << 20
"""Distinct words whose stems are remembered; the cache is emptied when it grows past this,
which bounds its memory on unbounded text streams while keeping any real vocabulary cached."""


class Tokenizer:
    """Turns text into a list of terms.

    Parameters
    ----------
    lower:
        Lower-case the text before splitting (default ``True``), so "Cell" and "cell" match.
    stopwords:
        ``"en"`` (default) for the English list in :mod:`llmds.stopwords`, any iterable of
        words for a custom list, or ``None`` to keep every token. Stop words are matched on the
        (lower-cased) token before stemming.
    stemmer:
        A Snowball algorithm name understood by PyStemmer (default ``"english"``, i.e.
        Porter2), or ``None`` to keep tokens unstemmed.
    pattern:
        Regular expression whose matches are the tokens (default: two or more word
        characters, which drops single letters and punctuation).
    """

    def __init__(
        self,
        *,
        lower: bool = True,
        stopwords: str | Iterable[str] | None = "en",
        stemmer: str | None = "english",
        pattern: str = DEFAULT_PATTERN,
    ) -> None:
        self.lower = bool(lower)
        self.pattern = pattern
        try:
            self._find_tokens = re.compile(pattern).findall
        except (re.error, TypeError) as exc:
            raise InvalidInputError(
                f"Tokenizer pattern {pattern!r} is not a valid regular expression ({exc}); "
                f"pass a valid one, for example the default {DEFAULT_PATTERN!r}."
            ) from exc
        self.stopwords_name, self._stopwords = _resolve_stopwords(stopwords)
        self.stemmer = stemmer
        self._stem_word = _load_stemmer(stemmer) if stemmer is not None else None
        self._stem_cache: dict[str, str] = {}

    def tokenize(self, text: str) -> list[str]:
        """Return the terms of ``text`` in order of appearance (repeats kept)."""
        if not isinstance(text, str):
            raise InvalidInputError(
                f"Tokenizer.tokenize expects a str, got {type(text).__name__}; "
                "pass the document or query text."
            )
        if self.lower:
            text = text.lower()
        stopwords = self._stopwords
        tokens = [token for token in self._find_tokens(text) if token not in stopwords]
        if self._stem_word is None:
            return tokens
        cache = self._stem_cache
        if len(cache) > _STEM_CACHE_LIMIT:
            cache.clear()
        return [cache.get(token) or self._stem_and_remember(token) for token in tokens]

    def tokenize_many(self, texts: Iterable[str]) -> list[list[str]]:
        """Tokenize every text of ``texts``."""
        if isinstance(texts, str):
            raise InvalidInputError(
                "Tokenizer.tokenize_many expects an iterable of texts, got a single str; "
                "wrap it in a list or call tokenize()."
            )
        return [self.tokenize(text) for text in texts]

    def describe(self) -> dict[str, Any]:
        """JSON-able settings; :meth:`from_description` rebuilds an identical tokenizer."""
        stopwords: str | list[str] | None
        if self.stopwords_name is not None:
            stopwords = self.stopwords_name
        elif self._stopwords:
            stopwords = sorted(self._stopwords)
        else:
            stopwords = None
        return {
            "lower": self.lower,
            "stopwords": stopwords,
            "stemmer": self.stemmer,
            "pattern": self.pattern,
        }

    @classmethod
    def from_description(cls, settings: dict[str, Any]) -> Tokenizer:
        """Rebuild a tokenizer from the output of :meth:`describe`."""
        if not isinstance(settings, dict):
            raise InvalidInputError(
                f"tokenizer settings must be a dict as written by Tokenizer.describe(), "
                f"got {type(settings).__name__}."
            )
        unknown = set(settings) - {"lower", "stopwords", "stemmer", "pattern"}
        if unknown:
            raise InvalidInputError(
                f"unknown tokenizer settings {sorted(unknown)}; "
                "expected lower, stopwords, stemmer and pattern."
            )
        return cls(**settings)

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in self.describe().items())
        return f"Tokenizer({settings})"

    def _stem_and_remember(self, token: str) -> str:
        stem = self._stem_word(token)
        self._stem_cache[token] = stem
        return stem


def _resolve_stopwords(stopwords: str | Iterable[str] | None) -> tuple[str | None, frozenset[str]]:
    if stopwords is None:
        return None, frozenset()
    if isinstance(stopwords, str):
        if stopwords not in STOP_WORD_LISTS:
            raise InvalidInputError(
                f"unknown stop word list {stopwords!r}; use one of {sorted(STOP_WORD_LISTS)}, "
                "an iterable of words, or None for no stop words."
            )
        return stopwords, STOP_WORD_LISTS[stopwords]
    words = frozenset(stopwords)
    if not all(isinstance(word, str) for word in words):
        raise InvalidInputError("stop words must be strings; pass an iterable of str.")
    return None, words


def _load_stemmer(name: str):
    try:
        import Stemmer
    except ImportError as exc:
        raise NotAvailableError(
            "stemming needs PyStemmer: install it with `pip install PyStemmer`, "
            "or create the tokenizer with stemmer=None."
        ) from exc
    if name not in Stemmer.algorithms():
        raise InvalidInputError(
            f"unknown stemmer {name!r}; use one of {Stemmer.algorithms()} or None."
        )
    # PyStemmer's own cache is slower than a plain dict lookup in Python; ours does the caching.
    return Stemmer.Stemmer(name, 0).stemWord


class Vocabulary:
    """A growable map from term to a dense integer id (0, 1, 2, ... in order of first sight).

    Ids never change once given, so arrays indexed by term id stay valid as the vocabulary
    grows (needed for incremental indexing).
    """

    def __init__(self, terms: Iterable[str] = ()) -> None:
        self._term_ids: dict[str, int] = {}
        self._terms: list[str] = []
        for term in terms:
            if term in self._term_ids:
                raise InvalidInputError(
                    f"term {term!r} appears twice in the vocabulary list; each term must be unique."
                )
            self.add(term)

    def add(self, term: str) -> int:
        """Return the id of ``term``, giving it the next free id if it is new."""
        term_id = self._term_ids.get(term)
        if term_id is None:
            term_id = len(self._terms)
            self._term_ids[term] = term_id
            self._terms.append(term)
        return term_id

    def get(self, term: str, default: int = -1) -> int:
        """The id of ``term``, or ``default`` when it is unknown."""
        return self._term_ids.get(term, default)

    def ids(self, tokens: Iterable[str], *, grow: bool) -> list[int]:
        """Map tokens to ids; new tokens get new ids when ``grow``, else they are dropped."""
        if grow:
            term_ids = self._term_ids
            terms = self._terms
            out = []
            for token in tokens:
                term_id = term_ids.get(token)
                if term_id is None:
                    term_id = len(terms)
                    term_ids[token] = term_id
                    terms.append(token)
                out.append(term_id)
            return out
        get = self._term_ids.get
        return [term_id for term_id in map(get, tokens) if term_id is not None]

    def term(self, term_id: int) -> str:
        return self._terms[term_id]

    def __len__(self) -> int:
        return len(self._terms)

    def __contains__(self, term: object) -> bool:
        return term in self._term_ids

    def to_list(self) -> list[str]:
        """Terms in id order (``from_list(to_list())`` gives back the same ids)."""
        return list(self._terms)

    @classmethod
    def from_list(cls, terms: Sequence[str]) -> Vocabulary:
        return cls(terms)
