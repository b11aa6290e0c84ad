"""SL-CAI: answers critiqued and revised against principles drawn from a constitution, round by round.

A batch of rows moves together: initial answers (when the input has none), then per round one batch of critique
requests and one of revision requests. A critique that finds no revision needed leaves the answer as it is, and the
round stays in the chain, marked so. Every input row ends kept, rejected (with the reason) or failed (with the error,
the raw output and the chain so far).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
from pydantic import BaseModel, Field

from alignflow.config import LLMOverride
from alignflow.engine.step import Answer, Batch, BatchRef, Job, Outcomes, Step, ask, slices
from alignflow.prompts import load
from alignflow.records import stable_id
from alignflow.stages import input_files
from alignflow.stages.cai_labels import choice_jobs, verdict
from alignflow.stages.constitution import Constitution, Principle

if TYPE_CHECKING:
    from alignflow.engine.run import Run

STAGE = "revisions"
# what a batch starts from: a prompt, and its initial answer when the input already has one (a run's responses)
INPUT = {"prompt_id": pl.String, "prompt": pl.String, "response_id": pl.String, "initial": pl.String,
         "initial_model": pl.String}


class PromptsError(ValueError):
    """No prompts to revise: an unreadable file, or a run with neither responses nor instructions."""


class Critique(BaseModel):
    critique: str = Field(min_length=1, max_length=4000)
    revision_needed: bool


class Revision(BaseModel):
    revision: str = Field(min_length=1)


@dataclass
class _Row:
    """One answer on its way through the rounds, with every answer it stands on so far."""

    source: dict
    principles: list[Principle]
    answer: str | None
    steps: list[dict] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    error: str | None = None
    reason: str | None = None
    judge_label: float | None = None

    @property
    def active(self) -> bool:
        return self.error is None and self.reason is None

    def record(self, answer: Answer) -> bool:
        self.answers.append(answer)
        if not answer.result.ok:
            self.error = answer.result.error
        return answer.result.ok

    @property
    def revised_steps(self) -> list[dict]:
        return [step for step in self.steps if step["revision"] is not None]


def prompts_from_file(path: str | Path) -> pl.DataFrame:
    """JSONL with a `prompt` string a line, read once per process while the file is unchanged."""
    try:
        mtime = Path(path).stat().st_mtime_ns
    except OSError as exc:
        raise PromptsError(f"cannot read prompts file {path}: {exc}") from None
    return _read_prompts(str(path), mtime)


@functools.lru_cache(maxsize=4)
def _read_prompts(name: str, mtime_ns: int) -> pl.DataFrame:
    """JSONL with a `prompt` string a line (other fields are ignored); a prompt given twice is revised once."""
    rows = []
    for place, record in input_files.records(name, "prompts", PromptsError):
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise PromptsError(f"{place}: no `prompt` string")
        prompt = record["prompt"].strip()
        rows.append({"prompt_id": stable_id("prompt", prompt), "prompt": prompt})
    if not rows:
        raise PromptsError(f"prompts file {name} holds no prompts")
    return pl.DataFrame(rows, schema=INPUT).unique("prompt_id", keep="first", maintain_order=True)


def from_responses(responses: pl.DataFrame) -> pl.DataFrame:
    return responses.select(pl.col("instruction_id").alias("prompt_id"), pl.col("instruction").alias("prompt"),
                            pl.col("id").alias("response_id"), pl.col("response").alias("initial"),
                            pl.coalesce("generator", "model").alias("initial_model"))


def from_instructions(instructions: pl.DataFrame) -> pl.DataFrame:
    return instructions.select(pl.col("id").alias("prompt_id"), pl.col("instruction").alias("prompt"),
                               *(pl.lit(None, pl.String).alias(c) for c in ("response_id", "initial", "initial_model")))


def check_run(run: "Run") -> None:
    """A PromptsError unless the run has kept responses or instructions to revise."""
    if not (run.dir.checkpoints("responses") or run.dir.checkpoints("instructions")):
        raise PromptsError(f"run {run.run_id} has no kept responses or instructions to revise in {run.store.url}")


class Revisions(Step):
    """Batch `n` revises responses batch `n` (in a pipeline), a slice of a run's instructions (answered here first),
    or a slice of a prompts file. Its phases: initial answers (when missing), then per round critiques and
    revisions, then the judge's confirmation when asked for; each phase is one set of requests."""

    stage = STAGE

    def __init__(self, run: "Run", constitution: Constitution, initial: LLMOverride | None = None,
                 prompts: str | None = None):
        super().__init__(run)
        self.constitution, self.prompts = constitution, prompts
        self.initial = run.llm_from(run.config.llm_for("responses").merged(initial))
        cfg = run.config.constitution
        self.phases = [("initial", 0), *((kind, r) for r in range(1, cfg.rounds + 1) for kind in ("critique", "revise")),
                       *([("confirm", 0)] if cfg.confirm_with_judge else [])]

    @property
    def templates(self) -> tuple[str, ...]:
        return ("respond", "critique", "revise", *(("cai_choose",) if self.config.constitution.confirm_with_judge else ()))

    def settings(self) -> dict:
        cfg = self.config.constitution
        return {"rounds": cfg.rounds, "confirm_with_judge": cfg.confirm_with_judge,
                "constitution": self.constitution.fingerprint(),
                "llm": self.llm_settings(self.config.llm_for("constitution")),
                "initial": self.llm_settings(self.initial.config),
                "judge": self.llm_settings(self.config.llm_for("judge")) if cfg.confirm_with_judge else None}

    def refs(self) -> list[BatchRef]:
        size = self.config.constitution.batch_size
        if self.prompts:
            return slices(0, None, prompts_from_file(self.prompts).height, size)
        if responses := self.following("responses"):
            return responses
        refs: list[BatchRef] = []
        for record in self.run.dir.checkpoints("instructions"):
            refs += slices(len(refs), record["number"], record["counts"]["kept"], size)
        return refs

    def load(self, ref: BatchRef) -> Batch:
        if self.prompts:
            inputs = prompts_from_file(self.prompts).slice(ref.start, ref.stop - ref.start)
        elif ref.stop is None:
            inputs = from_responses(self.run.dir.read_batch("responses", ref.source))
        else:
            inputs = from_instructions(self.run.dir.read_batch("instructions", ref.source).slice(ref.start, ref.stop - ref.start))
        return self.batch_of(ref, inputs)

    def jobs(self, batch: Batch) -> list[Job]:
        """Each row draws its principles, seeded by its lineage, so a re-run asks the same requests."""
        cfg, llm = self.config.constitution, self.run.llm("constitution")
        rows = []
        for source in batch.inputs.to_dicts():
            key = source["response_id"] or source["prompt_id"]
            source["id"] = stable_id(STAGE, key, llm.provider, llm.model, self.constitution.name, cfg.rounds)
            rows.append(_Row(source, self.constitution.draw(f"{self.run.seed}:{key}", cfg.rounds), source["initial"]))
        batch.state = {"rows": rows, "phase": 0}
        return self._next(batch)

    def more(self, batch: Batch, answered: list[Answer]) -> list[Job]:
        if answered and answered[0].job.data[1] == "confirm":  # both orders of a row come one after the other
            for forward, reversed_ in zip(answered[::2], answered[1::2]):
                self._took_confirm(forward.job.data[0], forward, reversed_)
        else:
            for answer in answered:
                row, kind, _ = answer.job.data
                getattr(self, f"_took_{kind}")(row, answer)
        return self._next(batch)

    def _next(self, batch: Batch) -> list[Job]:
        """The requests of the next phase that has any."""
        state = batch.state
        while state["phase"] < len(self.phases):
            kind, round_no = self.phases[state["phase"]]
            state["phase"] += 1
            if kind == "confirm":
                _settle(state["rows"])  # a row no round revised is rejected before the judge sees it
            jobs = getattr(self, f"_{kind}_jobs")([r for r in state["rows"] if r.active], round_no)
            if jobs:
                return jobs
        return []

    def _initial_jobs(self, rows: list[_Row], _: int) -> list[Job]:
        llm, template = self.initial, load("respond")
        return [ask(llm, template, template.render(instruction=row.source["prompt"]), label="initial",
                    data=(row, "initial", 0))
                for row in rows if row.answer is None]

    def _critique_jobs(self, rows: list[_Row], round_no: int) -> list[Job]:
        llm, template = self.run.llm("constitution"), load("critique")
        jobs = []
        for row in rows:
            principle = row.principles[round_no - 1]
            row.steps.append({"round": round_no, "principle": principle.name, "critique": None, "revision_needed": None,
                              "revision": None})
            text = template.render(prompt=row.source["prompt"], response=row.answer,
                                   examples=_examples(principle, "critique"), critique_request=principle.critique_request)
            jobs.append(ask(llm, template, text, label=f"critique {round_no}", data=(row, "critique", round_no),
                            schema=Critique))
        return jobs

    def _revise_jobs(self, rows: list[_Row], round_no: int) -> list[Job]:
        llm, template = self.run.llm("constitution"), load("revise")
        jobs = []
        for row in rows:
            if not row.steps[-1]["revision_needed"]:
                continue
            principle = row.principles[round_no - 1]
            text = template.render(prompt=row.source["prompt"], response=row.answer,
                                   examples=_examples(principle, "revision"), critique_request=principle.critique_request,
                                   critique=row.steps[-1]["critique"], revision_request=principle.revision_request)
            jobs.append(ask(llm, template, text, label=f"revision {round_no}", data=(row, "revise", round_no),
                            schema=Revision))
        return jobs

    def _confirm_jobs(self, rows: list[_Row], _: int) -> list[Job]:
        """The judge compares revision and initial answer, both orders, under the last principle that revised it."""
        items = [(r.source["prompt"], r.answer, r.source["initial"], r.principles[r.revised_steps[-1]["round"] - 1])
                 for r in rows]
        return choice_jobs(self.run.llm("judge"), items, [(r, "confirm", 0) for r in rows])

    def _took_initial(self, row: _Row, answer: Answer) -> None:
        row.source["initial_model"] = f"{answer.job.llm.provider}:{answer.job.llm.model}"
        if row.record(answer):
            row.answer = row.source["initial"] = answer.result.text.strip()
            row.reason = None if row.answer else "empty initial answer"

    def _took_critique(self, row: _Row, answer: Answer) -> None:
        if row.record(answer):
            row.steps[-1].update(critique=answer.result.parsed.critique.strip(),
                                 revision_needed=answer.result.parsed.revision_needed)

    def _took_revise(self, row: _Row, answer: Answer) -> None:
        if row.record(answer):
            row.answer = row.steps[-1]["revision"] = answer.result.parsed.revision.strip()

    def _took_confirm(self, row: _Row, forward: Answer, reversed_: Answer) -> None:
        found = verdict(forward, reversed_)
        if row.record(forward) and row.record(reversed_):
            row.judge_label = found.label
            if found.label < 1:
                row.reason = f"the judge did not prefer the revision in both orders (label {found.label:g})"

    def rows(self, batch: Batch, answered: list[Answer]) -> Outcomes:
        """Every input row ends kept, rejected (with the reason) or failed (with the error and the chain so far)."""
        rows = batch.state["rows"]
        _settle(rows)
        llm = self.run.llm("constitution")  # the revising model, whoever wrote the initial answers
        out = Outcomes()
        for row in rows:
            src, revised = row.source, row.revised_steps
            final = row.answer if revised else None
            values = {**src, "revision": final, "changed": None if final is None else final != src["initial"],
                      "rounds_revised": len(revised), "principles": [s["principle"] for s in row.steps],
                      "chain": row.steps, "constitution": self.constitution.name, "judge_label": row.judge_label,
                      "provider": llm.provider, "model": llm.model}
            if row.error is not None:
                out.fail(values, *row.answers, error=row.error)
            elif row.reason is not None:
                out.reject(values, row.reason, *row.answers)
            else:
                out.keep(values, *row.answers)
        return out


