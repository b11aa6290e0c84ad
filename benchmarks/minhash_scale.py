"""MinHash-LSH dedup at scale: alignflow's vectorised index against datasketch, with recall and precision.

    .venv/bin/python benchmarks/minhash_scale.py [--rows 1000000] [--datasketch-rows 55185] [--groups 1500]

Data: the 55,185 T0 prompts of ../shared/data (real near-duplicates: one passage under several templates)
and --rows rows derived from them (seeded): each copies a random prompt with word drops, adjacent swaps,
case and punctuation changes at one of five strengths, so the rows sharing a source are known.

Each dedup runs in a fresh process and reports wall and CPU time (the machine may be shared: CPU time is
the steadier figure) and "peak MB": the growth of its peak resident set (VmHWM, reset just before the
dedup through /proc/self/clear_refs) over its resident set before the dedup.

Quality is measured against exact Jaccard similarity of the same shingle sets computed independently
(`alignflow.quality.filters.normalise`, Python sets, a sparse matrix product): over all pairs of T0 prompts, and on
the derived set over all pairs among the rows of --groups random sources. Recall: the share of pairs at
Jaccard >= threshold whose later row was removed. Precision: the share of removed rows with an earlier row
at Jaccard >= threshold; and the share of (removed row, row it was matched to) pairs at Jaccard >= threshold.

datasketch (MinHash + MinHashLSH, same shingles, permutations and threshold, each row decided against the
rows kept so far) runs on the first --datasketch-rows T0 prompts, and alignflow on the same rows for the
ratio; alignflow alone runs the derived set.
"""
from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sparse

from alignflow.config import DedupConfig
from alignflow.quality.dedup import threshold_of
from alignflow.quality.filters import normalise

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "t0_train_prompts.jsonl.gz"
STRENGTHS = (0.0, 0.02, 0.05, 0.1, 0.2)  # per row: the share of words dropped, and as many swapped, recased, punctuated


def load_prompts() -> list[str]:
    with gzip.open(DATA, "rt") as f:
        return [json.loads(line)["prompt"] for line in f]


def derive(prompts: list[str], rows: int, seed: int, chunk: int = 50_000) -> pl.DataFrame:
    """`rows` perturbed copies of random prompts: columns text, source (the prompt's index), strength."""
    rng = np.random.default_rng(seed)
    words = pl.Series("w", prompts).str.split(" ")
    parts = []
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        source = rng.integers(0, len(prompts), n)
        strength = np.asarray(STRENGTHS)[rng.integers(0, len(STRENGTHS), n)]
        frame = pl.DataFrame({"row": np.arange(start, start + n), "source": source, "strength": strength})
        exploded = frame.with_columns(w=words.gather(source)).explode("w").with_row_index("at")
        p = exploded["strength"].to_numpy()
        u = rng.random((4, len(exploded)))
        w = exploded["w"]
        w = pl.select(pl.when(pl.Series(u[1] < p)).then(w.str.to_uppercase()).otherwise(w)).to_series()
        w = pl.select(pl.when(pl.Series(u[2] < p)).then(w + ",").otherwise(w)).to_series()
        order = exploded["at"].to_numpy() + np.where(u[3] < p, 1.5, 0.0)  # a swapped word moves past the next
        perturbed = exploded.with_columns(w=w, order=order).filter(pl.Series(u[0] >= p))
        parts.append(perturbed.group_by("row", maintain_order=True)
                     .agg(pl.col("w").sort_by("order").str.join(" ").alias("text"),
                          pl.col("source").first(), pl.col("strength").first()))
    out = pl.concat(parts)
    missing = pl.DataFrame({"row": np.arange(rows)}).join(out, on="row", how="anti")  # rows whose words all dropped
    return (pl.concat([out, missing.with_columns(text=pl.lit(""), source=pl.lit(-1), strength=pl.lit(1.0))],
                      how="diagonal_relaxed").sort("row").drop("row"))


def reference_shingles(text: str, size: int = 3) -> set[tuple[str, ...]]:
    words = normalise(text).split()
    if len(words) < size:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + size]) for i in range(len(words) - size + 1)}


