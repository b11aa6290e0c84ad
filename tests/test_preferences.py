"""Issue 4 end to end: two generator models, a separate judge, all responses of an instruction rated per aspect in
one shuffled call, pairs over the margin, unjudgeable rows failed with their raw output, position bias measured."""
import hashlib
import json
import re

import polars as pl
import pytest
from llm_server import LLMTestServer, _last_user_text, _structured_schema, _text_of

from flows.cli import main

ASPECTS = ["helpfulness", "honesty", "instruction_following", "truthfulness"]


pytestmark = pytest.mark.usefixtures("prefect_server", "api_keys")


def unjudgeable(instruction: str) -> bool:
    return int(hashlib.sha256(instruction.encode()).hexdigest(), 16) % 6 == 0


def respond(req, kind):
    """gen-a writes GOOD answers, gen-b poor ones; the judge rates by content, so its ratings must map back to the
    right responses whatever the shown order; some instructions get a wrong number of ratings every time."""
    model = req.get("model")
    if model in ("gen-a", "gen-b") and _structured_schema(req, kind) is None:
        return f"{'GOOD' if model == 'gen-a' else 'poor'} answer to: {_last_user_text(req)[:50]}"
    if model == "judge-model":
        text = _text_of(req["messages"][0]["content"])  # a re-ask adds turns after the judge prompt
        answers = re.findall(r"### Answer \d+\n(.*?)(?=\n\n### Answer|\n\nRate all)", text, flags=re.S)
        instruction = text.split("The instruction:\n", 1)[1].split("\n\n### Answer", 1)[0]
        ratings = [{"rationale": "content", "rating": 5 if "GOOD" in a else 2} for a in answers]
        return {"ratings": ratings[:-1] if unjudgeable(instruction) else ratings}
    return None


def run_pipeline(server, tmp_path, *extra, run_id="p1"):
    models = json.dumps([{"model": "gen-a", "temperature": 0.7}, {"model": "gen-b", "temperature": 1.0}])
    return main(["run", "configs/quickstart.yaml", "--set", f"store={tmp_path}", "--set", "llm.provider=openai",
                 "--set", f"llm.base_url={server.openai_base_url}", "--set", "llm.model=gen-model",
                 "--set", "instructions.target=10",
                 "--set", "instructions.per_prompt=3", "--set", "llm.max_concurrency=16", "--set", f"responses.models={models}",
                 "--set", "responses.per_instruction=2", "--set", f"judge.aspects={json.dumps(ASPECTS)}",
                 "--set", "judge.llm.provider=anthropic",
                 "--set", f"judge.llm.base_url={server.url}", "--set", "judge.llm.model=judge-model",
                 "--set", "judge.llm.structured_retries=1", "--set", "pairs.min_margin=2", "--run-id", run_id, *extra])


def test_two_models_and_a_separate_judge(tmp_path):
    with LLMTestServer(respond=respond) as server:
        assert run_pipeline(server, tmp_path) == 0
    run = tmp_path / "p1"
    responses = pl.read_parquet(run / "responses/kept/")
    # every (instruction, model, sample) is its own request: distinct rows, none answered from another's cache entry
    assert responses.group_by("instruction_id").len()["len"].unique().to_list() == [4]
    assert set(zip(responses["model"], responses["temperature"])) == {("gen-a", 0.7), ("gen-b", 1.0)}
    assert not responses["cached"].any() and responses["id"].n_unique() == responses.height

    judged = pl.read_parquet(run / "judgments/kept/").join(responses.select("id", "model", "response"),
                                                           left_on="response_id", right_on="id")
    assert set(judged["model"]) == {"judge-model"}
    assert judged.select(pl.all_horizontal(pl.col(a).is_not_null() for a in ASPECTS)).to_series().all()
    # ratings came back to the response they were given for, though shown in a shuffled order
    expected = pl.when(pl.col("response").str.starts_with("GOOD")).then(5.0).otherwise(2.0)
    assert judged.select((pl.col("rating") == expected).all()).item()
    assert judged["position"].n_unique() == 4

    failed = pl.read_parquet(run / "judgments/failed/")
    assert failed.height > 0 and failed["error"].str.contains("invalid structured output").all()
    assert failed["raw_output"].str.contains("ratings").all()
    judged_or_failed = set(judged["response_id"]) | set(failed["response_id"])
    assert judged_or_failed == set(responses["id"]) and not set(judged["response_id"]) & set(failed["response_id"])

    pairs = pl.read_parquet(run / "pairs/kept/")
    assert pairs.height == judged["instruction_id"].n_unique()
    assert (pairs["score_chosen"] - pairs["score_rejected"] >= 2).all()
    assert set(pairs["chosen_model"]) == {"gen-a"} and set(pairs["rejected_model"]) == {"gen-b"}
    assert pairs["chosen_scores"].struct.field("honesty").eq(5.0).all()

    manifest = json.loads((run / "manifest.json").read_text())["stages"]
    assert manifest["judgments"]["inputs"] == manifest["judgments"]["kept"] + manifest["judgments"]["failed"] == responses.height


def test_both_orders_and_the_agreement_command(tmp_path, capsys):
    with LLMTestServer(respond=respond) as server:
        assert run_pipeline(server, tmp_path, "--set", "judge.both_orders=true", "--set", "judge.aspects=[overall]") == 0
    judged = pl.read_parquet(tmp_path / "p1/judgments/kept/")
    assert judged["rating_reversed"].is_not_null().all() and judged["overall"].is_not_null().all()
    assert judged["helpfulness"].is_null().all()
    capsys.readouterr()
    assert main(["agreement", str(tmp_path / "p1")]) == 0
    out = capsys.readouterr().out
    assert "preferred response changed when reversed: 0 (0.0%)" in out


def test_agreement_needs_both_orders_and_a_run(tmp_path, capsys):
    with LLMTestServer(respond=respond) as server:
        assert run_pipeline(server, tmp_path) == 0
    capsys.readouterr()
    assert main(["agreement", str(tmp_path / "p1")]) == 2
    assert "judge.both_orders=true" in capsys.readouterr().err
    assert main(["agreement", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "no such run directory" in err and len(err.strip().splitlines()) == 1
