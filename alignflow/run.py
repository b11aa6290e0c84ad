"""A run: its config, its place in the store, its sampling seed, and the batch checkpoints that make it resumable.

A run's state lives in its store, never only on one machine: each batch's outputs, its answers (`answers/`),
and a checkpoint written after them (`checkpoints/`). Any process that can read the store can resume the run.
"""
from __future__ import annotations

import hashlib
import re
import threading
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import polars as pl

from alignflow import manifest, progress
from alignflow.config import LLMConfig, PipelineConfig
from alignflow.llm import client
from alignflow.llm.cache import RequestCache
from alignflow.llm.client import LLM, Answers
from alignflow.llm.ledger import Ledger
from alignflow.prices import load_prices
from alignflow.llm.types import Request, Result
from alignflow.records import schema_for
from alignflow.store import OUTCOMES, Store, batch_key

def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RunIdError(ValueError):
    """A run id that is not a plain name (it would write outside the store)."""


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise RunIdError(f"run id {run_id!r} is not a plain name: letters, digits, '.', '_' and '-', at most 128, "
                         "no '/' or '..'")
    return run_id


_ledgers: dict[str, Ledger] = {}
_ledgers_lock = threading.Lock()
_BATCH_FILE = re.compile(r"^batch-(\d+)\.(parquet|json)$")


@dataclass
class Run:
    config: PipelineConfig
    run_id: str

    def __post_init__(self) -> None:
        check_run_id(self.run_id)

    def __reduce__(self):  # a Run travels to other workers as its config and id; clients are made again there
        return Run, (self.config, self.run_id)

    @cached_property
    def store(self) -> Store:
        return Store(self.config.store)

    @cached_property
    def cache(self) -> RequestCache | None:
        return RequestCache(self.config.cache.location) if self.config.cache.enabled else None

    @property
    def url(self) -> str:
        return self.store.join(self.run_id)

    @cached_property
    def seed(self) -> int:
        """The sampling seed: `seed` when set, else derived from the run id, so each run draws new samples."""
        if self.config.seed is not None:
            return self.config.seed
        return int.from_bytes(hashlib.sha256(self.run_id.encode()).digest()[:4], "big") >> 1

    def llm(self, stage: str) -> LLM:
        return self.llm_from(self.config.llm_for(stage))

    def llm_from(self, config: LLMConfig) -> LLM:
        return LLM(config, self.cache, self.seed, self.ledger)

    def forget_ledger(self) -> None:
        with _ledgers_lock:
            _ledgers.pop(self.url, None)

    @property
    def ledger(self) -> Ledger | None:
        """The run's spending against `llm.budget_usd`, one per process (every batch task of it shares it)."""
        budget = self.config.llm.budget_usd
        if budget is None:
            return None
        with _ledgers_lock:
            if self.url not in _ledgers:
                prices = load_prices(self.config.prices)
                spent = sum(stage["cost_usd"] or 0 for stage in manifest.spending(self.store, self.run_id, prices).values())
                _ledgers[self.url] = Ledger(budget, spent, prices)
            return _ledgers[self.url]

    def generate(self, calls: list[tuple[LLM, Request]], label: str, answers: Answers | None = None) -> list[Result]:
        """Every call at once, each under its endpoint's limits, with the stage's progress shown."""
        with progress.track(label, len(calls)) as bar:
            return client.generate(calls, lambda r: bar.advance(label, 1, int(not r.ok)), answers)

    # -- batches in the store ----------------------------------------------------------------------------------

    def read(self, stage: str, outcome: str = "kept") -> pl.DataFrame:
        """Every batch of one outcome of a stage."""
        return self.store.read_dir(f"{self.run_id}/{stage}/{outcome}", schema=schema_for(stage))

    def read_batch(self, stage: str, number: int, outcome: str = "kept") -> pl.DataFrame:
        """One batch of one outcome; empty (with the stage's schema) when the batch made no such rows."""
        key = batch_key(self.run_id, stage, outcome, number)
        if not self.store.exists(key):
            return pl.DataFrame(schema=schema_for(stage))
        df = self.store.read_parquet(key)
        missing = {n: t for n, t in schema_for(stage).items() if n not in df.columns}
        return df.with_columns(pl.lit(None, t).alias(n) for n, t in missing.items()) if missing else df

    def checkpoint_key(self, stage: str, number: int) -> str:
        return f"{self.run_id}/{stage}/checkpoints/batch-{number:05d}.json"

    def checkpoint(self, stage: str, number: int) -> dict[str, Any] | None:
        """The record of a finished batch, or None when it is not done."""
        key = self.checkpoint_key(stage, number)
        return self.store.read_json(key) if self.store.exists(key) else None

    def write_checkpoint(self, stage: str, number: int, record: dict[str, Any]) -> None:
        self.store.write_json(self.checkpoint_key(stage, number), record)

    def checkpoints(self, stage: str) -> list[dict[str, Any]]:
        """Every finished batch of a stage, in batch order."""
        keys = [k for k in self.store.list_dir(f"{self.run_id}/{stage}/checkpoints") if k.endswith(".json")]
        return [self.store.read_json(k) for k in keys]

    def clear_batch(self, stage: str, number: int) -> None:
        """Remove what an earlier attempt at a batch wrote (its checkpoint first), before it is made again."""
        self.store.delete(self.checkpoint_key(stage, number))
        for outcome in OUTCOMES:
            self.store.delete(batch_key(self.run_id, stage, outcome, number))
        self.store.delete(batch_key(self.run_id, stage, "quarantine", number).removesuffix(".parquet") + ".json")

    def prune(self, stage: str, numbers: set[int]) -> None:
        """Drop the outputs of batches a stage no longer makes (its input shrank); their answers stay."""
        for key in self.store.list(f"{self.run_id}/{stage}/"):
            match = _BATCH_FILE.match(key.rsplit("/", 1)[-1])  # outputs and checkpoints; answers are `part-*`
            if match and int(match[1]) not in numbers:
                self.store.delete(key)

    def stage_record(self, stage: str) -> dict[str, Any] | None:
        key = f"{self.run_id}/{stage}/stage.json"
        return self.store.read_json(key) if self.store.exists(key) else None

    def write_stage_record(self, stage: str, record: dict[str, Any]) -> None:
        self.store.write_json(f"{self.run_id}/{stage}/stage.json", record)
