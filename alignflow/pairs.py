"""Preference pairs: per instruction, the best-rated response against the worst; ties and small margins dropped."""
from __future__ import annotations

import polars as pl

from alignflow.records import frame, stable_id
from alignflow.run import Run

STAGE = "pairs"


def make_pairs(run: Run, responses: pl.DataFrame, judgments: pl.DataFrame) -> dict[str, int]:
    """One outcome per instruction that has a judged response: a kept pair, or rejected with the reason."""
    min_margin = run.config.pairs.min_margin
    rated = judgments.select("response_id", "rating").join(responses, left_on="response_id", right_on="id")
    kept, rejected = [], []
    for (instruction_id,), group in rated.sort("response_id").group_by("instruction_id", maintain_order=True):
        ordered = group.sort(["rating", "response_id"], descending=[True, False]).to_dicts()
        best, worst = ordered[0], ordered[-1]
        row = {"id": stable_id(STAGE, best["response_id"], worst["response_id"]), "instruction_id": instruction_id,
               "prompt": best["instruction"], "chosen": best["response"], "rejected": worst["response"],
               "chosen_id": best["response_id"], "rejected_id": worst["response_id"],
               "score_chosen": float(best["rating"]), "score_rejected": float(worst["rating"]),
               "margin": float(best["rating"] - worst["rating"])}
        if len(ordered) < 2:
            rejected.append({**row, "rejected": None, "rejected_id": None, "reason": "fewer than 2 judged responses"})
        elif row["margin"] < max(min_margin, 1e-9):
            rejected.append({**row, "reason": f"margin {row['margin']:g} below {min_margin:g}" if row["margin"] else "tie"})
        else:
            kept.append(row)
    return run.write_batch(STAGE, 0, kept=frame(kept, STAGE), rejected=frame(rejected, STAGE))
