"""Quarantined batches decided in the Prefect UI: the run, its other batches done, suspends with a form that shows
each batch's failed expectations and asks which to release and which to drop.

Answered (the paused run's Resume form, or `POST /api/flow_runs/{id}/resume` with `run_input`), the decisions are
recorded as `alignflow quarantine release|drop` records them, and the run makes what follows from the released
batches. A form that cannot be recorded whole (a batch not in quarantine, no reason) records nothing and is asked
again. Each question has its own suspension key, derived from the decisions made so far: a resumed run replays the
answers already given and stops at the first question not answered.
"""
from __future__ import annotations

import itertools

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment
from pydantic import Field

from alignflow.engine.outputs import read_decisions
from alignflow.engine.run import Run
from alignflow.quality.gate import cell
from alignflow.review import quarantine


class QuarantineInput(RunInput):
    """What the form in the Prefect UI asks about the quarantined batches (`reason` is required)."""

    release: list[str] = Field(default_factory=list, title="Release",
                               description="batches to let through, e.g. responses/3: the run goes on with their rows")
    drop: list[str] = Field(default_factory=list, title="Drop",
                            description="batches that stay out of the datasets (their rows stay in quarantine)")
    reason: str = Field(title="Reason", description="why: recorded with each decision")


def ask_about_quarantine(run: Run) -> bool:
    """In a deployment's run with `gate.ask`, wait for a person's decisions on the batches in quarantine, until
    none is left undecided or an answer names none. True when a batch was released: the run then makes what
    follows from it."""
    if deployment.id is None or not run.config.gate.ask:
        return False
    released = False
    while waiting := quarantine.undecided(run.store, run.run_id):
        made = _ask(run, waiting)
        if not made:  # an answer naming no batch: the rest stay in quarantine and the run ends with them
            break
        released |= any(d["action"] == "release" for d in made)
    return released


def _ask(run: Run, waiting: list[quarantine.Entry]) -> list[dict]:
    form = _form(run, waiting)
    create_markdown_artifact(markdown=form, key="quarantine", description=f"run {run.run_id}: {len(waiting)} "
                                                                           "batches wait for a decision")
    asked, problem = len(read_decisions(run.store, run.run_id)), ""
    for attempt in itertools.count():
        answer = suspend_flow_run(wait_for_input=QuarantineInput.with_initial_data(description=problem + form),
                                  key=f"quarantine-{asked}-{attempt}")
        try:
            made = quarantine.decide_all(run.store, run.run_id, answer.release, answer.drop, answer.reason)
        except quarantine.QuarantineError as exc:
            get_run_logger().warning("quarantine: %s; asking again", exc)
            problem = f"**The last answer was not recorded: {exc}.**\n\n"
            continue
        get_run_logger().info("quarantine: %s", ", ".join(f"{d['batch']} {d['action']}" for d in made) or "none")
        return made


def _form(run: Run, waiting: list[quarantine.Entry]) -> str:
    lines = [f"### {len(waiting)} batch{'es' if len(waiting) > 1 else ''} of run `{run.run_id}` in quarantine", "",
             "Each failed its data-quality gate. **Release** a batch to let its rows go on (the run then makes what "
             "follows from them), or **drop** it (its rows stay in quarantine, out of the datasets). Batches named in "
             "neither list are asked about again; an answer naming none leaves them all in quarantine. Each batch's "
             "full report is its `gate-<stage>-<batch>` artifact.", ""]
    for entry in waiting:
        result = entry.result
        lines.append(f"- **{entry.name}**: {entry.rows} rows; failed: "
                     + "; ".join(f"{c.name()}: {c.finding()}"
                                 + (f" (e.g. `{cell(c.examples[0])[:100]}`)" if c.examples else "")
                                 for c in result.failed))
    return "\n".join(lines) + "\n"
