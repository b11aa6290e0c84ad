"""Judge position bias: how often the preferred response changes when the judge sees the responses in reverse.

Needs a run judged with `judge.both_orders: true`, so every judgment has a forward and a reversed rating.
"""
from __future__ import annotations

from dataclasses import dataclass

import polars as pl


class NotBothOrders(ValueError):
    """The run's judgments have no reversed ratings to compare with."""


@dataclass
class Agreement:
    instructions: int  # instructions with at least two judged responses
    changed: int  # of those, how many have a different preferred response in reversed order
    mean_abs_diff: float  # mean |forward - reversed| rating per response
    by_position: dict[int, float]  # mean forward rating by the position a response was shown at

    @property
    def changed_share(self) -> float:
        return self.changed / self.instructions if self.instructions else 0.0

    def lines(self) -> list[str]:
        positions = ", ".join(f"{p + 1}: {r:.2f}" for p, r in sorted(self.by_position.items()))
        return [f"instructions compared: {self.instructions}",
                f"preferred response changed when reversed: {self.changed} ({self.changed_share:.1%})",
                f"mean |forward - reversed| rating: {self.mean_abs_diff:.3f}",
                f"mean forward rating by shown position: {positions}"]


def _preferred(ratings: list[float], ids: list[str]) -> frozenset[str]:
    best = max(ratings)
    return frozenset(i for i, r in zip(ids, ratings) if r == best)


def measure(judgments: pl.DataFrame) -> Agreement:
    both = judgments.filter(pl.col("rating_forward").is_not_null() & pl.col("rating_reversed").is_not_null())
    if both.is_empty():
        raise NotBothOrders("no judgment has a reversed rating: judge the run with judge.both_orders=true")
    compared = changed = 0
    for _, group in both.sort("response_id").group_by("instruction_id", maintain_order=True):
        if group.height < 2:
            continue
        ids = group["response_id"].to_list()
        compared += 1
        changed += _preferred(group["rating_forward"].to_list(), ids) != _preferred(group["rating_reversed"].to_list(), ids)
    by_position = both.group_by("position").agg(pl.col("rating_forward").mean())
    return Agreement(instructions=compared, changed=changed,
                     mean_abs_diff=float((both["rating_forward"] - both["rating_reversed"]).abs().mean()),
                     by_position=dict(by_position.iter_rows()))
