"""Judging and preference pairs on an existing run: batch `n` of each follows responses batch `n`."""
from __future__ import annotations

from prefect import flow

from alignflow.config import PipelineConfig
from alignflow.engine.run import Run
from flows import deployed
from flows.batches import run_stage, writing
from tasks.stages import STOPS, refusal_state


@flow(name="judge")
def judge_flow(config: PipelineConfig, run_id: str) -> int:
    """Judge every kept response of the run; returns how many judgments are kept."""
    run = Run(deployed.config_of(config, None), run_id)
    with writing(run):
        try:
            return run_stage(run, "judgments")["kept"]
        except STOPS as exc:  # the run stops with its one line, no traceback; the same run id resumes
            return refusal_state(exc)


@flow(name="pairs")
def pairs_flow(config: PipelineConfig, run_id: str) -> dict[str, int]:
    """Pairs from every batch of judgments; returns rows per outcome."""
    run = Run(deployed.config_of(config, None), run_id)
    with writing(run):
        return run_stage(run, "pairs")
