"""Decontamination against GSM8K's 1,319 test problems: planted problems are found however they are planted
(verbatim, lightly re-worded, inside a longer instruction, in an answer), and unrelated text is not."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from alignflow.config import DecontaminateConfig
from alignflow.quality.contamination import BenchmarkError, Index, index_for, words

DATA = Path(__file__).parent / "data"
GSM8K = DATA / "gsm8k_test.jsonl"
QUESTIONS = [json.loads(line)["question"] for line in GSM8K.read_text().splitlines()]

# word problems written for this test: the same kind and vocabulary as GSM8K, none of its items
UNRELATED = [
    "Maria bakes 24 cookies and gives 7 to her neighbour. How many cookies does she have left?",
    "A train travels 60 miles per hour for 3 hours and then 40 miles per hour for 2 hours. How far does it go?",
    "Tom has twice as many marbles as Sam. Together they have 36 marbles. How many marbles does Tom have?",
    "A shop sells pencils at $0.25 each. How much do 18 pencils cost in dollars?",
    "If a recipe needs 3 eggs for every 2 cups of flour, how many eggs are needed for 10 cups of flour?",
    "Lena reads 15 pages a day. Her book has 420 pages. How many days will it take her to finish it?",
    "A farmer has 12 cows and buys 3 times as many sheep. How many animals does the farmer have in total?",
    "The temperature was 5 degrees in the morning and rose by 2 degrees every hour for 6 hours. What was it then?",
    "Write a Python function that returns the sum of the even numbers in a list, with a docstring and two tests.",
    "Explain the difference between mean, median and mode, with an example for each using the numbers 2, 3, 3, 8.",
    "Janet has a small garden where she grows tomatoes and she sells them at the market on Saturdays for a profit.",
    "How many minutes are there in a week? Show each step of the calculation and then check the result another way.",
]


@pytest.fixture(scope="module")
def gsm8k() -> Index:
    return index_for(DecontaminateConfig(benchmarks=[str(GSM8K)]))


def test_words_are_lowercased_without_punctuation():
    assert words("Janet’s ducks lay 16 eggs per day.") == ["janet", "s", "ducks", "lay", "16", "eggs", "per", "day"]


def test_the_index_holds_every_gsm8k_problem(gsm8k):
    assert len(gsm8k) == len(QUESTIONS) == 1319


@pytest.mark.parametrize("item", [0, 7, 500, 1318])
def test_a_verbatim_problem_is_found_naming_its_item(gsm8k, item):
    hit = gsm8k.find(QUESTIONS[item])
    assert (hit.benchmark, hit.item) == ("gsm8k_test", item + 1)
    assert hit.reason().startswith(f"contaminated: gsm8k_test item {item + 1} ('")


@pytest.mark.parametrize("item", [3, 42, 900])
def test_a_lightly_reworded_problem_is_found(gsm8k, item):
    text = QUESTIONS[item].replace("How many", "What number of").replace("How much", "What amount").upper()
    text = text.replace(".", "!").replace(",", ";")
    hit = gsm8k.find(text)
    assert hit is not None and hit.item == item + 1


def test_a_problem_inside_a_longer_instruction_or_answer_is_found(gsm8k):
    wrapped = f"You are a tutor. Solve this problem step by step and explain each step: {QUESTIONS[11]} End with " \
              "the number alone on its own line."
    assert gsm8k.find(wrapped).item == 12
    answer = f"Sure! Here is a problem for practice.\n\n{QUESTIONS[250]}\n\nTry it before you look at the answer."
    assert gsm8k.find(answer).item == 251


@pytest.mark.parametrize("text", UNRELATED)
def test_unrelated_problems_and_instructions_are_not_found(gsm8k, text):
    assert gsm8k.find(text) is None


def test_real_instructions_are_not_found(gsm8k):
    """Self-Instruct's seed and user-oriented instructions (427 real tasks) have no GSM8K problem in them."""
    texts = []
    for name in ("self_instruct_seed_tasks.jsonl", "self_instruct_user_oriented_instructions.jsonl"):
        for line in (DATA / name).read_text().splitlines():
            row = json.loads(line)
            instances = row.get("instances") or []
            texts.append(" ".join([row["instruction"], *(i.get("input", "") for i in instances)]))
    assert len(texts) == 427
    assert [t for t in texts if gsm8k.find(t)] == []


def test_short_items_count_whole_and_shorter_ones_not_at_all(tmp_path):
    bench = tmp_path / "short.jsonl"
    bench.write_text("\n".join(json.dumps({"prompt": p}) for p in
                               ["What is the capital city of the country of France today?", "Name a colour."]))
    index = index_for(DecontaminateConfig(benchmarks=[{"path": str(bench), "name": "short"}]))
    assert len(index) == 1  # "Name a colour." has fewer than min_ngram words
    assert index.find("Quiz: what is the capital city of the country of France today? Answer briefly.").item == 1
    assert index.find("What is the capital city of the country of Spain today?") is None
    assert index.find("Name a colour.") is None


def test_min_overlap_asks_for_a_share_of_the_item(tmp_path):
    config = DecontaminateConfig(benchmarks=[str(GSM8K)], min_overlap=0.5)
    index = index_for(config)
    question = QUESTIONS[0]
    half = " ".join(question.split()[: len(question.split()) // 3])  # a third of the problem: some n-grams
    assert index.find(half) is None and index.find(question) is not None
    assert index_for(DecontaminateConfig(benchmarks=[str(GSM8K)])).find(half) is not None


def test_parquet_with_a_named_column(tmp_path):
    path = tmp_path / "bench.parquet"
    pl.DataFrame({"id": ["a"], "task": [QUESTIONS[5]], "solution": ["x"]}).write_parquet(path)
    with pytest.raises(BenchmarkError, match="has no text column to choose; its text columns: id, task, solution"):
        index_for(DecontaminateConfig(benchmarks=[str(path)]))
    index = index_for(DecontaminateConfig(benchmarks=[{"path": str(path), "column": "task", "name": "mine"}]))
    assert index.find(QUESTIONS[5]).benchmark == "mine"


@pytest.mark.parametrize("content, message", [
    (None, "cannot read benchmark .*missing.jsonl: No such file or directory"),
    ('{"question": "a b c"\n', "cannot read benchmark .*bench.jsonl"),
    ('{"answer": "x"}\n{"answer": "y"}\n', "has no text column 'question'"),
])
def test_a_bad_benchmark_file_is_one_line(tmp_path, content, message):
    path = tmp_path / ("missing.jsonl" if content is None else "bench.jsonl")
    if content is not None:
        path.write_text(content)
    column = "question" if "'question'" in message else None
    with pytest.raises(BenchmarkError, match=message) as caught:
        index_for(DecontaminateConfig(benchmarks=[str(path)], column=column))
    assert "\n" not in str(caught.value)


def test_the_index_is_built_once_for_the_same_files(tmp_path):
    config = DecontaminateConfig(benchmarks=[str(GSM8K)])
    assert index_for(config) is index_for(DecontaminateConfig(benchmarks=[str(GSM8K)]))
    copy = tmp_path / "gsm8k.jsonl"
    copy.write_text(GSM8K.read_text())
    first = index_for(DecontaminateConfig(benchmarks=[str(copy)]))
    copy.write_text(GSM8K.read_text() + json.dumps({"question": UNRELATED[0]}) + "\n")
    second = index_for(DecontaminateConfig(benchmarks=[str(copy)]))
    assert second is not first and second.find(UNRELATED[0]).item == 1320
