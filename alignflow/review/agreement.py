"""The judge measured against people: every pair a person decided is a human label.

`keep` says the judge chose right, `swap` that it chose wrong; `tie` and `drop` are no preference and are counted
apart. Agreement is keep / (keep + swap) with a 95% Wilson interval, overall and per aspect (an aspect agrees when
it rates the answer the person preferred higher). It is computed on the part of the sample drawn at random; the
uncertain part is biased toward the judge's mistakes by design and is shown beside it, never mixed in.
Published anchors: GPT-4 agrees with people on ~85% of non-tie MT-Bench votes, people with each other ~81%.
"""
from __future__ import annotations

import math
from typing import Any

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (None for no trials)."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def figure(agree: int, disagree: int, ties: int = 0) -> dict[str, Any]:
    """Agreement with its interval; ties apart."""
    n = agree + disagree
    interval = wilson(agree, n)
    return {"agree": agree, "disagree": disagree, "ties": ties, "n": n,
            "agreement": agree / n if n else None, "low": interval[0] if interval else None,
            "high": interval[1] if interval else None}


def of_pairs(per_row: dict[str, dict], pairs: dict[str, dict], random_ids: set[str]) -> dict[str, Any]:
    """From a review's per-row decisions on pairs (`pairs`: the judged pairs by id, as the judge made them): the
    judge's agreement with people on the random part, per aspect, and the uncertain part apart."""
    parts: dict[str, dict[str, Any]] = {}
    for part, ids in (("random", [i for i in per_row if i in random_ids]),
                      ("uncertain", [i for i in per_row if i not in random_ids])):
        said = [per_row[i]["decision"] for i in ids]
        parts[part] = figure(said.count("keep"), said.count("swap"), said.count("tie"))
        parts[part]["dropped"] = said.count("drop")
        if part == "random":
            parts[part]["aspects"] = _per_aspect({i: per_row[i]["decision"] for i in ids}, pairs)
    return {**parts["random"], "uncertain": parts["uncertain"]}


def _per_aspect(said: dict[str, str], pairs: dict[str, dict]) -> dict[str, dict[str, Any]]:
    counts: dict[str, list[int]] = {}
    for pair_id, decision in said.items():
        pair = pairs.get(pair_id)
        if decision not in ("keep", "swap") or pair is None or not pair.get("chosen_scores"):
            continue
        for aspect, chosen in pair["chosen_scores"].items():
            rejected = (pair.get("rejected_scores") or {}).get(aspect)
            if chosen is None or rejected is None:
                continue
            tally = counts.setdefault(aspect, [0, 0, 0])
            if chosen == rejected:
                tally[2] += 1
            else:
                tally[0 if (chosen > rejected) == (decision == "keep") else 1] += 1
    return {aspect: figure(*tally) for aspect, tally in counts.items()}


def line(found: dict[str, Any]) -> str:
    """`0.82 [0.70, 0.90] on 40 pairs drawn at random (3 ties apart)`, or why there is no figure."""
    if not found.get("n"):
        return "no pair drawn at random was decided keep or swap: no agreement figure"
    ties = f" ({found['ties']} tie{'s' if found['ties'] > 1 else ''} apart)" if found["ties"] else ""
    pairs = "pair" if found["n"] == 1 else "pairs"
    return f"{found['agreement']:.2f} [{found['low']:.2f}, {found['high']:.2f}] on {found['n']} {pairs} drawn at random{ties}"
