"""Row schemas per stage output, content-derived ids, and the provenance every LLM-made row keeps."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import polars as pl

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
# why a row was rejected, why it failed, and what the gate redacted from its texts ("email in response")
OUTCOME_COLUMNS = {"reason": pl.String, "error": pl.String, "redacted": pl.List(pl.String)}

ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness", "overall")
ASPECT_SCORES = pl.Struct({a: pl.Float64 for a in ASPECTS})

INSTRUCTION = {"id": pl.String, "instruction": pl.String, "source": pl.String, "parent_ids": pl.List(pl.String),
               "round": pl.Int64, "evolution": pl.String, "max_similarity": pl.Float64, "mean_similarity": pl.Float64,
               "most_similar": pl.List(pl.Struct({"id": pl.String, "score": pl.Float64}))}
RESPONSE = {"id": pl.String, "instruction_id": pl.String, "instruction": pl.String, "response": pl.String,
            "generator": pl.String, "sample": pl.Int64, "principle": pl.String, "temperature": pl.Float64,
            "max_tokens": pl.Int64}
# one row per response; an aspect not judged is null; `rating` is the mean of the judged aspects
JUDGMENT = {"id": pl.String, "response_id": pl.String, "instruction_id": pl.String, "position": pl.Int64,
            **{a: pl.Float64 for a in ASPECTS}, "rating": pl.Float64, "rating_forward": pl.Float64,
            "rating_reversed": pl.Float64, "rationales": pl.Struct({a: pl.String for a in ASPECTS}),
            "inconsistent": pl.Boolean}  # `overall` far from the other aspects' mean (null: `overall` not judged)
PAIR = {"id": pl.String, "instruction_id": pl.String, "prompt": pl.String, "chosen": pl.String, "rejected": pl.String,
        "chosen_id": pl.String, "rejected_id": pl.String, "chosen_model": pl.String, "rejected_model": pl.String,
        "score_chosen": pl.Float64, "score_rejected": pl.Float64, "margin": pl.Float64, "strategy": pl.String,
        "chosen_scores": ASPECT_SCORES, "rejected_scores": ASPECT_SCORES}
# Constitutional AI: one row per answer critiqued and revised; `chain` holds every round, a skipped one with no revision
CHAIN_STEP = pl.Struct({"round": pl.Int64, "principle": pl.String, "critique": pl.String, "revision_needed": pl.Boolean,
                        "revision": pl.String})
REVISION = {"id": pl.String, "prompt_id": pl.String, "response_id": pl.String, "prompt": pl.String,
            "initial": pl.String, "initial_model": pl.String, "revision": pl.String, "changed": pl.Boolean,
            "rounds_revised": pl.Int64, "principles": pl.List(pl.String), "chain": pl.List(CHAIN_STEP),
            "constitution": pl.String, "judge_label": pl.Float64}
# RL-CAI: two answers compared under a principle in both orders; `label` is P(a better than b): 1, 0.5 (a tie) or 0
CAI_LABEL = {"id": pl.String, "prompt_id": pl.String, "prompt": pl.String, "response_a_id": pl.String,
             "response_b_id": pl.String, "response_a": pl.String, "response_b": pl.String, "principle": pl.String,
             "choice_forward": pl.String, "choice_reversed": pl.String, "reason_forward": pl.String,
             "reason_reversed": pl.String, "label": pl.Float64, "tie": pl.Boolean}

OUTCOMES = ("kept", "rejected", "failed", "quarantine")  # where every input row of a stage ends
# the rows of each stage's output, in pipeline order (the order manifests list them)
SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "seeds": INSTRUCTION,
    "instructions": {**INSTRUCTION, **PROVENANCE},
    "responses": {**RESPONSE, **PROVENANCE},
    "revisions": {**REVISION, **PROVENANCE},
    "judgments": {**JUDGMENT, **PROVENANCE},
    "pairs": PAIR,
    "cai_labels": {**CAI_LABEL, **PROVENANCE},
}


def schema_for(stage: str) -> dict[str, pl.DataType]:
    """The stage's columns plus `reason` and `error`, so every outcome of a stage shares one schema."""
    return {**SCHEMAS[stage], **OUTCOME_COLUMNS}


VOLATILE = ("latency_s", "cached", "attempts")  # differ when the same rows are made again from known answers


def content_hash(frame: pl.DataFrame) -> str:
    """A hash of what a frame holds, the same when the same rows are made again from known answers."""
    stable = frame.drop([c for c in VOLATILE if c in frame.columns])
    return hashlib.sha256(stable.write_ndjson().encode()).hexdigest()[:16]


def stable_id(*parts: Any) -> str:
    """A short hash of content and lineage: the same row made again gets the same id."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def frame(rows: list[dict[str, Any]], stage: str) -> pl.DataFrame:
    schema = schema_for(stage)
    return pl.DataFrame([{k: row.get(k) for k in schema} for row in rows], schema=schema, orient="row") if rows \
        else pl.DataFrame(schema=schema)
