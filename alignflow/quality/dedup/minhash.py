"""MinHash-LSH near-duplicate removal, vectorised: no Python loop per row, from the bytes to the clusters.

- Shingles: the words (or characters) of a text with case, ASCII punctuation and spacing folded, as
  `alignflow.quality.filters.normalise` folds them, hashed with numpy straight from the UTF-8 bytes; `size`
  consecutive token hashes make one shingle hash.
- Signatures: one hash per shingle instead of one per permutation (one-permutation hashing, Li, Owen and
  Zhang 2012): the hash picks one of K bins and a value, and each bin keeps its minimum. A text with too
  few shingles to fill every bin is thrown again, with a fresh hash per round, until it has (fast
  similarity sketching, Dahlgaard, Knudsen and Thorup 2017). Two texts agree on a bin with probability
  equal to their Jaccard similarity, as with K classic permutations, for about max(shingles, K ln K)
  hash evaluations per text instead of shingles x K.
- LSH: `bands` bands of K/bands bins each; rows falling in the same bucket of a band are candidates.
  Each row is paired with the first and the previous row of each of its buckets, so a bucket of
  thousands of copies costs two pairs per row, not a quadratic number.
- Verification: a candidate pair is a duplicate pair if the share of bins on which the two signatures
  agree (the estimated Jaccard similarity) is at least the threshold.
- Clusters: a row joins the earliest cluster among its verified earlier neighbours (union-find in row
  order); a row with none starts its own cluster and is kept. Clusters never merge afterwards, because
  their survivors are already kept: so each decision depends on earlier rows only, and adding rows in
  batches decides exactly as adding them all at once.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from alignflow.config import DedupConfig
from alignflow.quality.dedup import Decisions, threshold_of

_U = np.uint64
_UNSET = 2**64 - 1  # an empty bin while a signature is built
SLICE_BYTES = 1 << 25  # texts are lower-cased and laid out as bytes this much at a time
CHUNK_BYTES = 1 << 18  # and hashed in chunks of about this many bytes: numpy arrays stay in cache
SKETCH_SHINGLES = 1 << 17  # signatures are made for groups of rows with about this many shingles
PAIR_CHUNK = 1 << 11  # candidate pairs verified (or rows banded) per step: a few MB
BLOCK_ROWS = 1 << 20  # an `add` of more rows is decided in blocks of this many (the decisions are the same)
_ROW_BITS = 24  # band keys keep 40 bits; a sort key is (band key, row in block)
MAX_ROWS = 2**31 - 1  # rows are numbered in int32 where memory matters
_LENGTH_MULT = _U(0x9E3779B97F4A7C15)

# byte classes, as `normalise` sees them: ASCII punctuation is removed, ASCII whitespace separates tokens
_TOKEN, _SPACE, _PUNCT = 0, 1, 2
_CLASS = np.full(256, _TOKEN, np.uint8)
_CLASS[np.frombuffer(b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", np.uint8)] = _PUNCT
_CLASS[np.frombuffer(b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f", np.uint8)] = _SPACE


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: every output bit depends on every input bit."""
    x ^= x >> _U(30)
    x *= _U(0xBF58476D1CE4E5B9)
    x ^= x >> _U(27)
    x *= _U(0x94D049BB133111EB)
    x ^= x >> _U(31)
    return x


def _odd(n: int, family: int) -> np.ndarray:
    """`n` fixed odd 64-bit multipliers, a different sequence per family: the hashes are the same in every run."""
    return _mix(np.arange(n, dtype=np.uint64) + _U(family << 40)) | _U(1)


_SHINGLE_FAMILY, _BLOCK_FAMILY, _BAND_FAMILY, _BIN_FAMILY, _VALUE_FAMILY = 1, 2, 3, 4, 5
_BLOCK_MULT = _odd(64, _BLOCK_FAMILY)