def _settle(rows: list[_Row]) -> None:
    """Why a row that went through every round without failing is no revision, if it is not."""
    for row in rows:
        if row.active:
            row.reason = _rejection(row)


def _examples(principle: Principle, upto: str) -> str:
    """The principle's worked examples as transcripts, cut after the critique or after the revision."""
    blocks = []
    for ex in principle.examples:
        lines = [f"Human: {ex.prompt}", f"Assistant: {ex.response}",
                 f"Critique request: {principle.critique_request}", f"Critique: {ex.critique}"]
        if upto == "revision":
            lines += [f"Revision request: {principle.revision_request}", f"Revision: {ex.revision}"]
        blocks.append("\n".join(lines))
    return "\nWorked examples:\n\n" + "\n\n".join(blocks) + "\n" if blocks else ""


def _rejection(row: _Row) -> str | None:
    if not row.revised_steps:
        return "no round asked for a revision"
    if row.answer == row.source["initial"]:
        return "the revision is identical to the initial answer"
    return None


def sft(revisions: pl.DataFrame) -> pl.DataFrame:
    """The final revision of every kept row as a two-turn conversation."""
    return revisions.select(
        pl.concat_list(pl.struct(role=pl.lit("user"), content=pl.col("prompt")),
                       pl.struct(role=pl.lit("assistant"), content=pl.col("revision"))).alias("messages"),
        "principles", "prompt_id", pl.col("id").alias("revision_id"),
    )


def dpo(revisions: pl.DataFrame) -> pl.DataFrame:
    """The final revision preferred to the initial answer."""
    return revisions.select("prompt", pl.col("revision").alias("chosen"), pl.col("initial").alias("rejected"),
                            "principles", "prompt_id", "response_id", pl.col("id").alias("revision_id"))


def write_datasets(run: "Run") -> dict[str, int]:
    kept = run.dir.read(STAGE)
    datasets = {"cai_sft": sft(kept), "cai_dpo": dpo(kept)}
    for name, df in datasets.items():
        run.store.write_parquet(run.dir.dataset_key(name), df)
    return {name: df.height for name, df in datasets.items()}
