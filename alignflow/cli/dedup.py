"""`alignflow dedup`: remove exact or near duplicates from a Parquet or JSONL file.

    alignflow dedup IN --column COL --method exact|minhash|rouge|semantic [--threshold T] [--id-column ID]
                    --out OUT [--report REPORT] [--shingle word|char] [--shingle-size N] [--permutations N] [--bands N]

OUT keeps the rows that are kept, with every column, in their order; REPORT has one row per dropped row (its id,
the id of the kept row it duplicates, the similarity, the method). Rows are decided in order, each against
the rows kept before it, so the first of a group of duplicates is the one kept. A row whose column is null has no
text to compare: it is kept apart, compared with nothing, and the summary line counts such rows.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import ValidationError

from alignflow.cli import fail
from alignflow.config import DedupConfig, abbreviated
from alignflow.quality.dedup import make_index

FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
BATCH_ROWS = {"exact": 100_000, "minhash": 1 << 18, "rouge": 2_000, "semantic": 4_096}  # rows per progress step
PROGRESS_EVERY_S = 2.0


class InputError(Exception):
    """Bad input named in one line."""


def register(sub) -> None:
    p = sub.add_parser("dedup", help="remove exact or near-duplicate rows from a Parquet or JSONL file",
                       description="Remove exact or near-duplicate rows of a Parquet or JSONL file: each row is "
                                   "decided against the rows kept before it, so the first of a group is kept.")
    p.add_argument("input", metavar="IN", help="a .parquet, .jsonl or .json (JSON lines) file")
    p.add_argument("--column", required=True, help="the text column compared")
    p.add_argument("--method", required=True, choices=["exact", "minhash", "rouge", "semantic"])
    p.add_argument("--threshold", type=float, help="the similarity that makes a duplicate: minhash at least T "
                                                   "(default 0.8), rouge and semantic above T (0.7, 0.9)")
    p.add_argument("--id-column", help="the column naming rows in the report (default: the row number)")
    p.add_argument("--out", required=True, help="where the kept rows go (.parquet, .jsonl or .json)")
    p.add_argument("--report", help="where the dropped rows are listed (.parquet, .jsonl or .json)")
    defaults = DedupConfig()
    p.add_argument("--shingle", choices=["word", "char"], help=f"minhash: shingles of words or characters "
                                                                  f"(default {defaults.shingle})")
    p.add_argument("--shingle-size", type=int, help=f"minhash: tokens per shingle (default {defaults.shingle_size})")
    p.add_argument("--permutations", type=int, help=f"minhash: signature length (default {defaults.permutations})")
    p.add_argument("--bands", type=int, help=f"minhash: LSH bands (default {defaults.bands})")
    p.set_defaults(func=cmd_dedup)


def cmd_dedup(args) -> int:
    try:
        if args.report is not None and _same_file(Path(args.out), Path(args.report)):
            raise InputError(f"--out and --report are the same file: {args.out}")
        for path in (args.out, args.report):
            if path is not None:
                _writable(Path(path))
        config = _config(args)
        frame = _read(Path(args.input))
        texts = _text_column(frame, args.column, args.input)
        ids = _id_column(frame, args.id_column, args.input)
        index = make_index(config)
    except (InputError, ImportError, ValueError) as exc:  # ImportError: a method's optional dependency is missing
        return fail(str(exc))
    started = time.perf_counter()
    keep, duplicate_of, score = _decide(index, texts, config.method, started)
    kept = frame.filter(pl.Series(keep))
    try:
        _write_atomic(kept, Path(args.out))
        if args.report:
            _write_atomic(_report(ids, keep, duplicate_of, score, config.method), Path(args.report))
    except OSError as exc:  # the disk filled, or the directory went, after the check
        return fail(f"cannot write {exc.filename or args.out}: {exc.strerror or exc}", 1)
    dropped = len(frame) - len(kept)
    nulls = texts.null_count()
    apart = f", {nulls:,} with no {args.column} kept apart (not compared)" if nulls else ""
    print(f"{args.input}: {len(frame):,} rows in, {len(kept):,} kept, {dropped:,} dropped ({config.method}){apart} "
          f"in {time.perf_counter() - started:.1f}s")
    return 0


MINHASH_OPTIONS = ("shingle", "shingle_size", "permutations", "bands")


def _config(args) -> DedupConfig:
    given = {name: getattr(args, name) for name in MINHASH_OPTIONS if getattr(args, name) is not None}
    if given and args.method != "minhash":
        raise InputError(f"--{next(iter(given)).replace('_', '-')} applies to --method minhash only")
    if args.threshold is not None and args.method == "exact":
        raise InputError("--threshold does not apply to --method exact (texts are equal or not)")
    try:
        return DedupConfig(method=args.method, threshold=args.threshold, **given)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a check of options together: `bands (200) must divide permutations (128)`
            options = re.compile(rf"\b({'|'.join(MINHASH_OPTIONS)})\b")
            message = first["msg"].removeprefix("Value error, ")
            raise InputError(options.sub(lambda m: f"--{m[1].replace('_', '-')}", message)) from None
        raise InputError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None


def _writable(path: Path) -> None:
    """A file can be written at `path`: a probe made and removed beside it, as the output will be."""
    _format(str(path))
    shown = abbreviated(str(path))
    try:
        if path.is_dir():
            raise InputError(f"{shown}: is a directory")
        if not path.parent.is_dir():
            raise InputError(f"{shown}: no directory {abbreviated(str(path.parent))}")
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:  # no permission, a read-only file system, a name too long
        raise InputError(f"cannot write {shown}: {exc.strerror}") from None


def _same_file(a: Path, b: Path) -> bool:
    return a.absolute() == b.absolute()


def _format(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"{path}: unknown format {suffix or '(no extension)'!r}: use .parquet, .jsonl or .json")
    return FORMATS[suffix]


def _read(path: Path) -> pl.DataFrame:
    kind = _format(str(path))
    try:
        if not path.is_file():
            raise InputError(f"{abbreviated(str(path))}: no such file")
        if path.stat().st_size == 0:
            raise InputError(f"{path}: empty file")
    except OSError as exc:  # a name too long
        raise InputError(f"cannot read {abbreviated(str(path))}: {exc.strerror}") from None
    try:
        frame = pl.read_parquet(path) if kind == "parquet" else _read_json_lines(path)
    except Exception as exc:  # polars and pyarrow raise many kinds for a corrupt file; all mean "cannot read it"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot read as {kind}: {detail}") from None
    if not len(frame):
        raise InputError(f"{path}: no rows")
    return frame


def _read_json_lines(path: Path) -> pl.DataFrame:
    try:
        return pl.read_ndjson(path)
    except Exception:
        if path.suffix.lower() != ".json":
            raise
        return pl.read_json(path)  # a .json file holding one array of objects


def _text_column(frame: pl.DataFrame, column: str, source: str) -> pl.Series:
    if column not in frame.columns:
        raise InputError(f"{source}: no column {column!r} (columns: {', '.join(frame.columns)})")
    texts = frame[column]
    if texts.dtype not in (pl.String, pl.Null):
        raise InputError(f"{source}: column {column!r} holds {texts.dtype}, not text")
    return texts.cast(pl.String)


def _id_column(frame: pl.DataFrame, column: str | None, source: str) -> pl.Series:
    if column is None:
        return pl.Series("id", range(len(frame)), dtype=pl.Int64)
    if column not in frame.columns:
        raise InputError(f"{source}: no id column {column!r} (columns: {', '.join(frame.columns)})")
    return frame[column]


def _decide(index, texts: pl.Series, method: str, started: float):
    """Feed the index in batches (each batch is decided against everything kept before, so the result is
    that of one call) and show progress on stderr when the work is long. Null texts are kept, not compared."""
    rows = texts.is_not_null().arg_true().to_numpy()  # the rows with a text, by their number in the file
    keep, duplicate_of, score = np.ones(len(texts), bool), np.full(len(texts), -1), np.zeros(len(texts))
    step = BATCH_ROWS[method]
    shown = started
    for start in range(0, len(rows), step):
        batch = rows[start:start + step]
        decisions = index.add([str(i) for i in batch], texts.gather(batch))
        keep[batch] = decisions.keep
        duplicate_of[batch] = [-1 if d is None else int(d) for d in decisions.duplicate_of]
        score[batch] = decisions.score
        now = time.perf_counter()
        if now - shown >= PROGRESS_EVERY_S and start + step < len(rows):
            done = int(batch[-1]) + 1  # rows of the file decided (or kept apart) so far
            print(f"alignflow dedup: {done:,} of {len(texts):,} rows, {int(keep[:done].sum()):,} kept, "
                  f"{now - started:.0f}s", file=sys.stderr, flush=True)
            shown = now
    return keep, duplicate_of, score


def _report(ids: pl.Series, keep, duplicate_of, score, method: str) -> pl.DataFrame:
    dropped = (~keep).nonzero()[0]
    return pl.DataFrame({"id": ids.gather(dropped), "duplicate_of": ids.gather(duplicate_of[dropped]),
                         "score": score[dropped].astype(float), "method": [method] * len(dropped)},
                        schema_overrides={"method": pl.String})


def _write_atomic(frame: pl.DataFrame, path: Path) -> None:
    """Write to a temporary file next to `path`, then rename: `path` is either complete or untouched."""
    kind = _format(str(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if kind == "parquet":
            frame.write_parquet(tmp)
        else:
            frame.write_ndjson(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
