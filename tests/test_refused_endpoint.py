"""An endpoint that refuses every request stops the run at once, in one line that names the status, the URL, the
model and the key's variable and says what to check (exit 2), instead of failing every row and quarantining every
batch; the answers it gave before are kept and the same run id resumes once the endpoint takes the requests.

Preflight finds what it can before anything is written: from the URL alone (0 requests), the key's variable (0),
the prices file (0), and one minimal call to an endpoint whose models list does not name the model (1 request).
A key refused for completions, or another model the endpoint lacks, is found by the run's first requests to it,
which go one at a time (STOP_AFTER requests); what only the run's own requests meet (a structured-output request,
a large max_tokens, the Batch API) stops it after a few.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from llm_server import LLMTestServer, judge_prompt_answers
from runs import args, assert_whole

from alignflow.config import LLMConfig
from alignflow.engine.store import Store
from alignflow.llm.client import LLM
from alignflow.llm.generate import answer_all
from alignflow.llm.preflight import prove_endpoints
from alignflow.llm.refused import STOP_AFTER, EndpointRefused
from flows import cli

KEY = "sk-test-refused-0123456789"


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


class NoLauncher:
    """Stands in for Prefect: a case preflight can find must not get as far as starting a flow."""

    def __getattr__(self, name):
        raise AssertionError(f"the refusal reached the flow ({name})")


def one_line(capsys) -> str:
    """The one `alignflow:` line the command printed, with no traceback and no Prefect ERROR log."""
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out and "| ERROR" not in err + out, err
    lines = [line for line in err.splitlines() if line.startswith("alignflow:")]
    assert len(lines) == 1, err
    assert KEY not in err + out
    return lines[0]


def run(server_url: str, store: Path, *extra: str, model: str = "gen-model") -> list[str]:
    return ["run", "configs/quickstart.yaml", "--set", f"store={store}", "--set", "llm.provider=openai",
            "--set", f"llm.base_url={server_url}", "--set", f"llm.model={model}", "--run-id", "r1", *extra]


def always(status: int, message: str):
    return lambda req, kind: (status, message)


# -- found before the run: from the URL, the key's variable, the prices file, or one minimal call -------------------

# id: (server options, (base_url of the server, extra arguments), what the line says, requests the server sees)
PREFLIGHT_CASES = {
    "base_url without /v1 (404 on every call)": (
        {"strict_paths": True}, lambda s: (s.url, ()),
        ["404 Not Found from http://127.0.0.1:", "/chat/completions (model gen-model, key OPENAI_API_KEY)",
         "check llm.base_url ends in /v1"], 1),
    "base_url ending in /chat/completions": (
        {}, lambda s: (f"{s.openai_base_url}/chat/completions", ()),
        ["/v1/chat/completions ends in /chat/completions: it must end at /v1"], 0),
    "anthropic base_url ending in /v1": (
        {}, lambda s: (s.openai_base_url, ("--set", "llm.provider=anthropic")),
        ["ends in /v1: for anthropic it must be the server's root"], 0),
    "a model that does not exist": (
        {"models": ["gen-model"]}, lambda s: (s.openai_base_url, ("--set", "llm.model=gpt-9-nano")),
        ["404 Not Found from http://127.0.0.1:", "(model gpt-9-nano, key OPENAI_API_KEY)",
         "check llm.model: the server has no model 'gpt-9-nano'"], 1),
    "an anthropic model that does not exist": (
        {"models": ["gen-model"]},
        lambda s: (s.url, ("--set", "llm.provider=anthropic", "--set", "llm.model=claude-9")),
        ["404 Not Found from http://127.0.0.1:", "/v1/messages (model claude-9, key ANTHROPIC_API_KEY)",
         "check llm.model: the server has no model 'claude-9'"], 1),
    "a request the server refuses (400), its model not listed": (
        {"refuse": always(400, "Unsupported parameter: 'seed' is not supported with this model.")},
        lambda s: (s.openai_base_url, ("--set", "llm.model=unlisted")),
        ["400 Bad Request from http://127.0.0.1:", "(model unlisted, key OPENAI_API_KEY)",
         "the server does not take the one-token chat request preflight makes", "Unsupported parameter: 'seed'"], 1),
}


@pytest.mark.parametrize("case", PREFLIGHT_CASES, ids=list(PREFLIGHT_CASES))
def test_preflight_finds_a_refusing_endpoint_before_the_run(case, tmp_path, keys, capsys, monkeypatch):
    options, where, says, requests = PREFLIGHT_CASES[case]
    monkeypatch.setattr(cli, "PrefectLauncher", NoLauncher)
    with LLMTestServer(**options) as server:
        url, extra = where(server)
        code = cli.main(run(url, tmp_path / "store", *extra))
        line = one_line(capsys)
        asked = server.posts
    assert code == 2, line
    for part in says:
        assert part in line, line
    assert asked == requests, f"{asked} requests"
    assert not (tmp_path / "store").exists(), "a refused run wrote files"


# id: (server options, extra arguments, what the line says, the most requests the server sees)
FIRST_REQUEST_CASES = {
    "key refused only on completions (the models list answers)": (
        {"refuse": always(401, "You have insufficient permissions for this operation. Missing scopes: "
                               "model.request.")}, (),
        ["401 Unauthorized from http://127.0.0.1:", "/v1/chat/completions (model gen-model, key OPENAI_API_KEY)",
         "check the key in OPENAI_API_KEY", "Missing scopes: model.request"], STOP_AFTER),
    "key refused (403) with the key in the message": (
        {"refuse": always(403, f"Project key {KEY} has no access to this endpoint")}, (),
        ["403 Forbidden from", "check the key in OPENAI_API_KEY", "Project key [redacted] has no access"], STOP_AFTER),
    "a judge model that does not exist": (
        {"models": ["gen-model"]}, ("--set", "judge.llm.model=judge-9"),
        ["404 Not Found", "(model judge-9, key OPENAI_API_KEY)", "check llm.model: the server has no model 'judge-9'"],
        None),
    "400 on every request": (
        {"refuse": always(400, "Unsupported parameter: 'seed' is not supported with this model.")}, (),
        ["400 Bad Request from http://127.0.0.1:", "(model gen-model, key OPENAI_API_KEY)",
         "the server does not take a structured-output request (NewTasks)", "Unsupported parameter: 'seed'"],
        STOP_AFTER),
    "422 on every request, with a long message": (
        {"refuse": always(422, "x" * 5000)}, (), ["422 Unprocessable Entity from", "xxx…"], STOP_AFTER),
}


@pytest.mark.parametrize("case", FIRST_REQUEST_CASES, ids=list(FIRST_REQUEST_CASES))
def test_an_endpoint_refusing_its_first_requests_stops_the_run(case, tmp_path, keys, capsys, prefect_server):
    """A models list that names the model cannot say the key may make completions: the run's first requests, one
    at a time until one is answered, do, and a few refusals stop the run with the line."""
    options, extra, says, most = FIRST_REQUEST_CASES[case]
    store = Store(str(tmp_path / "store"))
    with LLMTestServer(**options) as server:
        code = cli.main(args(server, store.url, *extra))
        line = one_line(capsys)
        asked = len(server.arrivals_by_model.get("judge-9", [])) if most is None else server.posts  # the judge's
    assert code == 2, line
    for part in says:
        assert part in line, line
    assert len(line) < 700
    assert 0 < asked <= (most or STOP_AFTER), f"{asked} requests"
    assert not store.list("r1/instructions/quarantine/") and not store.exists("r1/manifest.json")


KEY_CASES = {"a trailing newline": (f"{KEY}\n", "OPENAI_API_KEY has a trailing newline"),
             "only whitespace": ("  \t ", "OPENAI_API_KEY holds only whitespace"),
             "spaces around it": (f" {KEY} ", "OPENAI_API_KEY has whitespace around the key"),
             "a leading newline": (f"\n{KEY}", "OPENAI_API_KEY has whitespace around the key")}


@pytest.mark.parametrize("case", KEY_CASES, ids=list(KEY_CASES))
def test_a_key_with_whitespace_is_named_before_any_request(case, tmp_path, capsys, monkeypatch):
    value, says = KEY_CASES[case]
    monkeypatch.setenv("OPENAI_API_KEY", value)
    monkeypatch.setattr(cli, "PrefectLauncher", NoLauncher)
    with LLMTestServer(api_key=KEY) as server:
        code = cli.main(run(server.openai_base_url, tmp_path / "store"))
        line = one_line(capsys)
        asked = server.posts
    assert code == 2 and says in line, line
    assert asked == 0


PRICES_CASES = {"missing": (None, "cannot read prices file"),
                "a directory": ("<dir>", "cannot read prices file"),
                "not YAML": ("openai: [unclosed", "not valid YAML"),
                "a price not a number": ("openai:\n  gen-model: {input: cheap, output: 1}\n",
                                         "openai.gen-model: expected {input: USD, output: USD}")}


@pytest.mark.parametrize("case", PRICES_CASES, ids=list(PRICES_CASES))
def test_the_prices_file_is_read_before_any_request(case, tmp_path, keys, capsys, monkeypatch):
    content, says = PRICES_CASES[case]
    prices = tmp_path / "prices.yaml"
    if content == "<dir>":
        prices.mkdir()
    elif content is not None:
        prices.write_text(content)
    monkeypatch.setattr(cli, "PrefectLauncher", NoLauncher)
    with LLMTestServer() as server:
        code = cli.main(run(server.openai_base_url, tmp_path / "store", "--set", f"prices={prices}"))
        line = one_line(capsys)
        asked = server.posts
    assert code == 2 and says in line and "prices.yaml" in line, line
    assert asked == 0 and not (tmp_path / "store").exists()


# -- met by the run's own requests: it stops after a few, and resumes once they are taken ------------------------------

class Refusing:
    """Refuses the requests `which(body)` picks while `on`, with `status` and `message`."""

    def __init__(self, which, status: int, message: str):
        self.which, self.status, self.message, self.on = which, status, message, True

    def __call__(self, req: dict, kind: str):
        return (self.status, self.message) if self.on and self.which(req) else None


def schema_of(req: dict) -> str | None:
    return ((req.get("response_format") or {}).get("json_schema") or {}).get("name")


# id: (which requests the server refuses, what the line says, extra arguments); the models list names gen-model
RUN_CASES = {
    "instruction rounds (structured output refused)": (
        lambda req: schema_of(req) == "NewTasks", "a structured-output request (NewTasks)", ()),
    "responses (max_tokens too large)": (
        lambda req: schema_of(req) is None and req.get("max_tokens", 0) > 1, "a chat request with max_tokens", ()),
    "the judge": (
        lambda req: judge_prompt_answers(req) is not None, "a structured-output request (Ratings", ()),
    "the constitution stage": (
        lambda req: schema_of(req) == "Critique", "a structured-output request (Critique)",
        ("--set", "constitution.enabled=true")),
}


@pytest.mark.parametrize("case", RUN_CASES, ids=list(RUN_CASES))
def test_a_stage_whose_every_request_is_refused_stops_the_run(case, tmp_path, capsys, prefect_server, keys):
    which, says, extra = RUN_CASES[case]
    refusing = Refusing(which, 400, "max_tokens is too large: this model supports at most 1 completion token")
    store = Store(str(tmp_path / "store"))
    with LLMTestServer(refuse=refusing) as server:
        code = cli.main(args(server, store.url, *extra))
        line = one_line(capsys)
        refused = server.refused
        assert not store.list("r1/instructions/quarantine/") and not store.exists("r1/manifest.json")
        if case == "the judge":  # what was answered before the stop is kept: the resume asks only the rest
            refusing.on = False
            answered = server.served
            assert cli.main(args(server, store.url, *extra)) == 0
            assert server.refused == refused
            resumed = json.loads((tmp_path / "store/r1/manifest.json").read_text())
    assert code == 2, line
    assert line.startswith(f"alignflow: the endpoint refused every request: 400 Bad Request from {server.url}"
                           "/v1/chat/completions (model gen-model, key OPENAI_API_KEY): the server does not take ")
    assert says in line and "max_tokens is too large" in line
    assert 0 < refused <= STOP_AFTER + 8, refused  # a few, and what was in flight (llm.max_concurrency 8)
    if case == "the judge":
        assert answered > 0 and server.served > answered
        assert resumed["stages"]["judgments"]["failed"] == 0
        assert_whole(store, "r1")


@pytest.mark.parametrize("listed", [["gen-model"], []], ids=["met by its requests", "met by the flow's preflight"])
def test_constitution_revise_stops_when_its_reviser_is_refused(listed, tmp_path, test_data, capsys, prefect_server,
                                                               keys):
    """`alignflow constitution revise`, its own flow: a model it asks is not on the server, the reviser's (met by
    the reviser's first requests) or every one (met by preflight's call in the flow's first task)."""
    with LLMTestServer(models=listed) as server:
        code = cli.main(["constitution", "revise", "configs/quickstart.yaml", "--set", f"store={tmp_path / 'store'}",
                         "--set", "llm.provider=openai", "--set", f"llm.base_url={server.openai_base_url}",
                         "--set", "llm.model=cai-9", "--set", "instructions.llm.model=gen-model", "--run-id", "c1",
                         "--prompts", str(test_data / "cai_red_team_prompts.jsonl")])
        line = one_line(capsys)
        asked = server.posts
    assert code == 2, line
    missing = "gen-model" if not listed else "cai-9"
    assert "404 Not Found" in line and f"(model {missing}, key OPENAI_API_KEY): check llm.model" in line, line
    assert 0 < asked <= (1 if not listed else STOP_AFTER), asked