def similar_pairs(texts: list[str], threshold: float, block: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) of `texts` with exact Jaccard >= threshold, and their Jaccard: a sparse A·Aᵀ in blocks."""
    vocab: dict[tuple[str, ...], int] = {}
    indptr, indices = [0], []
    for text in texts:
        indices.extend(vocab.setdefault(s, len(vocab)) for s in reference_shingles(text))
        indptr.append(len(indices))
    a = sparse.csr_matrix((np.ones(len(indices), np.float32), np.asarray(indices, np.int64), np.asarray(indptr)),
                          shape=(len(texts), max(len(vocab), 1)))
    sizes = np.diff(a.indptr)
    at = a.T.tocsr()
    out = []
    for start in range(0, len(texts), block):
        c = (a[start:start + block] @ at).tocoo()
        i, j, inter = c.row + start, c.col, c.data
        union = sizes[i] + sizes[j] - inter
        keep = (i < j) & (inter >= threshold * union)
        out.append((i[keep], j[keep], inter[keep] / union[keep]))
    return tuple(np.concatenate(x) for x in zip(*out)) if out else (np.zeros(0, int),) * 3


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


class PeakMemory:
    """Growth of the peak resident set over a block: VmHWM after it minus VmRSS before it, with VmHWM reset
    at the start (writing 5 to /proc/self/clear_refs), so neither loading the input nor the parent process counts."""

    def __enter__(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.before = _status_mb("VmRSS")
        return self

    def __exit__(self, *exc):
        self.mb = _status_mb("VmHWM") - self.before


class Clock:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def _ours(path: str, config: dict, queue) -> None:
    """In a fresh process: dedup the parquet's `text` column; report time, memory and the matched rows."""
    from alignflow.quality.dedup.minhash import MinHashIndex

    texts = pl.read_parquet(path)["text"]
    ids = [str(i) for i in range(len(texts))]
    index = MinHashIndex(DedupConfig(**config))
    with PeakMemory() as memory, Clock() as clock:
        decisions = index.add(ids, texts)
    matched = np.array([-1 if d is None else int(d) for d in decisions.duplicate_of])
    queue.put({"seconds": clock.wall, "cpu": clock.cpu, "peak_mb": memory.mb, "keep": decisions.keep,
               "matched": matched})


def _datasketch(path: str, config: dict, queue) -> None:
    """In a fresh process: the same dedup with datasketch, deciding each row against the rows kept so far."""
    from datasketch import MinHash, MinHashLSH

    texts = pl.read_parquet(path)["text"].to_list()
    threshold = threshold_of(DedupConfig(**config))
    keep = np.zeros(len(texts), bool)
    matched = np.full(len(texts), -1)
    shingling = 0.0
    with PeakMemory() as memory, Clock() as clock:
        lsh = MinHashLSH(threshold=threshold, num_perm=config["permutations"])
        kept: dict[int, MinHash] = {}
        for i, text in enumerate(texts):
            t = time.process_time()
            shingles = [" ".join(s).encode() for s in reference_shingles(text)]
            shingling += time.process_time() - t
            m = MinHash(num_perm=config["permutations"])
            m.update_batch(shingles)
            match = next((c for c in sorted(lsh.query(m)) if m.jaccard(kept[c]) >= threshold), None)
            if match is None:
                lsh.insert(i, m)
                kept[i] = m
                keep[i] = True
            else:
                matched[i] = match
    queue.put({"seconds": clock.wall, "cpu": clock.cpu, "peak_mb": memory.mb, "keep": keep, "matched": matched,
               "shingling": shingling})


def in_fresh_process(target, texts: pl.Series, config: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "texts.parquet")
        pl.DataFrame({"text": texts}).write_parquet(path)
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        proc = ctx.Process(target=target, args=(path, config, queue))
        proc.start()
        result = queue.get()
        proc.join()
        return result


def quality(texts: list[str], rows: np.ndarray, keep: np.ndarray, matched: np.ndarray, threshold: float,
            rng: np.random.Generator, sample_size: int = 5000) -> dict:
    """Against exact Jaccard among `rows` (in dataset order): recall over all true pairs; precision over the
    removed rows (has a true duplicate before it) and over a sample of them (alike the row it was matched to)."""
    i, j, jac = similar_pairs([texts[r] for r in rows], threshold)
    found = ~keep[rows[j]]  # j > i: the pair's later row, which should have been removed
    has_earlier = np.zeros(len(rows), bool)
    has_earlier[j] = True
    removed = np.flatnonzero(~keep[rows])
    sample = rows[rng.choice(removed, min(sample_size, len(removed)), replace=False)]
    to_match = np.array([_jaccard(texts[r], texts[matched[r]]) for r in sample])
    bins = [(lo, hi) for lo, hi in ((threshold, 0.85), (0.85, 0.9), (0.9, 0.95), (0.95, 1.01)) if lo < hi]
    in_bin = {lo: (jac >= lo) & (jac < hi) for lo, hi in bins}
    return {"pairs": len(j), "recall": found.mean(),
            "recall_by_j": {lo: found[m].mean() for lo, m in in_bin.items() if m.any()},
            "precision": has_earlier[removed].mean(), "precision_matched": (to_match >= threshold).mean(),
            "matched_below_0.5": (to_match < 0.5).mean()}


