import polars as pl
import pytest

from alignflow.config import parse_config
from alignflow.engine.run import Run
from alignflow.engine.runner import run_batch
from alignflow.engine.step import BatchRef
from alignflow.engine.store import batch_key
from alignflow.records import frame
from alignflow.stages.pairs import SAME_TEXT, Pairs, inputs

RATINGS = {"r00": 5, "r01": 2, "r02": 4, "r10": 3, "r11": 3, "r20": 4, "r21": 3, "r30": 4}


def fixtures(texts=None):
    texts = texts or {}
    responses = frame([{"id": k, "instruction_id": "i" + k[1], "instruction": f"task {k[1]}",
                        "response": texts.get(k, f"answer {k[1:]}"), "model": f"m{k[2]}"} for k in RATINGS], "responses")
    judgments = frame([{"id": f"j{k}", "response_id": k, "instruction_id": "i" + k[1], "rating": float(v),
                        "helpfulness": float(v), "honesty": float(v)} for k, v in RATINGS.items()], "judgments")
    return responses, judgments


def make_pairs(run: Run, responses: pl.DataFrame, judgments: pl.DataFrame) -> dict[str, int]:
    """The pairs batch of one responses batch and its judgments, as the pipeline makes it."""
    for stage, rows in (("responses", responses), ("judgments", judgments)):
        run.store.write_parquet(batch_key(run.run_id, stage, "kept", 0), rows)
    return run_batch(run, Pairs(run), BatchRef(0, 0)).counts


def run_with(tmp_path, **pairs):
    return Run(parse_config({"store": str(tmp_path), "pairs": pairs}), "t")


def test_best_vs_worst_with_reasons(tmp_path):
    run = run_with(tmp_path, strategy="best_vs_worst", min_margin=2)
    assert make_pairs(run, *fixtures()) == {"kept": 1, "rejected": 3, "failed": 0, "quarantine": 0}
    kept = run.dir.read("pairs").to_dicts()[0]
    assert (kept["chosen"], kept["rejected"], kept["score_chosen"], kept["score_rejected"]) == ("answer 00", "answer 01", 5.0, 2.0)
    assert (kept["chosen_model"], kept["rejected_model"], kept["margin"]) == ("m0", "m1", 3.0)
    assert kept["chosen_scores"]["helpfulness"] == 5.0 and kept["rejected_scores"]["honesty"] == 2.0
    reasons = dict(run.dir.read("pairs", "rejected").select("instruction_id", "reason").iter_rows())
    assert reasons == {"i1": "tie", "i2": "margin 1 below 2", "i3": "fewer than 2 judged responses"}


def test_best_vs_random_draws_among_lower_ones_reproducibly(tmp_path):
    drawn = set()
    for seed in range(12):
        run = Run(parse_config({"store": str(tmp_path / str(seed)), "seed": seed, "pairs": {"min_margin": 1}}), "t")
        make_pairs(run, *fixtures())
        pair = run.dir.read("pairs").filter(pl.col("instruction_id") == "i0").to_dicts()[0]
        assert pair["chosen_id"] == "r00" and pair["margin"] >= 1
        drawn.add(pair["rejected_id"])
        again = Run(run.config, "again")
        make_pairs(again, *fixtures())
        assert again.dir.read("pairs")["rejected_id"].to_list() == run.dir.read("pairs")["rejected_id"].to_list()
    assert drawn == {"r01", "r02"}


def test_all_pairs_keep_every_pair_over_the_margin_and_count_their_inputs(tmp_path):
    run = run_with(tmp_path, strategy="all_pairs", min_margin=1)
    responses, judgments = fixtures()
    counts = make_pairs(run, responses, judgments)
    kept = run.dir.read("pairs")
    assert sorted(zip(kept["chosen_id"], kept["rejected_id"])) == [("r00", "r01"), ("r00", "r02"), ("r02", "r01"), ("r20", "r21")]
    rated = judgments.select("instruction_id")
    assert counts["kept"] + counts["rejected"] == inputs(rated, "all_pairs") == 3 + 1 + 1 + 1


@pytest.mark.parametrize("strategy", ["best_vs_random", "best_vs_worst", "all_pairs"])
def test_chosen_always_outscores_rejected_by_the_margin(tmp_path, strategy):
    run = run_with(tmp_path, strategy=strategy, min_margin=0.5)
    make_pairs(run, *fixtures())
    kept = run.dir.read("pairs")
    assert kept.height and (kept["score_chosen"] - kept["score_rejected"] >= 0.5).all()


@pytest.mark.parametrize("strategy", ["best_vs_random", "best_vs_worst", "all_pairs"])
def test_a_pair_of_identical_texts_is_a_rejected_row_and_the_batch_passes(tmp_path, strategy):
    """Two models answering alike is a row-level problem: that pair is rejected, its batch still passes the gate."""
    run = run_with(tmp_path, strategy=strategy, min_margin=0.5)
    counts = make_pairs(run, *fixtures({"r00": "the same", "r01": "the same", "r02": "the same"}))
    assert counts["quarantine"] == 0 and counts["kept"] > 0
    rejected = run.dir.read("pairs", "rejected").filter(pl.col("instruction_id") == "i0")
    assert rejected.height and set(rejected["reason"]) == {SAME_TEXT}
    assert (run.dir.read("pairs")["chosen"] != run.dir.read("pairs")["rejected"]).all()
