"""RL-CAI preference labels: a judge picks the better of two answers under a drawn principle, in both orders.

Asking twice with the answers swapped exposes position bias. The label is the agreement of the two choices:
P(a better than b) is 1 or 0 when they agree, 0.5 (a tie) when the choice followed the position instead.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, Field

from alignflow.constitution import Constitution, Principle
from alignflow.llm.client import LLM
from alignflow.llm.types import Result
from alignflow.prompts import load
from alignflow.records import frame, provenance, stable_id
from alignflow.run import Run, Written

STAGE = "cai_labels"
PAIR_INPUT = {"prompt_id": pl.String, "prompt": pl.String, "a_id": pl.String, "a": pl.String, "b_id": pl.String,
              "b": pl.String}


class PairsError(ValueError):
    """A pairs file that cannot be read: printed as one line."""


class Choice(BaseModel):
    reason: str = Field(max_length=1000)
    choice: Literal["A", "B"]


@dataclass
class Verdict:
    """Both orders' choices for one pair, mapped back to "a" / "b", and the calls' combined result."""

    result: Result
    label: float | None = None
    choice_forward: str | None = None
    choice_reversed: str | None = None
    reason_forward: str | None = None
    reason_reversed: str | None = None


def combined(results: list[Result]) -> Result:
    """Several calls made for one row as one result: summed cost, the first failure's error and raw output."""
    failed = next((r for r in results if not r.ok), None)
    last = failed or results[-1]
    return Result(ok=failed is None, text=last.text, error=failed.error if failed else None,
                  finish_reason=last.finish_reason, input_tokens=sum(r.input_tokens for r in results),
                  output_tokens=sum(r.output_tokens for r in results), latency_s=sum(r.latency_s for r in results),
                  attempts=sum(r.attempts for r in results), cached=all(r.cached for r in results))


def soft_label(forward: Choice, reversed_: Choice) -> float:
    """P(a better than b): forward shows a as (A), reversed shows a as (B)."""
    return ((forward.choice == "A") + (reversed_.choice == "B")) / 2


def judge_pairs(run: Run, llm: LLM, items: list[tuple[str, str, str, Principle]], label: str) -> list[Verdict]:
    """(prompt, a, b, principle) → a Verdict each; both orders of every pair go out in one batch."""
    template = load("cai_choose")
    requests = []
    for prompt, a, b, principle in items:
        for first, second in ((a, b), (b, a)):
            text = template.render(prompt=prompt, response_a=first, response_b=second,
                                   question=principle.choice_question)
            requests.append(llm.request([{"role": "user", "content": text}], schema=Choice, temperature=0.0,
                                        max_tokens=min(llm.config.max_tokens, 384)))
    results = run.generate(llm, requests, label)
    verdicts = []
    for forward, reversed_ in zip(results[::2], results[1::2]):
        verdict = Verdict(result=combined([forward, reversed_]))
        if verdict.result.ok:
            verdict.label = soft_label(forward.parsed, reversed_.parsed)
            verdict.choice_forward = "a" if forward.parsed.choice == "A" else "b"
            verdict.choice_reversed = "a" if reversed_.parsed.choice == "B" else "b"
            verdict.reason_forward, verdict.reason_reversed = forward.parsed.reason, reversed_.parsed.reason
        verdicts.append(verdict)
    return verdicts


def pairs_from_run(run: Run) -> pl.DataFrame:
    """Every two kept responses to the same instruction, in id order."""
    rows = []
    for _, group in run.read("responses").sort("id").group_by("instruction_id", maintain_order=True):
        for a, b in itertools.combinations(group.to_dicts(), 2):
            rows.append({"prompt_id": a["instruction_id"], "prompt": a["instruction"], "a_id": a["id"],
                         "a": a["response"], "b_id": b["id"], "b": b["response"]})
    if not rows:
        raise PairsError(f"run {run.run_id} has no instruction with two kept responses in {run.store.url}")
    return pl.DataFrame(rows, schema=PAIR_INPUT)


