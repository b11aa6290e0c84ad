"""The gate in Prefect: a markdown artifact per gated batch, an event per quarantined one, the run's final state.

Automations can act on `alignflow.batch.quarantined` (resource `alignflow.run.<run_id>.<stage>`); the pipeline
ends Completed, its state message naming the quarantined batches, unless a stage's policy is `fail`.
"""
from __future__ import annotations

import os
import re
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.events import emit_event
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger
from prefect.runtime import deployment, flow_run
from prefect.states import Completed, State

from alignflow import quarantine
from alignflow.gate import GateResult
from alignflow.manifest import summary_markdown, traffic_markdown
from alignflow.store import Store

EVENT = "alignflow.batch.quarantined"
COMPLETED = "alignflow.run.completed"


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


QUARANTINE_STATE = "Completed with quarantine"


def final_state(store: Store, run_id: str, manifest: dict) -> State:
    """What the pipeline flow returns: Completed with the manifest as its result (callers of `pipeline(...)` get
    the dict). With batches in quarantine it is named `Completed with quarantine`, its message naming them: still a
    COMPLETED state, so what waits for a completed run still runs, but seen at a glance in the UI."""
    message = quarantine.state_message(store, run_id)
    publish_summary(store, manifest, message)
    if message:
        _logger().warning("%s; see `alignflow quarantine list %s`", message, store.join(run_id))
        return Completed(name=QUARANTINE_STATE, message=message, data=manifest)
    return Completed(data=manifest)


def run_location(store: Store, run_id: str) -> str:
    """Where the run is, as any process can find it: an s3:// URL, or an absolute path."""
    url = store.join(run_id)
    return url if url.startswith("s3://") else os.path.abspath(url)


def publish_summary(store: Store, manifest: dict, quarantined: str | None = None) -> None:
    """The run at a glance on the pipeline run, and a link to its manifest: how a caller finds its output."""
    url = run_location(store, manifest["run_id"])
    create_markdown_artifact(markdown=summary_markdown(manifest, url, quarantined), key="run-summary",
                             description=f"alignflow run {manifest['run_id']}: {url}")
    create_link_artifact(link=f"{url}/manifest.json", link_text=f"manifest of run {manifest['run_id']}",
                         key="run-manifest", description=f"alignflow run {manifest['run_id']}")


def announce_completed(store: Store, manifest: dict) -> None:
    """`alignflow.run.completed`, with where the run and its datasets are: what the export automation acts on."""
    run_id, url = manifest["run_id"], run_location(store, manifest["run_id"])
    emit_event(COMPLETED, resource={"prefect.resource.id": f"alignflow.run.{run_id}", "prefect.resource.name": run_id,
                                    "alignflow.run": run_id},
               related=_run_context(), payload={"run_id": run_id, "run_url": url, "datasets": manifest["datasets"],
                                                "files": {name: f"{url}/datasets/{name}.parquet"
                                                          for name in manifest["datasets"]}})


def _resource(result: GateResult, run_id: str) -> dict[str, str]:
    return {"prefect.resource.id": f"alignflow.run.{run_id}.{result.stage}",
            "prefect.resource.name": f"{run_id}/{result.stage}",
            "alignflow.run": run_id, "alignflow.stage": result.stage, "alignflow.batch": str(result.batch)}


def _related(result: GateResult) -> list[dict[str, str]]:
    return [{"prefect.resource.id": f"alignflow.expectation.{c.type}.{c.column or 'table'}",
             "prefect.resource.role": "expectation", "prefect.resource.name": c.name()} for c in result.failed] + \
        _run_context()


def _run_context() -> list[dict[str, str]]:
    """The flow run and deployment an event comes from: an automation scoped to a deployment matches on them, and
    an inferred action (pause the deployment, suspend the run) acts on them."""
    related = []
    if flow_run.id:
        related.append({"prefect.resource.id": f"prefect.flow-run.{flow_run.id}", "prefect.resource.role": "flow-run",
                        "prefect.resource.name": flow_run.name or ""})
    if deployment.id:
        related.append({"prefect.resource.id": f"prefect.deployment.{deployment.id}",
                        "prefect.resource.role": "deployment"})
    return related


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
