"""The run engine through `alignflow run` and a real Prefect server (the test harness) against the loopback server:
fresh data per run, resume from the store alone, stages that stream, a target on a final dataset, loud config
changes. Kills and races are in test_chaos.py."""

import pytest
from llm_server import LLMTestServer
from runs import STAGES, args, assert_whole, read

from alignflow.engine.store import Store
from flows.cli import main

pytestmark = pytest.mark.usefixtures("prefect_server", "api_keys")


# -- fresh data per run, and the same run sends nothing --------------------------------------------------------------

def test_a_new_run_id_draws_new_samples_and_the_same_one_sends_nothing(tmp_path):
    store = Store(str(tmp_path / "store"))
    with LLMTestServer() as server:
        assert main(args(server, store.url, run_id="night1")) == 0
        first = server.requests
        server.reset_counts()
        assert main(args(server, store.url, run_id="night2")) == 0  # the request cache is on: nothing is reused
        assert server.requests > 0 and first > 0
        server.reset_counts()
        assert main(args(server, store.url, run_id="night1")) == 0
        assert server.requests == 0
    one, two = (set(read(store, r, "instructions")["instruction"]) for r in ("night1", "night2"))
    assert one and two and not one & two
    dpo = [store.read_parquet(f"{r}/datasets/dpo.parquet") for r in ("night1", "night2")]
    assert set(dpo[0]["chosen"]).isdisjoint(dpo[1]["chosen"])


def test_an_explicit_seed_repeats_a_run_and_the_cache_can_answer_it(tmp_path):
    store = Store(str(tmp_path / "store"))
    with LLMTestServer() as server:
        assert main(args(server, store.url, "--set", "seed=7", "--set", "cache.enabled=false", run_id="a")) == 0
        assert main(args(server, store.url, "--set", "seed=7", "--set", "cache.enabled=false", run_id="b")) == 0
        server.reset_counts()
        assert main(args(server, store.url, "--set", "seed=7", run_id="c")) == 0  # fills the cache
        sent = server.requests
        server.reset_counts()
        assert main(args(server, store.url, "--set", "seed=7", run_id="d")) == 0  # reuses it: the development loop
        assert sent > 0 and server.requests == 0
    texts = [read(store, r, "instructions").sort("id")["instruction"].to_list() for r in "abcd"]
    assert texts[0] and texts[0] == texts[1] == texts[2] == texts[3]


def test_two_servers_serving_one_model_name_are_asked_apart(tmp_path):
    """The request key holds base_url: an answer from one server is never served for another."""
    store = str(tmp_path / "store")
    with LLMTestServer(seed=1) as one, LLMTestServer(seed=2) as two:
        assert main(args(one, store, "--set", "seed=3", run_id="x")) == 0
        assert main(args(two, store, "--set", "seed=3", run_id="y")) == 0
        assert one.requests > 0 and two.requests > 0


# -- resume from the store alone ----------------------------------------------------------------------------------

def test_a_resume_needs_only_the_store(tmp_path, monkeypatch):
    """Answers of a finished stage are in the store: with the cache off, or a fresh cache, nothing is asked again."""
    store = Store(str(tmp_path / "store"))
    with LLMTestServer() as server:
        assert main(args(server, store.url, "--set", "cache.enabled=false")) == 0
        before = assert_whole(store, "r1")
        server.reset_counts()
        monkeypatch.setenv("ALIGNFLOW_CACHE_DIR", str(tmp_path / "another-machine"))
        assert main(args(server, store.url)) == 0
        assert server.requests == 0
    assert assert_whole(store, "r1")["stages"] == before["stages"]
    assert store.list("r1/responses/answers/")  # where the answers are


