"""Constitutional AI datasets, written once a stage's batches are all done (the batches are `tasks.stages.BATCH`)."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow.engine.run import Run
from alignflow.stages import cai_labels, revisions


@task(name="write-cai-datasets", cache_policy=NO_CACHE, persist_result=False)
def write_cai_datasets(run: Run) -> dict[str, int]:
    return revisions.write_datasets(run)


@task(name="write-cai-labels", cache_policy=NO_CACHE, persist_result=False)
def write_cai_labels(run: Run) -> int:
    return cai_labels.write_dataset(run)
