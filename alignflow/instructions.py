"""Instruction rounds: Self-Instruct prompts and (optionally) Evol-Instruct rewrites, then the gate.

A round is one batch. Its candidates pass the heuristic filters, then dedup against everything the run
already holds (the seeds and the kept pool) and against the earlier candidates of the same round.
Every candidate ends as a kept row or a rejected row with its reason; a failed request is a failed row.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Annotated

import polars as pl
from pydantic import BaseModel, Field

from alignflow import evol, filters
from alignflow.dedup import Index, make_index
from alignflow.llm.client import LLM
from alignflow.llm.types import Request, Result
from alignflow.prompts import Template, load
from alignflow.records import frame, provenance, schema_for, stable_id
from alignflow.run import Run

STAGE = "instructions"
SELF_INSTRUCT = "self_instruct"


class NewTasks(BaseModel):
    # bounded lengths keep a small sampled model from running on inside one string
    instructions: list[Annotated[str, Field(max_length=400)]] = Field(min_length=1, max_length=20)


@dataclass(frozen=True)
class Job:
    """One request and what its rows inherit; an evolution also keeps its method and the original text."""

    request: Request
    template: Template
    source: str
    parent_ids: list[str]
    evolution: str | None = None
    original: str | None = None


def _sample_shown(rng: random.Random, human: list[dict], machine: list[dict], shown: int, shown_machine: int) -> list[dict]:
    """k in-context tasks: mostly human seeds, a few from the machine pool once it has them (6 + 2 in the paper)."""
    from_machine = rng.sample(machine, min(shown_machine, len(machine)))
    from_human = rng.sample(human, min(shown - len(from_machine), len(human)))
    tasks = from_human + from_machine
    rng.shuffle(tasks)
    return tasks


def self_instruct_jobs(run: Run, llm: LLM, rng: random.Random, human: list[dict], machine: list[dict]) -> list[Job]:
    cfg = run.config.instructions
    template = load(SELF_INSTRUCT)
    jobs = []
    for _ in range(cfg.prompts_per_round):
        shown = _sample_shown(rng, human, machine, cfg.shown, cfg.shown_machine)
        examples = json.dumps({"instructions": [t["instruction"] for t in shown]}, indent=1, ensure_ascii=False)
        text = template.render(examples=examples, count=cfg.per_prompt)
        request = llm.request([{"role": "user", "content": text}], schema=NewTasks,
                              temperature=max(llm.config.temperature, 0.7))
        jobs.append(Job(request, template, SELF_INSTRUCT, [t["id"] for t in shown]))
    return jobs


def evol_jobs(run: Run, llm: LLM, rng: random.Random, round_no: int, accepted: list[dict], pool: pl.DataFrame) -> list[Job]:
    """`evol.per_round` accepted instructions (seeds or kept), those not evolved yet first, one method each."""
    cfg = run.config.instructions.evol
    evolved_before = set(pool.filter(pl.col("source") == evol.SOURCE)["parent_ids"].explode().drop_nulls())
    return [Job(evol.request(llm, row["instruction"], method, sample=round_no), evol.template(method), evol.SOURCE,
                [row["id"]], evolution=method, original=row["instruction"])
            for row, method in evol.pick(rng, accepted, evolved_before, cfg.per_round, cfg.evolutions)]


def candidates(job: Job, result: Result, round_no: int, llm: LLM) -> list[dict]:
    """The rows one answer proposes; `reason` is already set for a truncated text or a failed evolution."""
    prov = provenance(llm.provider, llm.model, job.template.name, job.template.version, result)
    cut = filters.truncated(result.finish_reason)
    if job.evolution:
        texts = [result.parsed.instruction.strip()]
        reasons = [cut or evol.eliminate(texts[0], job.original)]
    else:  # only the last task of a cut-off list is incomplete (as Self-Instruct's own code treats it)
        texts = [t.strip() for t in result.parsed.instructions]
        reasons = [None] * (len(texts) - 1) + [cut]
    return [{"id": stable_id(STAGE, text, job.parent_ids, position), "instruction": text, "source": job.source,
             "parent_ids": job.parent_ids, "round": round_no, "evolution": job.evolution, "reason": reason, **prov}
            for position, (text, reason) in enumerate(zip(texts, reasons))]


def _failed(job: Job, result: Result, round_no: int, llm: LLM) -> dict:
    return {"id": stable_id(STAGE, "failed", job.request.messages, job.request.sample), "source": job.source,
            "parent_ids": job.parent_ids, "round": round_no, "evolution": job.evolution, "error": result.error,
            **provenance(llm.provider, llm.model, job.template.name, job.template.version, result)}


def split_duplicates(index: Index | None, rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Kept rows (with their similarity to the pool) and duplicates (with the reason), decided in order."""
    if index is None or not rows:
        return rows, []
    decisions = index.add([r["id"] for r in rows], [r["instruction"] for r in rows])
    columns = {name: values for name, values in decisions.extra.items() if name in schema_for(STAGE)}
    kept, duplicates = [], []
    for i, row in enumerate(rows):
        score = float(decisions.score[i])
        row = {**row, "max_similarity": score, **{name: values[i] for name, values in columns.items()}}
        if decisions.keep[i]:
            kept.append(row)
        else:
            duplicates.append({**row, "reason": f"duplicate of {decisions.duplicate_of[i]} ({index.method} {score:.2f})"})
    return kept, duplicates


def seeded_index(run: Run, seeds: pl.DataFrame, pool: pl.DataFrame) -> Index | None:
    """The stage's dedup index holding everything the run already has; None when dedup is off."""
    cfg = run.config.instructions.dedup
    if cfg.method is None:
        return None
    index = make_index(cfg)
    held = pl.concat([seeds.select("id", "instruction"), pool.select("id", "instruction")])
    index.seed(held["id"].to_list(), held["instruction"].to_list())
    return index


def run_round(run: Run, round_no: int, seeds: pl.DataFrame, pool: pl.DataFrame) -> dict[str, int]:
    """One round, written as batch `round_no`: returns its row counts per outcome and the requests it sent."""
    llm = run.llm(STAGE)
    rng = random.Random(f"{run.config.seed}:{round_no}")
    human, machine = seeds.to_dicts(), pool.to_dicts()
    jobs = self_instruct_jobs(run, llm, rng, human, machine)
    if run.config.instructions.evol.enabled:
        jobs += evol_jobs(run, llm, rng, round_no, human + machine, pool)
    results = run.generate(llm, [job.request for job in jobs], f"{STAGE} round {round_no}")

    checks = filters.for_instructions(run.config.instructions)
    passed, rejected, failed = [], [], []
    for job, result in zip(jobs, results):
        if not result.ok:
            failed.append(_failed(job, result, round_no, llm))
            continue
        for row in candidates(job, result, round_no, llm):
            row["reason"] = row["reason"] or filters.first_rejection(row["instruction"], checks)
            (rejected if row["reason"] else passed).append(row)
    kept, duplicates = split_duplicates(seeded_index(run, seeds, pool), passed)
    counts = run.write_batch(STAGE, round_no, kept=frame(kept, STAGE), rejected=frame(rejected + duplicates, STAGE),
                             failed=frame(failed, STAGE))
    counts["requests"] = len(jobs)
    return counts
