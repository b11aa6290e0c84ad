"""The instruction stage: Self-Instruct and Evol-Instruct rounds to a target, through the filters and the ROUGE-L gate.

The big test runs the instructions flow alone (not the whole pipeline) under a real Prefect server (the test
harness) against the loopback OpenAI-compatible server, to 1,000 kept instructions.
"""
import json
import random
import re
import threading
from collections import Counter

import numpy as np
import polars as pl
import pytest
from llm_server import LLMTestServer, generate_from_schema, make_instruction
from rouge_score import rouge_scorer, tokenize
from scipy import sparse

from alignflow.config import parse_config
from alignflow.engine.run import Run
from alignflow.engine.step import Answer
from alignflow.llm.client import LLM
from alignflow.llm.types import Result
from alignflow.stages.instructions import NewTasks, candidates, self_instruct_jobs
from alignflow.stages.seeds import load_seeds
from flows.instructions import instructions_flow

THRESHOLD = 0.7


pytestmark = pytest.mark.usefixtures("api_keys")


class CountingAnswers:
    """Answers structured requests the way the server does by default, and counts the candidates it hands out."""

    def __init__(self) -> None:
        self.candidates = self.preflight = 0
        self._lock = threading.Lock()

    def __call__(self, req: dict, kind: str) -> dict | None:
        if "response_format" not in req:  # preflight's one-token call: the server lists no such model
            with self._lock:
                self.preflight += 1
            return None
        schema = req["response_format"]["json_schema"]["schema"]
        payload = generate_from_schema(schema, random.Random(json.dumps(req, sort_keys=True)))
        with self._lock:
            self.candidates += len(payload["instructions"]) if "instructions" in payload else 1
        return payload


def config_for(server: LLMTestServer, tmp_path, **instructions):
    return parse_config({"store": str(tmp_path / "store"),
                         "llm": {"provider": "openai", "base_url": server.openai_base_url, "max_concurrency": 16},
                         "instructions": instructions})


def rouge_pairs_above(texts: list[str], threshold: float) -> list[tuple[int, int, float]]:
    """Every pair (i, j, F) of texts whose ROUGE-L F is above `threshold`, by rouge_score's tokenizer and scorer.

    All pairs are first screened by a bound that cannot miss one: a longest common subsequence is at most the
    multiset token overlap, so F = 2 LCS / (len_i + len_j) is at most 2 overlap / (len_i + len_j). Only pairs
    whose bound reaches the threshold are scored with rouge_score (its plain scan takes a minute at 1,000 texts);
    `test_screened_scan_equals_the_plain_scan` checks the two agree.
    """
    tokens = [tokenize.tokenize(t, None) for t in texts]
    vocab: dict[str, int] = {}
    cells = Counter((row, vocab.setdefault(tok, len(vocab))) for row, toks in enumerate(tokens) for tok in toks)
    counts = sparse.csr_matrix((list(cells.values()), tuple(zip(*cells))), shape=(len(texts), len(vocab)))
    overlap = sum((at_least @ at_least.T).toarray()
                  for at_least in ((counts >= k).astype(np.int64) for k in range(1, counts.max() + 1)))
    lengths = np.array([len(t) for t in tokens])
    bound = 2 * overlap / np.maximum(lengths[:, None] + lengths[None, :], 1)
    pairs = zip(*np.nonzero(np.tril(bound >= threshold - 1e-9, k=-1)))
    return [(int(i), int(j), f) for i, j in pairs
            if (f := rouge_scorer._score_lcs(tokens[j], tokens[i]).fmeasure) > threshold]


def test_screened_scan_equals_the_plain_scan():
    rnd = random.Random(3)
    texts = [make_instruction(rnd) for _ in range(150)]
    texts += [t.replace("the", "the very") for t in texts[:20]] + [t.upper() for t in texts[20:25]] + ["", "!!"]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    plain = [(i, j, f) for i in range(len(texts)) for j in range(i)
             if (f := scorer.score(texts[j], texts[i])["rougeL"].fmeasure) > THRESHOLD]
    assert len(plain) >= 20 and rouge_pairs_above(texts, THRESHOLD) == plain


