"""The review step in Prefect: the sample as a table artifact, then the flow run suspends for a reviewer's form.

Suspended, the run holds no worker: it ends, and when a person answers (the UI's form, or
`POST /api/flow_runs/{id}/resume` with `run_input`) Prefect schedules it again, on any worker; it resumes from the
store's checkpoints, so nothing is made again, and applies the decision. A run started without a deployment (the
command line) cannot suspend: it stops before the datasets, and `alignflow review RUN_DIR` answers it.
"""
from __future__ import annotations

import itertools
import time
from typing import Any, Literal

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment, flow_run
from pydantic import Field, create_model

from alignflow.engine.run import Run
from alignflow.review import decisions as review
from alignflow.review.shown import markdown
from tasks.report import run_location


class ReviewInput(RunInput):
    """A reviewer's answer for the stage: what the form in the Prefect UI asks above the rows."""

    decision: Literal["approve", "reject", "reject_rows"] = Field(
        "approve", title="Decision", description="approve: the rows go on, but those you decide otherwise below; "
                                                 "reject: none of the stage's rows do; reject_rows: all but the rows "
                                                 "listed below")
    rows: list[str] = Field(default_factory=list, title="Rows to reject",
                            description="with reject_rows: the `id` of each row to leave out")
    note: str = Field("", title="Note", description="why; stored with the decision in the run's review.json")


def review_form(stage: str, sample: list[str], shown: dict[str, str] | None = None) -> type[RunInput]:
    """The form for one stage's sample: the stage's decision, then one decision field per sampled row (default
    `keep`) under the row itself (`shown`: Markdown by id); for instructions, a field for the edited text of each."""
    choices = review.row_decisions(stage)
    fields: dict[str, Any] = {}
    for n, row_id in enumerate(sample, 1):
        described = f"{(shown or {}).get(row_id, '')}\n\n**Decide:** {' / '.join(choices)}".strip()
        fields[f"row_{n}"] = (Literal[choices], Field("keep", title=f"Row {n} ({row_id})", description=described))
        if "edit" in choices:
            fields[f"edit_{n}"] = (str, Field("", title=f"Row {n}: edited text",
                                              description="with edit: the instruction as it should read"))
    return create_model(f"Review_{stage}", __base__=ReviewInput, **fields)


def per_row(stage: str, sample: list[str], answer: RunInput) -> dict[str, Any]:
    """The per-row decisions a form's answer makes (rows left at `keep` included: a person saw and kept them)."""
    out: dict[str, Any] = {}
    for n, row_id in enumerate(sample, 1):
        verdict = getattr(answer, f"row_{n}", "keep")
        out[row_id] = {"decision": "edit", "text": getattr(answer, f"edit_{n}", "")} if verdict == "edit" else verdict
    return out


def review_stages(run: Run, stages: list[str] | None = None) -> list[str]:
    """Each of `stages` (default: those of `review.stages`, and any decided outside the run, e.g. in Argilla),
    reviewed in turn; a stage decided before is applied again, which changes nothing. Returns the stages still
    waiting for a reviewer (only a run started without a deployment has any: it stops there)."""
    waiting = []
    if stages is None:
        decided_outside = [s for s, e in review.read(run.store, run.run_id).items() if "decision" in e]
        stages = list(dict.fromkeys([*run.config.review.stages, *decided_outside]))
    for stage in stages:
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
    rows = review.sample_rows(run.store, run.run_id, stage).to_dicts()
    _publish(run, stage, entry, rows)
    if deployment.id is None:
        return False
    problem = ""
    shown = {row["id"]: markdown(row) for row in rows}
    # an answer that cannot be recorded (an unknown row id) is asked again, saying why; each question has its own
    # suspension key, so a resumed run replays the answers given and stops at the first question not answered
    for attempt in itertools.count():
        form = review_form(stage, entry["sample"], shown).with_initial_data(description=problem + _ask(run, stage, entry))
        answer = suspend_flow_run(wait_for_input=form, timeout=int(max(left, 1)), key=f"review-{stage}-{attempt}")
        if "decision" in review.read(run.store, run.run_id)[stage]:  # answered from the command line meanwhile
            return True
        decided = {i: d for i, d in per_row(stage, entry["sample"], answer).items() if i not in answer.rows}
        try:
            review.decide(run.store, run.run_id, stage, answer.decision, answer.rows, answer.note, by="prefect",
                          per_row=decided)
            return True
        except review.ReviewError as exc:
            get_run_logger().warning("review: %s; asking again", exc)
            problem = f"**The last answer was not recorded: {exc}.**\n\n"


def _publish(run: Run, stage: str, entry: dict, rows: list[dict]) -> None:
    create_table_artifact(table=[{k: _short(v) for k, v in row.items()} for row in rows],
                          key=f"review-{stage}",
                          description=f"run {run.run_id}: {len(entry['sample'])} of {entry['rows']} {stage} rows "
                                      f"for review")


def _ask(run: Run, stage: str, entry: dict) -> str:
    """The form's text: what to decide, and by when; each row is shown above its own decision field."""
    deadline = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(entry["deadline"]))
    choices = ", ".join(f"`{c}`" for c in review.row_decisions(stage))
    drawn = ("drawn at random" if len(entry.get("random", entry["sample"])) == len(entry["sample"]) else
             f"{len(entry['random'])} drawn at random, the rest where the judge is least sure")
    return (f"### Review {stage} of run `{run.run_id}`\n\n{len(entry['sample'])} of the {entry['rows']} rows, {drawn} "
            f"(all of them: `{run_location(run.store, run.run_id)}/{stage}/kept`). Decide each row below ({choices}; "
            f"default `keep`), and the stage: `approve` sends on every row not dropped, `reject` none. With no answer "
            f"by {deadline}, the run decides `{run.config.review.on_timeout}`.\n")


def _short(value, limit: int = 400):
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "…"
    return value
