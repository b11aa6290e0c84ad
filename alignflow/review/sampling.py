"""Which rows a reviewer sees: a random part, from which the judge's agreement with people is estimated without
bias, and for pairs an uncertain part, the pairs the judge is least sure of, which a person most needs to see.

A pair is uncertain when the judge preferred the other answer in reversed order, when `overall` contradicts the
other aspects (the Notus check), when the aspects disagree on which answer is better, or when the margin is small.
Each sampled row says why it was drawn.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import polars as pl

RANDOM = "random"


@dataclass(frozen=True)
class Drawn:
    id: str
    why: str
    random: bool  # drawn at random: counts toward the unbiased agreement estimate


def draw(rows: pl.DataFrame, size: int, seed: int, uncertain: pl.DataFrame | None = None,
         random_share: float = 1.0) -> list[Drawn]:
    """`size` of `rows` (by `id`): `random_share` of them at random, the rest the most uncertain (`uncertain`: one
    row per id with `score` and `why`, as from `uncertainty`), in id order. Without `uncertain`, all at random."""
    ids = sorted(rows["id"].to_list())
    size = min(size, len(ids))
    rng = random.Random(seed)
    if uncertain is None:
        return sorted((Drawn(i, RANDOM, True) for i in rng.sample(ids, size)), key=lambda d: d.id)
    at_random = rng.sample(ids, round(size * random_share))
    taken = set(at_random)
    ranked = uncertain.filter(~pl.col("id").is_in(taken)).sort(["score", "margin", "id"], descending=[True, False, False],
                                                               nulls_last=True)
    drawn = [Drawn(i, RANDOM, True) for i in at_random]
    drawn += [Drawn(row["id"], row["why"], False) for row in ranked.head(size - len(drawn)).iter_rows(named=True)]
    return sorted(drawn, key=lambda d: d.id)


def uncertainty(pairs: pl.DataFrame, judgments: pl.DataFrame) -> pl.DataFrame:
    """Per pair: `score` (higher: less sure), `margin` and `why`, from the judge's ratings of its two answers."""
    judged = judgments.select("response_id", "rating_forward", "rating_reversed",
                              pl.col("inconsistent") if "inconsistent" in judgments.columns
                              else pl.lit(None, pl.Boolean).alias("inconsistent"))
    rows = []
    by_id = {r["response_id"]: r for r in judged.iter_rows(named=True)}
    for pair in pairs.iter_rows(named=True):
        chosen, rejected = by_id.get(pair["chosen_id"], {}), by_id.get(pair["rejected_id"], {})
        reasons, score = [], 0.0
        forward = _difference(chosen.get("rating_forward"), rejected.get("rating_forward"))
        reverse = _difference(chosen.get("rating_reversed"), rejected.get("rating_reversed"))
        if forward is not None and reverse is not None and (forward > 0) != (reverse > 0):
            reasons.append("the judge preferred the other answer in reversed order")
            score += 4
        if chosen.get("inconsistent") or rejected.get("inconsistent"):
            reasons.append("`overall` contradicts the other aspects")
            score += 3
        against = _aspects_against(pair.get("chosen_scores"), pair.get("rejected_scores"))
        if against:
            reasons.append(f"{len(against)} aspect{'s prefer' if len(against) > 1 else ' prefers'} the rejected answer "
                           f"({', '.join(against)})")
            score += 1 + len(against)
        margin = pair.get("margin")
        if margin is not None:
            reasons.append(f"margin {margin:.2f}")
            score += 1 / (1 + max(margin, 0))  # below 1: the smallest margins come first among the certain
        rows.append({"id": pair["id"], "score": score, "margin": margin,
                     "why": "uncertain: " + "; ".join(reasons) if reasons else "uncertain"})
    return pl.DataFrame(rows, schema={"id": pl.String, "score": pl.Float64, "margin": pl.Float64, "why": pl.String})


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _aspects_against(chosen: dict | None, rejected: dict | None) -> list[str]:
    """The aspects (other than `overall`) that rate the rejected answer above the chosen one."""
    if not chosen or not rejected:
        return []
    return [a for a, v in chosen.items() if a != "overall" and v is not None and rejected.get(a) is not None
            and rejected[a] > v]
