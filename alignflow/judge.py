"""Judging: a judge model rates each response 1-5 with a rationale, as structured output."""
from __future__ import annotations

import polars as pl
from pydantic import BaseModel, Field

from alignflow.prompts import load
from alignflow.records import frame, provenance, stable_id
from alignflow.run import Run

STAGE = "judgments"


class Rating(BaseModel):
    rationale: str = Field(max_length=400)
    rating: int = Field(ge=1, le=5)


def judge_batch(run: Run, number: int, responses: pl.DataFrame) -> dict[str, int]:
    llm = run.llm("judge")
    template = load("judge")
    rows = responses.to_dicts()
    requests = [llm.request([{"role": "user", "content": template.render(instruction=r["instruction"], response=r["response"])}],
                            schema=Rating, temperature=0.0, max_tokens=min(llm.config.max_tokens, 256)) for r in rows]
    results = run.generate(llm, requests, STAGE)

    kept, failed = [], []
    for row, result in zip(rows, results):
        out = {"id": stable_id(STAGE, row["id"], llm.provider, llm.model), "response_id": row["id"],
               "instruction_id": row["instruction_id"], **provenance(llm.provider, llm.model, template.name, template.version, result)}
        if result.ok:
            kept.append({**out, "rating": result.parsed.rating, "rationale": result.parsed.rationale})
        else:
            failed.append({**out, "error": result.error})
    return run.write_batch(STAGE, number, kept=frame(kept, STAGE), failed=frame(failed, STAGE))
