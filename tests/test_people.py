"""People in the loop where the data is made: instructions curated before any response is paid for, a decision per
row, the sample drawn where the judge is least sure, and the judge's agreement with the reviewer."""
import json

import polars as pl
import pytest
from llm_server import LLMTestServer, judge_prompt_answers
from runs import args, assert_whole
from scipy.stats import binomtest

from alignflow.engine.manifest import summary_markdown
from alignflow.engine.store import Store
from alignflow.review import sampling
from flows.cli import main

RESPONDER = "resp-model"  # the responses stage's model: its requests are told apart at the server


def review_json(store) -> dict:
    return json.loads((store / "r1/review.json").read_text())["stages"]


@pytest.mark.usefixtures("prefect_server", "api_keys")
def test_instructions_are_curated_before_any_response_and_pairs_decided_per_row(tmp_path, capsys):
    store = tmp_path / "store"
    prompts: list[str] = []

    def record(req: dict, kind: str):
        if req.get("model") == RESPONDER:
            prompts.append(req["messages"][-1]["content"])
        return None

    with LLMTestServer(respond=record) as server:
        run = args(server, store, "--set", "review.stages=[instructions, pairs]", "--set", "review.sample=6",
                   "--set", f"responses.llm.model={RESPONDER}")
        assert main(run) == 4  # stopped for the instruction review, resumable
        err = capsys.readouterr().err
        assert "waiting for review of instructions" in err and f"alignflow review {store / 'r1'}" in err
        assert not prompts and not list((store / "r1").glob("responses/*/*.parquet"))  # no response asked, none paid

        entry = review_json(store)["instructions"]
        assert len(entry["sample"]) == 6 and set(entry["why"].values()) == {"random"}
        order = pl.read_parquet(store / "r1/instructions/kept/*.parquet")["id"].to_list()  # responses go in this order
        first = sorted(entry["sample"], key=order.index)
        dropped, edited = first[:2], first[2]
        assert main(["review", str(store / "r1"), "--stage", "instructions", "--drop", *dropped,
                     "--edit", f"{edited}=Explain how tides work to a child, in three sentences."]) == 0
        assert "2 drop, 1 edit" in capsys.readouterr().out
        assert main(run) == 4  # the instructions went on; now the pairs wait
        assert "waiting for review of pairs" in capsys.readouterr().err

        sent = set(prompts)
        assert "Explain how tides work to a child, in three sentences." in sent
        instructions = pl.read_parquet(store / "r1/instructions/kept/*.parquet")
        assert not set(dropped) & set(instructions["id"])
        original = review_json(store)["instructions"]["decision"]["per_row"][edited]["original"]
        assert original not in sent and original != "Explain how tides work to a child, in three sentences."
        responses = pl.read_parquet(store / "r1/responses/kept/*.parquet")
        assert not set(dropped) & set(responses["instruction_id"])  # only the curated ones were answered
        gone = pl.read_parquet(store / "r1/instructions/rejected/*.parquet").filter(pl.col("id").is_in(dropped))
        assert gone["reason"].to_list() == ["dropped by reviewer"] * 2

        pairs = review_json(store)["pairs"]
        sample = pairs["sample"]
        assert all(pairs["why"][i] for i in sample) and pairs["random"]
        swap, drop, tie = sample[0], sample[1], sample[2]
        before = pl.read_parquet(store / "r1/pairs/kept/*.parquet").filter(pl.col("id") == swap).row(0, named=True)
        decisions = tmp_path / "decisions.yaml"
        decisions.write_text(f"{swap}: swap\n{drop}: drop\n{tie}: tie\n")
        assert main(["review", str(store / "r1"), "--stage", "pairs", "--decisions", str(decisions),
                     "--keep", *sample[3:]]) == 0
        requests = server.requests
        assert main(run) == 0
        assert server.requests == requests  # the decisions applied, nothing asked again

    dpo = pl.read_parquet(store / "r1/datasets/dpo.parquet")
    flipped = dpo.filter(pl.col("pair_id") == swap).row(0, named=True)
    assert (flipped["chosen"], flipped["rejected"]) == (before["rejected"], before["chosen"])
    assert flipped["chosen_id"] == before["rejected_id"] and flipped["margin"] < 0
    assert not {drop, tie} & set(dpo["pair_id"])
    manifest = assert_whole(Store(str(store)), "r1")
    assert manifest["stages"]["instructions"]["rejected"] >= 2

    # the agreement in the manifest is what review.json implies, computed here on its own
    entry = review_json(store)["pairs"]
    said = {i: d["decision"] for i, d in entry["decision"]["per_row"].items() if i in set(entry["random"])}
    agree, disagree = list(said.values()).count("keep"), list(said.values()).count("swap")
    found = manifest["review"]["pairs"]["agreement"]
    assert (found["agree"], found["disagree"], found["n"]) == (agree, disagree, agree + disagree)
    if agree + disagree:
        low, high = binomtest(agree, agree + disagree).proportion_ci(method="wilson")
        assert found["low"] == pytest.approx(low) and found["high"] == pytest.approx(high)
    assert manifest["review"]["pairs"]["rows_swap"] == 1 and manifest["review"]["pairs"]["rows_rejected"] == 2
    assert f"The judge agrees with the reviewer on {found['text']}" in summary_markdown(manifest, str(store / "r1"))


