"""The run's manifest: rows per stage and outcome, and tokens, counted from what is on disk."""
from __future__ import annotations

import time

import polars as pl

from alignflow.store import OUTCOMES, Store

STAGES = ("seeds", "instructions", "responses", "revisions", "judgments", "pairs", "cai_labels")


def build(store: Store, run_id: str) -> dict:
    stages = {}
    totals = {"input_tokens": 0, "output_tokens": 0}
    for stage in STAGES:
        if not store.list(f"{run_id}/{stage}/"):
            continue
        counts: dict = {}
        for outcome in OUTCOMES:
            df = store.read_dir(f"{run_id}/{stage}/{outcome}")
            counts[outcome] = df.height
            for col in totals:
                if col in df.columns:
                    n = int(df[col].fill_null(0).sum())
                    counts[col] = counts.get(col, 0) + n
                    totals[col] += n
        counts["quarantined_batches"] = sum(k.endswith(".parquet") for k in store.list(f"{run_id}/{stage}/quarantine/"))
        if store.exists(f"{run_id}/{stage}/stage.json"):
            counts["inputs"] = store.read_json(f"{run_id}/{stage}/stage.json")["inputs"]
        stages[stage] = counts
    datasets = {}
    for key in store.list(f"{run_id}/datasets/"):
        name = key.rsplit("/", 1)[-1].removesuffix(".parquet")
        datasets[name] = store.read_parquet(key).height if key.endswith(".parquet") else None
    return {"run_id": run_id, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stages": stages,
            "datasets": datasets, "tokens": totals}


def write(store: Store, run_id: str) -> dict:
    manifest = build(store, run_id)
    store.write_json(f"{run_id}/manifest.json", manifest)
    return manifest


def table(manifest: dict) -> list[list[str]]:
    rows = [["stage", "inputs", *OUTCOMES, "batches q.", "tokens in", "tokens out"]]
    for stage, counts in manifest["stages"].items():
        rows.append([stage, str(counts.get("inputs", "")), *(str(counts.get(o, 0)) for o in OUTCOMES),
                     str(counts.get("quarantined_batches", 0)),
                     str(counts.get("input_tokens", 0)), str(counts.get("output_tokens", 0))])
    return rows
