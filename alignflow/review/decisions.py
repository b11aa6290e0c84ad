"""A person's review of a stage's output before the next stage or the datasets: a sample shown, decisions recorded.

The request (the rows sampled and why each was drawn, the deadline) and the decision live in `<run>/review.json`,
so they hold on whichever machine resumes the run, however much later. A decision is one for the stage (approve:
the rows not decided otherwise go on; reject: none do) and one per sampled row: pairs `keep`, `drop`, `swap` (the
rejected answer is the better one: the pair is flipped) or `tie`; instructions `keep`, `drop` or `edit` (the text
replaced, the original recorded). Rows that leave move from the stage's kept rows to its rejected rows with the
reason, and the batch checkpoints are counted again: the manifest still adds up, and a resume makes nothing again.
"""
from __future__ import annotations

import time
from typing import Any, Literal

import polars as pl

from alignflow.engine.run import Run
from alignflow.engine.store import RunDir, Store
from alignflow.review import agreement, sampling

REVIEW = "review.json"
REASON = "rejected by reviewer"  # the whole stage rejected, or the rows `reject_rows` lists
DROPPED = "dropped by reviewer"
TIE = "a tie, by reviewer"
REASONS = (REASON, DROPPED, TIE)
Action = Literal["approve", "reject", "reject_rows"]
ACTIONS = ("approve", "reject", "reject_rows")
ROW_DECISIONS = {"pairs": ("keep", "drop", "swap", "tie"), "instructions": ("keep", "drop", "edit")}
LEAVES = {"drop": DROPPED, "tie": TIE}
SHOWN_COLUMNS = {"pairs": ["id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected", "margin",
                           "chosen_scores", "rejected_scores", "chosen_rationale", "rejected_rationale", "chosen_model",
                           "rejected_model"],
                 "instructions": ["id", "instruction", "source", "round", "evolution", "max_similarity"]}


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
    return pl.concat([kept, rejected.filter(pl.col("reason").is_in(REASONS))], how="diagonal_relaxed")


def row_decisions(stage: str) -> tuple[str, ...]:
    return ROW_DECISIONS.get(stage, ("keep", "drop"))


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
    if stage == "instructions" and isinstance(run.config.instructions.target, int):
        kept = kept.head(run.config.instructions.target)  # those that go on: a round may keep more than needed
    uncertain = None
    if stage == "pairs" and config.sample_by == "uncertain" and kept.height:
        uncertain = sampling.uncertainty(kept, run.dir.read("judgments"))
    share = config.random_share if uncertain is not None else 1.0
    drawn = sampling.draw(kept, config.sample, run.seed % 2**32, uncertain, share) if kept.height else []
    stages[stage] = {"stage": stage, "requested": now(), "deadline": time.time() + config.timeout_h * 3600,
                     "rows": kept.height, "sample": [d.id for d in drawn], "why": {d.id: d.why for d in drawn},
                     "random": [d.id for d in drawn if d.random], "flow_run_id": flow_run_id}
    _write(run.store, run.run_id, stages)
    return stages[stage]


def sample_rows(store: Store, run_id: str, stage: str) -> pl.DataFrame:
    """The sampled rows as the reviewer sees them; a pair with the judge's rationale for each response."""
    entry = read(store, run_id)[stage]
    rows = reviewed_rows(store, run_id, stage).filter(pl.col("id").is_in(entry["sample"])).sort("id")
    if stage == "pairs":
        rows = _with_rationales(store, run_id, rows)
    why = pl.DataFrame({"id": entry["sample"], "why": [entry.get("why", {}).get(i, sampling.RANDOM)
                                                       for i in entry["sample"]]}, schema={"id": pl.String, "why": pl.String})
    rows = rows.join(why, on="id", how="left")
    shown = [c for c in SHOWN_COLUMNS.get(stage, rows.columns) if c in rows.columns and c != "why"]
    return rows.select(*shown, "why")


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
           by: str = "cli", asked: dict[str, Any] | None = None,
           per_row: dict[str, str | dict[str, Any]] | None = None) -> dict[str, Any]:
    """Record a decision on a stage waiting for review (or on `asked`, a review asked outside the run, when the run
    has none). `rows` are the ids `reject_rows` leaves out; `per_row` maps ids to a row decision (`swap`, or
    `{"decision": "edit", "text": ...}`); each id must be a row of the stage. A stage decided once keeps its
    decision: a second one is an error, not an overwrite. Nothing is written unless it is recorded."""
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
    if action == "reject_rows" and not rows:
        raise ReviewError("reject_rows needs the ids of the rows to reject")
    if action != "reject_rows" and rows:
        raise ReviewError(f"row ids go with reject_rows, not {action}")
    decided = {key.strip(): _row_decision(stage, key, value) for key, value in (per_row or {}).items()}
    if overlap := [r for r in rows if r in decided and decided[r]["decision"] != "drop"]:
        raise ReviewError(f"row {overlap[0]} is both rejected and decided {decided[overlap[0]]['decision']}")
    decided |= {r: {"decision": "drop", "reason": REASON} for r in rows}
    if decided:
        known = reviewed_rows(store, run_id, stage)
        if unknown := [r for r in decided if r not in set(known["id"].to_list())]:
            raise ReviewError(f"no {stage} row with id {', '.join(unknown[:5])}"
                              f"{f' (and {len(unknown) - 5} more)' if len(unknown) > 5 else ''} in run {run_id}")
        if edits := [r for r, d in decided.items() if d["decision"] == "edit"]:
            original = dict(known.filter(pl.col("id").is_in(edits)).select("id", "instruction").iter_rows())
            for r in edits:
                decided[r]["original"] = original[r]
    leaving = [r for r, d in decided.items() if d["decision"] in LEAVES]
    stages[stage]["decision"] = {"action": action, "rows": rows or sorted(leaving), "per_row": decided,
                                 "note": note.strip(), "by": by, "at": now()}
    _write(store, run_id, stages)
    return stages[stage]["decision"]


