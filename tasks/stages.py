"""Prefect tasks: one task run per batch of any stage, and the run-level steps around the batches.

Tasks take a Run and a BatchRef and read their input from the store themselves, so they run in any worker. Their
results are not persisted by Prefect (only the pipeline flow's, the manifest, is): the store's checkpoints are
what a resumed run reads.
"""
from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, Failed, State

from alignflow.engine import manifest, runner
from alignflow.engine.lease import LeaseLost
from alignflow.engine.run import Run
from alignflow.engine.step import BatchRef
from alignflow.llm.ledger import BudgetReached
from alignflow.llm.preflight import check_endpoints, prove_endpoints
from alignflow.llm.prices import load_prices
from alignflow.llm.refused import EndpointRefused
from alignflow.quality import curate
from alignflow.stages import exports, instructions, registry
from alignflow.stages.changes import check_config
from tasks import limits
from tasks.gate import publish
from tasks.report import run_location


class MissingLimit(Exception):
    """An endpoint names a global concurrency limit the Prefect server does not have."""


STOPPED_BY_BUDGET = "stopped by the budget: "
REFUSED = "Refused"  # the state of a batch, and of the flow run, an endpoint that refuses every request stopped
TAKEN_OVER = "Taken over"  # the state of a batch another writer of the run stopped (`alignflow run` exits 5)


def run_batch(run: Run, stage: str, ref: BatchRef, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """One batch of `stage` through the runner; its gate verdict published. Returns its checkpoint record."""
    done = runner.run_batch(run, registry.step(run, stage, **(options or {})), ref)
    publish(done.gate, run.run_id, run_location(run.store, run.run_id))
    return done.record


def batch(run: Run, stage: str, ref: BatchRef, options: dict[str, Any] | None = None) -> dict[str, Any] | State:
    """The batch task: a batch the budget stopped ends Cancelled with the reason (what it was answered is saved,
    and a resume with a higher budget finishes it), not Failed with a traceback."""
    try:
        return run_batch(run, stage, ref, options)
    except BudgetReached as exc:
        return Cancelled(message=f"{STOPPED_BY_BUDGET}{exc}")
    except EndpointRefused as exc:  # its answers are saved; its result raises the refusal in the flow, which stops
        return Cancelled(name=REFUSED, message=str(exc), data=exc)
    except LeaseLost as exc:  # another writer has the run: nothing more is written; its result raises it in the flow
        return Cancelled(name=TAKEN_OVER, message=str(exc), data=exc)


STOPS = (EndpointRefused, LeaseLost)  # what ends a flow run with its one line: the CLI says it, exit 2 or 5


def refusal_state(exc: EndpointRefused | LeaseLost) -> State:
    """How a flow run ends when an endpoint refuses every request, or another writer took the run over: Failed,
    named so, with the one line (no traceback); the same run id resumes once the config is fixed (or the other
    writer is done)."""
    return Failed(name=REFUSED if isinstance(exc, EndpointRefused) else TAKEN_OVER, message=str(exc), data=exc)


def budget_stop(state: State) -> str | None:
    """Why the budget stopped a batch task, when it did (a Cancelled state the batch task set)."""
    if state.is_cancelled() and (state.message or "").startswith(STOPPED_BY_BUDGET):
        return state.message.removeprefix(STOPPED_BY_BUDGET)
    return None


_batch = task(batch, cache_policy=NO_CACHE, persist_result=False)
BATCH = {stage: _batch.with_options(name=f"{stage}-batch", task_run_name=f"{stage}-{{ref.number}}")
         for stage in registry.NAMES}


@task(name="start-run", cache_policy=NO_CACHE, persist_result=False)
def start_run(run: Run, names: list[str], options: dict[str, dict[str, Any]],
              allow_config_change: list[str] | None = None) -> list[str]:
    """Check the curators import and the shared limits exist; say, before anything is made, which stages a changed
    config makes again; then make the seeds batch."""
    for stage in ("instructions", "responses"):  # a CurateError names the curator, before any request
        if stage in names:
            curate.resolve(getattr(run.config, stage).curate)
    check_endpoints(run.config.llms())  # a refused key or an endpoint nobody answers, before anything is written
    load_prices(run.config.prices)  # read now, not first by the manifest after every request was made
    if gone := limits.run_sync(limits.missing(run.config.llms())):
        raise MissingLimit(f"the Prefect server has no global concurrency limit {', '.join(gone)} (llm.limit_name): "
                           f"create it with `alignflow limits create CONFIG`")
    prove(run)  # an EndpointRefused stops the flow, which ends Refused
    run.forget_ledger()  # what was spent is counted again from the store, with this run's budget
    steps = [registry.step(run, s, **options.get(s, {})) for s in names]
    redo, keys = check_config(run, steps, allow_config_change)
    if redo:
        get_run_logger().warning("run %s: the config changed (%s); redoing %s", run.run_id, ", ".join(keys),
                                 ", ".join(redo))
    if "seeds" in names:
        run_batch(run, "seeds", BatchRef(0))
    return redo


def prove(run: Run) -> None:
    """Preflight's minimal calls (`prove_endpoints`) for this run; the endpoints known to answer are recorded in the
    run, so that a resume in another process does not call again."""
    known = run.dir.read_json(run.dir.endpoints_key, [])
    answering = prove_endpoints(run.config.llms(), known)
    if set(answering) - set(known):
        run.store.write_json(run.dir.endpoints_key, sorted(set(known) | set(answering)))


@task(name="write-datasets", cache_policy=NO_CACHE, persist_result=False)
def write_datasets(run: Run) -> dict[str, int]:
    return exports.write_datasets(run)


@task(name="write-card", cache_policy=NO_CACHE, persist_result=False)
def write_card(run: Run) -> str:
    """`datasets/README.md`, the datasets' card: written after the manifest, whose counts it shows."""
    return exports.write_card(run)


@task(name="write-manifest", cache_policy=NO_CACHE, persist_result=False)
def write_manifest(run: Run, extra: dict[str, Any] | None = None) -> dict:
    """The manifest, saying how many kept instructions went on to responses (a target of N sends the first N)."""
    kept = sum(record["counts"]["kept"] for record in run.dir.checkpoints("instructions"))
    return manifest.write(run.store, run.run_id, extra, load_prices(run.config.prices),
                          sent_on={"instructions": instructions.sent_on(run.config, kept)})
