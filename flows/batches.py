"""What every stage flow does with its batches: one task each, then the totals, and stale batches dropped."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.states import Cancelled, Crashed

from alignflow.engine.lease import Lease
from alignflow.engine.run import Run
from alignflow.engine.store import Store
from alignflow.stages import registry
from flows.runner import batch_runner
from tasks import limits


@contextmanager
def writing(run: Run) -> Iterator[Lease]:
    """The run's lease, held while the flow runs: a second writer of the same run id stops with LeaseHeld, and the
    run's store calls, here and on every worker, stop with LeaseLost if another writer takes it over. Flow runs of
    this run id left Running by a killed process are marked Crashed; one stopped by SIGINT or SIGTERM is noted for
    `mark_interrupted`. With Dask and a budget, the budget the workers share is kept meanwhile."""
    lease = Lease(Store(run.config.store), run.run_id, flow_run.id)
    if taken_over := lease.acquire():
        get_run_logger().warning(taken_over)
    run.held_by(lease.token)
    _crash_dead_runs(run.run_id)
    try:
        with limits.run_budget(run):
            yield lease
    except (KeyboardInterrupt, TerminationSignal):
        INTERRUPTED[flow_run.id] = run.run_id
        raise
    finally:
        lease.release()


def _crash_dead_runs(run_id: str) -> None:
    """With the lease held, no other flow run of `run_id` is alive: one still Running died with its process."""
    crashed = Crashed(message=f"its process died; run {run_id} was resumed by flow run {flow_run.id}")
    with get_client(sync_client=True) as client:
        running = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))), limit=200)
        for dead in running:
            ours = dead.parameters.get("run_id") == run_id or f"run:{run_id}" in dead.tags  # tagged: run id derived
            if ours and str(dead.id) != flow_run.id:
                client.set_flow_run_state(dead.id, crashed, force=True)


INTERRUPTED: dict[str, str] = {}  # flow run id -> run id, of flow runs stopped by SIGINT or SIGTERM


def mark_interrupted() -> None:
    """Prefect marks a flow run stopped by a signal Crashed; a signal is a request to stop, so mark it Cancelled."""
    with get_client(sync_client=True) as client:
        while INTERRUPTED:
            flow_run_id, run_id = INTERRUPTED.popitem()
            client.set_flow_run_state(flow_run_id, Cancelled(message=f"stopped by a signal; `--run-id {run_id}` "
                                                                     "resumes it"), force=True)


def run_stage(run: Run, stage: str, options: dict[str, Any] | None = None) -> dict[str, int]:
    """Every batch of `stage` at once; returns rows per outcome over them. Batches the stage no longer has (its
    input shrank since an earlier attempt) are removed, so the stage holds exactly what this config makes."""
    refs = registry.step(run, stage, **(options or {})).refs()
    with batch_runner(run.config) as runner:
        futures = [runner.submit(run, stage, ref, options) for ref in refs]
        records = [f.result() for f in futures]
    run.dir.prune(stage, {ref.number for ref in refs})
    return totals(records)


def totals(records: list[dict[str, Any]]) -> dict[str, int]:
    """Rows per outcome over batches, zeros included."""
    total: Counter = Counter({"kept": 0, "rejected": 0, "failed": 0, "quarantine": 0})
    for record in records:
        total.update(record["counts"])
    return dict(total)