def _row_decision(stage: str, row_id: str, value: str | dict[str, Any]) -> dict[str, Any]:
    """One row's decision, checked: known to the stage, and an edit with its new text."""
    found = {"decision": value} if isinstance(value, str) else dict(value)
    allowed = row_decisions(stage)
    if found.get("decision") not in allowed:
        raise ReviewError(f"row {row_id}: a {stage} row is decided {', '.join(allowed)}, not {found.get('decision')!r}")
    if found["decision"] == "edit":
        text = found.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ReviewError(f"row {row_id}: an edit needs the new text (ID=TEXT)")
        found["text"] = text.strip()
    elif set(found) - {"decision", "note"}:
        raise ReviewError(f"row {row_id}: only an edit takes a text")
    return found


def decide_outside(store: Store, run_id: str, stage: str, seen: list[str], action: str, rows: list[str], note: str,
                   by: str, per_row: dict[str, Any] | None = None) -> dict[str, Any]:
    """A decision made outside the run (labels from Argilla): the stage's review is recorded as asked about the
    rows people saw, if the run did not ask, then decided as any other."""
    kept = RunDir(store, run_id).kept_count(stage)
    if not kept and stage not in read(store, run_id):
        raise ReviewError(f"run {run_id} has no kept {stage} to review")
    asked = {"stage": stage, "requested": now(), "deadline": time.time(), "rows": kept, "sample": seen,
             "flow_run_id": None}
    return decide(store, run_id, stage, action, rows, note, by, asked, per_row)


def apply(run: Run, stage: str) -> int:
    """Carry out a decision on the stage's batches: rows leaving move to the rejected rows with the reason, swapped
    pairs are flipped, edited instructions take the new text. Returns how many rows left. Idempotent: a batch records
    the decision it has applied, so a resumed run applies it once (and again only to a batch made again). The
    checkpoint's `kept_hash` stays that of what the batch made: the rounds after it are not made again."""
    decision = read(run.store, run.run_id).get(stage, {}).get("decision")
    if decision is None:
        return 0
    per_row = decision.get("per_row") or {r: {"decision": "drop", "reason": REASON} for r in decision["rows"]}
    reasons = {r: d.get("reason", LEAVES[d["decision"]]) for r, d in per_row.items() if d["decision"] in LEAVES}
    swaps = [r for r, d in per_row.items() if d["decision"] == "swap"]
    edits = {r: d["text"] for r, d in per_row.items() if d["decision"] == "edit"}
    moved = 0
    for record in run.dir.checkpoints(stage):
        if record.get("review_applied") == decision["at"]:
            continue
        number = record["number"]
        kept = run.dir.read_batch(stage, number)
        why = (pl.lit(REASON) if decision["action"] == "reject" else
               pl.col("id").replace_strict(reasons, default=None, return_dtype=pl.String))
        kept = kept.with_columns(why.alias("_leaving"))
        leaving = kept.filter(pl.col("_leaving").is_not_null())
        staying = kept.filter(pl.col("_leaving").is_null()).drop("_leaving")
        staying = _edited(_swapped(staying, swaps), edits)
        if leaving.height:
            before = run.dir.read_batch(stage, number, "rejected")
            rejected = pl.concat([before, leaving.drop("reason", strict=False).rename({"_leaving": "reason"})],
                                 how="diagonal_relaxed")
            run.dir.write_batch(stage, number, "rejected", rejected)
        run.dir.write_batch(stage, number, "kept", staying)
        counts = {**record["counts"], "kept": staying.height, "rejected": record["counts"]["rejected"] + leaving.height}
        run.dir.write_checkpoint(stage, number, {**record, "counts": counts, "review_applied": decision["at"],
                                                 "reviewed": record.get("reviewed", 0) + leaving.height})
        moved += leaving.height
    return moved


