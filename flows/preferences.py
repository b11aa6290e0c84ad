"""Judging and preference pairs: the judge rates every response, pairs come from the ratings."""
from __future__ import annotations

from prefect import flow

from alignflow import pairs
from alignflow.config import PipelineConfig
from alignflow.run import Run
from tasks.stages import judge_batch, make_pairs


@flow(name="judge")
def judge_flow(config: PipelineConfig, run_id: str) -> int:
    run = Run(config, run_id)
    size = run.config.judge.batch_size
    responses = run.read("responses")
    instructions = responses["instruction_id"].n_unique()
    run.reset_stage("judgments")
    futures = [judge_batch.submit(run, n, start, size) for n, start in enumerate(range(0, instructions, size))]
    counts = [f.result() for f in futures]
    run.record_stage("judgments", responses.height, note="inputs are responses; each is judged or failed")
    return sum(c["kept"] for c in counts)


@flow(name="pairs")
def pairs_flow(config: PipelineConfig, run_id: str) -> dict[str, int]:
    run = Run(config, run_id)
    run.reset_stage("pairs")
    counts = make_pairs(run)
    strategy = run.config.pairs.strategy
    run.record_stage("pairs", pairs.inputs(run.read("judgments"), strategy),
                     note="inputs are candidate pairs" if strategy == "all_pairs" else "inputs are judged instructions")
    return counts
