"""Instructions: Self-Instruct (and Evol-Instruct) rounds until the target number of kept instructions or the round limit."""
from __future__ import annotations

from prefect import flow, get_run_logger

from alignflow.config import PipelineConfig
from alignflow.run import Run
from tasks.stages import instructions_round, load_seeds_task


@flow(name="instructions")
def instructions_flow(config: PipelineConfig, run_id: str) -> int:
    """Each round is one task and one batch (number = round); it sees every row the earlier rounds kept."""
    run = Run(config, run_id)
    logger = get_run_logger()
    cfg = run.config.instructions
    load_seeds_task(run)
    run.reset_stage("instructions")
    kept = requests = 0
    for round_no in range(cfg.max_rounds):
        counts = instructions_round(run, round_no)
        requests += counts["requests"]
        kept = run.read("instructions").height  # what is on disk: a quarantined batch adds nothing
        logger.info("round %d: %s (kept so far %d of %d)", round_no, dict(counts), kept, cfg.target)
        if kept >= cfg.target:
            break
    run.record_stage("instructions", requests, note="inputs are requests; each yields candidates or one failed row")
    return kept
