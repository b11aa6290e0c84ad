"""Exact dedup: two texts are duplicates when they are equal once case, punctuation and spacing are folded.

The index keeps a 128-bit digest of each kept text's normal form, not the text, so it stays small.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from alignflow.config import DedupConfig
from alignflow.quality.dedup import Decisions
from alignflow.quality.filters import normalise


def digest(text: str | None) -> bytes:
    return hashlib.blake2b(normalise(text or "").encode(), digest_size=16).digest()


class ExactIndex:
    method = "exact"
    threshold = 1.0

    def __init__(self, config: DedupConfig):
        self._kept: dict[bytes, str] = {}

    def seed(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        for id_, text in zip(ids, texts, strict=True):
            self._kept.setdefault(digest(text), id_)

    def add(self, ids: Sequence[str], texts: Sequence[str]) -> Decisions:
        keep = np.zeros(len(ids), bool)
        duplicate_of: list[str | None] = []
        for i, (id_, text) in enumerate(zip(ids, texts, strict=True)):
            key = digest(text)
            original = self._kept.get(key)
            if original is None:
                self._kept[key] = id_
                keep[i] = True
            duplicate_of.append(original)
        return Decisions(keep=keep, duplicate_of=duplicate_of, score=np.where(keep, 0.0, 1.0))
