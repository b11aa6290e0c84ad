"""Instructions: Self-Instruct (and Evol-Instruct) rounds, one after another, until the target or a budget."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prefect import flow, get_run_logger

from alignflow.config import PipelineConfig
from alignflow.engine.run import Run
from alignflow.engine.step import BatchRef
from alignflow.engine.target import Target
from flows import deployed
from flows.batches import writing
from flows.runner import BatchRunner, batch_runner
from tasks.stages import STOPS, budget_stop, refusal_state, start_run


class Rounds:
    """Instruction rounds, each one task and one batch (number = round), each seeing every row the rounds before
    it kept. A round an earlier attempt made is always run again (it is checkpointed: nothing is asked); a new
    round starts only while `enough()` says no and no budget is spent (`stopped_by` then says which)."""

    def __init__(self, run: Run, runner: BatchRunner, target: Target, enough: Callable[[], bool],
                 tokens: Callable[[], int]):
        self.run, self.runner, self.target, self.enough, self.tokens = run, runner, target, enough, tokens
        self.records: list[dict[str, Any]] = []
        self.stopped_by: str | None = None
        self.stopped_by_budget: str | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            number = len(self.records)
            fresh = self.run.dir.checkpoint("instructions", number) is None
            self.stopped_by = self.target.spent(number, self.tokens() if fresh else 0)
            if self.stopped_by or (fresh and self.enough()):
                return
            future = self.runner.submit(self.run, "instructions", BatchRef(number))
            future.wait()
            state = future.state
            if stopped := budget_stop(state):
                self.stopped_by_budget = stopped
                return
            record = state.result()  # raises when the round failed
            self.records.append(record)
            yield record

    @property
    def kept(self) -> int:
        return sum(r["counts"]["kept"] for r in self.records)

    @property
    def spent_tokens(self) -> int:
        return sum(r["input_tokens"] + r["output_tokens"] for r in self.records)


@flow(name="instructions")
def instructions_flow(config: PipelineConfig, run_id: str, allow_config_change: list[str] | None = None) -> int:
    """Rounds until `instructions.target` instructions are kept; returns how many are."""
    run = Run(deployed.config_of(config, None), run_id)
    target = Target.of(config)
    if target.dataset != "instructions":
        raise ValueError(f"instructions.target names the {target.dataset} dataset: run the pipeline to make it")
    with writing(run), batch_runner(run.config) as runner:
        try:
            start_run(run, ["seeds", "instructions"], {}, allow_config_change)
            return _rounds(run, runner, target)
        except STOPS as exc:  # the run stops with its one line, no traceback; the same run id resumes
            return refusal_state(exc)


def _rounds(run: Run, runner: BatchRunner, target: Target) -> int:
    rounds = Rounds(run, runner, target, enough=lambda: rounds.kept >= target.rows, tokens=lambda: rounds.spent_tokens)
    logger = get_run_logger()
    for record in rounds:
        logger.info("round %d: %s (kept so far %d of %d)", record["number"], record["counts"], rounds.kept, target.rows)
    run.dir.prune("instructions", set(range(len(rounds.records))))
    if message := target.message(rounds.kept, rounds.stopped_by):
        logger.warning(message)
    return rounds.kept
