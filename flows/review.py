"""The review step in Prefect: the sample as a table artifact, then the flow run suspends for a reviewer's form.

Suspended, the run holds no worker: it ends, and when a person answers (the UI's form, or
`POST /api/flow_runs/{id}/resume` with `run_input`) Prefect schedules it again, on any worker; it resumes from the
store's checkpoints, so nothing is made again, and applies the decision. A run started without a deployment (the
command line) cannot suspend: it stops before the datasets, and `alignflow review RUN_DIR` answers it.
"""
from __future__ import annotations

import itertools
import time
from typing import Literal

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment, flow_run
from pydantic import Field

from alignflow.engine.run import Run
from alignflow.review import decisions as review


class ReviewInput(RunInput):
    """A reviewer's answer: what the form in the Prefect UI asks."""

    decision: Literal["approve", "reject", "reject_rows"] = Field(
        title="Decision", description="approve: the rows go into the datasets; reject: none of them do; reject_rows: "
                                      "all but the rows listed below")
    rows: list[str] = Field(default_factory=list, title="Rows to reject",
                            description="with reject_rows: the `id` of each row to leave out (from the table above)")
    note: str = Field("", title="Note", description="why; stored with the decision in the run's review.json")


def review_stages(run: Run) -> list[str]:
    """Each stage in `review.stages`, reviewed in turn. Returns the stages still waiting for a reviewer (only a run
    started without a deployment has any: it stops there)."""
    waiting = []
    decided_outside = [s for s, e in review.read(run.store, run.run_id).items() if "decision" in e]  # e.g. Argilla
    for stage in dict.fromkeys([*run.config.review.stages, *decided_outside]):
        if not _decided(run, stage):
            waiting.append(stage)
            continue
        if moved := review.apply(run, stage):
            get_run_logger().info("review: %d %s rows rejected by the reviewer", moved, stage)
    return waiting


def _decided(run: Run, stage: str) -> bool:
    entry = review.request(run, stage, flow_run.id if deployment.id else None)  # only a deployment's run suspends
    if "decision" in entry:
        return True
    config = run.config.review
    left = review.seconds_left(entry)
    if left <= 0:
        review.decide(run.store, run.run_id, stage, config.on_timeout,
                      note=f"nobody answered within {config.timeout_h:g} h", by="timeout")
        return True
    _publish(run, stage, entry)
    if deployment.id is None:
        return False
    problem = ""
    # an answer that cannot be recorded (an unknown row id) is asked again, saying why; each question has its own
    # suspension key, so a resumed run replays the answers given and stops at the first question not answered
    for attempt in itertools.count():
        form = ReviewInput.with_initial_data(description=problem + _ask(run, stage, entry))
        answer = suspend_flow_run(wait_for_input=form, timeout=int(max(left, 1)), key=f"review-{stage}-{attempt}")
        if "decision" in review.read(run.store, run.run_id)[stage]:  # answered from the command line meanwhile
            return True
        try:
            review.decide(run.store, run.run_id, stage, answer.decision, answer.rows, answer.note, by="prefect")
            return True
        except review.ReviewError as exc:
            get_run_logger().warning("review: %s; asking again", exc)
            problem = f"**The last answer was not recorded: {exc}.**\n\n"


def _publish(run: Run, stage: str, entry: dict) -> None:
    rows = review.sample_rows(run.store, run.run_id, stage)
    create_table_artifact(table=[{k: _short(v) for k, v in row.items()} for row in rows.to_dicts()],
                          key=f"review-{stage}",
                          description=f"run {run.run_id}: {len(entry['sample'])} of {entry['rows']} {stage} rows "
                                      f"for review")


def _ask(run: Run, stage: str, entry: dict) -> str:
    """The form's text: what to decide, by when, and the sampled rows themselves."""
    rows = review.sample_rows(run.store, run.run_id, stage)
    shown = [c for c in ("id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected") if c in rows.columns]
    table = [f"| {' | '.join(shown)} |", "|" + "---|" * len(shown)]
    table += [f"| {' | '.join(_cell(row[c]) for c in shown)} |" for row in rows.to_dicts()]
    deadline = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(entry["deadline"]))
    return (f"### Review {stage} of run `{run.run_id}`\n\n{len(entry['sample'])} of the {entry['rows']} rows, drawn "
            f"at random (all of them: `{run.url}/{stage}/kept`; these in full: the `review-{stage}` artifact). "
            f"Approve them, reject the stage, or reject the rows you list by id. With no answer by {deadline}, the "
            f"run decides `{run.config.review.on_timeout}`.\n\n" + "\n".join(table) + "\n")


def _cell(value, limit: int = 90) -> str:
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    text = " ".join(text.split()).replace("|", "\\|")
    return text[:limit] + "…" if len(text) > limit else text


def _short(value, limit: int = 400):
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "…"
    return value