def _utf8(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Lower-cased UTF-8 bytes of all texts and the offsets of each row in them (nulls are empty)."""
    arr = texts.fill_null("").str.to_lowercase().to_arrow().cast(pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    _, offsets, data = arr.buffers()
    offs = np.frombuffer(offsets, np.int64)[arr.offset:arr.offset + len(arr) + 1]
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return data, offs


def _drop(data: np.ndarray, offs: np.ndarray, drop: np.ndarray, *also: np.ndarray):
    """Remove the marked bytes (and the same places of `also`), moving row offsets back by the bytes removed."""
    removed = np.flatnonzero(drop)
    if not len(removed):
        return data, offs, *also
    keep = ~drop
    return data[keep], offs - np.searchsorted(removed, offs), *(a[keep] for a in also)


def _words(data: np.ndarray, offs: np.ndarray):
    """Bytes without punctuation, row offsets, a token-byte mask, and each word's first and last byte."""
    classes = np.take(_CLASS, data)
    data, offs, classes = _drop(data, offs, classes == _PUNCT, classes)
    token = classes == _TOKEN
    starts, ends = token.copy(), token.copy()
    starts[1:] &= ~token[:-1]
    ends[:-1] &= ~token[1:]
    nonempty = offs[1:] > offs[:-1]
    firsts, lasts = offs[:-1][nonempty], offs[1:][nonempty] - 1
    starts[firsts] = token[firsts]
    ends[lasts] = token[lasts]
    return data, offs, token, np.flatnonzero(starts), np.flatnonzero(ends)


def _word_tokens(data: np.ndarray, offs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    data, offs, _, starts, ends = _words(data, offs)
    return _range_hashes(data, starts, ends), np.searchsorted(starts, offs)


def _char_tokens(data: np.ndarray, offs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Characters of the words joined by single spaces: the text `normalise` returns."""
    data, offs, token, starts, ends = _words(data, offs)
    per_row = np.searchsorted(starts, offs)
    last_word = np.zeros(len(ends), bool)
    last_word[per_row[1:][per_row[1:] > per_row[:-1]] - 1] = True
    gaps = ends[~last_word] + 1  # the first separator byte after each word but a row's last
    token[gaps] = True
    data = data.copy()
    data[gaps] = ord(" ")
    data, offs = _drop(data, offs, ~token)
    starts = np.flatnonzero((data & 0xC0) != 0x80)  # a character starts at any byte but a UTF-8 continuation
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:] - 1
    ends[-1:] = len(data) - 1
    return _range_hashes(data, starts, ends), np.searchsorted(starts, offs)


_LOW_BYTES = np.array([(1 << (8 * i)) - 1 for i in range(9)], np.uint64)  # the low i bytes of a word


def _range_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each byte range [start, end], reading the bytes eight at a time."""
    padded = np.zeros(len(data) + 8, np.uint8)
    padded[:len(data)] = data
    words = np.ndarray((len(data) + 1,), "<u8", padded, 0, (1,))  # words[i]: the 8 bytes from i on
    length = ends - starts + 1
    h = length.astype(np.uint64) * _LENGTH_MULT
    h ^= np.take(words, starts) & np.take(_LOW_BYTES, np.minimum(length, 8))
    h *= _BLOCK_MULT[0]
    todo = np.flatnonzero(length > 8)  # the longer ranges, eight more bytes per pass
    block = 0
    while len(todo):
        block += 1
        at, left = starts[todo] + 8 * block, length[todo] - 8 * block
        chunk = np.take(words, at) & np.take(_LOW_BYTES, np.minimum(left, 8))
        h[todo] = (np.take(h, todo) ^ chunk) * _BLOCK_MULT[block % len(_BLOCK_MULT)]
        todo = todo[left > 8]
    return _mix(h)


def _kgrams(tokens: np.ndarray, per_row: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes (`size` consecutive tokens of a row; a shorter row is one shingle) and counts per row."""
    counts = np.diff(per_row)
    full = counts >= size
    shingles = np.where(full, counts - size + 1, np.minimum(counts, 1))
    mult = _odd(size, _SHINGLE_FAMILY)
    span = max(len(tokens) - size + 1, 0)
    grams = tokens[:span] * mult[0]
    for j in range(1, size):
        grams += tokens[j:j + span] * mult[j]
    valid = np.repeat(full, counts)[:span]
    for j in range(1, size):
        tail = per_row[1:][full] - j
        valid[tail[tail < span]] = False
    short = np.flatnonzero(~full & (counts > 0))
    singles = np.zeros(len(short), np.uint64)
    for j in range(size - 1):
        has = counts[short] > j
        singles[has] += tokens[per_row[short[has]] + j] * mult[j]
    out = np.empty(int(shingles.sum()), np.uint64)
    from_full = np.repeat(full, shingles)
    out[from_full] = grams[valid]
    out[~from_full] = singles
    return _mix(out), shingles


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0, 1, .., c-1 for each count c, concatenated."""
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(len(starts), dtype=np.int64) - starts


def shingle_hashes(texts: Sequence[str] | pl.Series, shingle: str = "word", size: int = 3):
    """Yield (first row, shingle hashes, shingles per row) for consecutive chunks of the texts."""
    series = texts if isinstance(texts, pl.Series) else pl.Series(values=list(texts), dtype=pl.String)
    tokenise = _word_tokens if shingle == "word" else _char_tokens
    for first, piece in _slices(series):
        data, offs = _utf8(piece)
        row = 0
        for stop in _chunk_bounds(offs, CHUNK_BYTES):
            chunk_offs = offs[row:stop + 1]
            chunk = data[chunk_offs[0]:chunk_offs[-1]]
            tokens, per_row = tokenise(chunk, chunk_offs - chunk_offs[0])
            hashes, counts = _kgrams(tokens, per_row, size)
            yield first + row, hashes, counts
            row = stop


def _slices(series: pl.Series):
    """(first row, rows) of slices of about SLICE_BYTES: texts are lower-cased a slice at a time, not all at once."""
    ends = np.zeros(len(series) + 1, np.int64)
    np.cumsum(series.str.len_bytes().fill_null(0).to_numpy(), out=ends[1:])
    row = 0
    for stop in _chunk_bounds(ends, SLICE_BYTES):
        yield row, series[row:stop]
        row = stop


def _chunk_bounds(offs: np.ndarray, size: int) -> list[int]:
    """Row indices ending runs of rows of about `size` bytes (a longer row is a run on its own)."""
    n = len(offs) - 1
    bounds, row = [], 0
    while row < n:
        stop = int(np.searchsorted(offs, offs[row] + size, side="right")) - 1
        row = min(max(stop, row + 1), n)
        bounds.append(row)
    return bounds


class _Sketcher:
    """Signatures of K bins from shingle hashes: rounds of one-permutation hashing, then one bin per round.

    Round r throws every shingle of a row into a bin with a value whose high bits are r, so a bin keeps
    the value of the first round that reached it. Rows leave once every bin is filled; after K rounds the
    bins still empty (only a text of a few shingles has any) get round K+1+j: bin j's own minimum.
    """

    BATCH = 1 << 17  # shingle throws per step: when few rows are left, several rounds are thrown at once

    def __init__(self, permutations: int):
        self.k = permutations
        # rounds after which filled rows leave: often at first (long texts fill in a round or two), then rarer
        self.checks = sorted({min(round(1.4 ** i), permutations) for i in range(64) if 1.4 ** (i - 1) < permutations})
        round_bits = (2 * permutations + 1).bit_length()
        self.value_bits = 32 - round_bits
        if self.value_bits < 12:
            raise ValueError(f"permutations={permutations} is too many: at most {2 ** 19 - 1}")
        self.bin_mult = _odd(2 * permutations + 2, _BIN_FAMILY)
        self.value_mult = _odd(2 * permutations + 2, _VALUE_FAMILY)

    def _values(self, hashes: np.ndarray, rounds: np.ndarray) -> np.ndarray:
        """Per round (rows) and shingle (columns): the value, with the round above it so earlier rounds win."""
        v = hashes * self.value_mult[rounds, None]
        v >>= _U(64 - self.value_bits)
        v |= rounds[:, None].astype(np.uint64) << _U(self.value_bits)
        return v

    def _throw(self, sig: np.ndarray, hashes: np.ndarray, row_base: np.ndarray, rounds: np.ndarray) -> None:
        """Several rounds at once: a bin keeps the earliest round's value, so this equals one round after another."""
        y = hashes * self.bin_mult[rounds, None]
        if self.k & (self.k - 1):  # the top bits scaled to [0, k)
            y >>= _U(32)
            y *= _U(self.k)
            y >>= _U(32)
        else:
            y >>= _U(65 - self.k.bit_length())
        index = y.view(np.int64)
        index += row_base
        np.minimum.at(sig, index.ravel(), self._values(hashes, rounds).ravel())

    def sketch(self, hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Signatures, shape (rows, k) uint32, of rows whose shingle hashes are `hashes`, `counts` per row in turn."""
        k, n = self.k, len(counts)
        sig = np.full(n * k, _UNSET, np.uint64)
        row_base = np.repeat(np.arange(0, n * k, k), counts)
        live = np.flatnonzero(counts)
        done = 0
        for check in self.checks:
            step = max(1, self.BATCH // max(len(hashes), 1))
            for rnd in range(done + 1, check + 1, step):
                self._throw(sig, hashes, row_base, np.arange(rnd, min(rnd + step, check + 1)))
            done = check
            rows = sig.reshape(n, k)
            # a row with an empty bin is still open (reading all rows in order beats gathering most of them)
            still = (rows.max(axis=1)[live] if 4 * len(live) > n else rows[live].max(axis=1)) == _UNSET
            if not still.all():
                keep = np.repeat(still, counts[live])
                live, hashes, row_base = live[still], hashes[keep], row_base[keep]
            if not len(live):
                return sig.astype(np.uint32).reshape(n, k)
        self._sweep(sig, hashes, row_base, live, counts)
        return sig.astype(np.uint32).reshape(n, k)

    def _sweep(self, sig, hashes, row_base, rows, counts) -> None:
        """Round k+1+j fills bin j with its minimum over all of a row's shingles."""
        k = self.k
        open_rows, bins = np.nonzero(sig.reshape(-1, k)[rows] == _UNSET)
        open_rows = rows[open_rows]
        first = np.searchsorted(row_base, open_rows * k)
        width = counts[open_rows]
        pick = np.repeat(first, width) + _ranks(width)
        bins = np.repeat(bins, width)
        rounds = k + 1 + bins
        values = (hashes[pick] * self.value_mult[rounds]) >> _U(64 - self.value_bits)
        np.minimum.at(sig, row_base[pick] + bins, values | (rounds.astype(np.uint64) << _U(self.value_bits)))


def signatures(texts: Sequence[str] | pl.Series, permutations: int = 128, shingle: str = "word",
               size: int = 3) -> np.ndarray:
    """MinHash signatures, one row of `permutations` uint32 per text; an empty text's are all 0xFFFFFFFF."""
    sketcher = _Sketcher(permutations)
    out = np.empty((len(texts), permutations), np.uint32)
    for row, hashes, counts in _groups(shingle_hashes(texts, shingle, size)):
        out[row:row + len(counts)] = sketcher.sketch(hashes, counts)
    return out


def _groups(chunks):
    """Consecutive chunks of shingle hashes joined into groups of at least SKETCH_SHINGLES."""
    pending: list[tuple[int, np.ndarray, np.ndarray]] = []
    for chunk in chunks:
        pending.append(chunk)
        if sum(len(h) for _, h, _ in pending) >= SKETCH_SHINGLES:
            yield pending[0][0], np.concatenate([h for _, h, _ in pending]), np.concatenate([c for _, _, c in pending])
            pending = []
    if pending:
        yield pending[0][0], np.concatenate([h for _, h, _ in pending]), np.concatenate([c for _, _, c in pending])


def band_keys(sig: np.ndarray, bands: int) -> np.ndarray:
    """A 40-bit bucket key per band and row, shape (bands, rows), from the band's K/bands consecutive bins."""
    n, k = sig.shape
    width = k // bands
    keys = np.empty((bands, n), np.uint64)
    mult = _odd(width, _BAND_FAMILY)
    for start in range(0, n, PAIR_CHUNK):
        bins = np.ascontiguousarray(sig[start:start + PAIR_CHUNK, :bands * width])
        block = bins.reshape(-1, bands, width).astype(np.uint64) if width % 2 else \
            bins.view(np.uint64).reshape(-1, bands, width // 2)  # two bins per 64-bit word
        h = block[..., 0] * mult[0]
        for j in range(1, block.shape[2]):
            h += block[..., j] * mult[j]
        h += np.arange(1, bands + 1, dtype=np.uint64) * _LENGTH_MULT  # equal bins in two bands: different buckets
        keys[:, start:start + PAIR_CHUNK] = (_mix(h) >> _U(_ROW_BITS) << _U(_ROW_BITS)).T
    return keys


def agreement(sig: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of row pairs: the share of bins on which their signatures agree."""
    out = np.empty(len(left), np.float64)
    for s in range(0, len(left), PAIR_CHUNK):
        a = np.take(sig, left[s:s + PAIR_CHUNK], axis=0)
        b = np.take(sig, right[s:s + PAIR_CHUNK], axis=0)
        out[s:s + PAIR_CHUNK] = np.equal(a, b).view(np.uint8).sum(axis=1, dtype=np.int32)
    return out / sig.shape[1]


class _Buckets:
    """Per band: every bucket key seen so far, sorted, with the first and the last row that fell in it."""

    def __init__(self, bands: int):
        self.keys = [np.zeros(0, np.uint64) for _ in range(bands)]
        self.first = [np.zeros(0, np.int32) for _ in range(bands)]
        self.last = [np.zeros(0, np.int32) for _ in range(bands)]

    def neighbours(self, keys: np.ndarray, base: int) -> np.ndarray:
        """Per band, for rows base.., the first and the previous earlier row of its bucket (-1: none).

        Shape (2 bands, rows). The buckets remember their first and last row for the next call.
        """
        bands, n = keys.shape
        out = np.full((2 * bands, n), -1, np.int32)
        if not n:
            return out
        local = np.arange(n, dtype=np.uint64)
        for band in range(bands):
            order = np.sort(keys[band] | local)  # by bucket, then by row
            row = (order & _U((1 << _ROW_BITS) - 1)).astype(np.int32)
            opens = np.ones(n, bool)
            opens[1:] = (order[1:] ^ order[:-1]) >= _U(1 << _ROW_BITS)
            heads = np.flatnonzero(opens)
            head_keys = order[heads] >> _U(_ROW_BITS) << _U(_ROW_BITS)
            prior_first, prior_last = self._lookup(band, head_keys)
            first = np.repeat(np.where(prior_first >= 0, prior_first, row[heads] + base), np.diff(heads, append=n))
            first[heads] = prior_first
            prev = np.empty(n, np.int32)
            prev[1:] = row[:-1] + base
            prev[heads] = prior_last
            out[2 * band, row] = first
            out[2 * band + 1, row] = prev
            tails = np.append(heads[1:], n) - 1
            self._record(band, head_keys, row[heads] + base, row[tails] + base)
        return out

    def _find(self, band: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each key is or would go in the band's sorted keys, and whether it is there."""
        known = self.keys[band]
        pos = np.searchsorted(known, keys)
        found = np.zeros(len(keys), bool)
        inside = pos < len(known)
        found[inside] = known[pos[inside]] == keys[inside]
        return pos, found

    def _lookup(self, band: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        first, last = np.full(len(keys), -1, np.int32), np.full(len(keys), -1, np.int32)
        if len(self.keys[band]):
            pos, found = self._find(band, keys)
            first[found] = self.first[band][pos[found]]
            last[found] = self.last[band][pos[found]]
        return first, last

    def _record(self, band: int, keys: np.ndarray, first: np.ndarray, last: np.ndarray) -> None:
        if not len(self.keys[band]):
            self.keys[band], self.first[band], self.last[band] = keys, first, last
            return
        pos, found = self._find(band, keys)
        self.last[band][pos[found]] = last[found]
        new = ~found
        self.keys[band] = np.insert(self.keys[band], pos[new], keys[new])
        self.first[band] = np.insert(self.first[band], pos[new], first[new])
        self.last[band] = np.insert(self.last[band], pos[new], last[new])


def _unique_pairs(neighbours: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, earlier row) pairs, each once, from the per-band neighbours."""
    nb = np.ascontiguousarray(neighbours.T)
    nb.sort(axis=1)
    fresh = nb >= 0
    fresh[:, 1:] &= nb[:, 1:] != nb[:, :-1]
    rows, cols = np.nonzero(fresh)
    return rows.astype(np.int64) + base, nb[rows, cols].astype(np.int64)


class _Grow:
    """An array that grows along its first axis with amortised doubling."""

    def __init__(self, shape_tail: tuple[int, ...], dtype):
        self.data = np.empty((1024, *shape_tail), dtype)
        self.size = 0

    def extend(self, rows: np.ndarray) -> None:
        need = self.size + len(rows)
        if not self.size and need > len(self.data):  # the first rows are taken as they are, not copied
            self.data, self.size = rows, need
            return
        if need > len(self.data):
            bigger = np.empty((max(need, 2 * len(self.data)), *self.data.shape[1:]), self.data.dtype)
            bigger[:self.size] = self.data[:self.size]
            self.data = bigger
        self.data[self.size:need] = rows
        self.size = need

    @property
    def view(self) -> np.ndarray:
        return self.data[:self.size]


def _roots(n: int, base: int, left: np.ndarray, right: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Cluster root of rows base..base+n: the earliest row reachable through verified edges to earlier rows.

    `known` holds the roots of rows before `base`. A row with no edge is its own root. The fixed point is
    found by min-propagation along the edges with pointer jumping, a few vectorised passes.
    """
    roots = np.concatenate([known, np.arange(base, base + n, dtype=np.int64)])
    while True:
        new = roots.copy()
        np.minimum.at(new, left, roots[right])
        new = new[new]
        if np.array_equal(new, roots):
            return roots[base:]
        roots = new


class MinHashIndex:
    method = "minhash"

    def __init__(self, config: DedupConfig):
        if config.bands > config.permutations:
            raise ValueError(f"bands={config.bands} exceeds permutations={config.permutations}")
        self.threshold = threshold_of(config)
        self.shingle, self.size = config.shingle, config.shingle_size
        self.bands = config.bands
        self.sketcher = _Sketcher(config.permutations)
        self.buckets = _Buckets(config.bands)
        self.sigs = _Grow((config.permutations,), np.uint32)
        self.roots = _Grow((), np.int64)
        self.ids: list[str] = []

    def seed(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        for start in range(0, len(ids), BLOCK_ROWS):
            block_ids, base = ids[start:start + BLOCK_ROWS], self._room(min(BLOCK_ROWS, len(ids) - start))
            sig = self._signatures(texts[start:start + BLOCK_ROWS])
            self.buckets.neighbours(band_keys(sig, self.bands), base)
            self.sigs.extend(sig)
            self._remember(block_ids, np.arange(base, base + len(sig)))

    def add(self, ids: Sequence[str], texts: Sequence[str]) -> Decisions:
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        parts = [self._add_block(ids[s:s + BLOCK_ROWS], texts[s:s + BLOCK_ROWS])
                 for s in range(0, len(ids), BLOCK_ROWS)] or [self._add_block([], [])]
        return Decisions(keep=np.concatenate([p.keep for p in parts]),
                         duplicate_of=[d for p in parts for d in p.duplicate_of],
                         score=np.concatenate([p.score for p in parts]))

    def _signatures(self, texts) -> np.ndarray:
        out = np.empty((len(texts), self.sketcher.k), np.uint32)
        for row, hashes, counts in _groups(shingle_hashes(texts, self.shingle, self.size)):
            out[row:row + len(counts)] = self.sketcher.sketch(hashes, counts)
        return out

    def _room(self, n: int) -> int:
        """The number of the next row, once sure `n` more fit."""
        if self.roots.size + n > MAX_ROWS:
            raise ValueError(f"a MinHash index holds at most {MAX_ROWS:,} rows")
        return self.roots.size

    def _add_block(self, ids: Sequence[str], texts) -> Decisions:
        n, base = len(ids), self._room(len(ids))
        sig = self._signatures(texts)
        left, right = _unique_pairs(self.buckets.neighbours(band_keys(sig, self.bands), base), base)
        self.sigs.extend(sig)
        similarity = agreement(self.sigs.view, left, right)
        verified = similarity >= self.threshold
        roots = _roots(n, base, left[verified], right[verified], self.roots.view)
        self._remember(ids, roots)
        rows = np.arange(base, base + n)
        keep = roots == rows
        score = np.zeros(n)
        np.maximum.at(score, left[~verified] - base, similarity[~verified])
        dropped = np.flatnonzero(~keep)
        score[dropped] = agreement(self.sigs.view, rows[dropped], roots[dropped])
        duplicate_of = [None if k else self.ids[r] for k, r in zip(keep.tolist(), roots.tolist())]
        return Decisions(keep=keep, duplicate_of=duplicate_of, score=score)

    def _remember(self, ids: Sequence[str], roots: np.ndarray) -> None:
        self.roots.extend(roots)
        self.ids.extend(ids)
