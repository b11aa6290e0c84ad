"""Exact, MinHash-LSH and semantic dedup, and `alignflow dedup`, on the real T0 prompts.

Ground truth is exact Jaccard similarity of word 3-shingle sets built here from `normalise` with Python
sets, independently of the vectorised shingling under test.
"""
import gzip
import json
import sys

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sparse
from hypothesis import given, settings
from hypothesis import strategies as st

from alignflow.cli import dedup as command
from alignflow.config import DedupConfig
from alignflow.quality.dedup import make_index, semantic
from alignflow.quality.dedup.exact import ExactIndex
from alignflow.quality.dedup.minhash import MinHashIndex, agreement, shingle_hashes, signatures
from alignflow.quality.filters import normalise
from flows.cli import main

TRICKY = ["Hello, World!  How are you?", "", "a", "one two", "Don't stop\nbelieving \u2014 now", "  lead and trail  ",
          "\u00c9COLE caf\u00e9 na\u00efve r\u00e9sum\u00e9", "x\ty\r\nz", "!!! ... ???", "word, word; word: word"]


@pytest.fixture(scope="module")
def t0(test_data) -> list[str]:
    with gzip.open(test_data / "t0_train_prompts.jsonl.gz", "rt") as f:
        return [json.loads(line)["prompt"] for line in f]


@pytest.fixture(scope="module")
def sample(t0) -> list[str]:
    """The first 3,000 prompts: passages under several templates, so many real near-duplicates."""
    return t0[:3000]


def reference_shingles(text: str, shingle: str = "word", size: int = 3) -> set[tuple[str, ...]]:
    tokens = normalise(text).split() if shingle == "word" else list(normalise(text))
    if len(tokens) < size:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i:i + size]) for i in range(len(tokens) - size + 1)}


def jaccard(a: str, b: str) -> float:
    x, y = reference_shingles(a), reference_shingles(b)
    return len(x & y) / len(x | y) if x | y else 1.0


