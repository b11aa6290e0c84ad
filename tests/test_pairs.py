import polars as pl

from alignflow.config import parse_config
from alignflow.exports import dpo, sft
from alignflow.pairs import make_pairs
from alignflow.records import frame
from alignflow.run import Run


def fixtures():
    responses = frame([
        {"id": f"r{i}{s}", "instruction_id": f"i{i}", "instruction": f"task {i}", "response": f"answer {i}{s}", "sample": s}
        for i in range(4) for s in range(2 if i < 3 else 1)
    ], "responses")
    ratings = {"r00": 5, "r01": 2, "r10": 3, "r11": 3, "r20": 4, "r21": 3, "r30": 4}
    judgments = frame([{"id": f"j{k}", "response_id": k, "instruction_id": "i" + k[1], "rating": v}
                       for k, v in ratings.items()], "judgments")
    return responses, judgments


def test_pairs_best_vs_worst_with_reasons(tmp_path):
    run = Run(parse_config({"store": str(tmp_path), "pairs": {"min_margin": 2}}), "t")
    responses, judgments = fixtures()
    assert make_pairs(run, responses, judgments) == {"kept": 1, "rejected": 3}
    kept = run.read("pairs")
    assert kept.select("chosen", "rejected", "score_chosen", "score_rejected").row(0) == ("answer 00", "answer 01", 5.0, 2.0)
    reasons = dict(run.read("pairs", "rejected").select("instruction_id", "reason").iter_rows())
    assert reasons == {"i1": "tie", "i2": "margin 1 below 2", "i3": "fewer than 2 judged responses"}
    assert dpo(kept).columns[:5] == ["prompt", "chosen", "rejected", "score_chosen", "score_rejected"]


def test_sft_takes_the_best_response_per_instruction():
    responses, judgments = fixtures()
    out = sft(responses, judgments).sort("instruction_id")
    assert out.height == 4
    assert out["messages"][0].to_list() == [{"role": "user", "content": "task 0"}, {"role": "assistant", "content": "answer 00"}]
