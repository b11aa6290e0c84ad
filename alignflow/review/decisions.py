"""A person's review of a stage's output before it becomes a dataset: a sample shown, a decision recorded.

The request (the rows sampled, the deadline) and the decision (approve, reject, or reject listed rows; who, when,
a note) live in `<run>/review.json`, so they hold on whichever machine resumes the run, however much later.
Rejected rows move from the stage's kept rows to its rejected rows with the reason `rejected by reviewer`, and the
batch checkpoints are counted again: the manifest still adds up, and a resume does not make the batches again.
"""
from __future__ import annotations

import time
from typing import Any, Literal

import polars as pl

from alignflow.engine.run import Run
from alignflow.engine.store import RunDir, Store
from alignflow.records import content_hash

REVIEW = "review.json"
REASON = "rejected by reviewer"
Action = Literal["approve", "reject", "reject_rows"]
ACTIONS = ("approve", "reject", "reject_rows")
SHOWN_COLUMNS = {"pairs": ["id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected", "margin",
                           "chosen_rationale", "rejected_rationale", "chosen_model", "rejected_model"]}


class ReviewError(Exception):
    """A review that cannot be recorded: no such stage waiting, unknown row ids, a bad action. One line."""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read(store: Store, run_id: str) -> dict[str, dict[str, Any]]:
    """Every stage's review of a run: {stage: {requested, deadline, sample, decision?}}."""
    return RunDir(store, run_id).read_json(RunDir(store, run_id).review_key, {"stages": {}})["stages"]


def _write(store: Store, run_id: str, stages: dict[str, dict[str, Any]]) -> None:
    store.write_json(RunDir(store, run_id).review_key, {"run_id": run_id, "stages": stages})


def reviewed_rows(store: Store, run_id: str, stage: str) -> pl.DataFrame:
    """The rows a reviewer decides on: the stage's kept rows and those a reviewer already rejected."""
    kept, rejected = (RunDir(store, run_id).read(stage, outcome) for outcome in ("kept", "rejected"))
    return pl.concat([kept, rejected.filter(pl.col("reason") == REASON)])


def request(run: Run, stage: str, flow_run_id: str | None = None) -> dict[str, Any]:
    """The stage's review request, made once (a resumed run shows the reviewer the same rows): a sample of the
    kept rows drawn with the run's seed, and the deadline."""
    stages = read(run.store, run.run_id)
    if stage in stages:
        if flow_run_id and stages[stage].get("flow_run_id") != flow_run_id and "decision" not in stages[stage]:
            stages[stage]["flow_run_id"] = flow_run_id  # where `alignflow review` sends its answer
            _write(run.store, run.run_id, stages)
        return stages[stage]
    config = run.config.review
    kept = run.dir.read(stage)
    sample = kept.sample(min(config.sample, kept.height), seed=run.seed % 2**32).sort("id") if kept.height else kept
    stages[stage] = {"stage": stage, "requested": now(), "deadline": time.time() + config.timeout_h * 3600,
                     "rows": kept.height, "sample": sample["id"].to_list(), "flow_run_id": flow_run_id}
    _write(run.store, run.run_id, stages)
    return stages[stage]


def sample_rows(store: Store, run_id: str, stage: str) -> pl.DataFrame:
    """The sampled rows as the reviewer sees them; a pair with the judge's rationale for each response."""
    ids = read(store, run_id)[stage]["sample"]
    rows = reviewed_rows(store, run_id, stage).filter(pl.col("id").is_in(ids)).sort("id")
    if stage == "pairs":
        rows = _with_rationales(store, run_id, rows)
    return rows.select([c for c in SHOWN_COLUMNS.get(stage, rows.columns) if c in rows.columns])


def _with_rationales(store: Store, run_id: str, pairs: pl.DataFrame) -> pl.DataFrame:
    """`chosen_rationale` and `rejected_rationale`: the judge's reason per aspect ("helpfulness: ...; honesty: ...")."""
    judged = RunDir(store, run_id).read("judgments")
    aspects = judged["rationales"].struct.fields if judged.height else []
    text = pl.concat_str([pl.when(pl.col("rationales").struct.field(a).is_not_null())
                          .then(pl.lit(f"{a}: ") + pl.col("rationales").struct.field(a)) for a in aspects],
                         separator="; ", ignore_nulls=True) if aspects else pl.lit(None, pl.String)
    reasons = judged.select(pl.col("response_id"), text.alias("rationale")).unique("response_id")
    for side in ("chosen", "rejected"):
        pairs = pairs.join(reasons.rename({"response_id": f"{side}_id", "rationale": f"{side}_rationale"}),
                           on=f"{side}_id", how="left")
    return pairs


def seconds_left(entry: dict[str, Any]) -> float:
    return entry["deadline"] - time.time()


