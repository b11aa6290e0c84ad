"""Responses: `per_instruction` distinct samples per instruction, each row tagged with its model and sampling."""
from __future__ import annotations

import polars as pl

from alignflow.prompts import load
from alignflow.records import frame, provenance, stable_id
from alignflow.run import Run

STAGE = "responses"


def respond_batch(run: Run, number: int, instructions: pl.DataFrame) -> dict[str, int]:
    """Every (instruction, sample) becomes exactly one kept or failed row."""
    llm = run.llm(STAGE)
    template = load("respond")
    k = run.config.responses.per_instruction
    jobs = [(row, sample) for row in instructions.to_dicts() for sample in range(k)]
    requests = [llm.request([{"role": "user", "content": template.render(instruction=row["instruction"])}], sample=sample)
                for row, sample in jobs]
    results = run.generate(llm, requests, STAGE)

    kept, rejected, failed = [], [], []
    for (row, sample), request, result in zip(jobs, requests, results):
        out = {"id": stable_id(STAGE, row["id"], llm.provider, llm.model, sample), "instruction_id": row["id"],
               "instruction": row["instruction"], "sample": sample, "temperature": request.temperature,
               **provenance(llm.provider, llm.model, template.name, template.version, result)}
        if not result.ok:
            failed.append({**out, "error": result.error})
        elif not result.text.strip():
            rejected.append({**out, "response": result.text, "reason": "empty response"})
        else:
            kept.append({**out, "response": result.text.strip()})
    return run.write_batch(STAGE, number, kept=frame(kept, STAGE), rejected=frame(rejected, STAGE),
                           failed=frame(failed, STAGE))
