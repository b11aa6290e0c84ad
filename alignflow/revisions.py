"""SL-CAI: answers critiqued and revised against principles drawn from a constitution, round by round.

A batch of rows moves together: initial answers (when the input has none), then per round one batch of critique
requests and one of revision requests. A critique that finds no revision needed leaves the answer as it is, and the
round stays in the chain, marked so. Every input row ends kept, rejected (with the reason) or failed (with the error,
the raw output and the chain so far).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from pydantic import BaseModel, Field

from alignflow.cai_labels import combined, judge_pairs
from alignflow.config import LLMOverride
from alignflow.constitution import Constitution, Principle
from alignflow.llm.client import LLM
from alignflow.llm.types import Result
from alignflow.prompts import load
from alignflow.records import frame, provenance, stable_id
from alignflow.run import Run, Written

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
    """One answer on its way through the rounds."""

    source: dict
    principles: list[Principle]
    answer: str | None
    steps: list[dict] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    error: str | None = None
    reason: str | None = None
    judge_label: float | None = None

    @property
    def active(self) -> bool:
        return self.error is None and self.reason is None

    def record(self, result: Result) -> bool:
        self.results.append(result)
        if not result.ok:
            self.error = result.error
        return result.ok

    @property
    def revised_steps(self) -> list[dict]:
        return [step for step in self.steps if step["revision"] is not None]


def prompts_from_file(path: str | Path) -> pl.DataFrame:
    """JSONL with a `prompt` string a line (other fields are ignored); a prompt given twice is revised once."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptsError(f"cannot read prompts file {path}: {exc}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptsError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise PromptsError(f"{path}:{number}: no `prompt` string")
        prompt = record["prompt"].strip()
        rows.append({"prompt_id": stable_id("prompt", prompt), "prompt": prompt})
    if not rows:
        raise PromptsError(f"prompts file {path} holds no prompts")
    return pl.DataFrame(rows, schema=INPUT).unique("prompt_id", keep="first", maintain_order=True)


def inputs_from_run(run: Run) -> pl.DataFrame:
    """The run's kept responses with their answers, or else its kept instructions (answered here first)."""
    responses = run.read("responses")
    if responses.height:
        return responses.select(pl.col("instruction_id").alias("prompt_id"), pl.col("instruction").alias("prompt"),
                                pl.col("id").alias("response_id"), pl.col("response").alias("initial"),
                                pl.coalesce("generator", "model").alias("initial_model"))
    instructions = run.read("instructions")
    if instructions.height:
        return instructions.select(pl.col("id").alias("prompt_id"), pl.col("instruction").alias("prompt"),
                                   *(pl.lit(None, pl.String).alias(c) for c in ("response_id", "initial", "initial_model")))
    raise PromptsError(f"run {run.run_id} has no kept responses or instructions to revise in {run.store.url}")


def initial_llm(run: Run, override: LLMOverride | None) -> LLM:
    """The model of the initial answers: the responses stage's (a helpful model, as in the paper), overridable."""
    return LLM(run.config.llm_for("responses").merged(override), run.cache)


def revise_batch(run: Run, number: int, inputs: pl.DataFrame, constitution: Constitution,
                 initial: LLMOverride | None = None) -> Written:
    """Each input row (`INPUT` columns) becomes one kept, rejected or failed row; principles are drawn per row,
    seeded by its lineage, so a re-run asks the same requests and the request cache answers them."""
    cfg = run.config.constitution
    llm = run.llm("constitution")
    rows = []
    for source in inputs.to_dicts():
        key = source["response_id"] or source["prompt_id"]
        source["id"] = stable_id(STAGE, key, llm.provider, llm.model, constitution.name, cfg.rounds)
        rows.append(_Row(source, constitution.draw(f"{run.config.seed}:{key}", cfg.rounds), source["initial"]))
    _answer(run, initial_llm(run, initial), [r for r in rows if r.answer is None])
    for round_no in range(1, cfg.rounds + 1):
        _critique(run, llm, rows, round_no)
        _revise(run, llm, rows, round_no)
    for row in rows:
        if row.active:
            row.reason = _rejection(row)
    if cfg.confirm_with_judge:
        _confirm(run, [r for r in rows if r.active])
    return _write(run, number, llm, constitution, rows)


