"""Self-Instruct rounds: show sampled tasks, ask for new ones, keep those that pass the filters and are new."""
from __future__ import annotations

import json
import random
from typing import Annotated

import polars as pl
from pydantic import BaseModel, Field

from alignflow import filters
from alignflow.prompts import load
from alignflow.records import frame, provenance, stable_id
from alignflow.run import Run

STAGE = "instructions"


class NewTasks(BaseModel):
    # bounded lengths keep a small sampled model from running on inside one string
    instructions: list[Annotated[str, Field(max_length=400)]] = Field(min_length=1, max_length=20)


def _sample_shown(rng: random.Random, human: list[dict], machine: list[dict], shown: int, shown_machine: int) -> list[dict]:
    """k in-context tasks: mostly human seeds, a few from the machine pool once it has them (6 + 2 in the paper)."""
    from_machine = rng.sample(machine, min(shown_machine, len(machine)))
    from_human = rng.sample(human, min(shown - len(from_machine), len(human)))
    tasks = from_human + from_machine
    rng.shuffle(tasks)
    return tasks


def run_round(run: Run, round_no: int, seeds: pl.DataFrame, pool: pl.DataFrame) -> dict[str, int]:
    """One round: `prompts_per_round` prompts, candidates filtered and deduplicated against the pool; batch = round."""
    cfg = run.config.instructions
    llm = run.llm(STAGE)
    template = load("self_instruct")
    rng = random.Random(f"{run.config.seed}:{round_no}")
    human, machine = seeds.to_dicts(), pool.to_dicts()

    prompts = []
    for _ in range(cfg.prompts_per_round):
        shown = _sample_shown(rng, human, machine, cfg.shown, cfg.shown_machine)
        examples = json.dumps({"instructions": [t["instruction"] for t in shown]}, indent=1, ensure_ascii=False)
        text = template.render(examples=examples, count=cfg.per_prompt)
        prompts.append((shown, llm.request([{"role": "user", "content": text}], schema=NewTasks, temperature=max(llm.config.temperature, 0.7))))

    results = run.generate(llm, [r for _, r in prompts], f"{STAGE} round {round_no}")

    checks = [filters.word_count(cfg.min_words, cfg.max_words), filters.blacklist(), filters.bad_start]
    seen = {filters.normalise(t) for t in pl.concat([seeds["instruction"], pool["instruction"]]).to_list()}
    kept, rejected, failed = [], [], []
    for (shown, request), result in zip(prompts, results):
        prov = provenance(llm.provider, llm.model, template.name, template.version, result)
        parents = [t["id"] for t in shown]
        if not result.ok:
            failed.append({"id": stable_id(STAGE, "failed", request.messages), "parent_ids": parents, "round": round_no,
                           "source": "self_instruct", "error": result.error, **prov})
            continue
        for text in result.parsed.instructions:
            text = text.strip()
            row = {"id": stable_id(STAGE, text), "instruction": text, "source": "self_instruct",
                   "parent_ids": parents, "round": round_no, **prov}
            reason = "truncated generation (finish reason length)" if result.finish_reason == "length" else \
                filters.first_rejection(text, checks)
            key = filters.normalise(text)
            if reason is None and key in seen:
                reason = "exact duplicate of an instruction in the pool"
            if reason:
                rejected.append({**row, "reason": reason})
            else:
                seen.add(key)
                kept.append(row)
    return run.write_batch(STAGE, round_no, kept=frame(kept, STAGE), rejected=frame(rejected, STAGE),
                           failed=frame(failed, STAGE))
