"""Heuristic filters for generated instructions: each returns the reason a text is rejected, or None."""
from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable

DEFAULT_BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                     "draw", "plot", "go to")

Filter = Callable[[str], str | None]


def word_count(min_words: int, max_words: int) -> Filter:
    def check(text: str) -> str | None:
        n = len(text.split())
        if n < min_words:
            return f"too short: {n} words < {min_words}"
        if n > max_words:
            return f"too long: {n} words > {max_words}"
        return None

    return check


def blacklist(words: Iterable[str] = DEFAULT_BLACKLIST) -> Filter:
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


def first_rejection(text: str, filters: Iterable[Filter]) -> str | None:
    for check in filters:
        if reason := check(text):
            return reason
    return None


def normalise(text: str) -> str:
    """The form exact dedup compares: case, punctuation and spacing folded."""
    return " ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split())
