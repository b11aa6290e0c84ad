"""Instruction rounds: Self-Instruct prompts and (optionally) Evol-Instruct rewrites, then the gate.

A round is one batch, and rounds run one after another: each samples its in-context tasks from the pool the
earlier rounds kept and is deduplicated against it. Its candidates pass the heuristic filters and the config's
own curators (`instructions.curate`), then dedup against the seeds, the pool, and the earlier candidates of the
same round. Every candidate ends as a kept row or a rejected row with its reason (or a failed row, when a curator
raised on it); a failed request is a failed row.
"""
from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass, field
from typing import Annotated

import polars as pl
from pydantic import BaseModel, Field

from alignflow.config import PipelineConfig
from alignflow.engine.step import Answer, Batch, BatchRef, Job, Outcomes, Step, ask, digest
from alignflow.llm.client import LLM
from alignflow.prompts import load
from alignflow.quality import curate, filters
from alignflow.quality.dedup import Index, make_index
from alignflow.records import schema_for, stable_id
from alignflow.stages import evol

STAGE = "instructions"
SELF_INSTRUCT = "self_instruct"


class NewTasks(BaseModel):
    # bounded lengths keep a small sampled model from running on inside one string
    instructions: list[Annotated[str, Field(max_length=400)]] = Field(min_length=1, max_length=20)


@dataclass(frozen=True)
class Lineage:
    """What the rows of one answer inherit; an evolution also keeps its method and the original text."""

    source: str
    parent_ids: list[str]
    evolution: str | None = None
    original: str | None = None


@dataclass
class Pool:
    """What the run holds before a round: seeds, the machine instructions kept so far, and their dedup index.

    Kept between rounds in this process (rebuilt from the store when a round runs elsewhere or after a resume),
    so a round costs what is new in it, not the size of the pool."""

    rounds: int  # rounds 0..rounds-1 are in it
    basis: str  # ... as the store holds them: the basis of round `rounds`
    seeds: list[dict]
    machine: list[dict] = field(default_factory=list)
    evolved: set[str] = field(default_factory=set)  # ids of instructions already evolved
    index: Index | None = None


_pools: dict[tuple[str, str], Pool] = {}
_pools_lock = threading.Lock()


def sent_on(config: PipelineConfig, kept: int) -> int:
    """How many of the kept instructions go on to responses: with a target of N instructions the first N (the
    round that reaches it may keep more: those stay in this stage), with a dataset target all of them."""
    target = config.instructions.target
    return min(kept, target) if isinstance(target, int) else kept


def _sample_shown(rng: random.Random, human: list[dict], machine: list[dict], shown: int, shown_machine: int) -> list[dict]:
    """k in-context tasks: mostly human seeds, a few from the machine pool once it has them (6 + 2 in the paper)."""
    from_machine = rng.sample(machine, min(shown_machine, len(machine)))
    from_human = rng.sample(human, min(shown - len(from_machine), len(human)))
    tasks = from_human + from_machine
    rng.shuffle(tasks)
    return tasks


def self_instruct_jobs(llm: LLM, rng: random.Random, cfg, human: list[dict], machine: list[dict]) -> list[Job]:
    template = load(SELF_INSTRUCT)
    jobs = []
    for _ in range(cfg.prompts_per_round or llm.config.max_concurrency):
        shown = _sample_shown(rng, human, machine, cfg.shown, cfg.shown_machine)
        examples = json.dumps({"instructions": [t["instruction"] for t in shown]}, indent=1, ensure_ascii=False)
        text = template.render(examples=examples, count=cfg.per_prompt)
        jobs.append(ask(llm, template, text, data=Lineage(SELF_INSTRUCT, [t["id"] for t in shown]), schema=NewTasks,
                        temperature=max(llm.config.temperature, 0.7)))
    return jobs


def evol_jobs(llm: LLM, rng: random.Random, cfg, round_no: int, accepted: list[dict], evolved: set[str]) -> list[Job]:
    """`evol.per_round` accepted instructions (seeds or kept), those not evolved yet first, one method each."""
    return [evol.job(llm, row["instruction"], method, round_no, Lineage(evol.SOURCE, [row["id"]], method, row["instruction"]))
            for row, method in evol.pick(rng, accepted, evolved, cfg.evol.per_round, cfg.evol.evolutions)]


def candidates(answer: Answer, round_no: int) -> list[dict]:
    """The rows one answer proposes; `reason` is already set for a truncated text or a failed evolution."""
    lineage, result = answer.job.data, answer.result
    cut = filters.truncated(result.finish_reason)
    if lineage.evolution:
        texts = [result.parsed.instruction.strip()]
        reasons = [cut or evol.eliminate(texts[0], lineage.original)]
    else:  # only the last task of a cut-off list is incomplete (as Self-Instruct's own code treats it)
        texts = [t.strip() for t in result.parsed.instructions]
        reasons = [None] * (len(texts) - 1) + [cut]
    return [{"id": stable_id(STAGE, text, lineage.parent_ids, position), "instruction": text, "source": lineage.source,
             "parent_ids": lineage.parent_ids, "round": round_no, "evolution": lineage.evolution, "reason": reason}
            for position, (text, reason) in enumerate(zip(texts, reasons))]


