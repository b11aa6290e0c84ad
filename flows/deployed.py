"""What a flow run needs to be operated on a Prefect server: a config that merges onto the deployment's, a run id a
Retry keeps, and a name, tags and artifacts by which a caller finds the run and its datasets.

Prefect merges a deployment's parameters with a run's only at the top level, so a run's partial `config` would
replace the deployment's whole config; here it is deep-merged instead, and `overrides` takes dotted settings.

A flow run that cannot do what its parameters ask ends Failed with one line (`refused`). Prefect's engine in the
worker then logs that failure again, as a traceback of its own frames (`FailedRun`): importing this module drops that
record, so the worker's log says it once, on the run's `Finished in state Failed(...)` line.
"""
from __future__ import annotations

import logging
import uuid

from prefect.client.orchestration import get_client
from prefect.exceptions import FailedRun
from prefect.runtime import deployment, flow_run
from prefect.states import Failed, State

from alignflow.config import PipelineConfig, overridden
from alignflow.engine.run import new_run_id

TAG = "alignflow"


def run_id_of(run_id: str | None) -> str:
    """The run id given, else one derived from the flow run: Prefect's Retry and a resumed suspension run the same
    flow run again, so they resume the same alignflow run."""
    if run_id:
        return run_id
    return uuid.UUID(flow_run.id).hex[:12] if flow_run.id else new_run_id()


def flow_run_name() -> str:
    """`run-<run id>`: the name the UI lists, computed before the flow starts."""
    return f"run-{run_id_of(flow_run.parameters.get('run_id'))}"


def config_of(config: PipelineConfig, overrides: list[str] | None) -> PipelineConfig:
    """In a deployment run, the keys the run's `config` sets deep-merged over the deployment's config, then the
    dotted overrides; elsewhere, the config as given with the overrides. A ConfigError names the parameter and the
    key: the API checks `config` against its schema, but takes any strings as `overrides`."""
    base = None
    if deployment.id:
        with get_client(sync_client=True) as client:
            base = client.read_deployment(deployment.id).parameters.get("config")
    if base is None and not overrides:
        return config
    partial = config.model_dump(mode="json", exclude_unset=True)
    merged = overridden(base or {}, partial, source="config parameter")
    return overridden(base or {}, partial, overrides, source="overrides parameter") if overrides else merged


def refused(why: Exception | str) -> State:
    """A flow run that cannot do what its parameters ask (a misspelled override, a run with nothing to export):
    Failed with one line, at its first step, not a traceback in the worker."""
    return Failed(message=f"alignflow: {why}")


def _not_a_failed_run(record: logging.LogRecord) -> bool:
    """False for the engine's record of a flow run that returned a Failed state: its message is the state's."""
    return not (record.exc_info and isinstance(record.exc_info[1], FailedRun))


logging.getLogger("prefect.flow_runs").addFilter(_not_a_failed_run)


def tag(run_id: str, *more: str) -> None:
    """Tag the flow run with the alignflow run id (and `more`), so `GET /api/flow_runs/filter` finds it by tag."""
    if not flow_run.id:
        return
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(flow_run.id).tags
        wanted = list(dict.fromkeys([*current, TAG, f"run:{run_id}", *more]))
        if wanted != current:
            client.update_flow_run(flow_run.id, tags=wanted)
