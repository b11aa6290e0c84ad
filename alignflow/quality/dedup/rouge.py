"""ROUGE-L novelty (Self-Instruct): keep a text iff its ROUGE-L F against every kept text is at most the threshold.

Decisions, scores and `duplicate_of` are exactly those of the all-pairs scan with `rouge_score` (same tokens, same
floating-point formula), found at a fraction of its cost: the multiset token overlap with every kept row, read from an
inverted index, bounds the LCS from above, so rows whose bound cannot matter are never aligned; the rest are aligned
all at once by a bit-parallel LCS over Python ints, best bound first, and the search stops as soon as no remaining
bound can change the answer.
"""
from __future__ import annotations

import re
from array import array
from collections.abc import Sequence

import numpy as np

from alignflow.config import DedupConfig
from alignflow.quality.dedup import Decisions, threshold_of

MOST_SIMILAR = 10  # how many nearest kept rows a kept row records, as Self-Instruct stored
_TOKEN = re.compile(r"[a-z0-9]+")
_FIRST_CHUNK = 32  # exact alignments in the first round of a search; each next round doubles
_MASK_BUFFER = 1 << 25  # bytes of match masks built at once


def tokenize(text: str) -> list[str]:
    """rouge_score's default tokens without stemming: lowercase, then runs of ASCII letters and digits.

    Same as `rouge_score.tokenize.tokenize(text, None)` (which replaces every other character by a space, splits,
    and keeps only `[a-z0-9]+` tokens), in one regex pass; so "café" gives "caf" and a text in another script
    gives no tokens at all.
    """
    return _TOKEN.findall(text.lower())


