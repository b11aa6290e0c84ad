"""Responses: each batch (a slice of one instruction round's kept rows) is one task run."""
from __future__ import annotations

from prefect import flow

from alignflow.config import PipelineConfig
from alignflow.engine.run import Run
from flows import deployed
from flows.batches import run_stage, writing
from tasks.stages import STOPS, refusal_state


@flow(name="responses")
def responses_flow(config: PipelineConfig, run_id: str) -> int:
    """Responses for every kept instruction of the run; returns how many responses are kept."""
    run = Run(deployed.config_of(config, None), run_id)
    with writing(run):
        try:
            return run_stage(run, "responses")["kept"]
        except STOPS as exc:  # the run stops with its one line, no traceback; the same run id resumes
            return refusal_state(exc)
