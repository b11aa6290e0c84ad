"""One batch of one stage, from its input to its checkpoint; the same for every stage.

    skip if checkpointed (same key) → known answers → generate (answers saved as they arrive)
    → rows → provenance → gate → write → checkpoint

A batch is done when its checkpoint (its key, row counts, tokens) is written after its outputs. Its key is the
hash of its input rows and the stage's definition (settings, template versions, sampling seed): a batch whose
input or stage changed is made again, and nothing else is. A checkpointed batch with failed rows is made again
on a resume, from its saved answers, so only the failures are asked again (unless its step says otherwise).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import polars as pl

from alignflow.engine import outputs
from alignflow.engine.answers import AnswerLog
from alignflow.engine.run import Run
from alignflow.engine.step import Answer, Batch, BatchRef, Outcomes, Step
from alignflow.llm.refused import refused_throughout
from alignflow.quality.gate import GateResult
from alignflow.records import content_hash, frame


@dataclass
class Done:
    """A finished batch: its checkpoint record, and the gate's verdict when it was gated in this process."""

    record: dict[str, Any]
    gate: GateResult | None = None

    @property
    def counts(self) -> dict[str, int]:
        return self.record["counts"]


def run_batch(run: Run, step: Step, ref: BatchRef) -> Done:
    batch = step.load(ref)
    key = step.batch_key(batch)
    previous = run.dir.checkpoint(step.stage, ref.number)
    if previous and previous["key"] == key and not (step.retry_failed and previous["counts"]["failed"]):
        return _released(run, step.stage, previous) or Done(previous)
    started = time.time()
    with AnswerLog(run.store, run.dir.answers_prefix(step.stage, ref.number)) as log:
        answered = _generate(run, step, batch, log)
    outcomes = step.rows(batch, answered)
    frames = _frames(step.stage, outcomes)
    run.dir.clear_batch(step.stage, ref.number)
    counts, verdict = outputs.write_batch(run.store, run.run_id, step.stage, ref.number, frames, run.config.gate)
    results = [a.result for a in answered]
    record = {
        "stage": step.stage, "number": ref.number, "key": key, "counts": counts,
        "inputs": outcomes.inputs if outcomes.inputs is not None else sum(len(o) for o in
                                                                            (outcomes.kept, outcomes.rejected, outcomes.failed)),
        "kept_hash": content_hash(frames["kept"]) if counts["kept"] else None,
        "gate": _verdict(verdict), "content_hash": verdict.content_hash if verdict else None,
        "requests": len(results), "cached": sum(r.cached for r in results), "attempts": sum(r.attempts for r in results),
        "input_tokens": sum(r.input_tokens for r in results if r.paid),
        "output_tokens": sum(r.output_tokens for r in results if r.paid), "by_model": _by_model(answered),
        "started": started, "finished": time.time(), **outcomes.notes, **(verdict.screens if verdict else {}),
    }
    run.dir.write_checkpoint(step.stage, ref.number, record)
    log.compact()
    step.done(batch, record)
    return Done(record, verdict)


def _generate(run: Run, step: Step, batch: Batch, log: AnswerLog) -> list[Answer]:
    """The step's requests, then its follow-ups, each phase all at once; known answers come from the log. A run another
    writer has taken over asks nothing more (LeaseLost); an endpoint that refused every request of a phase stops the
    run (EndpointRefused), as one that refuses a few in a row does in the client."""
    answered: list[Answer] = []
    jobs = step.jobs(batch)
    while jobs:
        run.confirm_writer()
        results = run.generate([(job.llm, job.request) for job in jobs], step.stage, log)
        if stop := refused_throughout(((job.llm.provider, job.llm.config.base_url, job.llm.model), result)
                                      for job, result in zip(jobs, results)):
            raise stop  # its answers are saved; no row, no checkpoint: the same run id resumes it
        phase = [Answer(job, result) for job, result in zip(jobs, results)]
        answered += phase
        jobs = step.more(batch, phase)
    return answered


def _by_model(answered: list[Answer]) -> dict[str, dict[str, Any]]:
    """Requests and tokens the run paid for, per model (and per mode: the Batch APIs cost less)."""
    spent: dict[str, dict[str, Any]] = {}
    for answer in answered:
        llm, result = answer.job.llm, answer.result
        key = f"{llm.provider}:{llm.model}" + (":batch" if llm.config.mode == "batch" else "")
        entry = spent.setdefault(key, {"provider": llm.provider, "model": llm.model, "batch": llm.config.mode == "batch",
                                       "requests": 0, "input_tokens": 0, "output_tokens": 0})
        entry["requests"] += 1
        if result.paid:
            entry["input_tokens"] += result.input_tokens
            entry["output_tokens"] += result.output_tokens
    return spent


def _released(run: Run, stage: str, record: dict) -> Done | None:
    """A checkpointed quarantined batch a person has since released: written out now, from quarantine."""
    if record.get("gate") != "quarantined":
        return None
    released = outputs.release(run.store, run.run_id, stage, record["number"], record["content_hash"])
    if released is None:
        return None
    counts, verdict = released
    kept = run.dir.read_batch(stage, record["number"])
    record = {**record, "counts": counts, "gate": "released", "kept_hash": content_hash(kept) if kept.height else None}
    run.dir.write_checkpoint(stage, record["number"], record)
    return Done(record, verdict)


def _verdict(result: GateResult | None) -> str | None:
    if result is None:
        return None
    if result.passed:
        return "passed"
    return "released" if result.released else "dropped" if result.dropped else "quarantined"


def _frames(stage: str, outcomes: Outcomes) -> dict[str, pl.DataFrame]:
    """Each outcome's rows with their provenance (a step may name the row's provider and model itself); each
    answer's tokens are counted on the first row made from it."""
    charged: set[int] = set()
    return {name: frame([{**provenance(answers, charged), **row} if answers else row for row, answers in rows], stage)
            for name, rows in (("kept", outcomes.kept), ("rejected", outcomes.rejected), ("failed", outcomes.failed))}


def provenance(answers: tuple[Answer, ...], charged: set[int]) -> dict[str, Any]:
    """Where a row's text came from: the model, the templates, the raw output (by call when several), cost."""
    first = answers[0].job
    fresh = [a.result for a in answers if id(a.result) not in charged]
    charged.update(id(a.result) for a in answers)
    results = [a.result for a in answers]
    templates = list(dict.fromkeys(a.job.template for a in answers))
    raw = results[0].text if len(answers) == 1 else json.dumps(
        {a.job.label or str(i): a.result.text for i, a in enumerate(answers)}, ensure_ascii=False)
    return {
        "provider": first.llm.provider, "model": first.llm.model,
        "template": "+".join(t.name for t in templates), "template_version": "+".join(t.version for t in templates),
        "raw_output": raw,
        "input_tokens": sum(r.input_tokens for r in fresh), "output_tokens": sum(r.output_tokens for r in fresh),
        "latency_s": round(sum(r.latency_s for r in results), 4), "attempts": sum(r.attempts for r in results),
        "finish_reason": next((r.finish_reason for r in results if r.finish_reason != "stop"), "stop"),
        "cached": all(r.cached for r in results),
    }
