"""Benchmark decontamination by word n-grams, the GPT-3 / NeMo Curator method: texts are lowercased, punctuation
becomes space, and a row sharing a 13-gram with a benchmark item is contaminated by that item. An item shorter than
13 words counts as one n-gram of its own length, down to `min_ngram` words (shorter ones are too common to mean a
leak). `min_overlap` asks for more than one shared n-gram: the share of the item's n-grams the row must hold.

The index maps each word to a number and each n-gram to the items holding it; it is built once per process for
the same benchmark files (keyed by their paths, sizes and mtimes), and checking a text costs one set lookup per
window of known words, so a batch is checked in time linear in its words.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import polars as pl

from alignflow.config import BenchmarkFile, DecontaminateConfig

TEXT_COLUMNS = ("question", "prompt", "problem", "text", "instruction", "input")  # tried in order when none is named
_WORDS = re.compile(r"[^\W_]+")  # runs of letters and digits, any script


class BenchmarkError(Exception):
    """A benchmark file that cannot be read, or has no such text column: one line naming the file."""


def words(text: str) -> list[str]:
    """Lowercased words, punctuation dropped: "Janet’s ducks lay 16 eggs." → janet s ducks lay 16 eggs."""
    return _WORDS.findall(text.lower())


@dataclass(frozen=True)
class Hit:
    """The benchmark item a text shares n-grams with, and the first one shared (shown in the row's reason)."""

    benchmark: str
    item: int  # the item's line (JSONL) or row (Parquet), from 1
    shared: int  # n-grams of the item found in the text
    ngram: str

    def reason(self) -> str:
        return f"contaminated: {self.benchmark} item {self.item} ('{self.ngram}')"


@dataclass(frozen=True)
class Benchmark:
    name: str
    texts: list[str]


def read_benchmark(source: BenchmarkFile, column: str | None) -> Benchmark:
    """One benchmark's texts from JSONL (optionally .gz) or Parquet, by the named column or the first of
    `TEXT_COLUMNS` it has."""
    path = Path(source.path).expanduser()
    try:
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
        else:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            frame = pl.DataFrame([json.loads(line) for line in raw.decode().splitlines() if line.strip()],
                                 infer_schema_length=None)
    except (OSError, ValueError, EOFError, pl.exceptions.PolarsError) as exc:
        raise BenchmarkError(f"gate.decontaminate: cannot read benchmark {path}: {_first_line(exc)}") from None
    named = source.column or column
    strings = [c for c, t in frame.schema.items() if t == pl.String]
    chosen = named or next((c for c in TEXT_COLUMNS if c in strings), strings[0] if len(strings) == 1 else None)
    if chosen not in strings:
        raise BenchmarkError(f"gate.decontaminate: benchmark {path} has no text column "
                             f"{repr(named) if named else 'to choose'}; its text columns: {', '.join(strings) or 'none'}"
                             f" (name one with `column`)")
    return Benchmark(benchmark_name(source), frame[chosen].fill_null("").to_list())


class Index:
    """The n-grams of every benchmark item, for checking texts against them."""

    def __init__(self, benchmarks: list[Benchmark], ngram: int = 13, min_ngram: int = 8, min_overlap: float = 0.0):
        self.ngram, self.min_ngram, self.min_overlap = ngram, min_ngram, min_overlap
        self.vocabulary: dict[str, int] = {}
        self.items: list[tuple[str, int, int]] = []  # (benchmark, item, how many distinct n-grams it has)
        self.grams: dict[int, dict[tuple[int, ...], list[int]]] = {}  # n-gram length → n-gram → items holding it
        for benchmark in benchmarks:
            for number, text in enumerate(benchmark.texts, 1):
                self._add(benchmark.name, number, words(text))
        self.lengths = sorted(self.grams, reverse=True)
        self._reverse: list[str] = []

    def _add(self, benchmark: str, number: int, item_words: list[str]) -> None:
        if len(item_words) < self.min_ngram:
            return
        n = min(self.ngram, len(item_words))
        ids = tuple(self.vocabulary.setdefault(w, len(self.vocabulary)) for w in item_words)
        grams = {ids[i:i + n] for i in range(len(ids) - n + 1)}
        index = len(self.items)
        self.items.append((benchmark, number, len(grams)))
        table = self.grams.setdefault(n, {})
        for gram in grams:
            table.setdefault(gram, []).append(index)

    def __len__(self) -> int:
        return len(self.items)

    def find(self, text: str) -> Hit | None:
        """The item the text is contaminated by (the one it shares most with), or None."""
        ids = [self.vocabulary.get(w, -1) for w in words(text)]
        shared: dict[int, int] = {}
        first: dict[int, tuple[int, ...]] = {}
        for n in self.lengths:
            table = self.grams[n]
            for start, end in _known_runs(ids, n):
                for i in range(start, end - n + 1):
                    gram = tuple(ids[i:i + n])
                    for item in table.get(gram, ()):
                        shared[item] = shared.get(item, 0) + 1
                        first.setdefault(item, gram)
        hits = [item for item, count in shared.items() if count > self.min_overlap * self.items[item][2]]
        if not hits:
            return None
        item = max(hits, key=lambda i: (shared[i] / self.items[i][2], -i))
        benchmark, number, _ = self.items[item]
        return Hit(benchmark, number, shared[item], " ".join(self._words()[i] for i in first[item]))

    def _words(self) -> list[str]:
        """Word by number, made on the first hit: most batches have none."""
        if len(self._reverse) != len(self.vocabulary):
            self._reverse = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
        return self._reverse


def _known_runs(ids: list[int], n: int) -> list[tuple[int, int]]:
    """The [start, end) runs of words the benchmarks know, at least n long: only they can hold a shared n-gram."""
    runs, start = [], 0
    for i, word in enumerate([*ids, -1]):
        if word < 0:
            if i - start >= n:
                runs.append((start, i))
            start = i + 1
    return runs


def index_for(config: DecontaminateConfig) -> Index | None:
    """The index of the configured benchmarks (None when none is), built once per process for the same files."""
    files = _files(config)
    return _index(files, config.column, config.ngram, config.min_ngram, config.min_overlap) if files else None


def fingerprint(config: DecontaminateConfig) -> dict | None:
    """What the check is, for the stage's definition: a changed benchmark file or setting changes what is kept."""
    files = _files(config)
    if not files:
        return None
    return {"benchmarks": [_digest(f) for f in files], "column": config.column, "ngram": config.ngram,
            "min_ngram": config.min_ngram, "min_overlap": config.min_overlap}


def _files(config: DecontaminateConfig) -> tuple[tuple, ...]:
    """Each benchmark as (path, column, name, size, mtime): the key its index and digest are cached by."""
    files = []
    for source in config.benchmarks:
        path = Path(source.path).expanduser()
        try:
            stat = path.stat()
        except OSError as exc:
            raise BenchmarkError(f"gate.decontaminate: cannot read benchmark {path}: {exc.strerror}") from None
        files.append((str(path), source.column, source.name, stat.st_size, stat.st_mtime_ns))
    return tuple(files)


@lru_cache(maxsize=16)
def _digest(file: tuple) -> str:
    return hashlib.sha256(Path(file[0]).read_bytes()).hexdigest()[:16]


@lru_cache(maxsize=4)
def _index(files: tuple, column: str | None, ngram: int, min_ngram: int, min_overlap: float) -> Index:
    return Index([read_benchmark(BenchmarkFile(path=path, column=named, name=name), column)
                  for path, named, name, *_ in files], ngram, min_ngram, min_overlap)


def benchmark_name(source: BenchmarkFile) -> str:
    """The name reasons give: the configured one, else the file's name without its suffixes."""
    name = source.name or Path(source.path).name
    for suffix in (".gz", ".jsonl", ".json", ".parquet"):
        name = name.removesuffix(suffix)
    return name


def _first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
