"""Responses: each batch of instructions is one task run."""
from __future__ import annotations

from prefect import flow

from alignflow.config import PipelineConfig
from alignflow.run import Run
from tasks.stages import responses_batch


@flow(name="responses")
def responses_flow(config: PipelineConfig, run_id: str) -> int:
    run = Run(config, run_id)
    cfg = run.config.responses
    total = run.read("instructions").height
    run.reset_stage("responses")
    futures = [responses_batch.submit(run, n, start, cfg.batch_size)
               for n, start in enumerate(range(0, total, cfg.batch_size))]
    counts = [f.result() for f in futures]
    run.record_stage("responses", total * cfg.per_instruction * len(config.generators()),
                     note="inputs are (instruction, model, sample) requests")
    return sum(c["kept"] for c in counts)
