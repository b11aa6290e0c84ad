"""A run: its config, its id and sampling seed, its LLMs and budget, and its directory in the store.

A run's state lives in its store (`run.dir`, a RunDir), never only on one machine: each batch's outputs, its
answers, and a checkpoint written after them. Any process that can read the store can resume the run.
"""
from __future__ import annotations

import hashlib
import re
import threading
import uuid
from dataclasses import dataclass
from functools import cached_property

from alignflow.config import LLMConfig, PipelineConfig
from alignflow.engine import lease, manifest, progress
from alignflow.engine.store import RunDir, Store
from alignflow.llm.cache import RequestCache
from alignflow.llm.client import LLM
from alignflow.llm.generate import generate
from alignflow.llm.ledger import Ledger, pool
from alignflow.llm.prices import Prices, load_prices
from alignflow.llm.types import Answers, Request, Result


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


_ledgers: dict[tuple[str, float, str | None], Ledger] = {}  # (run URL, budget, writer) -> this process's ledger
_ledgers_lock = threading.Lock()


@dataclass
class Run:
    config: PipelineConfig
    run_id: str
    writer: str | None = None  # the token of the lease this run is written under; None: a reader's run

    def __post_init__(self) -> None:
        check_run_id(self.run_id)

    def __reduce__(self):  # a Run travels to other workers as its config, id and writer; clients are made again there
        return Run, (self.config, self.run_id, self.writer)

    @cached_property
    def store(self) -> Store:
        """The store; a writer's run confirms before each call that the run is still its writer's (a FencedStore)."""
        if self.writer is None:
            return Store(self.config.store)
        return lease.FencedStore(self.config.store, lease.fence(self.config.store, self.run_id, self.writer))

    def held_by(self, token: str) -> None:
        """From now on this run is written under the lease `token`: its store calls (here and in any worker it is sent
        to) stop with LeaseLost once another writer takes the run over."""
        self.writer = token
        for cached in ("store", "dir"):
            self.__dict__.pop(cached, None)

    def confirm_writer(self) -> None:
        """Raise LeaseLost when another writer has taken this run over (a reader's run is never stopped)."""
        if self.writer is not None:
            lease.fence(self.config.store, self.run_id, self.writer).confirm()

    @cached_property
    def cache(self) -> RequestCache | None:
        return RequestCache(self.config.cache.location) if self.config.cache.enabled else None

    @cached_property
    def dir(self) -> RunDir:
        """The run's directory in the store: its batches, checkpoints and records."""
        return RunDir(self.store, self.run_id)

    @property
    def url(self) -> str:
        return self.dir.url

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
            for key in [key for key in _ledgers if key[0] == self.url]:
                del _ledgers[key]

    def spent(self, prices: Prices | None = None) -> float:
        """What the run's finished batches cost, in dollars."""
        prices = prices or load_prices(self.config.prices)
        return sum(stage["cost_usd"] or 0 for stage in manifest.spending(self.store, self.run_id, prices).values())

    @property
    def ledger(self) -> Ledger | None:
        """The run's spending against `llm.budget_usd`, one per process and writer (every batch task of it shares it).
        A writer's run on Dask draws on the pool the orchestrator keeps for the run (`tasks/limits.py`)."""
        budget = self.config.llm.budget_usd
        if budget is None:
            return None
        key = (self.url, budget, self.writer)
        with _ledgers_lock:
            if key not in _ledgers:
                prices = load_prices(self.config.prices)
                shared = pool(self.url, self.writer, budget) if self.writer and self.config.dask is not None else None
                _ledgers[key] = Ledger(budget, 0.0 if shared else self.spent(prices), prices, shared)
            return _ledgers[key]

    def generate(self, calls: list[tuple[LLM, Request]], label: str, answers: Answers | None = None) -> list[Result]:
        """Every call at once, each under its endpoint's limits, with the stage's progress shown."""
        with progress.track(label, len(calls)) as bar:
            return generate(calls, lambda r: bar.advance(label, 1, int(not r.ok)), answers)