@pytest.mark.slow
def test_a_thousand_novel_instructions_and_every_rejection_on_disk(prefect_server, tmp_path):
    answers = CountingAnswers()
    with LLMTestServer(respond=answers) as server:
        config = config_for(server, tmp_path, target=1000, prompts_per_round=25, per_prompt=8, max_rounds=20,
                            evol={"enabled": True, "per_round": 10})
        returned = instructions_flow(config, "big")
        requests = server.requests
    run = Run(config, "big")
    seeds, kept, rejected = run.dir.read("seeds"), run.dir.read("instructions"), run.dir.read("instructions", "rejected")
    assert returned == kept.height >= 1000
    assert run.dir.read("instructions", "failed").height == 0

    # novelty: no two kept instructions (nor a kept one and a seed) above the threshold, by the reference scan
    assert rouge_pairs_above(seeds["instruction"].to_list() + kept["instruction"].to_list(), THRESHOLD) == []
    assert kept["max_similarity"].is_between(0, THRESHOLD).all() and kept["mean_similarity"].is_not_null().all()
    assert (kept["most_similar"].list.len() > 0).all()
    assert kept["id"].is_unique().all() and kept["reason"].is_null().all()

    # every candidate the server handed out is on disk, kept or rejected with its reason
    assert kept.height + rejected.height == answers.candidates
    assert rejected["reason"].is_not_null().all()
    duplicates = rejected.filter(pl.col("reason").str.starts_with("duplicate"))
    pattern = re.compile(r"^duplicate of ([0-9a-f]{16}) \(rouge (0\.\d\d|1\.00)\)$")
    targets = [pattern.match(reason) for reason in duplicates["reason"]]
    assert all(targets) and duplicates.height > 0
    assert {m.group(1) for m in targets} <= set(kept["id"]) | set(seeds["id"])
    assert (duplicates["max_similarity"] > THRESHOLD).all()
    assert rejected["reason"].str.starts_with("blacklisted keyword").any()  # the server's topics include "maps"

    # both generators contribute, with their lineage
    evolved = kept.filter(pl.col("source") == "evol_instruct")
    assert evolved.height > 0 and evolved["evolution"].is_not_null().all()
    assert evolved["parent_ids"].list.len().eq(1).all()
    assert set(evolved["parent_ids"].explode()) <= set(kept["id"]) | set(seeds["id"])

    # in-context tasks: 8 shown, 2 from the machine pool once it has rows, the rest human seeds
    for row in kept.filter((pl.col("source") == "self_instruct") & (pl.col("round") > 0)).head(50).to_dicts():
        earlier = set(kept.filter(pl.col("round") < row["round"])["id"])
        machine = [p for p in row["parent_ids"] if p in earlier]
        assert len(row["parent_ids"]) == 8 and len(machine) == 2
        assert set(row["parent_ids"]) - set(machine) <= set(seeds["id"])

    assert answers.preflight == 1
    assert sum(r["inputs"] for r in run.dir.checkpoints("instructions")) == requests - answers.preflight


def test_rounds_stop_at_the_round_limit_and_dedup_can_be_off(prefect_server, tmp_path):
    with LLMTestServer() as server:
        config = config_for(server, tmp_path, target=1000, prompts_per_round=2, max_rounds=2, dedup={"method": None})
        returned = instructions_flow(config, "short")
    run = Run(config, "short")
    kept = run.dir.read("instructions")
    assert returned == kept.height and set(kept["round"]) == {0, 1}
    assert kept["max_similarity"].is_null().all()
    assert not run.dir.read("instructions", "rejected")["reason"].str.starts_with("duplicate").any()


def test_only_the_last_task_of_a_cut_off_answer_is_truncated(tmp_path):
    with LLMTestServer() as server:
        run = Run(config_for(server, tmp_path), "cut")
        llm = LLM(run.config.llm_for("instructions"))
        job = self_instruct_jobs(llm, random.Random(0), run.config.instructions,
                                 load_seeds(run.config.seeds).to_dicts(), [])[0]
    tasks = NewTasks(instructions=["Explain tides to a child.", "Write a limerick about a cat", "Describe the"])
    answer = Answer(job, Result(ok=True, text=tasks.model_dump_json(), parsed=tasks, finish_reason="length"))
    rows = candidates(answer, 3)
    assert [r["reason"] for r in rows] == [None, None, "truncated generation (finish reason length)"]
    assert {r["round"] for r in rows} == {3} and all(r["parent_ids"] == job.data.parent_ids for r in rows)
    assert len({r["id"] for r in rows}) == 3


@pytest.mark.parametrize("target, sent", [(40, 40), (100, 71), ({"dataset": "dpo", "rows": 40}, 71)])
def test_the_instructions_sent_on_are_those_the_responses_stage_takes(target, sent):
    """A target of N instructions sends the first N kept on (the rest stay, kept past the target); a dataset target
    sends all: as the responses stage plans its batches."""
    from alignflow.stages.instructions import sent_on
    from alignflow.stages.responses import Plan

    config = parse_config({"instructions": {"target": target}})
    plan = Plan(config)
    for number, kept in enumerate((30, 41)):
        plan.add({"number": number, "counts": {"kept": kept}})
    assert sent_on(config, 71) == plan.instructions == sent
