"""Preference pairs from the judge's ratings.

Strategies: `best_vs_random` (UltraFeedback binarized: the best mean rating against a random lower one),
`best_vs_worst`, and `all_pairs` (every pair whose margin reaches `min_margin`). Ties, small margins and pairs
whose two texts are the same are rejected with the reason; the per-aspect scores and the margin are kept.
Batch `n` pairs the judgments of judgments batch `n`, so pairs stream out as judging goes on.
"""
from __future__ import annotations

import itertools
import random

import polars as pl

from alignflow.engine.step import Answer, Batch, BatchRef, Outcomes, Step
from alignflow.records import ASPECTS, stable_id

STAGE = "pairs"
SAME_TEXT = "chosen and rejected are the same text"


def _pair(instruction_id: str, chosen: dict, rejected: dict, strategy: str) -> dict:
    return {"id": stable_id(STAGE, chosen["response_id"], rejected["response_id"]), "instruction_id": instruction_id,
            "prompt": chosen["instruction"], "chosen": chosen["response"], "rejected": rejected["response"],
            "chosen_id": chosen["response_id"], "rejected_id": rejected["response_id"],
            "chosen_model": chosen["model"], "rejected_model": rejected["model"],
            "score_chosen": chosen["rating"], "score_rejected": rejected["rating"],
            "margin": chosen["rating"] - rejected["rating"], "strategy": strategy,
            "chosen_scores": {a: chosen.get(a) for a in ASPECTS}, "rejected_scores": {a: rejected.get(a) for a in ASPECTS}}


def _why_not(pair: dict, min_margin: float) -> str | None:
    """Why a candidate pair is no preference pair, or None when it is one."""
    if pair["chosen"] == pair["rejected"]:
        return SAME_TEXT
    margin = pair["margin"]
    if margin < max(min_margin, 1e-9):
        return "tie" if margin == 0 else f"margin {margin:g} below {min_margin:g}"
    return None


def _one_pair(instruction_id: str, ranked: list[dict], strategy: str, min_margin: float,
              rng: random.Random) -> tuple[dict, str | None]:
    """best_vs_worst / best_vs_random: one pair per instruction, and why it is rejected (None: kept)."""
    best = ranked[0]
    if len(ranked) < 2:
        return {**_pair(instruction_id, best, best, strategy), "rejected": None, "rejected_id": None,
                "rejected_model": None, "rejected_scores": None, "margin": None}, "fewer than 2 judged responses"
    lower = [r for r in ranked[1:] if best["rating"] - r["rating"] >= max(min_margin, 1e-9)
             and r["response"] != best["response"]]
    if not lower:
        pair = _pair(instruction_id, best, ranked[-1], strategy)
        return pair, _why_not(pair, min_margin) or SAME_TEXT
    rejected = lower[-1] if strategy == "best_vs_worst" else rng.choice(lower)
    return _pair(instruction_id, best, rejected, strategy), None


class Pairs(Step):
    """No requests: pairs come from the ratings of one judgments batch and the texts of its responses batch."""

    stage = STAGE

    def settings(self) -> dict:
        cfg = self.config.pairs
        ranked = cfg.rank_by != "aspects" or "overall" in self.config.judge.aspects
        return {"strategy": cfg.strategy, "min_margin": cfg.min_margin, **({"rank_by": cfg.rank_by} if ranked else {})}

    def refs(self) -> list[BatchRef]:
        return self.following("judgments")

    def load(self, ref: BatchRef) -> Batch:
        judgments = self.run.dir.read_batch("judgments", ref.number)
        responses = self.run.dir.read_batch("responses", ref.number)
        rated = judgments.drop("instruction_id", "model", "provider").join(
            responses.select("id", "instruction_id", "instruction", "response", "model"),
            left_on="response_id", right_on="id")
        rated = rated.with_columns(rank_score(self.config.pairs.rank_by, self.config.judge.aspects).alias("rating"))
        return self.batch_of(ref, rated.select("response_id", "instruction_id", "instruction", "response", "model",
                                               "rating", *ASPECTS).sort("response_id"))

    def rows(self, batch: Batch, answered: list[Answer]) -> Outcomes:
        """Inputs are instructions with a judged response (`all_pairs`: every two judged responses of one)."""
        cfg = self.config.pairs
        out = Outcomes(inputs=inputs(batch.inputs, cfg.strategy))
        for (instruction_id,), group in batch.inputs.group_by("instruction_id", maintain_order=True):
            ranked = group.sort(["rating", "response_id"], descending=[True, False]).to_dicts()
            if cfg.strategy == "all_pairs" and len(ranked) >= 2:
                candidates = [(_pair(instruction_id, a, b, cfg.strategy), None) for a, b in itertools.combinations(ranked, 2)]
                candidates = [(pair, _why_not(pair, cfg.min_margin)) for pair, _ in candidates]
            else:
                candidates = [_one_pair(instruction_id, ranked, cfg.strategy, cfg.min_margin,
                                        random.Random(f"{self.run.seed}:{instruction_id}"))]
            for pair, reason in candidates:
                if reason:
                    out.reject(pair, reason)
                else:
                    out.keep(pair)
        return out


def rank_score(rank_by: str, judged: list[str]) -> pl.Expr:
    """What ranks a response: the mean of the judged aspects but `overall` (Notus: `overall` often contradicts
    them), `overall` itself, or one aspect. With only `overall` judged, `aspects` is `overall`."""
    if rank_by != "aspects":
        return pl.col(rank_by)
    others = [a for a in judged if a != "overall"] or ["overall"]
    return pl.mean_horizontal(*others)


def inputs(rated: pl.DataFrame, strategy: str) -> int:
    """What the stage counts as its inputs, so the manifest adds up for every strategy."""
    sizes = rated.group_by("instruction_id").len()["len"].to_list()
    if strategy != "all_pairs":
        return len(sizes)
    return sum(n * (n - 1) // 2 if n > 1 else 1 for n in sizes)