def _jaccard(a: str, b: str) -> float:
    x, y = reference_shingles(a), reference_shingles(b)
    return len(x & y) / len(x | y) if x | y else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the derived set")
    parser.add_argument("--datasketch-rows", type=int, default=55_185, help="T0 prompts timed with datasketch")
    parser.add_argument("--groups", type=int, default=1500, help="sources whose derived rows are checked pairwise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--permutations", type=int, default=DedupConfig().permutations)
    parser.add_argument("--bands", type=int, default=DedupConfig().bands)
    parser.add_argument("--threshold", type=float, default=0.8)
    args = parser.parse_args()
    config = {"method": "minhash", "threshold": args.threshold, "permutations": args.permutations,
              "bands": args.bands, "shingle": "word", "shingle_size": 3}
    rng = np.random.default_rng(args.seed)

    prompts = load_prompts()
    t0 = pl.Series("text", prompts)
    ds_rows = min(args.datasketch_rows, len(prompts))
    runs = []  # (name, rows, result, quality)
    print(f"alignflow on the {len(prompts):,} T0 prompts ...", flush=True)
    ours_t0 = in_fresh_process(_ours, t0, config)
    runs.append(("alignflow, T0", len(prompts), ours_t0, quality(prompts, np.arange(len(prompts)), ours_t0["keep"],
                                                                ours_t0["matched"], args.threshold, rng)))
    if ds_rows < len(prompts):
        ours_same = in_fresh_process(_ours, t0[:ds_rows], config)
        q_same = quality(prompts, np.arange(ds_rows), ours_same["keep"], ours_same["matched"], args.threshold, rng)
        runs.append((f"alignflow, T0 first {ds_rows:,}", ds_rows, ours_same, q_same))
    else:
        ours_same = ours_t0
    print(f"datasketch on {ds_rows:,} T0 prompts ...", flush=True)
    theirs = in_fresh_process(_datasketch, t0[:ds_rows], config)
    runs.append((f"datasketch, T0{'' if ds_rows == len(prompts) else f' first {ds_rows:,}'}", ds_rows, theirs,
                 quality(prompts, np.arange(ds_rows), theirs["keep"], theirs["matched"], args.threshold, rng)))

    print(f"deriving {args.rows:,} rows from them ...", flush=True)
    derived = derive(prompts, args.rows, args.seed)
    print(f"alignflow on the {args.rows:,} derived rows ...", flush=True)
    ours_big = in_fresh_process(_ours, derived["text"], config)
    sources = rng.choice(len(prompts), min(args.groups, len(prompts)), replace=False)
    rows = np.flatnonzero(np.isin(derived["source"].to_numpy(), sources))
    q_big = quality(derived["text"].to_list(), rows, ours_big["keep"], ours_big["matched"], args.threshold, rng)
    runs.append((f"alignflow, derived (seed {args.seed})", args.rows, ours_big, q_big))

    t = args.threshold
    lines = [
        f"MinHash-LSH dedup, word 3-shingles, {args.permutations} permutations, {args.bands} bands, threshold {t}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end.",
        "",
        f"| run | rows | wall s | CPU s | rows/s (CPU) | peak MB | kept | recall, J >= {t} | precision | "
        f"matched J >= {t} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(_row(*run) for run in runs),
        "",
        f"- alignflow vs datasketch {_version('datasketch')} on the same {ds_rows:,} T0 prompts: "
        f"{theirs['cpu'] / ours_same['cpu']:.1f}x less CPU time, {theirs['seconds'] / ours_same['seconds']:.1f}x less "
        f"wall time (datasketch's figure includes {theirs['shingling']:.1f} s CPU of Python shingling); "
        f"the same keep/drop decision on {(theirs['keep'] == ours_same['keep']).mean():.1%} of rows "
        f"(datasketch decides each row against kept rows only, alignflow clusters).",
        f"- goals: {args.rows:,} rows in under 60 s: {'met' if ours_big['seconds'] < 60 else 'NOT met'} "
        f"({ours_big['seconds']:.1f} s wall, {ours_big['cpu']:.1f} s CPU); recall >= 0.95 at J >= {t}: "
        f"{'met' if min(r[3]['recall'] for r in runs if r[2] is not theirs) >= 0.95 else 'NOT met'}.",
        f"- recall: the share of pairs with exact Jaccard >= {t} whose later row was removed; T0: all "
        f"{runs[0][3]['pairs']:,} pairs, derived: the {q_big['pairs']:,} pairs among the {len(rows):,} rows of "
        f"{len(sources):,} random sources. By Jaccard: T0 {_by_j(runs[0][3])}; derived {_by_j(q_big)}.",
        f"- precision: the share of removed rows with an earlier row at exact Jaccard >= {t}. matched J >= {t}: the "
        f"share (of up to 5,000 removed rows) whose exact Jaccard with the kept row they were matched to is >= {t}; "
        f"clusters chain, so a row can be matched to a survivor less alike than its nearest neighbour.",
        "- peak MB: growth of the dedup process's peak resident set (VmHWM, reset before the dedup) over its "
        "resident set before the dedup; each run is a fresh process.",
    ]
    print("\n".join(lines))


def _row(name: str, rows: int, result: dict, q: dict) -> str:
    cells = [name, f"{rows:,}", f"{result['seconds']:.1f}", f"{result['cpu']:.1f}", f"{rows / result['cpu']:,.0f}",
             f"{result['peak_mb']:,.0f}", f"{result['keep'].sum():,}", f"{q['recall']:.3f}", f"{q['precision']:.3f}",
             f"{q['precision_matched']:.3f}"]
    return "| " + " | ".join(cells) + " |"


def _by_j(q: dict) -> str:
    return ", ".join(f"[{lo}, ..) {r:.3f}" for lo, r in q["recall_by_j"].items())


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
