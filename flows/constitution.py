"""Constitutional AI: critique → revision rounds (SL-CAI), and AI preference labels under principles (RL-CAI)."""
from __future__ import annotations

from prefect import flow, get_run_logger

from alignflow.config import LLMOverride, PipelineConfig
from alignflow.engine.run import Run
from alignflow.stages import cai_labels
from alignflow.stages.constitution import load_constitution
from flows import deployed
from flows.batches import run_stage, writing
from tasks.constitution import write_cai_datasets, write_cai_labels
from tasks.stages import STOPS, refusal_state, start_run, write_card, write_manifest


@flow(name="constitution")
def constitution_flow(config: PipelineConfig, run_id: str, prompts: str | None = None,
                      initial_llm: LLMOverride | None = None) -> dict:
    """Revise the answers to `prompts` (a JSONL file; None: the run's responses, or else its instructions).

    `initial_llm` overrides the responses stage's llm for the initial answers. Returns rows per outcome and the
    sizes of `datasets/cai_sft` and `datasets/cai_dpo`.
    """
    run = Run(deployed.config_of(config, None), run_id)
    options = {"constitution": load_constitution(config.constitution.file), "initial": initial_llm, "prompts": prompts}
    options["constitution"].check_rounds(config.constitution.rounds)
    with writing(run):
        try:
            start_run(run, ["revisions"], {"revisions": options}, ["revisions"])
            rows = run_stage(run, "revisions", options)
        except STOPS as exc:  # the run stops with its one line, no traceback; the same run id resumes
            return refusal_state(exc)
        datasets = write_cai_datasets(run)
        write_manifest(run)
        write_card(run)
    get_run_logger().info("revisions: %s; datasets: %s", rows, datasets)
    return {"rows": rows, "datasets": datasets}


@flow(name="cai-labels")
def cai_labels_flow(config: PipelineConfig, run_id: str, pairs: str | None = None) -> dict:
    """Label pairs of answers (`pairs`: a JSONL file; None: every two responses to one instruction in the run).

    Returns rows per outcome, the number of ties (the two orders disagreed) and the size of `datasets/cai_labels`.
    """
    run = Run(deployed.config_of(config, None), run_id)
    options = {"constitution": load_constitution(config.constitution.file), "pairs": pairs}
    with writing(run):
        try:
            start_run(run, ["cai_labels"], {"cai_labels": options}, ["cai_labels"])
            rows = run_stage(run, "cai_labels", options)
        except STOPS as exc:
            return refusal_state(exc)
        labelled = write_cai_labels(run)
        write_manifest(run)
        write_card(run)
        ties = int(run.dir.read(cai_labels.STAGE)["tie"].sum())
    get_run_logger().info("labels: %s, %d ties", rows, ties)
    return {"rows": rows, "ties": ties, "datasets": {"cai_labels": labelled}}
