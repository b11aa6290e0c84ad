"""The stages of a run, in pipeline order, each a Step; and what a run must redo when its config changed."""
from __future__ import annotations

from typing import Any

from alignflow.cai_labels import CaiLabels
from alignflow.config import PipelineConfig
from alignflow.constitution import load_constitution
from alignflow.instructions import Instructions
from alignflow.judge import Judge
from alignflow.pairs import Pairs
from alignflow.responses import Responses
from alignflow.revisions import Revisions
from alignflow.run import Run
from alignflow.seeds import Seeds
from alignflow.step import Step

STEPS: dict[str, type[Step]] = {"seeds": Seeds, "instructions": Instructions, "responses": Responses,
                                "revisions": Revisions, "judgments": Judge, "pairs": Pairs, "cai_labels": CaiLabels}
# what each stage reads: a stage made again makes everything after it again
UPSTREAM = {"instructions": ("seeds",), "responses": ("instructions",), "revisions": ("responses",),
            "judgments": ("responses",), "pairs": ("judgments",), "cai_labels": ("responses",)}


def step(run: Run, stage: str, **options: Any) -> Step:
    return STEPS[stage](run, **options)


class ConfigChanged(Exception):
    """A run resumed with settings that would make stages again, which the user did not say to redo."""


def pipeline_stages(config: PipelineConfig) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The stages `alignflow run` makes, in order, and the options of those that take some."""
    options = {"revisions": {"constitution": load_constitution(config.constitution.file)}} \
        if config.constitution.enabled else {}
    return ["seeds", "instructions", "responses", *(["revisions"] if options else []), "judgments", "pairs"], options


def allowed_changes(run: Run, steps: list[Step], allowed: list[str] | None) -> tuple[list[str], list[str]]:
    """The stages a changed config makes again and the keys that differ; ConfigChanged, saying what to pass, when a
    stage to redo (or one after it) is not named in `allowed`."""
    redo, keys = changed_stages(run, steps)
    if [stage for stage in redo if stage not in (allowed or [])]:
        raise ConfigChanged(refusal(run.run_id, redo, keys))
    return redo, keys


def check_config(run: Run, steps: list[Step], allowed: list[str] | None) -> tuple[list[str], list[str]]:
    """Compare each stage's definition with the one the run was made with (`allowed_changes`). Records the
    definitions when the run goes on; returns the stages it redoes and the keys that differ."""
    redo, keys = allowed_changes(run, steps, allowed)
    for step in steps:
        run.write_stage_record(step.stage, {"stage": step.stage, "definition": step.definition(),
                                            "description": step.description()})
    return redo, keys


def refusal(run_id: str, redo: list[str], keys: list[str]) -> str:
    return (f"run {run_id} was made with another config ({', '.join(keys)}): that would make {', '.join(redo)} "
            f"again; to do so, pass --allow-config-change {','.join(redo)}")


def changed_stages(run: Run, steps: list[Step]) -> tuple[list[str], list[str]]:
    """The stages of `steps` whose definition differs from the one the run was made with (and those after them),
    and the settings that differ."""
    redo: list[str] = []
    keys: list[str] = []
    for step in steps:
        record = run.stage_record(step.stage)
        now = step.description()
        if record is not None and record["definition"] != step.definition():
            redo.append(step.stage)
            before = record.get("description", {})
            keys += [f"{step.stage}.{k}" for k in sorted(set(now["settings"]) | set(before.get("settings", {})))
                     if now["settings"].get(k) != before.get("settings", {}).get(k)]
            keys += [what if what == "seed" else f"{step.stage} prompt templates" for what in ("seed", "templates")
                     if now[what] != before.get(what)]
        elif any(up in redo for up in UPSTREAM.get(step.stage, ())):
            redo.append(step.stage)
    return redo, list(dict.fromkeys(keys))