def decide(store: Store, run_id: str, stage: str, action: str, rows: list[str] | None = None, note: str = "",
           by: str = "cli", asked: dict[str, Any] | None = None) -> dict[str, Any]:
    """Record a decision on a stage waiting for review (or on `asked`, a review asked outside the run, when the run
    has none). `rows` are the ids rejected by `reject_rows`; each must be a row of the stage. A stage decided once
    keeps its decision: a second one is an error, not an overwrite. Nothing is written unless it is recorded."""
    stages = read(store, run_id)
    if asked is not None:
        stages.setdefault(stage, asked)
    if stage not in stages:
        waiting = ", ".join(s for s, e in stages.items() if "decision" not in e) or "none"
        raise ReviewError(f"{stage} of run {run_id} is not waiting for review (waiting: {waiting})")
    if "decision" in stages[stage]:
        made = stages[stage]["decision"]
        raise ReviewError(f"{stage} of run {run_id} was already reviewed: {made['action']} by {made['by']} "
                          f"at {made['at']}")
    if action not in ACTIONS:
        raise ReviewError(f"decision must be one of {', '.join(ACTIONS)}, not {action!r}")
    rows = list(dict.fromkeys(r.strip() for r in rows or [] if r.strip()))
    if action == "reject_rows":
        if not rows:
            raise ReviewError("reject_rows needs the ids of the rows to reject")
        known = set(reviewed_rows(store, run_id, stage)["id"].to_list())
        if unknown := [r for r in rows if r not in known]:
            raise ReviewError(f"no {stage} row with id {', '.join(unknown[:5])}"
                              f"{f' (and {len(unknown) - 5} more)' if len(unknown) > 5 else ''} in run {run_id}")
    elif rows:
        raise ReviewError(f"row ids go with reject_rows, not {action}")
    stages[stage]["decision"] = {"action": action, "rows": rows, "note": note.strip(), "by": by, "at": now()}
    _write(store, run_id, stages)
    return stages[stage]["decision"]


def decide_outside(store: Store, run_id: str, stage: str, seen: list[str], action: str, rows: list[str], note: str,
                   by: str) -> dict[str, Any]:
    """A decision made outside the run (labels from Argilla): the stage's review is recorded as asked about the
    rows people saw, if the run did not ask, then decided as any other."""
    kept = RunDir(store, run_id).kept_count(stage)
    if not kept and stage not in read(store, run_id):
        raise ReviewError(f"run {run_id} has no kept {stage} to review")
    asked = {"stage": stage, "requested": now(), "deadline": time.time(), "rows": kept, "sample": seen,
             "flow_run_id": None}
    return decide(store, run_id, stage, action, rows, note, by, asked)


def apply(run: Run, stage: str) -> int:
    """Move the rows a decision rejects out of the stage's kept rows; returns how many moved. Idempotent: a resumed
    run applies the decision again and moves nothing new."""
    decision = read(run.store, run.run_id).get(stage, {}).get("decision")
    if decision is None or decision["action"] == "approve":
        return 0
    rejected_ids = set(decision["rows"])
    moved = 0
    for record in run.dir.checkpoints(stage):
        number = record["number"]
        kept = run.dir.read_batch(stage, number)
        out = pl.lit(True) if decision["action"] == "reject" else pl.col("id").is_in(rejected_ids)
        leaving = kept.filter(out)
        if not leaving.height:
            continue
        staying = kept.filter(~out)
        before = run.dir.read_batch(stage, number, "rejected")
        rejected = pl.concat([before, leaving.with_columns(pl.lit(REASON).alias("reason"))], how="diagonal_relaxed")
        run.dir.write_batch(stage, number, "rejected", rejected)
        run.dir.write_batch(stage, number, "kept", staying)
        counts = {**record["counts"], "kept": staying.height, "rejected": rejected.height}
        run.dir.write_checkpoint(stage, number, {**record, "counts": counts,
                                             "reviewed": record.get("reviewed", 0) + leaving.height,
                                             "kept_hash": content_hash(staying) if staying.height else None})
        moved += leaving.height
    return moved


def summary(run: Run) -> dict[str, Any]:
    """What the manifest says of the run's reviews: per stage, waiting or the decision and the rows it rejected."""
    out = {}
    for stage, entry in read(run.store, run.run_id).items():
        decision = entry.get("decision")
        out[stage] = {"sampled": len(entry["sample"]), "requested": entry["requested"],
                      **({"decision": decision["action"], "by": decision["by"], "at": decision["at"],
                          "note": decision["note"], "rows_rejected": _rejected(run, stage)} if decision
                         else {"decision": None, "waiting": True})}
    return out


def _rejected(run: Run, stage: str) -> int:
    return sum(r.get("reviewed", 0) for r in run.dir.checkpoints(stage))