@pytest.mark.usefixtures("prefect_server", "api_keys")
def test_min_agreement_holds_the_datasets(tmp_path, capsys):
    store = tmp_path / "store"
    with LLMTestServer() as server:
        run = args(server, store, "--set", "review.stages=[pairs]", "--set", "review.sample=4",
                   "--set", "review.sample_by=random", "--set", "review.min_agreement=0.9")
        assert main(run) == 4
        sample = review_json(store)["pairs"]["sample"]
        assert main(["review", str(store / "r1"), "--swap", *sample[:2], "--keep", *sample[2:]]) == 0
        capsys.readouterr()
        assert main(run) == 3
    err = capsys.readouterr().err
    assert "lower bound below review.min_agreement (0.9)" in err and "0.50 [" in err
    assert not (store / "r1/datasets/dpo.parquet").exists()
    assert json.loads((store / "r1/manifest.json").read_text())["held"]


def test_review_decisions_are_checked_one_line(tmp_path, capsys):
    from alignflow.review import decisions

    with pytest.raises(decisions.ReviewError, match="a pairs row is decided keep, drop, swap, tie, not 'edit'"):
        decisions._row_decision("pairs", "p1", {"decision": "edit", "text": "x"})
    with pytest.raises(decisions.ReviewError, match="an edit needs the new text"):
        decisions._row_decision("instructions", "i1", {"decision": "edit", "text": " "})


def position_biased(flip_every: int):
    """A judge that rates answers by length (longer: better), and for one instruction in `flip_every` adds 2 to
    whichever answer it is shown first: on those it prefers the other answer when the order is reversed."""
    import hashlib

    def respond(req: dict, kind: str):
        answers = judge_prompt_answers(req)
        if answers is None:
            return None
        biased = int(hashlib.sha256("".join(sorted(answers)).encode()).hexdigest(), 16) % flip_every == 0
        ranked = sorted(range(len(answers)), key=lambda i: (len(answers[i]), answers[i]))
        ratings = [min(5, 2 + ranked.index(i) + (2 if biased and i == 0 else 0)) for i in range(len(answers))]
        return {"ratings": [{"rationale": "shown first" if biased and i == 0 else "by length", "rating": r}
                            for i, r in enumerate(ratings)]}

    return respond


@pytest.mark.usefixtures("prefect_server", "api_keys")
def test_uncertain_sampling_draws_the_pairs_the_judge_flipped_on(tmp_path):
    store = tmp_path / "store"
    with LLMTestServer(respond=position_biased(4)) as server:
        run = args(server, store, "--set", "review.stages=[pairs]", "--set", "review.sample=8",
                   "--set", "judge.both_orders=true", "--set", "responses.per_instruction=2", target="40")
        assert main(run) == 4
    entry = review_json(store)["pairs"]
    pairs = pl.read_parquet(store / "r1/pairs/kept/*.parquet")
    judged = pl.read_parquet(store / "r1/judgments/kept/*.parquet")
    flipped = set(sampling.uncertainty(pairs, judged).filter(pl.col("why").str.contains("reversed order"))["id"])
    assert 0 < len(flipped) < pairs.height / 2
    sampled = set(entry["sample"]) - set(entry["random"])
    assert len(entry["random"]) == 2 and len(sampled) == 6
    share_in_sample = len(sampled & flipped) / len(sampled)
    assert share_in_sample > 2 * len(flipped) / pairs.height  # over-represented against a random draw
    assert all("reversed order" in entry["why"][i] for i in sampled & flipped)