def _answer(run: Run, llm: LLM, rows: list[_Row]) -> None:
    if not rows:
        return
    template = load("respond")
    requests = [llm.request([{"role": "user", "content": template.render(instruction=r.source["prompt"])}]) for r in rows]
    for row, result in zip(rows, run.generate(llm, requests, f"{STAGE}: initial answers")):
        row.source["initial_model"] = f"{llm.provider}:{llm.model}"
        if row.record(result):
            row.answer = row.source["initial"] = result.text.strip()
            row.reason = None if row.answer else "empty initial answer"


def _critique(run: Run, llm: LLM, rows: list[_Row], round_no: int) -> None:
    template = load("critique")
    active = [r for r in rows if r.active]
    if not active:
        return
    requests = []
    for row in active:
        principle = row.principles[round_no - 1]
        row.steps.append({"round": round_no, "principle": principle.name, "critique": None, "revision_needed": None,
                          "revision": None})
        text = template.render(prompt=row.source["prompt"], response=row.answer, examples=_examples(principle, "critique"),
                               critique_request=principle.critique_request)
        requests.append(llm.request([{"role": "user", "content": text}], schema=Critique))
    for row, result in zip(active, run.generate(llm, requests, f"{STAGE}: critiques, round {round_no}")):
        if row.record(result):
            row.steps[-1].update(critique=result.parsed.critique.strip(), revision_needed=result.parsed.revision_needed)


def _revise(run: Run, llm: LLM, rows: list[_Row], round_no: int) -> None:
    template = load("revise")
    due = [r for r in rows if r.active and r.steps[-1]["revision_needed"]]
    if not due:
        return
    requests = []
    for row in due:
        principle = row.principles[round_no - 1]
        text = template.render(prompt=row.source["prompt"], response=row.answer, examples=_examples(principle, "revision"),
                               critique_request=principle.critique_request, critique=row.steps[-1]["critique"],
                               revision_request=principle.revision_request)
        requests.append(llm.request([{"role": "user", "content": text}], schema=Revision))
    for row, result in zip(due, run.generate(llm, requests, f"{STAGE}: revisions, round {round_no}")):
        if row.record(result):
            row.answer = row.steps[-1]["revision"] = result.parsed.revision.strip()


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


def _confirm(run: Run, rows: list[_Row]) -> None:
    """The judge compares revision and initial answer, both orders, under the last principle that revised it."""
    if not rows:
        return
    items = [(r.source["prompt"], r.answer, r.source["initial"], r.principles[r.revised_steps[-1]["round"] - 1])
             for r in rows]
    for row, verdict in zip(rows, judge_pairs(run, run.llm("judge"), items, f"{STAGE}: judge confirms")):
        if row.record(verdict.result):
            row.judge_label = verdict.label
            if verdict.label < 1:
                row.reason = f"the judge did not prefer the revision in both orders (label {verdict.label:g})"


def _write(run: Run, number: int, llm: LLM, constitution: Constitution, rows: list[_Row]) -> Written:
    critique, revise = load("critique"), load("revise")
    kept, rejected, failed = [], [], []
    for row in rows:
        src, revised = row.source, row.revised_steps
        final = row.answer if revised else None
        out = {**src, "revision": final, "changed": None if final is None else final != src["initial"],
               "rounds_revised": len(revised), "principles": [s["principle"] for s in row.steps], "chain": row.steps,
               "constitution": constitution.name, "judge_label": row.judge_label,
               **provenance(llm.provider, llm.model, f"{critique.name}+{revise.name}",
                            f"{critique.version}+{revise.version}", combined(row.results))}
        if row.error is not None:
            failed.append({**out, "error": row.error})
        elif row.reason is not None:
            rejected.append({**out, "reason": row.reason})
        else:
            kept.append(out)
    return run.write_batch(STAGE, number, kept=frame(kept, STAGE), rejected=frame(rejected, STAGE),
                           failed=frame(failed, STAGE))


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


def write_datasets(run: Run) -> dict[str, int]:
    kept = run.read(STAGE)
    datasets = {"cai_sft": sft(kept), "cai_dpo": dpo(kept)}
    for name, df in datasets.items():
        run.store.write_parquet(f"{run.run_id}/datasets/{name}.parquet", df)
    return {name: df.height for name, df in datasets.items()}
