"""The gate in Prefect: a markdown artifact per gated batch, and an event per quarantined one.

Automations can act on `alignflow.batch.quarantined` (resource `alignflow.run.<run_id>.<stage>`, related to the flow
run and the deployment); a stage whose policy is `fail` fails the flow run instead.
"""
from __future__ import annotations

from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from alignflow.quality.gate import GateResult
from tasks.report import gate_artifact_key, logger, run_context

EVENT = "alignflow.batch.quarantined"


class GateFailed(Exception):
    """A batch failed its expectation suite and the stage's policy is `on_failure: fail`."""


def artifact_key(result: GateResult) -> str:
    return gate_artifact_key(result.stage, result.batch)


def publish(result: GateResult | None, run_id: str, run_url: str | None = None) -> None:
    """Show a gated batch in Prefect; for a new quarantine also emit the event (with `run_url`, where the run is),
    and raise under `fail`."""
    if result is None:
        return
    create_markdown_artifact(markdown=result.markdown(), key=artifact_key(result), description=result.summary()[:500])
    if not result.quarantined or result.dropped:  # passed, released, or a person already decided it stays out
        return
    emit_event(EVENT, resource=_resource(result, run_id), related=_related(result),
               payload=_payload(result, run_id) | {"run_url": run_url})
    logger().warning("gate: %s", result.summary())
    if result.policy == "fail":
        raise GateFailed(result.summary())


def _resource(result: GateResult, run_id: str) -> dict[str, str]:
    return {"prefect.resource.id": f"alignflow.run.{run_id}.{result.stage}",
            "prefect.resource.name": f"{run_id}/{result.stage}",
            "alignflow.run": run_id, "alignflow.stage": result.stage, "alignflow.batch": str(result.batch)}


def _related(result: GateResult) -> list[dict[str, str]]:
    return [{"prefect.resource.id": f"alignflow.expectation.{c.type}.{c.column or 'table'}",
             "prefect.resource.role": "expectation", "prefect.resource.name": c.name()} for c in result.failed] + \
        run_context()


def _payload(result: GateResult, run_id: str) -> dict[str, Any]:
    return {"run_id": run_id, "stage": result.stage, "batch": result.batch, "rows": result.rows,
            "policy": result.policy, "report": result.report_key, "summary": result.summary()[:2000],
            "failed": [{"type": c.type, "column": c.column, "title": c.title, "finding": c.finding()}
                       for c in result.failed]}
