import pytest

from alignflow import filters


@pytest.mark.parametrize("text, reason", [
    ("Write a poem", "too short"),
    ("Draw a picture of a cat sitting on a mat", "blacklisted keyword: draw"),
    ("Open the files in the folder and count lines", "blacklisted keyword: files"),
    ("Tell me how to go to the station quickly", "blacklisted keyword: go to"),
    ("- List three kinds of fruit please", "starts with punctuation"),
    ("Écris un poème sur la mer", "non-ASCII"),
])
def test_rejections_have_reasons(text, reason):
    checks = [filters.word_count(4, 150), filters.blacklist(), filters.bad_start]
    assert reason in filters.first_rejection(text, checks)


def test_good_instruction_passes():
    checks = [filters.word_count(4, 150), filters.blacklist(), filters.bad_start]
    assert filters.first_rejection("Explain how a refrigerator keeps food cold.", checks) is None
    assert filters.first_rejection("Describe a mapping between sets", checks) is None  # "map" is a word, not a prefix


def test_normalise_folds_case_punctuation_space():
    assert filters.normalise("  Hello,   World! ") == filters.normalise("hello world")
