"""Responses: `per_instruction` samples per instruction from each generator model, each row tagged with its model
and sampling; optionally a system principle per sample (helpfulness, honesty, truthfulness), as UltraFeedback did.

A batch is a slice of one instruction round's kept rows. All its requests go out at once, each generator under
its own endpoint's limits, so several models answer side by side.
"""
from __future__ import annotations

import random

from alignflow.config import LLMConfig, PipelineConfig
from alignflow.engine.step import Answer, Batch, BatchRef, Job, Outcomes, Step, ask, slices
from alignflow.prompts import load
from alignflow.quality import curate
from alignflow.records import stable_id

STAGE = "responses"


def generator_name(number: int, config: LLMConfig) -> str:
    return f"{number}:{config.provider}:{config.model_name}"


class Plan:
    """The batches of the responses stage, and of the chain after it, as instruction rounds finish: `batch_size`
    kept instructions each, numbered in round order. With a target of N instructions only the first N kept go on
    (a round may keep more than the target needs; the rest stay in the instructions stage)."""

    def __init__(self, config: PipelineConfig):
        self.size = config.responses.batch_size
        self.limit = config.instructions.target if isinstance(config.instructions.target, int) else None
        self.refs: list[BatchRef] = []
        self.instructions = 0

    def add(self, round_record: dict) -> list[BatchRef]:
        """The new batches one round's checkpoint makes."""
        kept = round_record["counts"]["kept"]
        if self.limit is not None:
            kept = max(0, min(kept, self.limit - self.instructions))
        new = slices(len(self.refs), round_record["number"], kept, self.size)
        self.refs += new
        self.instructions += kept
        return new


class Responses(Step):
    stage = STAGE

    @property
    def templates(self) -> tuple[str, ...]:
        return ("respond", *(f"principle_{p}" for p in self.config.responses.principles))

    def settings(self) -> dict:
        cfg = self.config.responses
        return {"per_instruction": cfg.per_instruction, "principles": cfg.principles,
                "generators": [self.llm_settings(g) for g in self.config.generators()],
                **({"curate": curate.fingerprint(cfg.curate)} if cfg.curate else {})}

    def refs(self) -> list[BatchRef]:
        plan = Plan(self.config)
        for record in self.run.dir.checkpoints("instructions"):
            plan.add(record)
        return plan.refs

    def load(self, ref: BatchRef) -> Batch:
        instructions = self.run.dir.read_batch("instructions", ref.source).slice(ref.start, ref.stop - ref.start)
        return self.batch_of(ref, instructions.select("id", "instruction"))

    def _principle(self, instruction_id: str, generator: int, sample: int) -> str | None:
        """A principle per sample, seeded by its lineage, so a rerun draws the same one."""
        names = self.config.responses.principles
        return random.Random(f"{self.run.seed}:{instruction_id}:{generator}:{sample}").choice(names) if names else None

    def jobs(self, batch: Batch) -> list[Job]:
        template = load("respond")
        jobs = []
        for g, config in enumerate(self.config.generators()):
            llm = self.run.llm_from(config)
            for row in batch.inputs.iter_rows(named=True):
                for sample in range(self.config.responses.per_instruction):
                    principle = self._principle(row["id"], g, sample)
                    messages = [{"role": "user", "content": template.render(instruction=row["instruction"])}]
                    if principle:
                        messages.insert(0, {"role": "system", "content": load(f"principle_{principle}").render()})
                    jobs.append(ask(llm, template, messages, data=(row, g, sample, principle), sample=sample))
        return jobs

    def rows(self, batch: Batch, answered: list[Answer]) -> Outcomes:
        """Every (instruction, generator, sample) becomes exactly one kept, rejected or failed row; a non-empty
        response goes through the config's curators (`responses.curate`), and one that raises on it fails it."""
        out = Outcomes()
        curators = curate.resolve(self.config.responses.curate)
        for answer in answered:
            (row, g, sample, principle), llm, request = answer.job.data, answer.job.llm, answer.job.request
            result = answer.result
            base = {"id": stable_id(STAGE, row["id"], llm.provider, llm.model, g, sample, principle), "instruction_id": row["id"],
                    "instruction": row["instruction"], "generator": generator_name(g, llm.config), "sample": sample,
                    "principle": principle, "temperature": request.temperature, "max_tokens": request.max_tokens}
            if not result.ok:
                out.fail(base, answer)
            elif not result.text.strip():
                out.reject({**base, "response": result.text}, "empty response", answer)
            else:
                made = {**base, "response": result.text.strip()}
                try:
                    reason = curate.first_rejection(made, curators)
                except curate.CurateFailed as exc:
                    out.fail(made, answer, error=str(exc))
                    continue
                if reason:
                    out.reject(made, reason, answer)
                else:
                    out.keep(made, answer)
        return out
