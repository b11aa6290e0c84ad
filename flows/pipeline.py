"""The whole pipeline, top to bottom like the diagram:

    seeds → instruction rounds ─┬─► responses → (revisions) → judgments → pairs     one chain per batch,
                                └─► ...                                            streaming
          → quarantined batches decided by a person → review (a person decides a sample, row by row) → datasets
          → manifest

With `instructions` in `review.stages` the rounds finish and a person curates them before the first chain starts;
with a later stage in it, the chains stop after that stage and the rest runs once it is reviewed.

Instruction rounds run one after another (each dedups against the pool before it). Every batch of kept
instructions goes on at once through its own chain of tasks, each waiting only for its own upstream batch, while
later rounds are still generating. Every batch passes its gate before the next stage sees it.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.states import Completed
from prefect.task_runners import ThreadPoolTaskRunner

from alignflow.config import ConfigError, PipelineConfig
from alignflow.engine.run import Run, RunIdError
from alignflow.engine.step import BatchRef
from alignflow.engine.target import COUNTED_BY, Target
from alignflow.review import decisions as review
from alignflow.review import quarantine
from alignflow.stages import registry
from alignflow.stages.responses import Plan
from flows import deployed
from flows.batches import writing
from flows.instructions import Rounds
from flows.quarantine import ask_about_quarantine
from flows.review import review_stages
from flows.runner import BatchRunner, batch_runner
from tasks.constitution import write_cai_datasets
from tasks.report import (
    RunProgress,
    announce_completed,
    final_state,
    outcome_tags,
    publish_summary,
    publish_traffic,
    run_location,
)
from tasks.stages import STOPS, budget_stop, refusal_state, start_run, write_card, write_datasets, write_manifest

# batches in flight at once; each waits on the process-wide endpoint limits, so more threads add no requests
WORKERS = 16
TICK_S = 2.0  # how often the progress artifact is brought up to date while the chains finish


class Chains:
    """The batches downstream of the instruction rounds: batch `n` of responses, revisions, judgments and pairs
    covers the same instructions, and each task starts as soon as its own upstream batch is done."""

    def __init__(self, run: Run, runner: BatchRunner, names: list[str], options: dict[str, dict[str, Any]]):
        self.run, self.runner, self.options = run, runner, options
        self.chained = registry.streamed(names)
        self.stages = [stage.name for stage in self.chained]
        self.futures: dict[str, list[PrefectFuture]] = {stage: [] for stage in self.stages}
        self.plan = Plan(run.config)
        self.sizes: list[int] = []  # instructions per chain

    def add(self, round_record: dict[str, Any]) -> None:
        """One chain per new slice of kept instructions: its first stage reads the slice, each later one batch n of
        the stages it reads, and waits for them."""
        for ref in self.plan.add(round_record):
            chain: dict[str, PrefectFuture] = {}
            for stage in self.chained:
                waits = [chain[up] for up in stage.upstream if up in chain]
                chain[stage.name] = self._submit(stage.name, BatchRef(ref.number, ref.number) if waits else ref, waits)
            self.sizes.append(ref.stop - ref.start)

    def _submit(self, stage: str, ref: BatchRef, wait_for: list[PrefectFuture]) -> PrefectFuture:
        future = self.runner.submit(self.run, stage, ref, self.options.get(stage), wait_for=wait_for)
        self.futures[stage].append(future)
        return future

    def finished(self, stage: str) -> list[dict[str, Any]]:
        """The records of the batches done: one the budget stopped, or one that never ran (its upstream stopped), has
        none."""
        return [f.result() for f in self.futures[stage] if f.wrapped_future.done() and f.state.is_completed()]

    def pending_instructions(self, stage: str) -> int:
        """Instructions in chains whose `stage` batch is not done yet."""
        return sum(size for size, f in zip(self.sizes, self.futures[stage]) if not f.wrapped_future.done())

    def tokens(self) -> int:
        return sum(r["input_tokens"] + r["output_tokens"] for stage in self.stages for r in self.finished(stage))

    def settled(self) -> float:
        """The share of the batches submitted so far that are done."""
        every = [f for stage in self.stages for f in self.futures[stage]]
        return sum(f.wrapped_future.done() for f in every) / len(every) if every else 0.0

    def wait(self, tick: Callable[[], None] = lambda: None) -> str | None:
        """Every batch settled, `tick` called every few seconds meanwhile. Raises the first failure; returns why the
        budget stopped the run, if it did."""
        stopped = None
        for stage in self.stages:
            for future in self.futures[stage]:
                while not future.wrapped_future.done():
                    future.wait(timeout=TICK_S)
                    tick()
                state = future.state
                if why := budget_stop(state):
                    stopped = stopped or why
                elif not state.is_pending():  # pending: its upstream batch stopped, which says why
                    future.result()  # raises when a batch failed: the flow run fails, naming it
        return stopped


@dataclass(frozen=True)
class Early:
    """A stage reviewed before the stages after it are asked for anything: `instructions` (the rounds finish, a
    person curates, then the chains start), or one in the chains (they stop there; the rest runs once reviewed)."""

    instructions: bool
    stage: str | None  # the first streamed stage reviewed before the end, if any

    @classmethod
    def of(cls, config: PipelineConfig, stages: list[str]) -> "Early":
        streamed = [s.name for s in registry.streamed(stages)]
        stage = next((s for s in streamed[:-1] if s in config.review.stages), None)
        return cls("instructions" in config.review.stages, stage)

    @property
    def stopped(self) -> bool:
        """Whether the chains stop before the stage that counts the target: the rounds cannot wait on them."""
        return self.instructions or self.stage is not None

    def chained(self, stages: list[str]) -> list[str]:
        """The stages the chains stream: all of them, or those up to the reviewed one."""
        return stages[:stages.index(self.stage) + 1] if self.stage else stages

    def after(self, stages: list[str]) -> list[str]:
        return stages[stages.index(self.stage) + 1:] if self.stage else []

    @staticmethod
    def enough(run: Run, target: Target, rounds: Rounds) -> bool:
        """Instructions for the target as if each made the most rows it can (the chains start only after review);
        once a person has curated them, no round is added to what they saw."""
        reviewed = "decision" in review.read(run.store, run.run_id).get("instructions", {})
        return reviewed or rounds.kept >= math.ceil(target.rows / target.most_per_instruction)


def _whole_stage(run: Run, runner: BatchRunner, stage: str, options: dict[str, Any] | None) -> str | None:
    """Every batch of a stage at once, after its upstream is complete; returns why the budget stopped it, if it did."""
    refs = registry.step(run, stage, **(options or {})).refs()
    futures = [runner.submit(run, stage, ref, options) for ref in refs]
    stopped = None
    for future in futures:
        future.wait()
        if why := budget_stop(future.state):
            stopped = stopped or why
        else:
            future.result()
    run.dir.prune(stage, {ref.number for ref in refs})
    return stopped


def _stopped(run: Run, runner: BatchRunner, chains: Chains, stopped: str):
    chains.wait()
    summary = write_manifest(run, {"stopped": f"{stopped}; resume with a higher llm.budget_usd",
                                   "endpoints": runner.traffic(run.config)})
    publish_traffic(summary)
    publish_summary(run.store, summary)
    return Completed(message=summary["stopped"], data=summary)


def _awaiting_review(run: Run, waiting: list[str]):
    """Only a run with no deployment stops here: one with a deployment suspends instead."""
    summary = write_manifest(run, {"stopped": f"waiting for review of {', '.join(waiting)}: `alignflow review "
                                              f"{run_location(run.store, run.run_id)}` shows the sample and records "
                                              "the decision; then resume",
                                   "review": review.summary(run)})
    publish_summary(run.store, summary)
    return Completed(name="Awaiting review", message=summary["stopped"], data=summary)


def enough(target: Target, rounds: Rounds, chains: Chains) -> bool:
    """Whether the run has made its target, waiting for the chains in flight only when they could complete it."""
    if target.dataset == "instructions":
        return rounds.kept >= target.rows
    stage = COUNTED_BY[target.dataset][0]
    made = target.count(chains.finished(stage))
    if made >= target.rows:
        return True
    done = sum(size for size, f in zip(chains.sizes, chains.futures[stage]) if f.wrapped_future.done())
    rate = made / done if done else target.most_per_instruction  # observed yield, or the most it could be
    if made + chains.pending_instructions(stage) * rate < target.rows:
        return False
    chains.wait()
    return target.count(chains.finished(stage)) >= target.rows


@flow(name="pipeline", task_runner=ThreadPoolTaskRunner(max_workers=WORKERS), flow_run_name=deployed.flow_run_name,
      persist_result=True)
def pipeline(config: PipelineConfig, run_id: str | None = None, allow_config_change: list[str] | None = None,
             overrides: list[str] | None = None) -> dict:
    """Every stage on one run id; returns the manifest.

    Args:
        config: the pipeline's settings. Started from a deployment, the keys given here are merged over the
            deployment's config, so a caller sends only what it changes.
        run_id: the run to make or resume: the same run id resumes from the batches in the store. Empty: a new
            run, whose id comes from this flow run, so Retry resumes it.
        allow_config_change: stages a changed config may make again on a resumed run (others refuse).
        overrides: dotted `KEY=VALUE` settings applied last, as `alignflow run --set` takes them.
    """
    try:
        run = Run(deployed.config_of(config, overrides), deployed.run_id_of(run_id))
    except (ConfigError, RunIdError) as exc:
        return deployed.refused(exc)
    deployed.tag(run.run_id)
    with writing(run), batch_runner(run.config) as runner:
        try:
            return _pipeline(run, runner, allow_config_change)
        except STOPS as exc:  # the run stops with its one line, no traceback; the same run id resumes
            return refusal_state(exc)


def _pipeline(run: Run, runner: BatchRunner, allow_config_change: list[str] | None):
    config = run.config
    stages, options = registry.pipeline_stages(config)
    start_run(run, stages, options, allow_config_change)

    target = Target.of(config)
    early = Early.of(config, stages)
    chains = Chains(run, runner, early.chained(stages), options)
    rounds = Rounds(run, runner, target, enough=lambda: early.enough(run, target, rounds) if early.stopped
                    else enough(target, rounds, chains), tokens=lambda: rounds.spent_tokens + chains.tokens())
    progress = RunProgress(run.run_id)

    def show() -> None:  # the rounds toward the target are the first 30%, the batches after them the rest
        progress.update(0.3 * min(1.0, rounds.kept / target.rows) + 0.7 * chains.settled())

    for record in rounds:
        if not early.instructions:
            chains.add(record)
        show()
    if rounds.stopped_by_budget:
        return _stopped(run, runner, chains, rounds.stopped_by_budget)
    run.dir.prune("instructions", set(range(len(rounds.records))))
    if early.instructions:  # curated before any response is asked for: only the rows the reviewer kept go on
        if waiting := review_stages(run, ["instructions"]):
            return _awaiting_review(run, waiting)
        for record in run.dir.checkpoints("instructions"):
            chains.add(record)
    if stopped := chains.wait(show):  # stop cleanly: the same run id resumes
        return _stopped(run, runner, chains, stopped)
    for stage in chains.stages:
        run.dir.prune(stage, set(range(len(chains.sizes))))
    before = early.stage
    for stage in early.after(stages):  # the chains stopped at a reviewed stage: each next one once it is reviewed
        if before in config.review.stages and (waiting := review_stages(run, [before])):
            return _awaiting_review(run, waiting)
        if stopped := _whole_stage(run, runner, stage, options.get(stage)):
            return _stopped(run, runner, chains, stopped)
        before = stage
    if ask_about_quarantine(run):  # a person released batches: make what follows from them, then go on
        return _pipeline(run, runner, allow_config_change)
    if waiting := review_stages(run):  # only a run with no deployment stops here: one with suspends instead
        return _awaiting_review(run, waiting)
    reviews = review.summary(run)
    if held := review.held_by_agreement(run, reviews):
        summary = write_manifest(run, {"held": held, "stopped": None, "review": reviews})
        publish_summary(run.store, summary)
        return Completed(name="Held: judge agreement", message=held, data=summary)
    datasets = write_datasets(run)
    if options:
        datasets |= write_cai_datasets(run)
    made = rounds.kept if target.dataset == "instructions" else datasets.get(target.dataset, 0)
    if message := target.message(made, rounds.stopped_by):
        get_run_logger().warning(message)
    summary = write_manifest(run, {"target": target.report(made, rounds.stopped_by), "stopped": None,
                                   "endpoints": runner.traffic(config),
                                   **({"review": reviews} if reviews else {})})
    write_card(run)  # datasets/README.md, from the manifest just written
    publish_traffic(summary)
    progress.update(1.0)
    held = quarantine.state_message(run.store, run.run_id)  # listed once: the state and the tags say it
    state = final_state(run.store, run.run_id, summary, held)  # Completed, saying whether it is empty or has quarantine
    announce_completed(run.store, summary)
    if tags := outcome_tags(summary, held):
        deployed.tag(run.run_id, *tags)
    return state
