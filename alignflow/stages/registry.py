"""The stages, declared once, in pipeline order: each one's Step, what it reads, the config section that sets it,
the datasets it ends in, and whether `alignflow run` makes it. Everything else that names stages derives from here:
the stages a run makes, the chains the pipeline streams, what a changed stage makes again, why a dataset is empty.

Adding a stage is one entry here, its Step (in a module beside this one) and its suite (`expectations/`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alignflow.config import PipelineConfig
from alignflow.engine.run import Run
from alignflow.engine.step import Step
from alignflow.stages.cai_labels import CaiLabels
from alignflow.stages.constitution import load_constitution
from alignflow.stages.instructions import Instructions
from alignflow.stages.judge import Judge
from alignflow.stages.pairs import Pairs
from alignflow.stages.responses import Responses
from alignflow.stages.revisions import Revisions
from alignflow.stages.seeds import Seeds


def _always(config: PipelineConfig) -> bool:
    return True


def _none(config: PipelineConfig) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Stage:
    step: type[Step]
    upstream: tuple[str, ...] = ()  # the stages it reads: one made again makes this one again
    section: str = ""  # the config section that sets it
    datasets: tuple[str, ...] = ()  # the datasets made from its kept rows
    streamed: bool = False  # in `alignflow run`, batch n follows batch n of its upstream as soon as that is done
    in_run: Callable[[PipelineConfig], bool] = field(default=_always)  # whether `alignflow run` makes it
    options: Callable[[PipelineConfig], dict[str, Any]] = field(default=_none)  # the Step's own arguments

    @property
    def name(self) -> str:
        return self.step.stage


def _constitution_on(config: PipelineConfig) -> bool:
    return config.constitution.enabled


STAGES: tuple[Stage, ...] = (
    Stage(Seeds, section="seeds"),
    Stage(Instructions, ("seeds",), "instructions"),
    Stage(Responses, ("instructions",), "responses", streamed=True),
    Stage(Revisions, ("responses",), "constitution", ("cai_sft", "cai_dpo"), streamed=True, in_run=_constitution_on,
          options=lambda config: {"constitution": load_constitution(config.constitution.file)}),
    Stage(Judge, ("responses",), "judge", ("sft",), streamed=True),
    Stage(Pairs, ("judgments",), "pairs", ("dpo", "kto"), streamed=True),
    Stage(CaiLabels, ("responses",), "constitution", ("cai_labels",), in_run=lambda config: False),
)
BY_NAME = {stage.name: stage for stage in STAGES}
NAMES = tuple(BY_NAME)


def step(run: Run, stage: str, **options: Any) -> Step:
    return BY_NAME[stage].step(run, **options)


def pipeline_stages(config: PipelineConfig) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The stages `alignflow run` makes, in order, and the Step arguments of those that take some."""
    made = [stage for stage in STAGES if stage.in_run(config)]
    return [stage.name for stage in made], {stage.name: options for stage in made if (options := stage.options(config))}


def streamed(names: list[str]) -> list[Stage]:
    """Of the stages a run makes, those streamed batch by batch behind the instruction rounds, in order."""
    return [BY_NAME[name] for name in names if BY_NAME[name].streamed]


def made_through(dataset: str) -> tuple[str, ...]:
    """The stages a dataset is made through, from the instructions on: its stage and that stage's first upstream,
    back to the seeds (which are not counted)."""
    stage = next((s for s in STAGES if dataset in s.datasets), None)
    chain: list[str] = []
    while stage is not None and stage.upstream:
        chain.insert(0, stage.name)
        stage = BY_NAME[stage.upstream[0]]
    return tuple(chain)
