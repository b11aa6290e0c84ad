"""What a run must make (`instructions.target`), and when it has made enough or spent its budget.

A target of N instructions counts kept instructions; a target naming a dataset counts the rows of that dataset
that passed every gate: DPO rows are kept pairs, SFT rows are instructions with a rated response.
"""
from __future__ import annotations

from dataclasses import dataclass

from alignflow.config import PipelineConfig

# which stage's checkpoints count a dataset's rows, and the field that counts them
COUNTED_BY = {"instructions": ("instructions", "kept"), "dpo": ("pairs", "kept"), "sft": ("judgments", "rated_instructions")}


@dataclass(frozen=True)
class Target:
    dataset: str
    rows: int
    max_rounds: int
    max_tokens: int | None
    most_per_instruction: float  # rows of the dataset one kept instruction can make at most

    @classmethod
    def of(cls, config: PipelineConfig) -> "Target":
        cfg = config.instructions
        samples = config.responses.per_instruction * len(config.generators())
        pairs = samples * (samples - 1) / 2 if config.pairs.strategy == "all_pairs" else 1
        return cls(cfg.target_dataset, cfg.target_rows, cfg.max_rounds, cfg.max_tokens,
                   {"instructions": 1, "dpo": pairs, "sft": 1}[cfg.target_dataset])

    def spent(self, rounds: int, tokens: int) -> str | None:
        """Which budget stops the run from starting another round, if one does."""
        if rounds >= self.max_rounds:
            return f"instructions.max_rounds ({self.max_rounds}) reached"
        if self.max_tokens is not None and tokens >= self.max_tokens:
            return f"instructions.max_tokens ({self.max_tokens:,}) spent: {tokens:,} tokens used"
        return None

    def count(self, records: list[dict]) -> int:
        """Rows of the dataset made by these checkpoints (of the stage that counts it)."""
        field = COUNTED_BY[self.dataset][1]
        return sum(r["counts"][field] if field == "kept" else r.get(field, 0) for r in records)

    def report(self, made: int, stopped_by: str | None) -> dict:
        reached = made >= self.rows
        return {"dataset": self.dataset, "rows": self.rows, "made": made, "reached": reached,
                "stopped_by": None if reached else stopped_by}

    def message(self, made: int, stopped_by: str | None) -> str | None:
        if made >= self.rows:
            return None
        return f"target not reached: {made:,} of {self.rows:,} {self.dataset} rows" + (f" ({stopped_by})" if stopped_by else "")
