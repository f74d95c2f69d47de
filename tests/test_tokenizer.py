"""Tokenizer and vocabulary: the default English pipeline, each option, bad input, and parity
with bm25s's tokenizer (the reason the two libraries can be compared on the same tokens)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmds.errors import InvalidInputError
from llmds.stopwords import ENGLISH_STOP_WORDS
from llmds.tokenizer import Tokenizer, Vocabulary


def test_default_pipeline_lowercases_drops_stop_words_and_stems():
    tokenizer = Tokenizer()
    assert tokenizer.tokenize("The Cats are RUNNING to the running-track!") == [
        "cat",
        "run",
        "run",
        "track",
    ]


def test_single_characters_and_punctuation_are_not_tokens():
    assert Tokenizer(stemmer=None).tokenize("a b c -- x1 42 ... ok") == ["x1", "42", "ok"]


def test_unicode_words_are_kept_whole():
    tokens = Tokenizer(stemmer=None).tokenize("Café naïve Ελληνικά")
    assert tokens == ["café", "naïve", "ελληνικά"]


def test_options_switch_each_stage_off():
    text = "The Running Dogs"
    assert Tokenizer(stopwords=None, stemmer=None).tokenize(text) == ["the", "running", "dogs"]
    assert Tokenizer(lower=False, stopwords=None, stemmer=None).tokenize(text) == [
        "The",
        "Running",
        "Dogs",
    ]
    assert Tokenizer(stemmer=None).tokenize(text) == ["running", "dogs"]
    assert Tokenizer(stopwords=["dogs"], stemmer=None).tokenize(text) == ["the", "running"]
    assert Tokenizer(pattern=r"\w+", stopwords=None, stemmer=None).tokenize("a b") == ["a", "b"]


def test_stop_words_are_matched_before_stemming():
    # "this" is a stop word; its stem "thi" must not leak through.
    assert Tokenizer().tokenize("this") == []
    assert "this" in ENGLISH_STOP_WORDS


def test_repeated_calls_give_the_same_tokens():
    tokenizer = Tokenizer()
    text = "generalization generalizations generalized"
    assert tokenizer.tokenize(text) == tokenizer.tokenize(text) == ["general"] * 3


def test_tokenize_many_matches_tokenize():
    tokenizer = Tokenizer()
    texts = ["Cells divide.", "", "Dividing cells"]
    assert tokenizer.tokenize_many(texts) == [tokenizer.tokenize(text) for text in texts]


def test_describe_round_trips_through_json():
    for tokenizer in (
        Tokenizer(),
        Tokenizer(lower=False, stopwords=["x", "y"], stemmer=None, pattern=r"\w+"),
        Tokenizer(stopwords=None, stemmer="porter"),
    ):
        settings_ = json.loads(json.dumps(tokenizer.describe()))
        rebuilt = Tokenizer.from_description(settings_)
        assert rebuilt.describe() == tokenizer.describe()
        text = "The X and Y of running tests"
        assert rebuilt.tokenize(text) == tokenizer.tokenize(text)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pattern": "("},
        {"stemmer": "klingon"},
        {"stopwords": "xx"},
        {"stopwords": [1, 2]},
    ],
)
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(InvalidInputError):
        Tokenizer(**kwargs)


def test_bad_descriptions_are_rejected():
    with pytest.raises(InvalidInputError):
        Tokenizer.from_description({"lowercase": True})
    with pytest.raises(InvalidInputError):
        Tokenizer.from_description(["lower"])


def test_non_text_input_is_rejected():
    tokenizer = Tokenizer()
    with pytest.raises(InvalidInputError):
        tokenizer.tokenize(b"bytes")
    with pytest.raises(InvalidInputError):
        tokenizer.tokenize(None)
    with pytest.raises(InvalidInputError):
        tokenizer.tokenize_many("a single string")


def test_vocabulary_ids_are_dense_and_stable():
    vocabulary = Vocabulary()
    assert vocabulary.ids(["b", "a", "b"], grow=True) == [0, 1, 0]
    assert vocabulary.ids(["c", "a"], grow=True) == [2, 1]
    assert vocabulary.ids(["a", "zzz", "c"], grow=False) == [1, 2]
    assert len(vocabulary) == 3 and "zzz" not in vocabulary
    assert vocabulary.get("zzz") == -1 and vocabulary.term(2) == "c"
    assert Vocabulary.from_list(vocabulary.to_list()).to_list() == ["b", "a", "c"]


def test_vocabulary_rejects_duplicate_terms():
    with pytest.raises(InvalidInputError):
        Vocabulary.from_list(["a", "b", "a"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet="abcdef ", max_size=12), max_size=20))
def test_vocabulary_round_trip_keeps_ids(words):
    vocabulary = Vocabulary()
    ids = vocabulary.ids(words, grow=True)
    rebuilt = Vocabulary.from_list(vocabulary.to_list())
    assert rebuilt.ids(words, grow=False) == ids


def test_same_tokens_as_bm25s():
    bm25s = pytest.importorskip("bm25s")
    stemmer_module = pytest.importorskip("Stemmer")
    texts = [
        "Vitamin D deficiency is associated with increased risk of tuberculosis.",
        "The effects of 0-dimensional biomaterials; cells' responses — in vivo & in vitro.",
        "ALDH1 expression is associated with poorer prognosis for breast cancer primary tumors.",
        "",
    ]
    theirs = bm25s.tokenize(
        texts,
        stopwords="en",
        stemmer=stemmer_module.Stemmer("english"),
        return_ids=False,
        show_progress=False,
        allow_empty=True,
    )
    assert Tokenizer().tokenize_many(texts) == [list(tokens) for tokens in theirs]
