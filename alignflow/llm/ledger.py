"""A run's spending against `llm.budget_usd`: no request is sent that could take the run over it.

Each request reserves what it could cost at most (its prompt, estimated at 4 characters a token, plus
`max_tokens` of answer) before it is sent, and settles at what it did cost. A request that does not fit is not
sent; its batch ends with BudgetReached once the requests already in flight are answered and saved, so a resumed
run with a higher budget asks only what was not answered. What the run spent before this process started comes
from its finished batches (the checkpoints).

A run whose batches run in several processes (Dask workers) would spend the budget once per process if each
counted only its own. Its ledgers then share a Pool, the run's budget kept by the orchestrator (`share_budget`;
tasks/limits.py keeps it in a Prefect global concurrency limit, whose server grants slots atomically). A ledger
draws an allowance from the pool before it reserves (enough for DRAW_REQUESTS requests like this one, at most
DRAW_SHARE of the budget, at least what the request needs), and reserves from it; what a request did not cost stays
in the allowance. The pool never grants more than the budget in all, so the reservations of every process together
stay within it: the run's spend passes the budget only by what prompts cost beyond their estimate, and a run the
budget stopped may leave up to an allowance and a request's most per process unspent. A draw is one call to the
orchestrator, made where the request is reserved (the endpoints' event loop), once per allowance.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from alignflow.llm.prices import Prices

DRAW_REQUESTS = 16  # an allowance covers this many requests like the one asking: one draw from the pool per 16
DRAW_SHARE = 1 / 32  # ... but never more of the budget than this, so few dollars sit unspent in allowances


class BudgetReached(Exception):
    """The run would go over `llm.budget_usd`: it stops, and resumes with a higher budget."""


class Pool(Protocol):
    """A run's budget, shared by the processes that spend it."""

    def take(self, usd: float) -> bool:
        """Take `usd` of the budget for this process, or nothing and False when less than that is left."""

    def spent(self) -> float | None:
        """What the run's processes took in all (spent, or set aside for requests), if known."""


_pools: Callable[[str, str, float], Pool] | None = None


def share_budget(make: Callable[[str, str, float], Pool] | None) -> None:
    """How a run's budget is shared by several processes: `make(run_url, writer, budget)` gives the Pool of the run
    while `writer` (its lease's token) writes it. The orchestrator supplies it (`tasks/limits.py`); the domain only
    calls it."""
    global _pools
    _pools = make


def pool(run_url: str, writer: str, budget: float) -> Pool:
    if _pools is None:
        raise RuntimeError("a budget shared by several processes needs the orchestrator's pool (tasks/limits.py)")
    return _pools(run_url, writer, budget)


class Ledger:
    def __init__(self, budget: float, spent: float, prices: Prices, pool: Pool | None = None):
        self.budget, self.spent, self.prices, self.pool = budget, spent, prices, pool
        self.reserved = 0.0
        self.allowance = 0.0  # drawn from the pool and not reserved yet
        self._refused: float | None = None  # the least the pool refused: it refuses as much again (it never refills)
        self._reached_line: str | None = None
        self._lock = threading.Lock()

    def reserve(self, provider: str, model: str, input_tokens: int, output_tokens: int, batch: bool) -> float:
        """Set aside the most a request could cost, or raise BudgetReached when that would pass the budget."""
        most = self.prices.cost(provider, model, input_tokens, output_tokens, batch) or 0.0
        with self._lock:
            if not self._fits(most):
                raise BudgetReached(self._reached())
            self.reserved += most
            if self.pool is not None:
                self.allowance -= most
        return most

    def _fits(self, most: float) -> bool:
        if self.pool is None:
            return self.spent + self.reserved + most <= self.budget
        need = most - self.allowance
        if need <= 0:
            return True
        if self._refused is not None and need >= self._refused:
            return False
        draw = max(need, min(most * DRAW_REQUESTS, self.budget * DRAW_SHARE))
        for amount in dict.fromkeys((draw, need)):  # a whole allowance, else just what this request needs
            if self.pool.take(amount):
                self.allowance += amount
                return True
        self._refused = need
        return False

    def _reached(self) -> str:
        if self.pool is None:
            return (f"llm.budget_usd ${self.budget:,.2f} reached: ${self.spent:,.4f} spent, "
                    f"${self.reserved:,.4f} in flight")
        if self._reached_line is None:  # asked of the pool once: every request refused after says the same
            taken = self.pool.spent()
            self._reached_line = (f"llm.budget_usd ${self.budget:,.2f} reached" + (
                f": the run's processes spent or set aside ${taken:,.4f} of it" if taken is not None else ""))
        return self._reached_line

    def settle(self, reserved: float, provider: str, model: str, input_tokens: int, output_tokens: int,
               batch: bool) -> None:
        cost = self.prices.cost(provider, model, input_tokens, output_tokens, batch) or 0.0
        with self._lock:
            self.reserved -= reserved
            self.spent += cost
            if self.pool is not None:
                self.allowance += reserved - cost  # below zero when a prompt cost more than estimated