def test_a_changed_config_says_what_it_redoes_and_redoes_only_that(tmp_path, caplog, capsys):
    store = Store(str(tmp_path / "store"))

    def announced() -> list[str]:
        lines = [r.getMessage() for r in caplog.records if "the config changed" in r.getMessage()]
        caplog.clear()
        return lines

    with LLMTestServer() as server:
        assert main(args(server, store.url)) == 0
        assert announced() == []
        server.reset_counts()
        before = store.read_json("r1/manifest.json")
        assert main(args(server, store.url, "--set", "pairs.strategy=best_vs_worst")) == 2  # refused: say so
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == ("alignflow: run r1 was made with another config (pairs.strategy): that would make pairs "
                           "again; to do so, pass --allow-config-change pairs")
        assert server.requests == 0 and store.read_json("r1/manifest.json") == before
        assert main(args(server, store.url, "--set", "pairs.strategy=best_vs_worst",
                         "--allow-config-change", "pairs")) == 0
        assert server.requests == 0  # pairs ask no model
        assert announced() == ["run r1: the config changed (pairs.strategy); redoing pairs"]
        assert main(args(server, store.url, "--set", "pairs.strategy=best_vs_worst", "--set",
                         "responses.per_instruction=3", "--allow-config-change", "responses,judgments,pairs")) == 0
        assert announced() == ["run r1: the config changed (responses.per_instruction); redoing responses, judgments, pairs"]
        asked = server.requests
    manifest = assert_whole(store, "r1")
    responses = manifest["stages"]["responses"]
    assert responses["inputs"] == 3 * 12  # the first 12 kept instructions (the target), three samples each
    assert asked > 0 and set(read(store, "r1", "pairs")["strategy"]) == {"best_vs_worst"}


# -- stages stream ---------------------------------------------------------------------------------------------------

def test_judging_and_pairs_start_while_earlier_stages_still_run(tmp_path):
    store = Store(str(tmp_path / "store"))
    with LLMTestServer(latency_s=0.05) as server:
        assert main(args(server, store.url, "--set", "instructions.prompts_per_round=2",
                         "--set", "responses.batch_size=3", target="24")) == 0
    times = {stage: [store.read_json(k) for k in store.list_dir(f"r1/{stage}/checkpoints")] for stage in STAGES}
    assert len(times["responses"]) >= 4
    last_responses = max(r["finished"] for r in times["responses"])
    last_judgments = max(r["finished"] for r in times["judgments"])
    assert min(r["started"] for r in times["judgments"]) < last_responses
    assert min(r["finished"] for r in times["pairs"] if r["counts"]["kept"]) < last_judgments
    assert min(r["started"] for r in times["responses"]) < max(r["finished"] for r in times["instructions"])


# -- run until N pass ------------------------------------------------------------------------------------------------

def test_a_target_on_the_dpo_dataset_runs_until_that_many_pairs_passed_every_gate(tmp_path, capsys):
    store = Store(str(tmp_path / "store"))
    with LLMTestServer() as server:
        assert main(args(server, store.url, "--set", "instructions.target={dataset: dpo, rows: 30}")) == 0
    manifest = assert_whole(store, "r1")
    dpo = store.read_parquet("r1/datasets/dpo.parquet")
    assert dpo.height >= 30 and manifest["target"] == {"dataset": "dpo", "rows": 30, "made": dpo.height,
                                                       "reached": True, "stopped_by": None}
    kept = read(store, "r1", "pairs")
    assert set(dpo["pair_id"]) == set(kept["id"])  # every row passed the pairs gate, and every stage's before it
    assert manifest["stages"]["pairs"]["quarantine"] == 0


def test_a_target_out_of_budget_says_so(tmp_path, capsys):
    store = Store(str(tmp_path / "store"))
    with LLMTestServer() as server:
        assert main(args(server, store.url, "--set", "instructions.target={dataset: dpo, rows: 1000}",
                         "--set", "instructions.max_rounds=2")) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert any(line.startswith("alignflow: target not reached:") and "of 1,000 dpo rows (instructions.max_rounds (2)"
               in line for line in err)
    target = store.read_json("r1/manifest.json")["target"]
    assert target["reached"] is False and target["made"] > 0 and "max_rounds" in target["stopped_by"]
