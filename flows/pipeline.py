"""The whole pipeline, top to bottom like the diagram:
seeds → instructions → responses → (constitution) → judge → pairs → datasets. Every batch passes its gate."""
from __future__ import annotations

import uuid

from prefect import flow

from alignflow.config import PipelineConfig
from alignflow.run import Run
from flows.constitution import constitution_flow
from flows.instructions import instructions_flow
from flows.preferences import judge_flow, pairs_flow
from flows.responses import responses_flow
from tasks.gate import final_state
from tasks.stages import write_datasets, write_manifest


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


@flow(name="pipeline")
def pipeline(config: PipelineConfig, run_id: str | None = None) -> dict:
    """Run every stage on one run id; returns the manifest. The same run id resumes from the request cache."""
    run = Run(config, run_id or new_run_id())
    instructions_flow(config, run.run_id)
    responses_flow(config, run.run_id)
    if config.constitution.enabled:
        constitution_flow(config, run.run_id)
    judge_flow(config, run.run_id)
    pairs_flow(config, run.run_id)
    write_datasets(run)
    return final_state(run.store, run.run_id, write_manifest(run))  # Completed, naming any quarantined batch
