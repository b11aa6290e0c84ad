"""Where the batch tasks run: the flow's own threads, or the workers of a Dask cluster (prefect-dask).

The runner is chosen by the run's config, not by the flow's decorator, so one deployment runs either way. A batch
task takes a Run (its config and id) and a BatchRef and returns its checkpoint record: only keys and small dicts
go through the Dask scheduler; rows go from the store to the worker and back.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner

from alignflow.config import PipelineConfig
from alignflow.engine.run import Run
from alignflow.engine.step import BatchRef
from alignflow.llm import endpoint
from tasks.stages import BATCH

# A LocalCluster's workers log at WARNING (not every connection at INFO), and do not sample their threads' stacks:
# a batch task is mostly waiting on the network, and the samples cost CPU the batches need.
LOCAL_CLUSTER_ENV = {"DASK_LOGGING__DISTRIBUTED": "warning", "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"}


class BatchRunner:
    """Batch tasks submitted to one task runner, and the provider traffic of every process that ran them."""

    def __init__(self, runner: TaskRunner, dask_client: Any = None):
        self.runner, self.dask_client = runner, dask_client

    def submit(self, run: Run, stage: str, ref: BatchRef, options: dict[str, Any] | None = None,
               wait_for: list[PrefectFuture] | None = None) -> PrefectFuture:
        return self.runner.submit(BATCH[stage], {"run": run, "stage": stage, "ref": ref, "options": options},
                                  wait_for=wait_for)

    def traffic(self, config: PipelineConfig) -> list[dict]:
        """Each endpoint's requests, 429s and concurrency: of this process, or of each Dask worker."""
        llms = config.llms()
        if self.dask_client is None:
            return endpoint.traffic(llms)
        per_worker = self.dask_client.run(endpoint.traffic, llms)
        return [{**e, "endpoint": f"{e['endpoint']} on {worker}"} for worker, found in sorted(per_worker.items())
                for e in found]


@contextmanager
def batch_runner(config: PipelineConfig) -> Iterator[BatchRunner]:
    """The flow's thread pool, or a Dask cluster: a running one at `runner.dask.address`, else a LocalCluster that
    lives as long as this context."""
    dask = config.dask
    if dask is None:
        yield BatchRunner(FlowRunContext.get().task_runner)
        return
    from prefect_dask import DaskTaskRunner

    if dask.address:
        runner = DaskTaskRunner(address=dask.address)
    else:
        for key, value in LOCAL_CLUSTER_ENV.items():  # read by the worker processes the cluster spawns
            os.environ.setdefault(key, value)
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": dask.workers, "threads_per_worker": dask.threads,
                                                "processes": True, "dashboard_address": None})
    if unshared := sorted({f"{c.provider}:{c.model_name}" for c in config.llms() if not c.limit_name}):
        get_run_logger().warning("runner: dask, but %s set no llm.limit_name: each worker holds max_concurrency and "
                                 "rpm on its own; a Prefect global concurrency limit holds them across workers",
                                 ", ".join(unshared))
    logging.getLogger("distributed").setLevel(logging.WARNING)
    with runner:
        yield BatchRunner(runner, runner.client)