def pairs_from_file(path: str | Path) -> pl.DataFrame:
    """JSONL, one prompt a line: `prompt` and `responses` (two or more); every two of them make a pair."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PairsError(f"cannot read pairs file {path}: {exc}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PairsError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not _is_prompt_with_responses(record):
            raise PairsError(f"{path}:{number}: expected a `prompt` string and `responses`, a list of 2 or more strings")
        prompt, responses = record["prompt"], record["responses"]
        prompt_id = stable_id("prompt", prompt)
        for a, b in itertools.combinations(responses, 2):
            rows.append({"prompt_id": prompt_id, "prompt": prompt, "a_id": stable_id("response", prompt_id, a), "a": a,
                         "b_id": stable_id("response", prompt_id, b), "b": b})
    if not rows:
        raise PairsError(f"pairs file {path} holds no pairs")
    return pl.DataFrame(rows, schema=PAIR_INPUT)


def _is_prompt_with_responses(record: object) -> bool:
    return isinstance(record, dict) and isinstance(record.get("prompt"), str) and \
        isinstance(record.get("responses"), list) and len(record["responses"]) >= 2 and \
        all(isinstance(r, str) for r in record["responses"])


def label_batch(run: Run, number: int, pairs: pl.DataFrame, constitution: Constitution) -> Written:
    """Every pair becomes one kept row (its soft label, a tie included) or one failed row."""
    llm = run.llm("judge")
    rows = pairs.to_dicts()
    ids = [stable_id(STAGE, p["a_id"], p["b_id"], llm.provider, llm.model, constitution.name) for p in rows]
    principles = [constitution.draw(f"{run.config.seed}:{pair_id}", 1)[0] for pair_id in ids]
    verdicts = judge_pairs(run, llm, [(p["prompt"], p["a"], p["b"], pr) for p, pr in zip(rows, principles)], STAGE)
    template = load("cai_choose")
    kept, failed = [], []
    for pair_id, pair, principle, verdict in zip(ids, rows, principles, verdicts):
        row = {"id": pair_id, "prompt_id": pair["prompt_id"], "prompt": pair["prompt"], "response_a_id": pair["a_id"],
               "response_b_id": pair["b_id"], "response_a": pair["a"], "response_b": pair["b"],
               "principle": principle.name, "choice_forward": verdict.choice_forward,
               "choice_reversed": verdict.choice_reversed, "reason_forward": verdict.reason_forward,
               "reason_reversed": verdict.reason_reversed, "label": verdict.label,
               "tie": None if verdict.label is None else verdict.label == 0.5,
               **provenance(llm.provider, llm.model, template.name, template.version, verdict.result)}
        if verdict.result.ok:
            kept.append(row)
        else:
            failed.append({**row, "error": verdict.result.error})
    return run.write_batch(STAGE, number, kept=frame(kept, STAGE), failed=frame(failed, STAGE))


def dpo(labels: pl.DataFrame) -> pl.DataFrame:
    """DPO rows with the preferred answer as `chosen` and `label` = P(chosen better than rejected): 1, or 0.5 for a tie."""
    a_wins = pl.col("label") >= 0.5
    return labels.select(
        "prompt",
        pl.when(a_wins).then("response_a").otherwise("response_b").alias("chosen"),
        pl.when(a_wins).then("response_b").otherwise("response_a").alias("rejected"),
        pl.max_horizontal("label", 1 - pl.col("label")).alias("label"),
        "tie", "principle", "prompt_id",
        pl.when(a_wins).then("response_a_id").otherwise("response_b_id").alias("chosen_id"),
        pl.when(a_wins).then("response_b_id").otherwise("response_a_id").alias("rejected_id"),
        "id",
    )


def write_dataset(run: Run) -> int:
    labels = dpo(run.read(STAGE))
    run.store.write_parquet(f"{run.run_id}/datasets/cai_labels.parquet", labels)
    return labels.height