SIDES = ("", "_id", "_model", "_scores")


def _swapped(pairs: pl.DataFrame, ids: list[str]) -> pl.DataFrame:
    """Pairs whose rejected answer a person found better, flipped: chosen and rejected trade texts, ids, models,
    scores; the margin (the judge's, chosen minus rejected) turns negative."""
    if not ids or not pairs.height:
        return pairs
    flip = pl.col("id").is_in(ids)
    columns = [(f"chosen{s}", f"rejected{s}") for s in SIDES] + [("score_chosen", "score_rejected")]
    swapped = [pl.when(flip).then(pl.col(b)).otherwise(pl.col(a)).alias(a) for a, b in columns if a in pairs.columns]
    swapped += [pl.when(flip).then(pl.col(a)).otherwise(pl.col(b)).alias(b) for a, b in columns if a in pairs.columns]
    out = pairs.with_columns(swapped)
    return out.with_columns((pl.col("score_chosen") - pl.col("score_rejected")).alias("margin")) \
        if "margin" in out.columns else out


def _edited(instructions: pl.DataFrame, edits: dict[str, str]) -> pl.DataFrame:
    if not edits or "instruction" not in instructions.columns:
        return instructions
    return instructions.with_columns(pl.col("id").replace_strict(edits, default=pl.col("instruction"),
                                                                 return_dtype=pl.String).alias("instruction"))


def summary(run: Run) -> dict[str, Any]:
    """What the manifest says of the run's reviews: per stage, waiting or the decision, the rows it took out, and
    for pairs the judge's agreement with the reviewer (on the random part of the sample)."""
    out = {}
    for stage, entry in read(run.store, run.run_id).items():
        decision = entry.get("decision")
        if not decision:
            out[stage] = {"sampled": len(entry["sample"]), "requested": entry["requested"], "decision": None,
                          "waiting": True}
            continue
        said = [d["decision"] for d in (decision.get("per_row") or {}).values()]
        out[stage] = {"sampled": len(entry["sample"]), "requested": entry["requested"], "decision": decision["action"],
                      "by": decision["by"], "at": decision["at"], "note": decision["note"],
                      "rows_rejected": _rejected(run, stage),
                      **{f"rows_{verdict}": said.count(verdict) for verdict in ("swap", "tie", "edit") if verdict in said}}
        if stage == "pairs" and {"keep", "swap"} & set(said):
            out[stage]["agreement"] = judge_agreement(run.store, run.run_id, entry)
    return out


def judge_agreement(store: Store, run_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The judge against the reviewer's per-row decisions, from the pairs as the judge made them."""
    per_row = entry["decision"]["per_row"]
    rows = reviewed_rows(store, run_id, "pairs").filter(pl.col("id").is_in(list(per_row)))
    flipped = rows.filter(pl.col("margin") < 0)["id"].to_list()  # the judge's chosen always scores higher
    judged = {r["id"]: r for r in _swapped(rows, flipped).select("id", "chosen_scores", "rejected_scores")
              .iter_rows(named=True)}
    found = agreement.of_pairs(per_row, judged, set(entry.get("random", entry["sample"])))
    return {**found, "text": agreement.line(found)}


def held_by_agreement(run: Run, reviews: dict[str, Any]) -> str | None:
    """Why the datasets are held: the judge's agreement with the reviewer below `review.min_agreement`."""
    least = run.config.review.min_agreement
    found = (reviews.get("pairs") or {}).get("agreement")
    if least is None or found is None:
        return None
    if found["low"] is None:
        return f"review.min_agreement is {least:g}, but no pair drawn at random was decided keep or swap"
    if found["low"] < least:
        return (f"the judge's agreement with the reviewer, {found['text']}, has a lower bound below "
                f"review.min_agreement ({least:g})")
    return None


def _rejected(run: Run, stage: str) -> int:
    return sum(r.get("reviewed", 0) for r in run.dir.checkpoints(stage))
