"""A run's spending against `llm.budget_usd`: no request is sent that could take the run over it.

Each request reserves what it could cost at most (its prompt, estimated, plus `max_tokens` of answer) before
it is sent, and settles at what it did cost. A request that does not fit is not sent; its batch ends with
BudgetReached once the requests already in flight are answered and saved, so a resumed run with a higher
budget asks only what was not answered. What the run spent before this process started comes from its
finished batches (the checkpoints).
"""
from __future__ import annotations

import threading

from alignflow.llm.prices import Prices


class BudgetReached(Exception):
    """The run would go over `llm.budget_usd`: it stops, and resumes with a higher budget."""


class Ledger:
    def __init__(self, budget: float, spent: float, prices: Prices):
        self.budget, self.spent, self.prices = budget, spent, prices
        self.reserved = 0.0
        self._lock = threading.Lock()

    def reserve(self, provider: str, model: str, input_tokens: int, output_tokens: int, batch: bool) -> float:
        """Set aside the most a request could cost, or raise BudgetReached when that would pass the budget."""
        most = self.prices.cost(provider, model, input_tokens, output_tokens, batch) or 0.0
        with self._lock:
            if self.spent + self.reserved + most > self.budget:
                raise BudgetReached(f"llm.budget_usd ${self.budget:,.2f} reached: ${self.spent:,.4f} spent, "
                                    f"${self.reserved:,.4f} in flight")
            self.reserved += most
        return most

    def settle(self, reserved: float, provider: str, model: str, input_tokens: int, output_tokens: int,
               batch: bool) -> None:
        cost = self.prices.cost(provider, model, input_tokens, output_tokens, batch) or 0.0
        with self._lock:
            self.reserved -= reserved
            self.spent += cost

    @property
    def exhausted(self) -> bool:
        with self._lock:
            return self.spent >= self.budget
