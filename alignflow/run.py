"""A run: its config, its place in the store, its request cache, and how a stage writes a batch."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import polars as pl

from alignflow import gate, progress
from alignflow.config import PipelineConfig
from alignflow.llm.cache import RequestCache
from alignflow.llm.client import LLM
from alignflow.llm.types import Request, Result
from alignflow.records import schema_for
from alignflow.store import Store


class Written(dict):
    """Row counts per outcome of one written batch, and the gate's result for it (None when not gated)."""

    def __init__(self, counts: dict[str, int], gate=None):
        super().__init__(counts)
        self.gate = gate


@dataclass
class Run:
    config: PipelineConfig
    run_id: str

    @cached_property
    def store(self) -> Store:
        return Store(self.config.store)

    @cached_property
    def cache(self) -> RequestCache | None:
        return RequestCache(self.config.cache.dir) if self.config.cache.enabled else None

    @property
    def url(self) -> str:
        return self.store.join(self.run_id)

    def llm(self, stage: str) -> LLM:
        return LLM(self.config.llm_for(stage), self.cache)

    def generate(self, llm: LLM, requests: list[Request], label: str) -> list[Result]:
        """Generate with the stage's progress shown: rows done of total, rate, failures so far."""
        with progress.track(label, len(requests)) as bar:
            return llm.generate(requests, on_result=lambda r: bar.advance(label, 1, int(not r.ok)))

    def write_batch(self, stage: str, number: int, **outcomes: pl.DataFrame) -> "Written":
        """Write one batch through the stage's gate: its outcomes, or all of it to quarantine. Returns row counts."""
        counts, result = gate.write_batch(self.store, self.run_id, stage, number, outcomes, self.config.gate)
        return Written(counts, result)

    def read(self, stage: str, outcome: str = "kept") -> pl.DataFrame:
        return self.store.read_dir(f"{self.run_id}/{stage}/{outcome}", schema=schema_for(stage))

    def reset_stage(self, stage: str) -> None:
        """A stage rewrites its batches on every run; the request cache makes that free."""
        self.store.delete_prefix(f"{self.run_id}/{stage}/")

    def record_stage(self, stage: str, inputs: int, note: str = "") -> None:
        self.store.write_json(f"{self.run_id}/{stage}/stage.json", {"stage": stage, "inputs": inputs, "note": note})