def f_measure(lcs: np.ndarray, new_len: int | np.ndarray, old_len: int | np.ndarray) -> np.ndarray:
    """ROUGE-L F as `rouge_score._score_lcs` computes it, in the same float operations, so ties and the threshold
    comparison come out bit for bit the same; 0 where either text has no token or nothing is shared."""
    lcs = np.asarray(lcs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = lcs / old_len
        recall = lcs / new_len
        f = 2 * precision * recall / (precision + recall)
    return np.where(lcs > 0, f, 0.0)


def lcs_lengths(a: Sequence[int], flat: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """LCS length of token ids `a` with each of several sequences laid end to end in `flat` (`lengths` each).

    Bit-parallel LCS (Allison-Dix, Hyyro) with all the sequences as one long Python int and a zero guard bit after
    each, which absorbs the carry out of its sequence: one pass over `a` of four big-int operations per token
    aligns `a` with every sequence at once. Tokens absent from `a` never match, so they are dropped first.
    """
    segment = np.repeat(np.arange(len(lengths)), lengths)
    useful = np.isin(flat, np.asarray(a))
    tokens, segment = flat[useful], segment[useful]
    kept = np.bincount(segment, minlength=len(lengths))
    position = np.arange(len(tokens)) + segment  # every earlier sequence adds its guard bit
    guards = np.cumsum(kept) + np.arange(len(kept))
    width = len(tokens) + len(kept)
    masks = _token_masks(tokens, position, width)
    live = ((1 << width) - 1) ^ _bits(guards, width)
    v = live
    for token in a:
        match = masks.get(token)
        if match is not None:
            u = v & match
            v = ((v + u) | (v - u)) & live
    ones = np.concatenate(([0], np.cumsum(_unbits(v, width))))
    return kept - (ones[guards] - ones[guards - kept])


def _bits(positions: np.ndarray, width: int) -> int:
    """The int with exactly the bits at `positions` (distinct) set."""
    buffer = np.zeros((width + 7) // 8, dtype=np.uint8)
    np.bitwise_or.at(buffer, positions >> 3, np.left_shift(1, positions & 7).astype(np.uint8))
    return int.from_bytes(buffer.tobytes(), "little")


def _unbits(value: int, width: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(value.to_bytes((width + 7) // 8, "little"), dtype=np.uint8),
                         bitorder="little")[:width]


def _token_masks(tokens: np.ndarray, position: np.ndarray, width: int) -> dict[int, int]:
    """Per token id, the int with a bit at each position holding that token: one byte row per token, filled in
    one vectorised call per block of tokens (blocks keep the buffer under _MASK_BUFFER bytes)."""
    distinct, rank = np.unique(tokens, return_inverse=True)
    size = (width + 7) // 8
    per_block = max(1, _MASK_BUFFER // max(size, 1))
    masks = {}
    for first in range(0, len(distinct), per_block):
        block = (rank >= first) & (rank < first + per_block)
        here = position[block]
        buffer = np.zeros((min(per_block, len(distinct) - first), size), dtype=np.uint8)
        np.bitwise_or.at(buffer, (rank[block] - first, here >> 3), np.left_shift(1, here & 7).astype(np.uint8))
        raw = buffer.tobytes()
        for row, token in enumerate(distinct[first:first + per_block].tolist()):
            masks[token] = int.from_bytes(raw[row * size:(row + 1) * size], "little")
    return masks


class _Grow:
    """An int64 array that grows by appending, with room doubled as needed."""

    def __init__(self) -> None:
        self._data = np.zeros(1024, dtype=np.int64)
        self.size = 0

    def extend(self, values: Sequence[int] | np.ndarray) -> None:
        end = self.size + len(values)
        if end > len(self._data):
            self._data = np.resize(self._data, max(end, 2 * len(self._data)))
        self._data[self.size:end] = values
        self.size = end

    @property
    def view(self) -> np.ndarray:
        return self._data[:self.size]


class _Candidates:
    """The kept rows sharing a token with a new row, highest bound first (ties: earliest kept first).

    Exact scores are computed lazily, in doubling chunks along that order, only as far as a question needs.
    """

    def __init__(self, pool: RougeIndex, tokens: list[int], rows: np.ndarray, bounds: np.ndarray) -> None:
        order = np.lexsort((rows, -bounds))
        self._pool, self._tokens = pool, tokens
        self.rows, self.bounds = rows[order], bounds[order]
        self.scores = np.zeros(len(rows))
        self.done = 0

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k most similar rows (score descending, then earliest kept) and their exact scores."""
        while self.done < len(self.rows) and not self._settled(k):
            self._align(max(_FIRST_CHUNK, self.done))
        return self._best(k)

    def all_scores(self) -> np.ndarray:
        if self.done < len(self.rows):
            self._align(len(self.rows))
        return self.scores

    def _settled(self, k: int) -> bool:
        """No row left can enter the top k: the k-th best exact score beats every remaining bound."""
        if self.done < k:
            return False
        kth = np.partition(self.scores[:self.done], self.done - k)[self.done - k]
        return kth > self.bounds[self.done]

    def _align(self, count: int) -> None:
        chunk = slice(self.done, min(self.done + count, len(self.rows)))
        self.scores[chunk] = self._pool.scores(self._tokens, self.rows[chunk])
        self.done = chunk.stop

    def _best(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows, scores = self.rows[:self.done], self.scores[:self.done]
        pick = np.lexsort((rows, -scores))[:k]
        return rows[pick], scores[pick]


class RougeIndex:
    """Kept rows as token ids, one flat array, plus an inverted index token -> (row, count) for overlaps."""

    method = "rouge"

    def __init__(self, config: DedupConfig, *, mean_similarity: bool = True) -> None:
        """`mean_similarity=False` skips the mean ROUGE-L over all kept rows, the one figure that needs every
        row sharing a token aligned; decisions, scores and `most_similar` are the same either way."""
        self.threshold = threshold_of(config)
        self.mean_similarity = mean_similarity
        self._vocab: dict[str, int] = {}
        self._ids: list[str] = []
        self._flat, self._starts, self._lengths = _Grow(), _Grow(), _Grow()
        self._postings: dict[int, tuple[array, array]] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def seed(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        for row_id, text in zip(ids, texts, strict=True):
            self._keep(row_id, self._token_ids(text))

    def add(self, ids: Sequence[str], texts: Sequence[str]) -> Decisions:
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        keep = np.zeros(len(ids), dtype=bool)
        score = np.zeros(len(ids))
        duplicate_of: list[str | None] = [None] * len(ids)
        most_similar: list[list[dict] | None] = [None] * len(ids)
        mean: list[float | None] = [None] * len(ids)
        for i, (row_id, text) in enumerate(zip(ids, texts)):
            tokens = self._token_ids(text)
            candidates = self._candidates(tokens)
            rows, scores = candidates.top(1)
            if len(rows) and scores[0] > self.threshold:
                duplicate_of[i], score[i] = self._ids[rows[0]], scores[0]
                continue
            keep[i] = True
            if self.mean_similarity and len(self):
                mean[i] = float(candidates.all_scores().sum() / len(self))
            rows, scores = candidates.top(MOST_SIMILAR)
            score[i] = scores[0] if len(scores) else 0.0
            most_similar[i] = [{"id": self._ids[r], "score": float(s)} for r, s in zip(rows, scores)]
            self._keep(row_id, tokens)
        return Decisions(keep=keep, duplicate_of=duplicate_of, score=score,
                         extra={"most_similar": most_similar, "mean_similarity": mean})

    def scores(self, tokens: list[int], rows: np.ndarray) -> np.ndarray:
        """Exact ROUGE-L F of a new row's tokens against kept rows `rows`."""
        starts, lengths = self._starts.view[rows], self._lengths.view[rows]
        offsets = np.cumsum(lengths) - lengths
        flat = self._flat.view[np.repeat(starts - offsets, lengths) + np.arange(lengths.sum())]
        return f_measure(lcs_lengths(tokens, flat, lengths), len(tokens), lengths)

    def _token_ids(self, text: str) -> list[int]:
        vocab = self._vocab
        return [vocab.setdefault(t, len(vocab)) for t in tokenize(text)]

    def _candidates(self, tokens: list[int]) -> _Candidates:
        """Kept rows sharing a token, each with its bound: the F that an LCS as long as the multiset overlap gives."""
        distinct, counts = np.unique(np.asarray(tokens, dtype=np.int64), return_counts=True)
        rows, overlap = [], []
        for token, count in zip(distinct.tolist(), counts.tolist()):
            posting = self._postings.get(token)
            if posting is not None:
                rows.append(np.frombuffer(posting[0], dtype=np.int64))
                overlap.append(np.minimum(np.frombuffer(posting[1], dtype=np.int64), count))
        if not rows:
            return _Candidates(self, tokens, np.zeros(0, dtype=np.int64), np.zeros(0))
        overlap = np.bincount(np.concatenate(rows), weights=np.concatenate(overlap), minlength=len(self))
        rows.clear()  # views of the postings: a sampling profiler (Dask's) can keep this frame, and a live view
        # would make the next append to a posting raise BufferError
        shared = np.flatnonzero(overlap)
        return _Candidates(self, tokens, shared, f_measure(overlap[shared], len(tokens), self._lengths.view[shared]))

    def _keep(self, row_id: str, tokens: list[int]) -> None:
        row = len(self._ids)
        self._ids.append(row_id)
        self._starts.extend([self._flat.size])
        self._lengths.extend([len(tokens)])
        self._flat.extend(tokens)
        distinct, counts = np.unique(np.asarray(tokens, dtype=np.int64), return_counts=True)
        for token, count in zip(distinct.tolist(), counts.tolist()):
            rows, counts_ = self._postings.setdefault(token, (array("q"), array("q")))
            rows.append(row)
            counts_.append(count)