def test_batch_mode_stops_when_the_batch_api_refuses(tmp_path, capsys, prefect_server, keys):
    with LLMTestServer(refuse_batches=(401, "Incorrect API key provided: sk-te****6789.")) as server:
        code = cli.main(args(server, tmp_path / "store", "--set", "llm.mode=batch", "--set", "llm.batch_poll_s=0.05"))
        line = one_line(capsys)
        asked = server.posts
    assert code == 2, line
    assert f"401 Unauthorized from {server.url}/v1/files (model gen-model, key OPENAI_API_KEY)" in line
    assert "check the key in OPENAI_API_KEY" in line and "sk-te" not in line
    assert asked == 1 and not server.batches


def test_a_burst_of_429s_and_500s_is_still_retried_and_the_run_succeeds(tmp_path, prefect_server, keys):
    store = Store(str(tmp_path / "store"))
    with LLMTestServer(p429=0.2, p500=0.1, seed=4) as server:
        assert cli.main(args(server, store.url)) == 0
        throttled, refused = server.throttled, server.refused
    assert_whole(store, "r1")
    assert throttled > 0 and refused == 0


def test_alignflow_run_prints_only_its_line(tmp_path, prefect_server):
    """As a person sees it: a subprocess, whose stderr has the one line and no Prefect log of the stop."""
    refusing = Refusing(lambda req: judge_prompt_answers(req) is not None, 403, "this key may not use the judge")
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "OPENAI_API_KEY": KEY,
           "ALIGNFLOW_CACHE_DIR": str(tmp_path / "cache")}
    with LLMTestServer(refuse=refusing) as server:
        done = subprocess.run([sys.executable, "-m", "flows.cli", *args(server, tmp_path / "store")], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout and "ERROR" not in done.stderr, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("alignflow:")]
    assert "403 Forbidden from" in line and "check the key in OPENAI_API_KEY" in line, line
    assert KEY not in done.stderr + done.stdout


