"""Judging and preference pairs: the judge rates every response, pairs come from the ratings."""
from __future__ import annotations

from prefect import flow

from alignflow.config import PipelineConfig
from alignflow.run import Run
from tasks.stages import judge_batch, make_pairs


@flow(name="judge")
def judge_flow(config: PipelineConfig, run_id: str) -> int:
    run = Run(config, run_id)
    size = run.config.judge.batch_size
    total = run.read("responses").height
    run.reset_stage("judgments")
    futures = [judge_batch.submit(run, n, start, size) for n, start in enumerate(range(0, total, size))]
    counts = [f.result() for f in futures]
    run.record_stage("judgments", total)
    return sum(c["kept"] for c in counts)


@flow(name="pairs")
def pairs_flow(config: PipelineConfig, run_id: str) -> dict[str, int]:
    run = Run(config, run_id)
    run.reset_stage("pairs")
    counts = make_pairs(run)
    run.record_stage("pairs", run.read("judgments")["instruction_id"].n_unique())
    return counts
