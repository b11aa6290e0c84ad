"""What a pipeline run shows people and tells automations: its progress while it runs; at its end, a summary and a
link to its manifest (how a caller finds its output), its cost and traffic, the `alignflow.run.completed` event,
and its final state.

A run that made no rows of a dataset ends in a Completed state named `Empty: no <dataset> rows`, its message saying
which stage emptied it, and a run with batches in quarantine in one named `Completed with quarantine`, its message
naming them: still COMPLETED state types (as `alignflow run`, the run did not fail: it exits 3 for an empty run), but
seen at a glance in the runs list, and tagged (`empty`, `quarantine`) so a filter finds them. Only a run with rows in
every dataset says so on its `alignflow.run.completed` event (`alignflow.empty: "false"`), which the shipped export
automation matches: an empty run is not exported.
"""
from __future__ import annotations

import os
import re
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.events import emit_event
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger
from prefect.runtime import deployment, flow_run
from prefect.states import Completed, State

from alignflow.engine.manifest import empty_datasets, summary_markdown, traffic_markdown, why_empty
from alignflow.engine.store import RunDir, Store
from alignflow.review import quarantine
from alignflow.stages.registry import made_through

COMPLETED = "alignflow.run.completed"
QUARANTINE_STATE = "Completed with quarantine"
QUARANTINE_TAG = "quarantine"
EMPTY_TAG = "empty"


class RunProgress:
    """The run's progress artifact, in percent, updated as it goes (only when it moved a whole point)."""

    def __init__(self, run_id: str):
        self.id = create_progress_artifact(0.0, key="run-progress", description=f"alignflow run {run_id}")
        self.shown = 0.0

    def update(self, fraction: float) -> None:
        percent = round(100 * min(max(fraction, 0.0), 1.0), 0)
        if percent > self.shown:
            update_progress_artifact(self.id, percent)
            self.shown = percent


def run_location(store: Store, run_id: str) -> str:
    """Where the run is, as any process can find it: an s3:// URL, or an absolute path."""
    url = store.join(run_id)
    return url if url.startswith("s3://") else os.path.abspath(url)


def publish_summary(store: Store, manifest: dict, quarantined: str | None = None) -> None:
    """The run at a glance on the pipeline run, and a link to its manifest."""
    url = run_location(store, manifest["run_id"])
    create_markdown_artifact(markdown=summary_markdown(manifest, url, quarantined, _gates(store, manifest["run_id"])),
                             key="run-summary",
                             description=f"alignflow run {manifest['run_id']}: {url}")
    create_link_artifact(link=f"{url}/manifest.json", link_text=f"manifest of run {manifest['run_id']}",
                         key="run-manifest", description=f"alignflow run {manifest['run_id']}")


def gate_artifact_key(stage: str, batch: int) -> str:
    """A batch's gate artifact: Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"gate-{stage}-{batch}".lower())


def _gates(store: Store, run_id: str) -> dict[str, dict[str, list[str]]]:
    """Each gated stage's batches by verdict, as links to their gate artifacts in the UI."""
    gates: dict[str, dict[str, list[str]]] = {}
    for stage, records in RunDir(store, run_id).stages().items():
        for record in records:
            if verdict := record.get("gate"):
                gates.setdefault(stage, {}).setdefault(verdict, []).append(
                    f"[{stage}/{record['number']}](/artifacts/key/{gate_artifact_key(stage, record['number'])})")
    return gates


def publish_traffic(manifest: dict) -> None:
    """The run's cost by model and each endpoint's traffic (requests, 429s, concurrency) as a Prefect artifact."""
    create_markdown_artifact(markdown=traffic_markdown(manifest), key="traffic",
                             description=f"run {manifest['run_id']}: cost and provider traffic")


_READ: Any = object()  # final_state's `message` when the caller has not read it


def final_state(store: Store, run_id: str, manifest: dict, message: str | None = _READ) -> State:
    """What the pipeline flow returns: Completed with the manifest as its result (callers of `pipeline(...)` get
    the dict); `Empty: no <dataset> rows` when a dataset has none, `Completed with quarantine` when batches wait in
    quarantine (`message`: `quarantine.state_message`, read here when not given)."""
    url = run_location(store, run_id)
    message = quarantine.state_message(store, run_id) if message is _READ else message
    publish_summary(store, manifest, message)
    if message:
        logger().warning("%s; see `alignflow quarantine list %s`", message, url)
    if empty := empty_datasets(manifest):
        why = f"run {run_id} made no {empty[0]} rows: {why_empty(manifest, empty[0], made_through(empty[0]), url)}"
        logger().warning(why)
        return Completed(name=f"Empty: no {empty[0]} rows", message=why, data=manifest)
    if message:
        return Completed(name=QUARANTINE_STATE, message=message, data=manifest)
    return Completed(data=manifest)


def outcome_tags(manifest: dict, quarantined: str) -> list[str]:
    """The tags a person filters the runs list by: `quarantine` when batches wait in quarantine (`quarantined`:
    `quarantine.state_message`), `empty` when a dataset has no rows (both can hold)."""
    return [tag for tag, holds in ((QUARANTINE_TAG, quarantined),
                                   (EMPTY_TAG, empty_datasets(manifest))) if holds]


def announce_completed(store: Store, manifest: dict) -> None:
    """`alignflow.run.completed`, with where the run and its datasets are, and whether one has no rows: what the
    export automation acts on (`alignflow.empty: "false"` only)."""
    run_id, url = manifest["run_id"], run_location(store, manifest["run_id"])
    empty = "true" if empty_datasets(manifest) else "false"  # a resource label is a string
    emit_event(COMPLETED, resource={"prefect.resource.id": f"alignflow.run.{run_id}", "prefect.resource.name": run_id,
                                    "alignflow.run": run_id, "alignflow.empty": empty},
               related=run_context(), payload={"run_id": run_id, "run_url": url, "datasets": manifest["datasets"],
                                               "files": {name: f"{url}/datasets/{name}.parquet"
                                                         for name in manifest["datasets"]}})


def run_context() -> list[dict[str, str]]:
    """The flow run and deployment an event comes from, as related resources: an automation scoped to a
    deployment matches on them, and an inferred action (pause the deployment, suspend the run) acts on them."""
    related = []
    if flow_run.id:
        related.append({"prefect.resource.id": f"prefect.flow-run.{flow_run.id}", "prefect.resource.role": "flow-run",
                        "prefect.resource.name": flow_run.name or ""})
    if deployment.id:
        related.append({"prefect.resource.id": f"prefect.deployment.{deployment.id}",
                        "prefect.resource.role": "deployment"})
    return related


def logger():
    """The run's logger inside a flow or task run, else alignflow's own."""
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("alignflow")
