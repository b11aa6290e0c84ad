"""Near-duplicate removal: exact, MinHash-LSH, ROUGE-L novelty and semantic, behind one small interface.

Every method is an index of the rows kept so far. `add` decides a new batch in order, each row against
everything kept before it (earlier batches and earlier rows of the same batch), and the kept rows join
the index. So a run dedups each batch against everything it already kept, and a file is deduplicated by
one `add` of all its rows.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from alignflow.config import DedupConfig

DEFAULT_THRESHOLD = {"exact": 1.0, "minhash": 0.8, "rouge": 0.7, "semantic": 0.9}


@dataclass
class Decisions:
    """Per new row: kept or not, the id of the kept row it duplicates, and the similarity to it.

    For a kept row `score` is its highest similarity to any earlier kept row (0 if none was compared).
    `extra` holds method-specific per-row columns (rouge: `most_similar`, `mean_similarity`).
    """

    keep: np.ndarray
    duplicate_of: list[str | None]
    score: np.ndarray
    extra: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keep)


class Index(Protocol):
    method: str
    threshold: float

    def add(self, ids: Sequence[str], texts: Sequence[str]) -> Decisions: ...

    def seed(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        """Take rows as kept without deciding them: the pool a resumed run already holds."""


def threshold_of(config: DedupConfig) -> float:
    return config.threshold if config.threshold is not None else DEFAULT_THRESHOLD[config.method]


def make_index(config: DedupConfig) -> Index:
    """The index for `config.method`; imports stay lazy so a method's dependencies load only when used."""
    if config.method == "exact":
        from alignflow.quality.dedup.exact import ExactIndex as cls
    elif config.method == "minhash":
        from alignflow.quality.dedup.minhash import MinHashIndex as cls
    elif config.method == "rouge":
        from alignflow.quality.dedup.rouge import RougeIndex as cls
    elif config.method == "semantic":
        from alignflow.quality.dedup.semantic import SemanticIndex as cls
    else:
        raise ValueError(f"no dedup method {config.method!r}")
    return cls(config)
