"""Final datasets in the shapes trainers take: DPO (`prompt`, `chosen`, `rejected`, scores) and SFT (`messages`)."""
from __future__ import annotations

import polars as pl

from alignflow.run import Run


def dpo(pairs: pl.DataFrame) -> pl.DataFrame:
    return pairs.select("prompt", "chosen", "rejected", "score_chosen", "score_rejected", "margin",
                        "instruction_id", "chosen_id", "rejected_id")


def sft(responses: pl.DataFrame, judgments: pl.DataFrame) -> pl.DataFrame:
    """The best-rated response of every judged instruction as a two-turn conversation."""
    best = (judgments.select("response_id", "rating").join(responses, left_on="response_id", right_on="id")
            .sort(["instruction_id", "rating", "response_id"], descending=[False, True, False])
            .unique("instruction_id", keep="first", maintain_order=True))
    return best.select(
        pl.concat_list(
            pl.struct(role=pl.lit("user"), content=pl.col("instruction")),
            pl.struct(role=pl.lit("assistant"), content=pl.col("response")),
        ).alias("messages"),
        pl.col("rating").cast(pl.Float64).alias("score"),
        "instruction_id",
        pl.col("response_id"),
    )


def write_datasets(run: Run) -> dict[str, int]:
    responses, judgments = run.read("responses"), run.read("judgments")
    datasets = {"dpo": dpo(run.read("pairs")), "sft": sft(responses, judgments)}
    for name, df in datasets.items():
        run.store.write_parquet(f"{run.run_id}/datasets/{name}.parquet", df)
    return {name: df.height for name, df in datasets.items()}
