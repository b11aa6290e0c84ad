"""The run's manifest: rows per stage and outcome, tokens and requests, from the batch checkpoints alone.

Counting from checkpoints (and dataset sizes from Parquet footers) keeps the manifest cheap at any run size:
no batch file is read.
"""
from __future__ import annotations

import time
from typing import Any

from alignflow.store import Store

STAGES = ("seeds", "instructions", "responses", "revisions", "judgments", "pairs", "cai_labels")
OUTCOMES = ("kept", "rejected", "failed", "quarantine")
SUMMED = ("inputs", "requests", "cached", "input_tokens", "output_tokens")


def stage_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    counts = {o: sum(r["counts"][o] for r in records) for o in OUTCOMES}
    counts |= {k: sum(r.get(k) or 0 for r in records) for k in SUMMED}
    counts["batches"] = len(records)
    counts["quarantined_batches"] = sum(r.get("gate") in ("quarantined", "dropped") for r in records)
    return counts


def build(store: Store, run_id: str, extra: dict[str, Any] | None = None) -> dict:
    stages = {}
    for stage in STAGES:
        keys = [k for k in store.list_dir(f"{run_id}/{stage}/checkpoints") if k.endswith(".json")]
        if keys:
            stages[stage] = stage_counts([store.read_json(k) for k in keys])
    datasets = {key.rsplit("/", 1)[-1].removesuffix(".parquet"): store.row_count(key)
                for key in store.list_dir(f"{run_id}/datasets") if key.endswith(".parquet")}
    tokens = {k: sum(s[k] for s in stages.values()) for k in ("input_tokens", "output_tokens")}
    return {"run_id": run_id, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stages": stages,
            "datasets": datasets, "tokens": tokens, **(extra or {})}


def write(store: Store, run_id: str, extra: dict[str, Any] | None = None) -> dict:
    """Count the run again; what an earlier write added (`extra`, e.g. the target) stays unless given anew."""
    key = f"{run_id}/manifest.json"
    before = store.read_json(key) if store.exists(key) else {}
    manifest = build(store, run_id)
    manifest = {**{k: v for k, v in before.items() if k not in manifest}, **manifest, **(extra or {})}
    store.write_json(key, manifest)
    return manifest


def table(manifest: dict) -> list[list[str]]:
    rows = [["stage", "inputs", *OUTCOMES, "batches q.", "tokens in", "tokens out"]]
    for stage, counts in manifest["stages"].items():
        rows.append([stage, str(counts.get("inputs", "")), *(str(counts.get(o, 0)) for o in OUTCOMES),
                     str(counts.get("quarantined_batches", 0)),
                     str(counts.get("input_tokens", 0)), str(counts.get("output_tokens", 0))])
    return rows


# the stages a dataset is made through, in order
MADE_THROUGH = {"dpo": ("instructions", "responses", "judgments", "pairs"),
                "kto": ("instructions", "responses", "judgments", "pairs"),
                "sft": ("instructions", "responses", "judgments"),
                "cai_sft": ("instructions", "responses", "revisions"), "cai_dpo": ("instructions", "responses", "revisions")}


def why_empty(manifest: dict, dataset: str) -> str:
    """Which stage emptied a dataset, and how its rows ended, in one line."""
    for stage in MADE_THROUGH.get(dataset, ()):
        counts = manifest["stages"].get(stage)
        if counts is None:
            return f"the {stage} stage did not run"
        if counts["kept"] == 0:
            ended = ", ".join(f"{counts[o]} {o if o != 'quarantine' else 'quarantined'}"
                              for o in ("rejected", "failed", "quarantine") if counts[o])
            hint = " (see `alignflow quarantine list`)" if counts["quarantine"] else ""
            return f"the {stage} stage kept none of its {counts['inputs']} inputs ({ended or 'none made'}){hint}"
    return "every stage kept rows, but none made a row of it"
