"""A Step is what is particular to a stage: its input batches, the requests a batch makes, the rows its answers make.

Everything the stages share (known answers, generation, provenance, the outcome split, the gate, writing and
checkpoints) is the runner's, in `alignflow.engine.runner`. A step's methods, in the order the runner calls them:

    load(ref)              the batch's input rows, read from the store (only that batch's)
    jobs(batch)            the first requests, each with the lineage its rows inherit
    more(batch, answered)  follow-up requests made from the answers so far (judge orders, CAI rounds), or none
    rows(batch, answered)  kept / rejected (reason) / failed (error) rows, each naming the answers it stands on
"""
from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from alignflow.llm.client import LLM
from alignflow.llm.types import Request, Result
from alignflow.prompts import Template
from alignflow.prompts import load as load_template
from alignflow.quality import screens
from alignflow.records import content_hash

if TYPE_CHECKING:
    from alignflow.engine.run import Run


@dataclass(frozen=True)
class BatchRef:
    """Which batch: its number in its stage, and the slice of an upstream batch (or input file) it reads."""

    number: int
    source: int | None = None
    start: int = 0
    stop: int | None = None


def slices(first: int, source: int | None, rows: int, size: int) -> list[BatchRef]:
    """Batches `first`, `first + 1`, ... over `rows` input rows, `size` at a time."""
    return [BatchRef(first + i, source, start, min(start + size, rows)) for i, start in enumerate(range(0, rows, size))]


@dataclass(frozen=True)
class Job:
    """One LLM request and what the rows made from its answer inherit (`data`, the step's own)."""

    llm: LLM
    request: Request
    template: Template
    label: str = ""  # which call of a row this is, when a row stands on several ("helpfulness, reversed")
    data: Any = None


def ask(llm: LLM, template: Template, prompt: str | list[dict], *, label: str = "", data: Any = None,
        **options: Any) -> Job:
    """A job asking `llm` one user message (or these messages); `options` as for `LLM.request` (schema, ...)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return Job(llm, llm.request(messages, **options), template, label, data)


@dataclass(frozen=True, eq=False)
class Answer:
    job: Job
    result: Result


@dataclass
class Batch:
    ref: BatchRef
    inputs: pl.DataFrame
    basis: str  # what the input is, as a hash: with the stage's definition it makes the batch's key
    state: Any = None  # the step's own, between `jobs`, `more` and `rows`

    @property
    def number(self) -> int:
        return self.ref.number


@dataclass
class Outcomes:
    """The rows of one batch, each with the answers it stands on: the runner turns those into provenance."""

    kept: list[tuple[dict, tuple[Answer, ...]]] = field(default_factory=list)
    rejected: list[tuple[dict, tuple[Answer, ...]]] = field(default_factory=list)
    failed: list[tuple[dict, tuple[Answer, ...]]] = field(default_factory=list)
    inputs: int | None = None  # what the stage counts as its inputs, when not one row per input
    notes: dict[str, Any] = field(default_factory=dict)  # recorded in the checkpoint (e.g. instructions rated)

    def keep(self, row: dict, *answers: Answer) -> None:
        self.kept.append((row, answers))

    def reject(self, row: dict, reason: str, *answers: Answer) -> None:
        self.rejected.append(({**row, "reason": reason}, answers))

    def fail(self, row: dict, *answers: Answer, error: str | None = None) -> None:
        if error is None:
            bad = [a for a in answers if not a.result.ok]
            named = len(answers) > 1
            error = "; ".join(f"{a.job.label}: {a.result.error}" if named and a.job.label else str(a.result.error)
                              for a in bad)
        self.failed.append(({**row, "error": error}, answers))


def digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Step(ABC):
    """Subclasses set `stage` and `templates` and implement `load`, `rows` and, when they ask an LLM, `jobs`; a
    stage that can run on its own (not only fed by the stage before it) also has `refs`, its batches."""

    stage: str
    templates: tuple[str, ...] = ()
    retry_failed = True  # a resumed run redoes a checkpointed batch that has failed rows (known answers are kept)

    def __init__(self, run: "Run"):
        self.run = run
        self.config = run.config

    def settings(self) -> Any:
        """The config that shapes this stage's rows (not its speed): part of every batch key."""
        return {}

    def description(self) -> dict:
        """The stage as configured: its settings, its prompt template versions, the run's sampling seed, and the
        gate's checks that remove or redact rows (when any applies)."""
        screening = screens.definition(self.stage, self.run.config.gate)
        return json.loads(json.dumps({"settings": self.settings(), "seed": self.run.seed,
                                      "templates": {name: load_template(name).version for name in self.templates},
                                      **({"screens": screening} if screening else {})}, default=str))

    def definition(self) -> str:
        return digest(self.stage, self.description())

    def batch_key(self, batch: Batch) -> str:
        return digest(self.definition(), batch.basis)

    @abstractmethod
    def load(self, ref: BatchRef) -> Batch:
        """The batch's input rows, read from the store."""

    def following(self, upstream: str) -> list[BatchRef]:
        """Batch `n` of this stage reads batch `n` of `upstream`, one for each of its checkpointed batches."""
        return [BatchRef(r["number"], r["number"]) for r in self.run.dir.checkpoints(upstream)]

    def jobs(self, batch: Batch) -> list[Job]:
        return []

    def more(self, batch: Batch, answered: list[Answer]) -> list[Job]:
        return []

    @abstractmethod
    def rows(self, batch: Batch, answered: list[Answer]) -> Outcomes:
        """The batch's rows, kept, rejected with a reason or failed with the error, from its answers."""

    def done(self, batch: Batch, record: dict) -> None:
        """Called once the batch's checkpoint is written (not for a batch skipped as done before)."""

    def batch_of(self, ref: BatchRef, inputs: pl.DataFrame) -> Batch:
        """A batch whose key follows from the content of its input rows."""
        return Batch(ref, inputs, content_hash(inputs) if inputs.height else "empty")

    def llm_settings(self, config) -> dict:
        """The LLM keys that shape answers; limits, timeouts and retries only change how fast they come."""
        return config.model_dump(include={"provider", "model", "base_url", "temperature", "max_tokens",
                                          "structured_retries"}) | {"model": config.model_name}
