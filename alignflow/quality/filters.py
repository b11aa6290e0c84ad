"""Heuristic filters for generated text: each returns the reason a text is rejected, or None."""
from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable

from alignflow.config import InstructionsConfig

Filter = Callable[[str], str | None]

# what a model says when it declines; matched case-insensitively, with curly apostrophes folded
REFUSALS = ("as an ai", "as a language model", "i'm sorry, but i cannot", "i'm sorry, but i can't",
            "i am sorry, but i cannot", "i cannot fulfill", "i can't fulfill", "i cannot help with", "i can't help with",
            "i cannot assist", "i can't assist", "i am unable to", "i'm unable to", "i'm not able to",
            "i apologize, but")
_REFUSAL = re.compile(r"\b(" + "|".join(re.escape(p) for p in REFUSALS) + r")\b")
_WORD = re.compile(r"[a-z0-9]+")


def word_count(min_words: int, max_words: int) -> Filter:
    def check(text: str) -> str | None:
        n = len(text.split())
        if n < min_words:
            return f"too short: {n} words < {min_words}"
        if n > max_words:
            return f"too long: {n} words > {max_words}"
        return None

    return check


def blacklist(words: Iterable[str]) -> Filter:
    """Whole words or phrases only: "map" rejects "a map" but not "mapping"."""
    words = list(words)
    if not words:
        return lambda text: None
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)

    def check(text: str) -> str | None:
        hit = pattern.search(text)
        return f"blacklisted keyword: {hit.group(1).lower()}" if hit else None

    return check


def bad_start(text: str) -> str | None:
    first = text[:1]
    if not first:
        return "empty"
    if first in string.punctuation:
        return "starts with punctuation"
    if not first.isascii():
        return "starts with a non-ASCII character"
    return None


def repetition(max_share: float = 0.3, n: int = 3) -> Filter:
    """Rejects looping text: the share of word n-grams that repeat an earlier one is above `max_share`."""

    def check(text: str) -> str | None:
        words = _WORD.findall(text.lower())
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        if not grams:
            return None
        share = 1 - len(set(grams)) / len(grams)
        return f"repetitive: {share:.0%} of word {n}-grams repeated (> {max_share:.0%})" if share > max_share else None

    return check


def refusal(text: str) -> str | None:
    hit = _REFUSAL.search(text.lower().replace("\u2019", "'"))
    return f"refusal phrase: {hit.group(1)!r}" if hit else None


def truncated(finish_reason: str | None) -> str | None:
    """A generation cut at the token limit: the text is incomplete."""
    return "truncated generation (finish reason length)" if finish_reason == "length" else None


def for_instructions(config: InstructionsConfig) -> list[Filter]:
    """The instruction stage's checks, cheapest first; the first that objects gives the reason."""
    return [word_count(config.min_words, config.max_words), blacklist(config.blacklist), bad_start,
            repetition(), refusal]


def first_rejection(text: str, filters: Iterable[Filter]) -> str | None:
    for check in filters:
        if reason := check(text):
            return reason
    return None


def normalise(text: str) -> str:
    """The form exact comparisons use: case, punctuation and spacing folded."""
    return " ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split())
