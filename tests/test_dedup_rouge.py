"""ROUGE-L novelty: the pruned index must decide, score and cite exactly as the all-pairs scan with rouge_score."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from alignflow.config import DedupConfig
from alignflow.quality.dedup import make_index
from alignflow.quality.dedup.rouge import RougeIndex, lcs_lengths, tokenize

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_tokens(text: str) -> list[str]:
    return SCORER._tokenizer.tokenize(text)


def reference(seeded: list[tuple[str, str]], batches: list[list[tuple[str, str]]], threshold: float) -> list[dict]:
    """The Self-Instruct scan: every new text against every kept one with rouge_score, in order."""
    kept = [(row_id, rouge_tokens(text)) for row_id, text in seeded]
    rows = []
    for batch in batches:
        for row_id, text in batch:
            new = rouge_tokens(text)
            scores = np.array([rouge_scorer._score_lcs(new, old).fmeasure for _, old in kept])
            best = int(np.argmax(scores)) if len(kept) else None  # argmax: the earliest of equal maxima
            top = scores[best] if best is not None else 0.0
            if top > threshold:
                rows.append({"keep": False, "duplicate_of": kept[best][0], "score": top})
                continue
            ranked = sorted((i for i in range(len(kept)) if scores[i] > 0), key=lambda i: (-scores[i], i))[:10]
            rows.append({"keep": True, "duplicate_of": None, "score": top,
                         "most_similar": [(kept[i][0], scores[i]) for i in ranked],
                         "mean_similarity": float(scores.mean()) if len(kept) else None})
            kept.append((row_id, new))
    return rows


def ours(seeded, batches, threshold: float | None, mean_similarity: bool = True) -> list[dict]:
    index = RougeIndex(DedupConfig(method="rouge", threshold=threshold), mean_similarity=mean_similarity)
    if seeded:
        index.seed([i for i, _ in seeded], [t for _, t in seeded])
    rows = []
    for batch in batches:
        d = index.add([i for i, _ in batch], [t for _, t in batch])
        assert len(d) == len(batch) and d.keep.dtype == bool
        for k in range(len(d)):
            row = {"keep": bool(d.keep[k]), "duplicate_of": d.duplicate_of[k], "score": float(d.score[k])}
            if d.keep[k]:
                row["most_similar"] = [(m["id"], m["score"]) for m in d.extra["most_similar"][k]]
                row["mean_similarity"] = d.extra["mean_similarity"][k]
            else:
                assert d.extra["most_similar"][k] is None and d.extra["mean_similarity"][k] is None
            rows.append(row)
    return rows


def assert_same(got: list[dict], want: list[dict], mean: bool = True) -> None:
    assert [r["keep"] for r in got] == [r["keep"] for r in want]
    assert [r["duplicate_of"] for r in got] == [r["duplicate_of"] for r in want]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-9)
    for g, w in zip(got, want):
        if w["keep"]:
            assert [i for i, _ in g["most_similar"]] == [i for i, _ in w["most_similar"]]
            assert [s for _, s in g["most_similar"]] == pytest.approx([s for _, s in w["most_similar"]], abs=1e-9)
            if not mean:
                assert g["mean_similarity"] is None
            elif w["mean_similarity"] is None:
                assert g["mean_similarity"] is None
            else:
                assert g["mean_similarity"] == pytest.approx(w["mean_similarity"], abs=1e-9)


def labelled(prefix: str, texts: list[str]) -> list[tuple[str, str]]:
    return [(f"{prefix}{i}", t) for i, t in enumerate(texts)]


def jsonl(path, field: str) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)[field] for line in f]


@pytest.fixture(scope="module")
def self_instruct(test_data) -> tuple[list[str], list[str]]:
    return (jsonl(test_data / "self_instruct_seed_tasks.jsonl", "instruction"),
            jsonl(test_data / "self_instruct_user_oriented_instructions.jsonl", "instruction"))


@pytest.fixture(scope="module")
def t0(test_data) -> list[str]:
    return jsonl(test_data / "t0_train_prompts.jsonl.gz", "prompt")


def test_self_instruct_sets_match_the_all_pairs_scan(self_instruct):
    """The 175 seeds seeded, then user-oriented instructions in two calls, each against all kept before it."""
    seeds, user = self_instruct
    seeded, batches = labelled("seed", seeds), [labelled("user", user[:60]), labelled("user", user[60:130])]
    assert_same(ours(seeded, batches, None), reference(seeded, batches, 0.7))


def test_t0_prompts_match_the_all_pairs_scan(t0):
    """Long documents under several templates (near-duplicates of hundreds of tokens) and short templated
    questions, in one pool across a seed and three calls."""
    docs = labelled("doc", t0[:36])
    short = labelled("short", [t for t in t0 if len(rouge_tokens(t)) <= 40][:100])
    seeded, batches = docs[:8], [docs[8:20], docs[20:] + short[:40], short[40:]]
    want = reference(seeded, batches, 0.7)
    assert sum(not r["keep"] for r in want) >= 40, "the sample should hold real near-duplicates"
    assert_same(ours(seeded, batches, None), want)


@pytest.mark.slow
def test_more_short_t0_prompts_match_the_all_pairs_scan(t0):
    short = labelled("t0-", [t for t in t0 if len(rouge_tokens(t)) <= 40][:450])
    seeded, rest = short[:100], short[100:]
    batches = [rest[i:i + 200] for i in range(0, len(rest), 200)]
    assert_same(ours(seeded, batches, None, mean_similarity=False), reference(seeded, batches, 0.7), mean=False)


WORDS = ["a", "b", "c", "d", "A", "b!", "café", "caf", "日本", "e1", "--", "İ", ""]
texts = st.lists(st.sampled_from(WORDS), max_size=8).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(seeded=st.lists(texts, max_size=5), rows=st.lists(texts, min_size=1, max_size=30),
       cuts=st.lists(st.integers(0, 30), max_size=3), threshold=st.sampled_from([0.2, 0.5, 0.6, 0.7, 0.75, 1.0]))
def test_random_near_duplicates_match_rouge_score(seeded, rows, cuts, threshold):
    seeded = labelled("s", seeded)
    rows = labelled("r", rows)
    edges = sorted({0, len(rows), *(min(c, len(rows)) for c in cuts)})
    batches = [rows[a:b] for a, b in zip(edges, edges[1:])]
    want = reference(seeded, batches, threshold)
    assert_same(ours(seeded, batches, threshold), want)
    assert_same(ours(seeded, batches, threshold, mean_similarity=False), want, mean=False)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_tokens_are_rouge_scores_tokens(text):
    assert tokenize(text) == rouge_tokens(text)


@settings(max_examples=200, deadline=None)
@given(a=st.lists(st.integers(0, 4), max_size=80),
       others=st.lists(st.lists(st.integers(0, 6), max_size=80), min_size=1, max_size=12))
def test_bit_parallel_lcs_is_the_dynamic_programme(a, others):
    lengths = np.array([len(o) for o in others])
    flat = np.array([t for o in others for t in o], dtype=np.int64)
    want = [rouge_scorer._lcs_table(a, o)[-1][-1] if a and o else 0 for o in others]
    assert lcs_lengths(a, flat, lengths).tolist() == want


def test_text_without_tokens_is_kept_and_counts_in_the_mean():
    d = RougeIndex(DedupConfig(method="rouge")).add(["x", "e1", "e2", "y"], ["write a poem", "", "日本語 !!!", "write a poem"])
    assert d.keep.tolist() == [True, True, True, False]
    assert d.score.tolist() == [0.0, 0.0, 0.0, 1.0] and d.duplicate_of == [None, None, None, "x"]
    assert d.extra["most_similar"][:3] == [[], [], []]
    assert d.extra["mean_similarity"][:3] == [None, 0.0, 0.0]


def test_non_ascii_letters_split_words_as_rouge_score_does():
    # "Café" is the tokens ["caf"], so it equals "caf" and shares nothing with "cafe"
    d = RougeIndex(DedupConfig(method="rouge")).add(["1", "2", "3"], ["Café", "cafe", "caf!"])
    assert d.keep.tolist() == [True, True, False] and d.duplicate_of[2] == "1"


def test_identical_texts_cite_the_earliest_kept_copy():
    d = RougeIndex(DedupConfig(method="rouge")).add(list("abcd"), ["Sort a list.", "Reverse a string.", "sort A list", "Sort a list."])
    assert d.keep.tolist() == [True, True, False, False]
    assert d.duplicate_of == [None, None, "a", "a"] and d.score[2:].tolist() == [1.0, 1.0]


def test_threshold_one_keeps_even_identical_texts():
    d = RougeIndex(DedupConfig(method="rouge", threshold=1.0)).add(["a", "b"], ["Sort a list.", "sort a list"])
    assert d.keep.all() and d.score.tolist() == [0.0, 1.0]
    assert d.extra["most_similar"][1] == [{"id": "a", "score": 1.0}]


def test_seeded_rows_are_the_pool_without_decisions():
    index = RougeIndex(DedupConfig(method="rouge"))
    index.seed(["s1", "s2"], ["Give three tips for staying healthy.", "Give three tips for staying healthy."])
    assert len(index) == 2
    d = index.add(["n"], ["Give me three tips for staying healthy"])
    assert not d.keep[0] and d.duplicate_of == ["s1"]


def test_make_index_builds_it_with_the_paper_threshold():
    index = make_index(DedupConfig(method="rouge"))
    assert isinstance(index, RougeIndex) and index.method == "rouge" and index.threshold == 0.7


def test_ids_and_texts_must_pair_up():
    with pytest.raises(ValueError, match="2 ids for 1 texts"):
        RougeIndex(DedupConfig(method="rouge")).add(["a", "b"], ["only one"])
