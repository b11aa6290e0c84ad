"""The gate in Prefect: a markdown artifact per gated batch, an event per quarantined one, the run's final state.

Automations can act on `alignflow.batch.quarantined` (resource `alignflow.run.<run_id>.<stage>`); the pipeline
ends Completed, its state message naming the quarantined batches, unless a stage's policy is `fail`.
"""
from __future__ import annotations

import re
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger
from prefect.states import Completed, State

from alignflow import quarantine
from alignflow.gate import GateResult
from alignflow.manifest import traffic_markdown
from alignflow.store import Store

EVENT = "alignflow.batch.quarantined"


class GateFailed(Exception):
    """A batch failed its expectation suite and the stage's policy is `on_failure: fail`."""


def artifact_key(result: GateResult) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"gate-{result.stage}-{result.batch}".lower())


def publish(result: GateResult | None, run_id: str) -> None:
    """Show a gated batch in Prefect; for a new quarantine also emit the event, and raise under `fail`."""
    if result is None:
        return
    create_markdown_artifact(markdown=result.markdown(), key=artifact_key(result), description=result.summary()[:500])
    if not result.quarantined or result.dropped:  # passed, released, or a person already decided it stays out
        return
    emit_event(EVENT, resource=_resource(result, run_id), related=_related(result), payload=_payload(result, run_id))
    _logger().warning("gate: %s", result.summary())
    if result.policy == "fail":
        raise GateFailed(result.summary())


def publish_traffic(manifest: dict) -> None:
    """The run's cost by model and each endpoint's traffic (requests, 429s, concurrency) as a Prefect artifact."""
    create_markdown_artifact(markdown=traffic_markdown(manifest), key="traffic",
                             description=f"run {manifest['run_id']}: cost and provider traffic")


def final_state(store: Store, run_id: str, manifest: dict) -> State:
    """What the pipeline flow returns: Completed with the manifest as its result (callers of `pipeline(...)` get
    the dict), and a message naming the quarantined batches when there are any."""
    message = quarantine.state_message(store, run_id)
    if message:
        _logger().warning("%s; see `alignflow quarantine list %s`", message, store.join(run_id))
    return Completed(message=message, data=manifest)


def _resource(result: GateResult, run_id: str) -> dict[str, str]:
    return {"prefect.resource.id": f"alignflow.run.{run_id}.{result.stage}",
            "prefect.resource.name": f"{run_id}/{result.stage}",
            "alignflow.run": run_id, "alignflow.stage": result.stage, "alignflow.batch": str(result.batch)}


def _related(result: GateResult) -> list[dict[str, str]]:
    return [{"prefect.resource.id": f"alignflow.expectation.{c.type}.{c.column or 'table'}",
             "prefect.resource.role": "expectation", "prefect.resource.name": c.name()} for c in result.failed]


def _payload(result: GateResult, run_id: str) -> dict[str, Any]:
    return {"run_id": run_id, "stage": result.stage, "batch": result.batch, "rows": result.rows,
            "policy": result.policy, "report": result.report_key, "summary": result.summary()[:2000],
            "failed": [{"type": c.type, "column": c.column, "title": c.title, "finding": c.finding()}
                       for c in result.failed]}


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("alignflow.gate")
