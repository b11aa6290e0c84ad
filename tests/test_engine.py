"""The run engine through `alignflow run` and a real Prefect server (the test harness) against the loopback server:
fresh data per run, resume from the store alone, stages that stream, a target on a final dataset, loud config
changes; and kill -9 at random points, on a local and on an S3 store, with nothing asked twice."""
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict

import polars as pl
import pytest
from conftest import BUCKET, ROOT
from llm_server import LLMTestServer
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness

from alignflow import answers
from alignflow.records import schema_for
from alignflow.store import OUTCOMES, Store
from flows.cli import main

STAGES = ("instructions", "responses", "judgments", "pairs")


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")


def args(server, store, *extra, run_id="r1", target="12"):
    return ["run", "configs/quickstart.yaml", "--set", f"store={store}", "--set", "llm.provider=openai",
            "--set", f"llm.base_url={server.openai_base_url}", "--set", "llm.model=gen-model",
            "--set", f"instructions.target={target}", "--set", "llm.max_concurrency=8", "--run-id", run_id, *extra]


def read(store: Store, run_id: str, stage: str, outcome: str = "kept") -> pl.DataFrame:
    return store.read_dir(f"{run_id}/{stage}/{outcome}", schema=schema_for(stage))


def assert_whole(store: Store, run_id: str) -> dict:
    """The manifest adds up per stage, and no id is in a stage or a dataset twice."""
    manifest = store.read_json(f"{run_id}/manifest.json")
    for stage in ("responses", "judgments", "pairs"):
        counts = manifest["stages"][stage]
        assert counts["inputs"] == sum(counts[o] for o in OUTCOMES) > 0, stage
    for stage in STAGES:
        ids = pl.concat([read(store, run_id, stage, o).select("id") for o in OUTCOMES])["id"]
        assert ids.is_unique().all() and ids.len() == sum(manifest["stages"][stage][o] for o in OUTCOMES), stage
    for name, column in (("dpo", "pair_id"), ("sft", "response_id"), ("kto", "response_id")):
        rows = store.read_parquet(f"{run_id}/datasets/{name}.parquet")
        assert rows[column].is_unique().all() and rows.height == manifest["datasets"][name] > 0, name
    return manifest


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


# -- kill -9 ---------------------------------------------------------------------------------------------------------

# An answer is in the store within FLUSH_S of arriving (plus a write): a kill may lose the answers of the last
# seconds, and the requests in flight; anything older must never be asked again.
WINDOW_S = answers.FLUSH_S + 2.0


def _start(command: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *command], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_kill_9_at_ten_random_points_then_resume(where, tmp_path, prefect_server, request):
    """Ten kills at random points of one run, each followed by the same command; the S3 run also resumes each time
    on a fresh cache directory, as another machine would."""
    if where == "s3":
        request.getfixturevalue("s3_server")
    store = Store(str(tmp_path / "store") if where == "local" else f"s3://{BUCKET}/kills")
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_LOGGING_LEVEL": "ERROR"}
    rnd = random.Random(20261202 if where == "local" else 7)
    kills, finished_early = [], 0
    with LLMTestServer(latency_s=0.02) as server:
        for attempt in range(11):
            cache = ["--set", "cache.enabled=false"] if where == "local" else ["--set", f"cache.dir={tmp_path}/cache{attempt}"]
            proc = _start(args(server, store.url, "--set", "instructions.prompts_per_round=3",
                               "--set", "responses.batch_size=4", *cache, target="40"), env)
            if attempt == 10:  # the last one runs to the end
                _, err = proc.communicate(timeout=600)
                assert proc.returncode == 0, err.decode()[-2000:]
                break
            try:
                proc.wait(timeout=rnd.uniform(4.0, 16.0))
                finished_early += 1
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                kills.append(time.time())
                proc.wait()
        log = list(server.served_log)
    assert len(kills) >= 7

    served = defaultdict(list)
    for at, digest in log:
        served[digest].append(at)
    repeated = [at for times in served.values() for at in sorted(times)[:-1]]
    lost_in_flight = [at for at in repeated if any(kill - WINDOW_S <= at <= kill + 1.0 for kill in kills)]
    print(f"{where}: {len(kills)} kills, {len(log)} answers served, {len(repeated)} asked again, "
          f"all of them in flight at a kill")
    assert repeated == lost_in_flight  # nothing answered well before a kill was asked for again
    assert_whole(store, "r1")
