"""Constitutional AI tasks: one task run per batch of rows to revise or of pairs to label; each gated batch is
published to Prefect (artifact, and an event when quarantined)."""
from __future__ import annotations

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow import cai_labels, revisions
from alignflow.config import LLMOverride
from alignflow.constitution import Constitution
from alignflow.run import Run
from tasks.gate import publish


@task(name="revisions-batch", cache_policy=NO_CACHE)
def revisions_batch(run: Run, number: int, inputs: pl.DataFrame, constitution: Constitution,
                    initial: LLMOverride | None) -> dict[str, int]:
    written = revisions.revise_batch(run, number, inputs, constitution, initial)
    publish(written.gate, run.run_id)
    return dict(written)


@task(name="write-cai-datasets", cache_policy=NO_CACHE)
def write_cai_datasets(run: Run) -> dict[str, int]:
    return revisions.write_datasets(run)


@task(name="cai-labels-batch", cache_policy=NO_CACHE)
def cai_labels_batch(run: Run, number: int, pairs: pl.DataFrame, constitution: Constitution) -> dict[str, int]:
    written = cai_labels.label_batch(run, number, pairs, constitution)
    publish(written.gate, run.run_id)
    return dict(written)


@task(name="write-cai-labels", cache_policy=NO_CACHE)
def write_cai_labels(run: Run) -> int:
    return cai_labels.write_dataset(run)
