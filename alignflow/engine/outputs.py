"""A batch's outputs in the store, by the gate's verdict: its outcome files when it passed (or a person released
it), else the whole batch in quarantine with its validation report. A quarantined batch never reaches the outcome
directories later stages read, unless a person released that very content (`alignflow quarantine`)."""
from __future__ import annotations

import polars as pl

from alignflow.config import GateConfig
from alignflow.engine.store import RunDir, Store
from alignflow.quality.gate import OUTCOME_ORDER, QUARANTINE, GateResult, apply_decision, check
from alignflow.quality.screens import screen


def write_batch(store: Store, run_id: str, stage: str, number: int, outcomes: dict[str, pl.DataFrame],
                config: GateConfig) -> tuple[dict[str, int], GateResult | None]:
    """Screen one batch (contamination, personal data), validate it and write it; returns its row counts by outcome
    and the gate's result (None when the stage is not gated or the batch has no rows)."""
    run_dir = RunDir(store, run_id)
    counts = {o: 0 for o in (*OUTCOME_ORDER, QUARANTINE)}
    outcomes, screening = screen(stage, outcomes, config)
    checked = check(stage, number, outcomes, config, screening)
    result = checked[0] if checked else None
    if checked:
        result, report, frame = checked
        if not result.passed:
            apply_decision(result, decision_for(store, run_id, result.name))
            result.report_key = run_dir.report_key(stage, number)
            store.write_json(result.report_key, {"gate": result.to_dict(), "summary": result.summary(),
                                                 "validation": report})
        if result.quarantined:
            store.write_parquet(run_dir.batch_key(stage, QUARANTINE, number), frame.drop("duplicate"))
            counts[QUARANTINE] = frame.height
            return counts, result
    for outcome, df in outcomes.items():
        counts[outcome] = df.height
        if df.height:
            store.write_parquet(run_dir.batch_key(stage, outcome, number), df)
    return counts, result


def release(store: Store, run_id: str, stage: str, number: int, content: str) -> tuple[dict[str, int], GateResult] | None:
    """A quarantined batch a person has since released (for this very content) moves to its outcome directories,
    from the rows quarantine holds: nothing is asked again. None when no release applies."""
    decision = decision_for(store, run_id, f"{stage}/{number}")
    if decision is None or decision["action"] != "release" or decision["content_hash"] != content:
        return None
    run_dir = RunDir(store, run_id)
    report = run_dir.report_key(stage, number)
    result = GateResult.from_dict(store.read_json(report)["gate"])
    apply_decision(result, decision)
    held = store.read_parquet(run_dir.batch_key(stage, QUARANTINE, number))
    counts = {o: 0 for o in (*OUTCOME_ORDER, QUARANTINE)}
    for outcome in OUTCOME_ORDER:
        rows = held.filter(pl.col("outcome") == outcome).drop("outcome")
        counts[outcome] = rows.height
        if rows.height:
            store.write_parquet(run_dir.batch_key(stage, outcome, number), rows)
    result.report_key = report
    store.write_json(report, {**store.read_json(report), "gate": result.to_dict(), "summary": result.summary()})
    store.delete(run_dir.batch_key(stage, QUARANTINE, number))
    return counts, result


def read_decisions(store: Store, run_id: str) -> list[dict]:
    """Every release or drop made by hand on a run, oldest first. They live outside the stage directories,
    which a stage rewrites on every run."""
    return RunDir(store, run_id).read_json(RunDir(store, run_id).quarantine_key, {"decisions": []})["decisions"]


def decision_for(store: Store, run_id: str, name: str) -> dict | None:
    """The latest hand decision on batch `name` (`stage/number`), if any."""
    return next((d for d in reversed(read_decisions(store, run_id)) if d["batch"] == name), None)
