import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignflow.config import InstructionsConfig
from alignflow.quality import filters

CHECKS = filters.for_instructions(InstructionsConfig())


@pytest.mark.parametrize("text, reason", [
    ("Write a poem", "too short: 3 words < 4"),
    (" ".join(["word"] * 75 + ["other"] * 76), "too long: 151 words > 150"),
    ("Draw a picture of a cat sitting on a mat", "blacklisted keyword: draw"),
    ("Open the files in the folder and count lines", "blacklisted keyword: files"),
    ("Tell me how to go to the station quickly", "blacklisted keyword: go to"),
    ("- List three kinds of fruit please", "starts with punctuation"),
    ("Écris un poème sur la mer", "non-ASCII"),
    ("Explain the idea of recursion and recursion and recursion and recursion and recursion", "repetitive"),
    ("As an AI, I do not have personal opinions on this topic.", "refusal phrase: 'as an ai'"),
    ("I\u2019m sorry, but I cannot help write that essay.", "refusal phrase: \"i'm sorry, but i cannot\""),
    ("I apologize, but this request is unclear to me.", "refusal phrase: 'i apologize, but'"),
])
def test_rejections_have_reasons(text, reason):
    assert reason in filters.first_rejection(text, CHECKS)


@pytest.mark.parametrize("text", [
    "Explain how a refrigerator keeps food cold.",
    "Describe a mapping between sets",  # "map" is a whole word only, not a prefix
    "Explain what an aid worker does as an aid to refugees.",  # "as an aid" is not "as an AI"
    "Write a function that returns the sum of a list, then a function that returns the product of a list.",
])
def test_good_instructions_pass(text):
    assert filters.first_rejection(text, CHECKS) is None


def test_blacklist_comes_from_the_config():
    checks = filters.for_instructions(InstructionsConfig(blacklist=["weather"]))
    assert filters.first_rejection("Describe the weather in Paris today", checks) == "blacklisted keyword: weather"
    assert filters.first_rejection("Draw the outline of a simple house", checks) is None
    assert filters.blacklist([])("Draw a picture of anything") is None


def test_repetition_bound():
    check = filters.repetition(max_share=0.3, n=3)
    looping = "Tell me a story. " * 4  # 10 of its 14 trigrams repeat an earlier one
    assert check(looping) == "repetitive: 71% of word 3-grams repeated (> 30%)"
    assert check("Tell me a story about a dragon who tells a story") is None
    assert check("Hi there") is None  # too short to have a 3-gram


def test_truncation_is_a_finish_reason():
    assert filters.truncated("length") == "truncated generation (finish reason length)"
    assert filters.truncated("stop") is None and filters.truncated(None) is None


def test_normalise_folds_case_punctuation_space():
    assert filters.normalise("  Hello,   World! ") == filters.normalise("hello world")


@given(st.text())
def test_normalise_is_idempotent(text):
    assert filters.normalise(filters.normalise(text)) == filters.normalise(text)