def test_uncertain_draw_keeps_a_random_part_and_says_why():
    rows = pl.DataFrame({"id": [f"p{i:02d}" for i in range(40)]})
    scores = pl.DataFrame({"id": rows["id"], "score": [4.0 if i < 5 else 0.5 for i in range(40)],
                           "margin": [1.0] * 40, "why": ["uncertain: flipped" if i < 5 else "uncertain: margin 1.00"
                                                        for i in range(40)]})
    drawn = sampling.draw(rows, 10, seed=3, uncertain=scores, random_share=0.3)
    assert len(drawn) == 10 and len({d.id for d in drawn}) == 10
    assert sum(d.random for d in drawn) == 3 and all(d.why == "random" for d in drawn if d.random)
    assert {f"p{i:02d}" for i in range(5)} <= {d.id for d in drawn}  # the five the judge is least sure of


@pytest.mark.usefixtures("prefect_server", "api_keys")
def test_reviewed_responses_and_judgments_each_stop_the_stages_after_them(tmp_path, capsys):
    store = tmp_path / "store"
    judged: list[dict] = []

    def record(req: dict, kind: str):
        if req.get("model") == "judge-model":
            judged.append(req)
        return None

    with LLMTestServer(respond=record) as server:
        run = args(server, store, "--set", "review.stages=[responses, judgments]", "--set", "review.sample=4",
                   "--set", "judge.llm.model=judge-model")
        assert main(run) == 4
        assert "waiting for review of responses" in capsys.readouterr().err
        assert not judged and not list((store / "r1").glob("judgments/*/*.parquet"))  # nothing judged yet
        dropped = review_json(store)["responses"]["sample"][0]
        assert main(["review", str(store / "r1"), "--stage", "responses", "--drop", dropped]) == 0
        assert main(run) == 4  # judged; the judgments wait before any pair is made
        assert "waiting for review of judgments" in capsys.readouterr().err
        assert judged and not list((store / "r1").glob("pairs/*/*.parquet"))
        assert main(["review", str(store / "r1"), "--stage", "judgments", "--approve"]) == 0
        assert main(run) == 0
    assert judged
    judgments = pl.read_parquet(store / "r1/judgments/kept/*.parquet")
    assert dropped not in set(judgments["response_id"])
    dpo = pl.read_parquet(store / "r1/datasets/dpo.parquet")
    assert dropped not in set(dpo["chosen_id"]) | set(dpo["rejected_id"])
    assert_whole(Store(str(store)), "r1")


def contradicting_overall(req: dict, kind: str):
    """A judge whose `overall` contradicts its other aspects: the aspects prefer the longer answer, `overall` the
    shorter."""
    answers = judge_prompt_answers(req)
    if answers is None:
        return None
    overall = "for overall only" in json.dumps(req["messages"])
    longest = max(range(len(answers)), key=lambda i: (len(answers[i]), answers[i]))
    ratings = [(1 if i == longest else 5) if overall else (5 if i == longest else 3) for i in range(len(answers))]
    return {"ratings": [{"rationale": "overall" if overall else "by length", "rating": r} for r in ratings]}


@pytest.mark.usefixtures("prefect_server", "api_keys")
def test_the_notus_check_flags_overall_against_the_aspects_and_pairs_rank_by_the_aspects(tmp_path):
    store = tmp_path / "store"
    with LLMTestServer(respond=contradicting_overall) as server:
        run = args(server, store, "--set", "judge.aspects=[helpfulness, overall]",
                   "--set", "responses.per_instruction=2")
        assert main(run) == 0
    judged = pl.read_parquet(store / "r1/judgments/kept/*.parquet")
    assert judged["inconsistent"].all()  # |overall - helpfulness| is 4 or 2: at least judge.inconsistent_at
    manifest = assert_whole(Store(str(store)), "r1")
    assert manifest["stages"]["judgments"]["inconsistent"] == judged.height
    assert f"the other aspects (judge.inconsistent_at): {judged.height} of {judged.height}" in \
        summary_markdown(manifest, str(store / "r1"))  # the run summary artifact's text
    pairs = pl.read_parquet(store / "r1/pairs/kept/*.parquet")
    assert pairs.height and (pairs["chosen"].str.len_chars() >= pairs["rejected"].str.len_chars()).all()
    assert (pairs["score_chosen"] == 5).all()  # the mean of the aspects other than `overall`