# -- the client: the stop, and what is not one ---------------------------------------------------------------------

def test_an_endpoint_that_never_answered_is_asked_a_few_one_at_a_time_and_one_that_did_stops_too(monkeypatch):
    monkeypatch.setenv("TEST_KEY", KEY)
    refusing = Refusing(lambda req: True, 404, "Invalid URL (POST /chat/completions)")

    def llm_of(server) -> LLM:
        return LLM(LLMConfig(provider="openai", model="m", base_url=server.openai_base_url, api_key_env="TEST_KEY",
                             max_concurrency=4))

    def ask(llm: LLM, n: int):
        return answer_all(llm, [llm.request([{"role": "user", "content": f"q {i}"}]) for i in range(n)])

    with LLMTestServer(refuse=refusing, latency_s=0.02) as server:
        with pytest.raises(EndpointRefused, match="404 Not Found .* check llm.base_url ends in /v1"):
            ask(llm_of(server), 200)
        assert server.posts == STOP_AFTER  # one at a time: the few that stop it, not one per slot
    refusing.on = False
    with LLMTestServer(refuse=refusing, latency_s=0.02) as server:
        llm = llm_of(server)
        assert all(r.ok for r in ask(llm, 8))
        refusing.on, before = True, server.posts
        with pytest.raises(EndpointRefused):
            ask(llm, 200)
        assert server.posts - before <= STOP_AFTER + 4  # the few, and those in flight


