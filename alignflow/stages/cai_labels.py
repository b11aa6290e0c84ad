"""RL-CAI preference labels: a judge picks the better of two answers under a drawn principle, in both orders.

Asking twice with the answers swapped exposes position bias. The label is the agreement of the two choices:
P(a better than b) is 1 or 0 when they agree, 0.5 (a tie) when the choice followed the position instead.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import polars as pl
from pydantic import BaseModel, Field

from alignflow.engine.step import Answer, Batch, BatchRef, Job, Outcomes, Step, ask, slices
from alignflow.llm.client import LLM
from alignflow.prompts import load
from alignflow.records import stable_id
from alignflow.stages import input_files
from alignflow.stages.constitution import Constitution, Principle

if TYPE_CHECKING:
    from alignflow.engine.run import Run

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
    """Both orders' choices for one pair, mapped back to "a" / "b"; `label` is None when a call failed."""

    answers: tuple[Answer, Answer]
    label: float | None = None
    choice_forward: str | None = None
    choice_reversed: str | None = None
    reason_forward: str | None = None
    reason_reversed: str | None = None

    @property
    def ok(self) -> bool:
        return all(a.result.ok for a in self.answers)


def soft_label(forward: Choice, reversed_: Choice) -> float:
    """P(a better than b): forward shows a as (A), reversed shows a as (B)."""
    return ((forward.choice == "A") + (reversed_.choice == "B")) / 2


def choice_jobs(llm: LLM, items: list[tuple[str, str, str, Principle]], data: list) -> list[Job]:
    """(prompt, a, b, principle) → two jobs each, forward then reversed; `data` tags each item's pair of jobs."""
    template = load("cai_choose")
    jobs = []
    for (prompt, a, b, principle), tag in zip(items, data):
        for label, (first, second) in (("forward", (a, b)), ("reversed", (b, a))):
            text = template.render(prompt=prompt, response_a=first, response_b=second,
                                   question=principle.choice_question)
            jobs.append(ask(llm, template, text, label=f"choice {label}", data=tag, schema=Choice, temperature=0.0,
                            max_tokens=min(llm.config.max_tokens, 384)))
    return jobs


def verdict(forward: Answer, reversed_: Answer) -> Verdict:
    found = Verdict(answers=(forward, reversed_))
    if found.ok:
        f, r = forward.result.parsed, reversed_.result.parsed
        found.label = soft_label(f, r)
        found.choice_forward = "a" if f.choice == "A" else "b"
        found.choice_reversed = "a" if r.choice == "B" else "b"
        found.reason_forward, found.reason_reversed = f.reason, r.reason
    return found


def pairs_of(responses: pl.DataFrame) -> pl.DataFrame:
    """Every two kept responses to the same instruction, in id order."""
    rows = []
    for _, group in responses.sort("id").group_by("instruction_id", maintain_order=True):
        for a, b in itertools.combinations(group.to_dicts(), 2):
            rows.append({"prompt_id": a["instruction_id"], "prompt": a["instruction"], "a_id": a["id"],
                         "a": a["response"], "b_id": b["id"], "b": b["response"]})
    return pl.DataFrame(rows, schema=PAIR_INPUT)


def check_run(run: "Run") -> None:
    """A PairsError unless the run has an instruction with two kept responses to compare."""
    if pairs_of(run.dir.read("responses")).is_empty():
        raise PairsError(f"run {run.run_id} has no instruction with two kept responses in {run.store.url}")


def pairs_from_file(path: str | Path) -> pl.DataFrame:
    """JSONL, one prompt a line: `prompt` and `responses` (two or more); every two of them make a pair."""
    rows = []
    for place, record in input_files.records(path, "pairs", PairsError):
        if not _is_prompt_with_responses(record):
            raise PairsError(f"{place}: expected a `prompt` string and `responses`, a list of 2 or more strings")
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


class CaiLabels(Step):
    """Batch `n` labels every two kept answers of responses batch `n`, or a slice of a pairs file."""

    stage = STAGE
    templates = ("cai_choose",)

    def __init__(self, run: "Run", constitution: Constitution, pairs: str | None = None):
        super().__init__(run)
        self.constitution, self.pairs_file = constitution, pairs

    def settings(self) -> dict:
        return {"constitution": self.constitution.fingerprint(), "llm": self.llm_settings(self.config.llm_for("judge"))}

    def refs(self) -> list[BatchRef]:
        if self.pairs_file:
            return slices(0, None, pairs_from_file(self.pairs_file).height, self.config.constitution.batch_size)
        return self.following("responses")

    def load(self, ref: BatchRef) -> Batch:
        if self.pairs_file:
            items = pairs_from_file(self.pairs_file).slice(ref.start, ref.stop - ref.start)
        else:
            items = pairs_of(self.run.dir.read_batch("responses", ref.source))
        return self.batch_of(ref, items)

    def jobs(self, batch: Batch) -> list[Job]:
        llm = self.run.llm("judge")
        rows = batch.inputs.to_dicts()
        ids = [stable_id(STAGE, p["a_id"], p["b_id"], llm.provider, llm.model, self.constitution.name) for p in rows]
        principles = [self.constitution.draw(f"{self.run.seed}:{pair_id}", 1)[0] for pair_id in ids]
        batch.state = list(zip(ids, rows, principles))
        return choice_jobs(llm, [(p["prompt"], p["a"], p["b"], pr) for p, pr in zip(rows, principles)],
                           list(range(len(rows))))

    def rows(self, batch: Batch, answered: list[Answer]) -> Outcomes:
        """Every pair becomes one kept row (its soft label, a tie included) or one failed row."""
        out = Outcomes()
        for (pair_id, pair, principle), (forward, reversed_) in zip(batch.state, zip(answered[::2], answered[1::2])):
            found = verdict(forward, reversed_)
            row = {"id": pair_id, "prompt_id": pair["prompt_id"], "prompt": pair["prompt"], "response_a_id": pair["a_id"],
                   "response_b_id": pair["b_id"], "response_a": pair["a"], "response_b": pair["b"],
                   "principle": principle.name, "choice_forward": found.choice_forward,
                   "choice_reversed": found.choice_reversed, "reason_forward": found.reason_forward,
                   "reason_reversed": found.reason_reversed, "label": found.label,
                   "tie": None if found.label is None else found.label == 0.5}
            if found.ok:
                out.keep(row, forward, reversed_)
            else:
                out.fail(row, forward, reversed_)
        return out


def dpo(labels: pl.DataFrame) -> pl.DataFrame:
    """DPO rows with the preferred answer as `chosen`; a tie (label 0.5: the two orders disagreed) says nothing
    about which is better, so it is no DPO pair and is left out."""
    a_wins = pl.col("label") > 0.5
    return labels.filter(pl.col("label") != 0.5).select(
        "prompt",
        pl.when(a_wins).then("response_a").otherwise("response_b").alias("chosen"),
        pl.when(a_wins).then("response_b").otherwise("response_a").alias("rejected"),
        pl.max_horizontal("label", 1 - pl.col("label")).alias("label"),
        "tie", "principle", "prompt_id",
        pl.when(a_wins).then("response_a_id").otherwise("response_b_id").alias("chosen_id"),
        pl.when(a_wins).then("response_b_id").otherwise("response_a_id").alias("rejected_id"),
        "id",
    )


def write_dataset(run: "Run") -> int:
    labels = dpo(run.dir.read(STAGE))
    run.store.write_parquet(run.dir.dataset_key("cai_labels"), labels)
    return labels.height
