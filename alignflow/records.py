"""Row schemas per stage output, content-derived ids, and the provenance every LLM-made row keeps."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import polars as pl

from alignflow.llm.types import Result

PROVENANCE = {
    "provider": pl.String,
    "model": pl.String,
    "template": pl.String,
    "template_version": pl.String,
    "raw_output": pl.String,
    "input_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "latency_s": pl.Float64,
    "attempts": pl.Int64,
    "finish_reason": pl.String,
    "cached": pl.Boolean,
}
OUTCOME_COLUMNS = {"reason": pl.String, "error": pl.String}

INSTRUCTION = {"id": pl.String, "instruction": pl.String, "source": pl.String, "parent_ids": pl.List(pl.String), "round": pl.Int64}
RESPONSE = {"id": pl.String, "instruction_id": pl.String, "instruction": pl.String, "response": pl.String,
            "sample": pl.Int64, "temperature": pl.Float64}
JUDGMENT = {"id": pl.String, "response_id": pl.String, "instruction_id": pl.String, "rating": pl.Int64,
            "rationale": pl.String}
PAIR = {"id": pl.String, "instruction_id": pl.String, "prompt": pl.String, "chosen": pl.String, "rejected": pl.String,
        "chosen_id": pl.String, "rejected_id": pl.String, "score_chosen": pl.Float64, "score_rejected": pl.Float64,
        "margin": pl.Float64}

SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "seeds": INSTRUCTION,
    "instructions": {**INSTRUCTION, **PROVENANCE},
    "responses": {**RESPONSE, **PROVENANCE},
    "judgments": {**JUDGMENT, **PROVENANCE},
    "pairs": PAIR,
}


def schema_for(stage: str) -> dict[str, pl.DataType]:
    """The stage's columns plus `reason` and `error`, so every outcome of a stage shares one schema."""
    return {**SCHEMAS[stage], **OUTCOME_COLUMNS}


def stable_id(*parts: Any) -> str:
    """A short hash of content and lineage: the same row made again gets the same id."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def provenance(provider: str, model: str, template: str, version: str, result: Result) -> dict[str, Any]:
    return {
        "provider": provider,
        "model": model,
        "template": template,
        "template_version": version,
        "raw_output": result.text,
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
        "latency_s": round(result.latency_s, 4),
        "attempts": result.attempts,
        "finish_reason": result.finish_reason,
        "cached": result.cached,
    }


def frame(rows: list[dict[str, Any]], stage: str) -> pl.DataFrame:
    schema = schema_for(stage)
    return pl.DataFrame([{k: row.get(k) for k in schema} for row in rows], schema=schema, orient="row") if rows \
        else pl.DataFrame(schema=schema)