def test_one_refused_row_among_answers_is_that_rows_failure(monkeypatch):
    """A request a server refuses among others it answers (too long, say) fails its row; the run goes on."""
    monkeypatch.setenv("TEST_KEY", KEY)
    too_long = Refusing(lambda req: "q 7" in json.dumps(req), 400, "This model's maximum context length is 8 tokens")
    with LLMTestServer(refuse=too_long) as server:
        llm = LLM(LLMConfig(provider="openai", model="m", base_url=server.openai_base_url, api_key_env="TEST_KEY"))
        results = answer_all(llm, [llm.request([{"role": "user", "content": f"q {i}"}]) for i in range(20)])
    assert [i for i, r in enumerate(results) if not r.ok] == [7]
    assert "maximum context length" in results[7].error and results[7].attempts == 1  # not asked again


def test_preflight_calls_an_endpoint_once_and_never_the_embedded_model_or_a_batch(monkeypatch):
    monkeypatch.setenv("TEST_KEY", KEY)
    with LLMTestServer() as server:
        live = LLMConfig(provider="openai", model="m1", base_url=server.openai_base_url, api_key_env="TEST_KEY")
        others = [live.model_copy(update={"temperature": 0.1}),
                  live.model_copy(update={"mode": "batch", "model": "m2"}), LLMConfig(provider="local")]
        proven = prove_endpoints([live, *others])
        assert server.posts == 1 and len(proven) == 1
        assert prove_endpoints([live], proven) == proven and server.posts == 1  # proven: not called again
    with LLMTestServer() as server:
        assert prove_endpoints([live.model_copy(update={"base_url": server.openai_base_url, "model": "gen-model"})])\
            == [] and server.posts == 0  # the models list names it: its first request, alone, is the proof
