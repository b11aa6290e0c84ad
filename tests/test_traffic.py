"""Provider traffic as the provider sees it: in flight and per minute at the loopback server, whatever runs at once;
adaptive on 429 and on a server that slows down; a global limit two runs share through a Prefect server; a
refused key or a missing server before anything is sent; tokens and cost that match the server's count."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from llm_server import LLMTestServer

from alignflow.config import LLMConfig
from alignflow.llm.client import LLM
from alignflow.llm.generate import answer_all
from flows.cli import main

pytestmark = pytest.mark.usefixtures("prefect_server", "api_keys")


def args(server, store, *extra, run_id="t1"):
    return ["run", "configs/quickstart.yaml", "--set", f"store={store}", "--set", "llm.provider=openai",
            "--set", f"llm.base_url={server.openai_base_url}", "--set", "llm.model=gen-model",
            "--set", "instructions.target=12", "--run-id", run_id, *extra]


def overlap(records: list[dict]) -> int:
    """The most batches running at one moment."""
    edges = sorted([(r["started"], 1) for r in records] + [(r["finished"], -1) for r in records])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


@pytest.mark.slow
def test_many_batches_and_two_models_at_once_hold_each_endpoints_limits(tmp_path):
    """Every batch of every stage and both generator models run at once; each model still sees at most
    `max_concurrency` requests in flight and `rpm` a minute, the first minute included."""
    store = tmp_path / "store"
    with LLMTestServer(latency_s=0.05) as server:
        assert main(args(server, store, "--set", "llm.max_concurrency=3", "--set", "llm.rpm=20",
                         "--set", "responses.models=[{model: gen-model}, {model: gen-b}]",
                         "--set", "responses.batch_size=1", "--set", "judge.llm.model=judge-model")) == 0
    records = [json.loads(p.read_text()) for p in store.glob("t1/*/checkpoints/*.json")]
    assert overlap(records) >= 10
    assert set(server.peak_by_model) == {"gen-model", "gen-b", "judge-model"}
    for model in server.peak_by_model:
        assert server.peak_by_model[model] <= 3, model
        assert server.max_per_window(60, model) <= 20, model
    assert len(server.arrivals_by_model["gen-model"]) > 20  # so the minute's limit had to hold


def test_a_server_that_takes_four_at_once_sees_few_429s_from_a_run_set_for_sixteen(tmp_path):
    store = tmp_path / "store"
    with LLMTestServer(max_in_flight=4, latency_s=0.05, retry_after_s=0.05) as server:
        assert main(args(server, store, "--set", "llm.max_concurrency=16", "--set", "responses.per_instruction=4",
                         "--set", "instructions.target=24")) == 0
        share = server.throttled / server.requests
    manifest = json.loads((store / "t1/manifest.json").read_text())
    assert sum(stage["failed"] for stage in manifest["stages"].values()) == 0
    assert server.requests > 150 and share < 0.2, share
    [traffic] = manifest["endpoints"]
    assert traffic["throttled"] == server.throttled and traffic["lowest_cap"] <= 4


def test_a_server_that_slows_down_under_load_is_backed_off():
    """A proxy or vLLM that never answers 429 but whose latency climbs with load: the cap comes down."""
    os.environ["TEST_KEY"] = "x"
    with LLMTestServer(slow_per_in_flight_s=0.05, latency_s=0.005) as server:
        llm = LLM(LLMConfig(provider="openai", model="slow", base_url=server.openai_base_url, api_key_env="TEST_KEY",
                            max_concurrency=48))
        results = answer_all(llm, [llm.request([{"role": "user", "content": f"q {i}"}]) for i in range(200)])
    stats = llm.endpoint.limits.stats
    assert all(r.ok for r in results)
    assert stats.cuts > 0 and stats.lowest_cap < 48


@pytest.mark.slow
def test_two_runs_at_once_share_one_global_concurrency_limit(tmp_path, prefect_server):
    """Two flow runs in two processes, one Prefect global limit of 8 for the endpoint: the server never sees more."""
    config = tmp_path / "config.yaml"
    config.write_text(Path("configs/quickstart.yaml").read_text())
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_LOGGING_LEVEL": "ERROR"}
    with LLMTestServer(latency_s=0.1) as server:
        shared = ["--set", "llm.limit_name=shared-endpoint", "--set", "llm.max_concurrency=16"]
        created = subprocess.run([sys.executable, "-m", "flows.cli", "limits", "create", str(config), *shared,
                                  "--set", "llm.max_concurrency=8"], cwd=ROOT, env=env, capture_output=True, text=True)
        assert created.returncode == 0 and "shared-endpoint: limit 8" in created.stdout, created.stderr
        runs = [subprocess.Popen([sys.executable, "-m", "flows.cli", *args(server, tmp_path / "store", *shared,
                                                                             "--set", "responses.per_instruction=4",
                                                                             run_id=f"run{i}")],
                                 cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for i in range(2)]
        for proc in runs:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err.decode()[-2000:]
        peak, requests = server.peak_in_flight, server.requests
    assert peak <= 8, peak
    assert requests > 100


def test_a_refused_key_or_a_missing_server_is_one_line_before_any_request(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-1234")
    with LLMTestServer(api_key="sk-right-key-5678") as server:
        assert main(args(server, tmp_path / "store")) == 2
        assert server.requests == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused the API key in OPENAI_API_KEY (HTTP 401)" in err[0]
    assert "sk-wrong" not in err[0] and not (tmp_path / "store").exists()
    assert main(["run", "configs/quickstart.yaml", "--set", "llm.provider=openai",
                 "--set", "llm.base_url=http://127.0.0.1:9/v1", "--set", f"store={tmp_path / 'store'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing answers at http://127.0.0.1:9/v1" in err[0]


def test_the_manifest_counts_the_tokens_the_server_sent_and_prices_them(tmp_path, capsys):
    prices = tmp_path / "prices.yaml"
    prices.write_text("openai:\n  gen-model: {input: 2.0, output: 8.0}\n")
    store = tmp_path / "store"
    with LLMTestServer() as server:
        assert main(args(server, store, "--set", f"prices={prices}", "--set", "instructions.evol.enabled=true")) == 0
        served = (server.tokens_in, server.tokens_out)
    manifest = json.loads((store / "t1/manifest.json").read_text())
    assert (manifest["tokens"]["input_tokens"], manifest["tokens"]["output_tokens"]) == served
    expected = (served[0] * 2.0 + served[1] * 8.0) / 1e6
    assert manifest["cost_usd"] == pytest.approx(expected, rel=1e-6)
    assert manifest["by_model"]["openai:gen-model"]["cost_usd"] == pytest.approx(expected, rel=1e-6)
    stage_costs = [s["cost_usd"] for s in manifest["stages"].values() if s["by_model"]]
    assert sum(stage_costs) == pytest.approx(expected, rel=1e-6) and len(stage_costs) == 3
    out = capsys.readouterr().out
    assert "by model" in out and f"cost: ${expected:,.4f}" in out


def test_a_budget_stops_the_run_cleanly_and_a_higher_one_resumes_it(tmp_path, capsys):
    prices = tmp_path / "prices.yaml"
    prices.write_text("openai:\n  gen-model: {input: 1000, output: 1000}\n")  # $0.001 a token: a budget bites
    store = tmp_path / "store"
    with LLMTestServer() as server:
        assert main(args(server, store, "--set", f"prices={prices}", "--set", "llm.budget_usd=4",
                         "--set", "cache.enabled=false")) == 4
        first = server.requests
        answered = {digest for _, digest in server.served_log}
        spent = (server.tokens_in + server.tokens_out) / 1000
        err = capsys.readouterr().err.strip().splitlines()[-1]
        server.reset_counts()
        assert main(args(server, store, "--set", f"prices={prices}", "--set", "llm.budget_usd=100",
                         "--set", "cache.enabled=false")) == 0
        resumed = {digest for _, digest in server.served_log}
    assert err.startswith("alignflow: run t1 stopped: llm.budget_usd $4.00 reached") and "resume with a higher" in err
    assert spent <= 4.0 and first > 0
    manifest = json.loads((store / "t1/manifest.json").read_text())
    assert manifest["stopped"] is None and manifest["datasets"]["dpo"] > 0
    assert resumed and not resumed & answered  # the resume asked only what the stopped run had not had answered
