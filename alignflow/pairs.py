"""Preference pairs from the judge's ratings.

Strategies: `best_vs_random` (UltraFeedback binarized: the best mean rating against a random lower one),
`best_vs_worst`, and `all_pairs` (every pair whose margin reaches `min_margin`). Ties and small margins are
rejected with the reason; the per-aspect scores and the margin are kept.
"""
from __future__ import annotations

import itertools
import random

import polars as pl

from alignflow.records import ASPECTS, frame, stable_id
from alignflow.run import Run, Written

STAGE = "pairs"


def _pair(instruction_id: str, chosen: dict, rejected: dict, strategy: str) -> dict:
    return {"id": stable_id(STAGE, chosen["response_id"], rejected["response_id"]), "instruction_id": instruction_id,
            "prompt": chosen["instruction"], "chosen": chosen["response"], "rejected": rejected["response"],
            "chosen_id": chosen["response_id"], "rejected_id": rejected["response_id"],
            "chosen_model": chosen["model"], "rejected_model": rejected["model"],
            "score_chosen": chosen["rating"], "score_rejected": rejected["rating"],
            "margin": chosen["rating"] - rejected["rating"], "strategy": strategy,
            "chosen_scores": {a: chosen.get(a) for a in ASPECTS}, "rejected_scores": {a: rejected.get(a) for a in ASPECTS}}


def _why_not(margin: float, min_margin: float) -> str:
    return "tie" if margin == 0 else f"margin {margin:g} below {min_margin:g}"


def _one_pair(instruction_id: str, ranked: list[dict], strategy: str, min_margin: float, rng: random.Random):
    """best_vs_worst / best_vs_random: one kept pair or one rejected row per instruction."""
    best = ranked[0]
    if len(ranked) < 2:
        return None, {**_pair(instruction_id, best, best, strategy), "rejected": None, "rejected_id": None,
                      "rejected_model": None, "rejected_scores": None, "margin": None,
                      "reason": "fewer than 2 judged responses"}
    lower = [r for r in ranked[1:] if best["rating"] - r["rating"] >= max(min_margin, 1e-9)]
    if not lower:
        worst = ranked[-1]
        return None, {**_pair(instruction_id, best, worst, strategy),
                      "reason": _why_not(best["rating"] - worst["rating"], min_margin)}
    rejected = lower[-1] if strategy == "best_vs_worst" else rng.choice(lower)
    return _pair(instruction_id, best, rejected, strategy), None


def make_pairs(run: Run, responses: pl.DataFrame, judgments: pl.DataFrame) -> Written:
    """Inputs are instructions with a judged response (`all_pairs`: every two judged responses of an instruction)."""
    cfg = run.config.pairs
    rated = judgments.drop("instruction_id", "model", "provider").join(
        responses.select("id", "instruction_id", "instruction", "response", "model"), left_on="response_id", right_on="id")
    kept, rejected = [], []
    for (instruction_id,), group in rated.sort("response_id").group_by("instruction_id", maintain_order=True):
        ranked = group.sort(["rating", "response_id"], descending=[True, False]).to_dicts()
        if cfg.strategy == "all_pairs":
            for a, b in itertools.combinations(ranked, 2):
                pair = _pair(instruction_id, a, b, cfg.strategy)
                if pair["margin"] >= max(cfg.min_margin, 1e-9):
                    kept.append(pair)
                else:
                    rejected.append({**pair, "reason": _why_not(pair["margin"], cfg.min_margin)})
            if len(ranked) < 2:
                rejected.append(_one_pair(instruction_id, ranked, cfg.strategy, cfg.min_margin, None)[1])
            continue
        pair, reject = _one_pair(instruction_id, ranked, cfg.strategy, cfg.min_margin,
                                 random.Random(f"{run.config.seed}:{instruction_id}"))
        (kept if pair else rejected).append(pair or reject)
    return run.write_batch(STAGE, 0, kept=frame(kept, STAGE), rejected=frame(rejected, STAGE))


def inputs(judgments: pl.DataFrame, strategy: str) -> int:
    """What the stage counts as its inputs, so the manifest adds up for every strategy."""
    sizes = judgments.group_by("instruction_id").len()["len"].to_list()
    if strategy != "all_pairs":
        return len(sizes)
    return sum(n * (n - 1) // 2 if n > 1 else 1 for n in sizes)
