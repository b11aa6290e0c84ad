"""The stages of a run, in pipeline order, each a Step; and what a run must redo when its config changed."""
from __future__ import annotations

from typing import Any

from alignflow.cai_labels import CaiLabels
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


def changed_stages(run: Run, steps: list[Step]) -> tuple[list[str], list[str]]:
    """The stages of `steps` whose definition differs from the one the run was made with (and those after them),
    and the settings that differ; each stage's definition is recorded for the next resume."""
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
        run.write_stage_record(step.stage, {"stage": step.stage, "definition": step.definition(), "description": now})
    return redo, list(dict.fromkeys(keys))