def similar_pairs(texts: list[str], threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j with exact Jaccard >= threshold, by a sparse product of the shingle incidence matrix."""
    vocab: dict = {}
    indptr, indices = [0], []
    for text in texts:
        indices.extend(vocab.setdefault(s, len(vocab)) for s in reference_shingles(text))
        indptr.append(len(indices))
    a = sparse.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(texts), len(vocab)))
    c = sparse.triu(a @ a.T, k=1).tocoo()
    sizes = np.diff(a.indptr)
    jac = c.data / (sizes[c.row] + sizes[c.col] - c.data)
    keep = jac >= threshold
    return c.row[keep], c.col[keep], jac[keep]


def ids(n: int, prefix: str = "r") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def decide(index, texts, batches=None):
    """Decisions of one `add`, or of consecutive `add`s cut at `batches`."""
    cuts = [0, *sorted(set(batches or [])), len(texts)]
    parts = [index.add(ids(len(texts))[a:b], texts[a:b]) for a, b in zip(cuts, cuts[1:]) if b > a]
    return (np.concatenate([p.keep for p in parts]), [d for p in parts for d in p.duplicate_of],
            np.concatenate([p.score for p in parts]))


# ---- shingles and signatures

@pytest.mark.parametrize("shingle, size", [("word", 3), ("word", 1), ("char", 5), ("char", 2)])
def test_shingle_hashes_are_the_shingles_of_the_normalised_text(sample, shingle, size):
    texts = TRICKY + sample[:400]
    hashed = []
    for _, hashes, counts in shingle_hashes(texts, shingle, size):
        ends = np.cumsum(counts)
        hashed += [set(hashes[e - c:e].tolist()) for c, e in zip(counts, ends)]
    reference = [reference_shingles(t, shingle, size) for t in texts]
    assert [len(h) for h in hashed] == [len(r) for r in reference]
    for i in range(len(texts) - 1):  # same overlaps, so no two different shingles share a hash
        assert len(hashed[i] & hashed[i + 1]) == len(reference[i] & reference[i + 1])


def test_signature_agreement_estimates_jaccard(sample):
    i, j, jac = similar_pairs(sample, 0.2)
    assert len(i) > 10_000
    error = agreement(signatures(sample), i, j) - jac
    assert abs(error.mean()) < 0.01
    assert np.abs(error).mean() < 0.03
    assert np.abs(error).max() < 0.15


def test_a_signature_depends_on_its_text_alone(sample):
    together = signatures(sample[:200] + TRICKY)
    alone = np.stack([signatures([t])[0] for t in sample[:20] + TRICKY])
    assert np.array_equal(together[list(range(20)) + list(range(200, 200 + len(TRICKY)))], alone)
    assert np.array_equal(signatures(sample[:200]), together[:200])


# ---- exact

def test_exact_keeps_the_first_of_each_normal_form(t0):
    texts = t0[:7000]
    keep, duplicate_of, score = decide(ExactIndex(DedupConfig(method="exact")), texts)
    forms = [normalise(t) for t in texts]
    first: dict[str, int] = {}
    for i, form in enumerate(forms):
        first.setdefault(form, i)
    assert keep.sum() == len(first) < len(texts)  # T0 repeats prompts
    for i in np.flatnonzero(~keep):
        assert duplicate_of[i] == f"r{first[forms[i]]}"
    assert set(score[~keep]) == {1.0} and set(score[keep]) == {0.0}


def test_exact_folds_case_punctuation_and_spacing():
    keep, duplicate_of, _ = decide(ExactIndex(DedupConfig(method="exact")),
                                   ["Hello, World!", "hello   world", "HELLO WORLD.", "Hello there, World"])
    assert keep.tolist() == [True, False, False, True]
    assert duplicate_of == [None, "r0", "r0", None]


# ---- minhash

def test_minhash_removes_the_near_duplicates_of_t0(sample):
    keep, duplicate_of, score = decide(MinHashIndex(DedupConfig(method="minhash")), sample)
    i, j, jac = similar_pairs(sample, 0.8)
    assert len(j) > 5_000
    assert (~keep[j]).mean() >= 0.95  # recall: the later row of a pair at Jaccard >= 0.8 is removed
    assert (~keep[j[jac >= 0.9]]).all()
    # nothing dissimilar is merged: each removed row has a near-duplicate before it, and its survivor is alike
    low_i, low_j, low_jac = similar_pairs(sample, 0.5)
    best = np.zeros(len(sample))
    np.maximum.at(best, low_j, low_jac)
    removed = np.flatnonzero(~keep)
    assert best[removed].min() >= 0.7
    assert min(jaccard(sample[r], sample[int(duplicate_of[r][1:])]) for r in removed) >= 0.5
    assert all(int(duplicate_of[r][1:]) < r and keep[int(duplicate_of[r][1:])] for r in removed)
    assert (score[removed] > 0).all()


def test_minhash_is_deterministic(sample):
    first = decide(MinHashIndex(DedupConfig(method="minhash")), sample[:1000])
    second = decide(MinHashIndex(DedupConfig(method="minhash")), sample[:1000])
    assert np.array_equal(first[0], second[0]) and first[1] == second[1] and np.array_equal(first[2], second[2])


@settings(max_examples=8, deadline=None)
@given(cuts=st.lists(st.integers(1, 599), max_size=6))
def test_minhash_in_batches_decides_as_one_add(sample, cuts):
    texts = sample[:600]
    whole = decide(MinHashIndex(DedupConfig(method="minhash")), texts)
    batched = decide(MinHashIndex(DedupConfig(method="minhash")), texts, cuts)
    assert np.array_equal(whole[0], batched[0]) and whole[1] == batched[1]
    assert np.array_equal(whole[2], batched[2])
    assert 0 < whole[0].sum() < len(texts)


@settings(max_examples=5, deadline=None)
@given(cuts=st.lists(st.integers(1, 2999), max_size=6))
def test_exact_in_batches_decides_as_one_add(sample, cuts):
    whole = decide(ExactIndex(DedupConfig(method="exact")), sample)
    batched = decide(ExactIndex(DedupConfig(method="exact")), sample, cuts)
    assert np.array_equal(whole[0], batched[0]) and whole[1] == batched[1]


@pytest.mark.parametrize("method", ["exact", "minhash"])
def test_seeded_rows_count_as_kept(sample, method):
    index = make_index(DedupConfig(method=method))
    index.seed(["s0", "s1"], [sample[0], sample[5]])
    decisions = index.add(["a", "b", "c"], [sample[0].upper(), "An unrelated line about the weather in Oslo today",
                                            sample[5] + " "])
    assert decisions.keep.tolist() == [False, True, False]
    assert decisions.duplicate_of == ["s0", None, "s1"]


def test_char_shingles_catch_typos_that_word_shingles_miss():
    texts = ["The committee approved the annual budget proposal on Tuesday afternoon after a long debate",
             "The comittee aproved the anual budget proposal on Tuesday afternon after a long debate"]
    char = MinHashIndex(DedupConfig(method="minhash", shingle="char", shingle_size=5, threshold=0.6))
    word = MinHashIndex(DedupConfig(method="minhash", threshold=0.6))
    assert char.add(["a", "b"], texts).keep.tolist() == [True, False]
    assert word.add(["a", "b"], texts).keep.tolist() == [True, True]


def test_empty_texts_are_duplicates_of_each_other():
    decisions = MinHashIndex(DedupConfig(method="minhash")).add(ids(4), ["", "!!!", "a real sentence here", "  "])
    assert decisions.keep.tolist() == [True, False, True, False]
    assert decisions.duplicate_of == [None, "r0", None, "r0"]


# ---- semantic

PARAPHRASES = [
    ("How do I bake sourdough bread at home?", "What is the way to make sourdough bread in my own kitchen?"),
    ("The stock market fell sharply on Monday.", "Stocks dropped steeply on Monday."),
    ("Can you explain quantum entanglement in simple terms?", "Explain quantum entanglement simply, please."),
]
UNRELATED = ["Write a haiku about autumn leaves.", "List three uses of a paperclip.",
             "Translate 'good morning' into Spanish.", "What is the capital of Australia?"]


@pytest.mark.slow
def test_semantic_drops_paraphrases_and_keeps_unrelated_texts():
    texts = [a for a, _ in PARAPHRASES] + UNRELATED + [b for _, b in PARAPHRASES]
    index = make_index(DedupConfig(method="semantic", threshold=0.6))
    keep, duplicate_of, score = decide(index, texts)
    n = len(PARAPHRASES) + len(UNRELATED)
    assert keep.tolist() == [True] * n + [False] * len(PARAPHRASES)
    assert duplicate_of[n:] == [f"r{i}" for i in range(len(PARAPHRASES))]
    assert (score[n:] > 0.6).all() and (score[:n] <= 0.6).all()
    batched = decide(make_index(DedupConfig(method="semantic", threshold=0.6)), texts, [2, 5, 8])
    assert np.array_equal(batched[0], keep) and batched[1] == duplicate_of


def test_semantic_without_sentence_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'alignflow\[semantic\]'"):
        semantic.model.__wrapped__()


# ---- the command

@pytest.fixture()
def table(sample) -> pl.DataFrame:
    texts = sample[:300] + [sample[3].upper(), None, sample[10] + " !!", ""]
    return pl.DataFrame({"uid": [f"u{i}" for i in range(len(texts))], "prompt": texts, "n": range(len(texts))})


def write(frame: pl.DataFrame, path) -> str:
    frame.write_parquet(path) if str(path).endswith(".parquet") else frame.write_ndjson(path)
    return str(path)


def read(path) -> pl.DataFrame:
    return pl.read_parquet(path) if str(path).endswith(".parquet") else pl.read_ndjson(path)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["dedup", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("method", ["exact", "minhash", "rouge"])
@pytest.mark.parametrize("ext", [".parquet", ".jsonl"])
def test_command_writes_kept_rows_and_a_report(tmp_path, capsys, table, method, ext):
    source = write(table, tmp_path / f"in{ext}")
    code, out, err = run_cli(capsys, source, "--column", "prompt", "--method", method, "--id-column", "uid",
                             "--out", tmp_path / f"out{ext}", "--report", tmp_path / f"report{ext}")
    assert code == 0, err
    present = [i for i, text in enumerate(table["prompt"]) if text is not None]  # a null prompt is kept apart
    decided = make_index(DedupConfig(method=method)).add([str(i) for i in present], table["prompt"][present])
    keep, score, duplicate_of = np.ones(len(table), bool), np.zeros(len(table)), [None] * len(table)
    keep[present], score[present] = decided.keep, decided.score
    for i, original in zip(present, decided.duplicate_of):
        duplicate_of[i] = original
    kept = read(tmp_path / f"out{ext}")
    assert kept.columns == table.columns
    assert kept.equals(table.filter(pl.Series(keep)))
    report = read(tmp_path / f"report{ext}")
    dropped = np.flatnonzero(~keep)
    assert report["id"].to_list() == [f"u{i}" for i in dropped]
    assert report["duplicate_of"].to_list() == [f"u{duplicate_of[i]}" for i in dropped]
    assert np.allclose(report["score"].to_numpy(), score[dropped])
    assert set(report["method"]) == {method}
    assert 0 < len(dropped) < len(table)
    assert f"{len(table):,} rows in, {len(kept):,} kept, {len(dropped):,} dropped ({method}), 1 with no prompt kept " \
           "apart (not compared)" in out


def test_command_names_rows_by_number_without_an_id_column(tmp_path, capsys, table):
    frame = pl.concat([table, table[:1]])
    code, _, err = run_cli(capsys, write(frame, tmp_path / "in.parquet"), "--column", "prompt", "--method", "exact",
                           "--out", tmp_path / "out.jsonl", "--report", tmp_path / "report.jsonl")
    assert code == 0, err
    report = read(tmp_path / "report.jsonl")
    assert report.filter(pl.col("id") == len(frame) - 1)["duplicate_of"].to_list() == [0]
    assert report["id"].dtype == pl.Int64


def test_command_shows_progress_and_decides_in_batches_as_at_once(tmp_path, capsys, table, monkeypatch):
    source = write(table, tmp_path / "in.parquet")
    args = [source, "--column", "prompt", "--method", "minhash", "--out"]
    code, _, err = run_cli(capsys, *args, tmp_path / "all.parquet")
    assert code == 0 and err == ""
    monkeypatch.setitem(command.BATCH_ROWS, "minhash", 50)
    monkeypatch.setattr(command, "PROGRESS_EVERY_S", 0.0)
    code, _, err = run_cli(capsys, *args, tmp_path / "b.parquet")
    assert code == 0
    assert err.splitlines()[0].startswith(f"alignflow dedup: 50 of {len(table)} rows, ")
    assert len(err.splitlines()) == (len(table) - 1) // 50
    assert read(tmp_path / "b.parquet").equals(read(tmp_path / "all.parquet"))


@pytest.mark.slow
def test_command_semantic(tmp_path, capsys):
    frame = pl.DataFrame({"text": [a for a, _ in PARAPHRASES] + UNRELATED + [b for _, b in PARAPHRASES]})
    code, out, err = run_cli(capsys, write(frame, tmp_path / "in.jsonl"), "--column", "text", "--method", "semantic",
                             "--threshold", "0.6", "--out", tmp_path / "out.parquet")
    assert code == 0, err
    assert read(tmp_path / "out.parquet")["text"].to_list() == frame["text"].to_list()[:-len(PARAPHRASES)]


BAD_INPUTS = {
    "missing file": (None, ["--column", "prompt"], "no such file"),
    "corrupt parquet": (b"PAR1 this is not parquet", ["--column", "prompt"], "cannot read as parquet"),
    "empty file": (b"", ["--column", "prompt"], "empty file"),
    "missing column": ("table", ["--column", "text"], "no column 'text'"),
    "non-string column": ("table", ["--column", "n"], "column 'n' holds Int64, not text"),
    "missing id column": ("table", ["--column", "prompt", "--id-column", "key"], "no id column 'key'"),
    "bad threshold": ("table", ["--column", "prompt", "--threshold", "1.5"], "--threshold"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, table, case):
    content, args, message = BAD_INPUTS[case]
    source = tmp_path / "in.parquet"
    if content == "table":
        table.write_parquet(source)
    elif content is not None:
        source.write_bytes(content)
    out = tmp_path / "out.parquet"
    code, _, err = run_cli(capsys, source, *args, "--method", "minhash", "--out", out)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("alignflow: ") and message in err
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("source, out, report", [("in.csv", "out.parquet", None), ("in.parquet", "out.txt", None),
                                                 ("in.parquet", "out.parquet", "report.xlsx")])
def test_unknown_extensions_are_refused(tmp_path, capsys, table, source, out, report):
    table.write_parquet(tmp_path / source)
    args = ["--report", tmp_path / report] if report else []
    code, _, err = run_cli(capsys, tmp_path / source, "--column", "prompt", "--method", "exact",
                           "--out", tmp_path / out, *args)
    assert code == 2 and err.startswith("alignflow: ") and "unknown format" in err and err.count("\n") == 1
    assert not (tmp_path / out).exists()


def test_a_failed_run_leaves_an_existing_out_untouched(tmp_path, capsys, table):
    out = tmp_path / "out.parquet"
    out.write_bytes(b"previous result")
    table.write_parquet(tmp_path / "in.parquet")
    code, _, _ = run_cli(capsys, tmp_path / "in.parquet", "--column", "missing", "--method", "exact", "--out", out)
    assert code == 2 and out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "out.parquet"]  # no temporary left behind
