"""What a resumed run must make again when its config changed, and the refusal when the user did not say so."""
from __future__ import annotations

from alignflow.engine.run import Run
from alignflow.engine.step import Step
from alignflow.stages.registry import BY_NAME


class ConfigChanged(Exception):
    """A run resumed with settings that would make stages again, which the user did not say to redo."""


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
        run.dir.write_stage_record(step.stage, {"stage": step.stage, "definition": step.definition(),
                                                "description": step.description()})
    return redo, keys


def refusal(run_id: str, redo: list[str], keys: list[str]) -> str:
    return (f"run {run_id} was made with another config ({', '.join(keys)}): that would make {', '.join(redo)} "
            f"again; to do so, pass --allow-config-change {','.join(redo)}")


def changed_stages(run: Run, steps: list[Step]) -> tuple[list[str], list[str]]:
    """The stages of `steps` whose definition differs from the one the run was made with (and those after them),
    and the settings that differ, named by their config section."""
    redo: list[str] = []
    keys: list[str] = []
    for step in steps:
        record = run.dir.stage_record(step.stage)
        now = step.description()
        if record is not None and record["definition"] != step.definition():
            redo.append(step.stage)
            before = record.get("description", {})
            section = BY_NAME[step.stage].section
            keys += [f"{section}.{k}" for k in sorted(set(now["settings"]) | set(before.get("settings", {})))
                     if now["settings"].get(k) != before.get("settings", {}).get(k)]
            named = {"seed": "seed", "templates": f"{step.stage} prompt templates", "screens": "gate.decontaminate/pii"}
            keys += [name for what, name in named.items() if now.get(what) != before.get(what)]
        elif any(up in redo for up in BY_NAME[step.stage].upstream):
            redo.append(step.stage)
    return redo, list(dict.fromkeys(keys))
