"""`llm.mode: batch`: the OpenAI Batch API and Anthropic Message Batches, through the real clients, against the
loopback server's implementation of both (statuses that move over time, failed items, expired batches)."""
import pytest
from llm_server import LLMTestServer
from pydantic import BaseModel, Field

from alignflow.config import LLMConfig
from alignflow.llm.anthropic_api import AnthropicBackend
from alignflow.llm.client import LLM
from alignflow.llm.generate import answer_all
from alignflow.llm.openai_api import OpenAIBackend


class Rating(BaseModel):
    rationale: str
    rating: int = Field(ge=1, le=5)


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-test-secret")


def batch_llm(server, provider, **settings) -> LLM:
    base_url = server.openai_base_url if provider == "openai" else server.url
    return LLM(LLMConfig(provider=provider, model="batch-model", base_url=base_url, api_key_env="TEST_KEY",
                         mode="batch", batch_poll_s=0.05, **settings))


def prompts(llm, n, **kw):
    return [llm.request([{"role": "user", "content": f"Question number {i}?"}], **kw) for i in range(n)]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_answers_come_back_by_custom_id_and_failed_items_are_sent_again(provider):
    with LLMTestServer(batch_step_s=0.05, batch_p_fail=0.2, batch_expire_every=2, seed=5) as server:
        llm = batch_llm(server, provider, max_retries=6)
        requests = prompts(llm, 40, schema=Rating) + prompts(llm, 10)
        results = answer_all(llm, requests)
        batches = len(server.batches)
    assert all(r.ok for r in results)
    assert all(isinstance(r.parsed, Rating) for r in results[:40]) and results[40].parsed is None
    assert [r.text for r in results[40:]] != [results[40].text] * 10  # each answer is its own request's
    assert batches >= 3  # the first batch expired half, failures went again
    assert sum(r.attempts for r in results) > len(results)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batches_split_at_the_providers_limits(provider, monkeypatch):
    backend = OpenAIBackend if provider == "openai" else AnthropicBackend
    monkeypatch.setattr(backend, "max_batch_requests", 7)
    with LLMTestServer(batch_step_s=0.0) as server:
        llm = batch_llm(server, provider)
        results = answer_all(llm, prompts(llm, 20))
        sizes = sorted(len(b["requests"]) for b in server.batches.values())
    assert all(r.ok for r in results) and sizes == [6, 7, 7]
    monkeypatch.setattr(backend, "max_batch_requests", 1000)
    monkeypatch.setattr(backend, "max_batch_bytes", 2000)
    with LLMTestServer(batch_step_s=0.0) as server:
        llm = batch_llm(server, provider)
        assert all(r.ok for r in answer_all(llm, prompts(llm, 20)))
        assert len(server.batches) > 1


def test_invalid_structured_answers_are_reasked_in_the_next_batch():
    asked = {}

    def first_answer_broken(req, kind):
        text = req["messages"][0]["content"]
        asked[text] = asked.get(text, 0) + 1
        return {"oops": True} if asked[text] == 1 else None

    with LLMTestServer(respond=first_answer_broken, batch_step_s=0.0) as server:
        llm = batch_llm(server, "openai")
        results = answer_all(llm, prompts(llm, 5, schema=Rating))
    assert all(r.ok for r in results) and set(asked.values()) == {2}


# -- the pipeline in batch mode ---------------------------------------------------------------------------------------

def pipeline_args(server, store, provider, *extra, run_id="b1"):
    base_url = server.openai_base_url if provider == "openai" else server.url
    return ["run", "configs/quickstart.yaml", "--set", f"store={store}", "--set", f"llm.provider={provider}",
            "--set", f"llm.base_url={base_url}", "--set", "llm.model=batch-model", "--set", "llm.mode=batch",
            "--set", "llm.batch_poll_s=0.1", "--set", "llm.api_key_env=TEST_KEY", "--set", "instructions.target=8",
            "--run-id", run_id, *extra]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_the_quickstart_pipeline_end_to_end_through_the_batch_apis(prefect_server, tmp_path, provider):
    import json

    from flows.cli import main

    with LLMTestServer(batch_step_s=0.05, batch_p_fail=0.05, seed=2) as server:
        assert main(pipeline_args(server, tmp_path / "store", provider)) == 0
        live = server.requests  # only the Batch API's own calls, no chat request
        served = (server.tokens_in, server.tokens_out)
    manifest = json.loads((tmp_path / "store/b1/manifest.json").read_text())
    # at least one provider batch per stage that asks: the instruction rounds, responses, judgments
    assert manifest["datasets"]["dpo"] > 0 and len(server.batches) >= 3
    assert live == 0
    assert (manifest["tokens"]["input_tokens"], manifest["tokens"]["output_tokens"]) == served
    assert set(manifest["by_model"]) == {f"{provider}:batch-model:batch"}


@pytest.mark.slow
def test_a_kill_while_polling_resumes_without_sending_a_batch_again(prefect_server, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_LOGGING_LEVEL": "ERROR"}
    with LLMTestServer(batch_step_s=1.5) as server:
        args = pipeline_args(server, tmp_path / "store", "openai", "--set", "cache.enabled=false")
        for attempt in range(3):
            proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            if attempt == 2:
                _, err = proc.communicate(timeout=600)
                assert proc.returncode == 0, err.decode()[-2000:]
                break
            deadline = time.time() + 120
            while time.time() < deadline and not any(server._stage(b) < 3 for b in server.batches.values()):
                time.sleep(0.05)  # wait until a batch is being polled
            time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        sent = [cid for batch in server.batches.values() for cid, _ in batch["requests"]]
    assert len(sent) == len(set(sent))  # no request was sent in two batches: the killed runs' batches were polled
