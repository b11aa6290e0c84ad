"""Constitutional AI: critique → revision rounds (SL-CAI), and AI preference labels under principles (RL-CAI)."""
from __future__ import annotations

from collections import Counter

from prefect import flow, get_run_logger

from alignflow import cai_labels, revisions
from alignflow.config import LLMOverride, PipelineConfig
from alignflow.constitution import load_constitution
from alignflow.run import Run
from tasks.constitution import cai_labels_batch, revisions_batch, write_cai_datasets, write_cai_labels


@flow(name="constitution")
def constitution_flow(config: PipelineConfig, run_id: str, prompts: str | None = None,
                      initial_llm: LLMOverride | None = None) -> dict:
    """Revise the answers to `prompts` (a JSONL file; None: the run's responses, or else its instructions).

    `initial_llm` overrides the responses stage's llm for the initial answers. Returns rows per outcome and the
    sizes of `datasets/cai_sft` and `datasets/cai_dpo`.
    """
    run = Run(config, run_id)
    cfg = config.constitution
    constitution = load_constitution(cfg.file)
    constitution.check_rounds(cfg.rounds)
    inputs = revisions.prompts_from_file(prompts) if prompts else revisions.inputs_from_run(run)
    run.reset_stage(revisions.STAGE)
    futures = [revisions_batch.submit(run, n, inputs.slice(start, cfg.batch_size), constitution, initial_llm)
               for n, start in enumerate(range(0, inputs.height, cfg.batch_size))]
    rows = _total(f.result() for f in futures)
    run.record_stage(revisions.STAGE, inputs.height)
    datasets = write_cai_datasets(run)
    get_run_logger().info("revisions of %d answers: %s; datasets: %s", inputs.height, rows, datasets)
    return {"rows": rows, "datasets": datasets}


@flow(name="cai-labels")
def cai_labels_flow(config: PipelineConfig, run_id: str, pairs: str | None = None) -> dict:
    """Label pairs of answers (`pairs`: a JSONL file; None: every two responses to one instruction in the run).

    Returns rows per outcome, the number of ties (the two orders disagreed) and the size of `datasets/cai_labels`.
    """
    run = Run(config, run_id)
    size = config.constitution.batch_size
    constitution = load_constitution(config.constitution.file)
    items = cai_labels.pairs_from_file(pairs) if pairs else cai_labels.pairs_from_run(run)
    run.reset_stage(cai_labels.STAGE)
    futures = [cai_labels_batch.submit(run, n, items.slice(start, size), constitution)
               for n, start in enumerate(range(0, items.height, size))]
    rows = _total(f.result() for f in futures)
    run.record_stage(cai_labels.STAGE, items.height)
    labelled = write_cai_labels(run)
    ties = int(run.read(cai_labels.STAGE)["tie"].sum())
    get_run_logger().info("labels for %d pairs: %s, %d ties", items.height, rows, ties)
    return {"rows": rows, "ties": ties, "datasets": {"cai_labels": labelled}}


def _total(batches) -> dict[str, int]:
    """Rows per outcome over all batches, zeros included."""
    total: Counter = Counter()
    for counts in batches:
        total.update(counts)
    return dict(total)
