"""Responses: `per_instruction` samples per instruction from each generator model, each row tagged with its model
and sampling; optionally a system principle per sample (helpfulness, honesty, truthfulness), as UltraFeedback did."""
from __future__ import annotations

import random

import polars as pl

from alignflow.config import LLMConfig
from alignflow.llm.client import LLM
from alignflow.prompts import load
from alignflow.records import frame, provenance, stable_id
from alignflow.run import Run, Written

STAGE = "responses"


def generator_name(number: int, config: LLMConfig) -> str:
    return f"{number}:{config.provider}:{config.model_name}"


def _principle(run: Run, instruction_id: str, generator: int, sample: int) -> str | None:
    """A principle per sample, seeded by its lineage, so a rerun draws the same one."""
    names = run.config.responses.principles
    return random.Random(f"{run.config.seed}:{instruction_id}:{generator}:{sample}").choice(names) if names else None


def respond_batch(run: Run, number: int, instructions: pl.DataFrame) -> Written:
    """Every (instruction, generator, sample) becomes exactly one kept, rejected or failed row."""
    template = load("respond")
    k = run.config.responses.per_instruction
    generators = [(g, LLM(cfg, run.cache)) for g, cfg in enumerate(run.config.generators())]
    jobs = []  # (row, generator number, llm, sample, principle)
    for g, llm in generators:
        for row in instructions.to_dicts():
            for sample in range(k):
                jobs.append((row, g, llm, sample, _principle(run, row["id"], g, sample)))

    requests = []
    for row, _, llm, sample, principle in jobs:
        messages = [{"role": "user", "content": template.render(instruction=row["instruction"])}]
        if principle:
            messages.insert(0, {"role": "system", "content": load(f"principle_{principle}").render()})
        requests.append(llm.request(messages, sample=sample))
    results: dict[int, object] = {}
    for g, llm in generators:  # each generator keeps its own concurrency and rate limits
        idx = [i for i, job in enumerate(jobs) if job[1] == g]
        label = STAGE if len(generators) == 1 else f"{STAGE} ({llm.model})"
        results.update(zip(idx, run.generate(llm, [requests[i] for i in idx], label)))

    kept, rejected, failed = [], [], []
    for i, ((row, g, llm, sample, principle), request) in enumerate(zip(jobs, requests)):
        result = results[i]
        out = {"id": stable_id(STAGE, row["id"], llm.provider, llm.model, g, sample, principle),
               "instruction_id": row["id"], "instruction": row["instruction"],
               "generator": generator_name(g, llm.config), "sample": sample, "principle": principle,
               "temperature": request.temperature, "max_tokens": request.max_tokens,
               **provenance(llm.provider, llm.model, template.name, template.version, result)}
        if not result.ok:
            failed.append({**out, "error": result.error})
        elif not result.text.strip():
            rejected.append({**out, "response": result.text, "reason": "empty response"})
        else:
            kept.append({**out, "response": result.text.strip()})
    return run.write_batch(STAGE, number, kept=frame(kept, STAGE), rejected=frame(rejected, STAGE),
                           failed=frame(failed, STAGE))