def split_duplicates(index: Index | None, rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Kept rows (with their similarity to the pool) and duplicates (with the reason), decided in order."""
    if index is None or not rows:
        return rows, []
    decisions = index.add([r["id"] for r in rows], [r["instruction"] for r in rows])
    columns = {name: values for name, values in decisions.extra.items() if name in schema_for(STAGE)}
    kept, duplicates = [], []
    for i, row in enumerate(rows):
        score = float(decisions.score[i])
        row = {**row, "max_similarity": score, **{name: values[i] for name, values in columns.items()}}
        if decisions.keep[i]:
            kept.append(row)
        else:
            duplicates.append({**row, "reason": f"duplicate of {decisions.duplicate_of[i]} ({index.method} {score:.2f})"})
    return kept, duplicates


class Instructions(Step):
    """Batch `n` is round `n`. Its key chains the round before's, so a round is redone only if a round before it
    changed. Failed requests are not retried on a resume: later rounds make up for them, and asking again would
    change the pool every later round was made from."""

    stage = STAGE
    retry_failed = False

    @property
    def templates(self) -> tuple[str, ...]:
        cfg = self.config.instructions
        return (SELF_INSTRUCT, *(f"evol_{m}" for m in cfg.evol.evolutions if cfg.evol.enabled))

    def settings(self) -> dict:
        cfg = self.config.instructions
        return {**cfg.model_dump(exclude={"target", "max_rounds", "max_tokens", "llm", "curate"}),
                **({"curate": curate.fingerprint(cfg.curate)} if cfg.curate else {}),
                "llm": self.llm_settings(self.config.llm_for(STAGE))}

    def load(self, ref: BatchRef) -> Batch:
        basis = self._basis(self.run.dir.checkpoint(STAGE, ref.number - 1) if ref.number else None)
        return Batch(ref, pl.DataFrame(), basis, state={"pool": self._pool(ref.number, basis)})

    def _basis(self, before: dict | None) -> str:
        """What round n starts from: the seeds, and round n-1 (whose key holds the rounds before it in turn)."""
        seeds = self.run.dir.checkpoint("seeds", 0)
        return digest(seeds and seeds["kept_hash"], before and before["key"], before and before["kept_hash"])

    def jobs(self, batch: Batch) -> list[Job]:
        cfg, pool = self.config.instructions, batch.state["pool"]
        llm = self.run.llm(STAGE)
        rng = random.Random(f"{self.run.seed}:{batch.number}")
        jobs = self_instruct_jobs(llm, rng, cfg, pool.seeds, pool.machine)
        if cfg.evol.enabled:
            jobs += evol_jobs(llm, rng, cfg, batch.number, pool.seeds + pool.machine, pool.evolved)
        return jobs

    def rows(self, batch: Batch, answered: list[Answer]) -> Outcomes:
        out = Outcomes(inputs=len(answered))  # inputs are requests: each yields candidates or one failed row
        checks = filters.for_instructions(self.config.instructions)
        curators = curate.resolve(self.config.instructions.curate)
        passed = []
        for answer in answered:
            lineage = answer.job.data
            if not answer.result.ok:
                out.fail({"id": stable_id(STAGE, "failed", answer.job.request.messages, answer.job.request.sample),
                          "source": lineage.source, "parent_ids": lineage.parent_ids, "round": batch.number,
                          "evolution": lineage.evolution}, answer)
                continue
            for row in candidates(answer, batch.number):
                row["reason"] = row["reason"] or filters.first_rejection(row["instruction"], checks)
                if not row["reason"]:  # curated before dedup: a row curated out holds no other back as its duplicate
                    try:
                        row["reason"] = curate.first_rejection({k: row[k] for k in row if k != "reason"}, curators)
                    except curate.CurateFailed as exc:
                        out.fail(row, answer, error=str(exc))
                        continue
                if row["reason"]:
                    out.reject(row, row["reason"], answer)
                else:
                    passed.append((row, answer))
        answer_of = {row["id"]: answer for row, answer in passed}
        kept, duplicates = split_duplicates(batch.state["pool"].index, [row for row, _ in passed])
        for row in kept:
            out.keep(row, answer_of[row["id"]])
        for row in duplicates:
            out.reject(row, row["reason"], answer_of[row["id"]])
        batch.state["kept"] = kept
        return out

    def done(self, batch: Batch, record: dict) -> None:
        """The round's kept rows join the pool, if they were written as kept (a quarantined round adds nothing)."""
        pool, kept = batch.state["pool"], batch.state.get("kept")
        with _pools_lock:
            if kept is None or record["counts"]["kept"] != len(kept):
                _pools.pop(self._pool_key(), None)  # its index holds rows the pool does not: rebuild next time
                return
            pool.machine += [{"id": r["id"], "instruction": r["instruction"]} for r in kept]
            pool.evolved |= {p for r in kept if r["source"] == evol.SOURCE for p in r["parent_ids"]}
            pool.rounds, pool.basis = batch.number + 1, self._basis(record)

    def _pool_key(self) -> tuple[str, str]:
        return self.run.url, self.definition()

    def _pool(self, round_no: int, basis: str) -> Pool:
        """The pool before `round_no`: kept from earlier rounds in this process, else read from the store."""
        with _pools_lock:
            pool = _pools.get(self._pool_key())
            if pool is None or (pool.rounds, pool.basis) != (round_no, basis):
                pool = _pools[self._pool_key()] = self._read_pool(round_no, basis)
            return pool

    def _read_pool(self, round_no: int, basis: str) -> Pool:
        seeds = self.run.dir.read_batch("seeds", 0)
        kept = [self.run.dir.read_batch(STAGE, n) for n in range(round_no)]
        machine = pl.concat(kept, how="diagonal_relaxed") if kept else pl.DataFrame(schema=schema_for(STAGE))
        pool = Pool(round_no, basis, seeds.select("id", "instruction").to_dicts(), machine.select("id", "instruction").to_dicts(),
                    set(machine.filter(pl.col("source") == evol.SOURCE)["parent_ids"].explode().drop_nulls()))
        cfg = self.config.instructions.dedup
        if cfg.method is not None:
            pool.index = make_index(cfg)
            held = pool.seeds + pool.machine
            pool.index.seed([r["id"] for r in held], [r["instruction"] for r in held])
        return pool
