"""Judging and preference pairs on an existing run: batch `n` of each follows responses batch `n`."""
from __future__ import annotations

from prefect import flow

from alignflow.config import PipelineConfig
from alignflow.run import Run
from alignflow.step import BatchRef
from flows import deployed
from flows.batches import run_stage, writing


def _following(run: Run, stage: str) -> list[BatchRef]:
    return [BatchRef(r["number"], r["number"]) for r in run.checkpoints(stage)]


@flow(name="judge")
def judge_flow(config: PipelineConfig, run_id: str) -> int:
    """Judge every kept response of the run; returns how many judgments are kept."""
    run = Run(deployed.config_of(config, None), run_id)
    with writing(run):
        return run_stage(run, "judgments", _following(run, "responses"))["kept"]


@flow(name="pairs")
def pairs_flow(config: PipelineConfig, run_id: str) -> dict[str, int]:
    """Pairs from every batch of judgments; returns rows per outcome."""
    run = Run(deployed.config_of(config, None), run_id)
    with writing(run):
        return run_stage(run, "pairs", _following(run, "judgments"))
