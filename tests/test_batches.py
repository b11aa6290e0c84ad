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


# -- a provider batch is made once, however the run is killed ---------------------------------------------------------

def answer_into(store_url: str, base_url: str, provider: str) -> None:
    """Ask 12 questions in provider batches, keeping the answers and the batches' records in a run's answer log (in
    a process of its own, for a test to kill)."""
    import os

    from alignflow.engine.answers import AnswerLog
    from alignflow.engine.store import Store

    os.environ["TEST_KEY"] = "sk-test-secret"
    llm = LLM(LLMConfig(provider=provider, model="batch-model", base_url=base_url, api_key_env="TEST_KEY",
                        mode="batch", batch_poll_s=0.05))
    with AnswerLog(Store(store_url), "r1/responses/answers/batch-00000/") as log:
        answer_all(llm, prompts(llm, 12), answers=log)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_kill_between_making_a_batch_and_hearing_its_id_adopts_that_batch(provider, tmp_path):
    """The provider made the batch, the run never heard its id: the record written before it was made finds it in
    the provider's list (OpenAI: by the tag in its metadata; Anthropic: by its time and size), and it is polled."""
    import multiprocessing
    import os
    import signal
    import time

    from alignflow.engine.answers import AnswerLog
    from alignflow.engine.store import Store

    store = Store(str(tmp_path / "store"))
    with LLMTestServer(batch_step_s=0.05, batch_create_delay_s=5.0) as server:
        base_url = server.openai_base_url if provider == "openai" else server.url
        child = multiprocessing.get_context("spawn").Process(target=answer_into, args=(store.url, base_url, provider))
        child.start()
        deadline = time.time() + 60
        while not server.batches:
            assert time.time() < deadline and child.is_alive(), "no batch was made"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)  # the server answers the create 5 s after making the batch
        child.join()
        server.batch_create_delay_s = 0.0
        llm = batch_llm(server, provider)
        with AnswerLog(store, "r1/responses/answers/batch-00000/") as log:
            results = answer_all(llm, prompts(llm, 12), answers=log)
        assert all(r.ok for r in results) and len(server.batches) == 1


def test_a_resume_that_lost_the_answers_replays_the_batches_retries_and_reasks_already_made(tmp_path):
    """On S3 a kill can cost the answers of the last part interval. The records of the batches made stay: a resume
    that has lost every answer takes each request through the batches it went through, failures and re-asks
    included, and makes none."""
    from alignflow.engine.answers import AnswerLog
    from alignflow.engine.store import Store

    asked = {}

    def first_answer_broken(req, kind):
        text = req["messages"][0]["content"]
        asked[text] = asked.get(text, 0) + 1
        return {"oops": True} if asked[text] == 1 else None

    store, prefix = Store(str(tmp_path / "store")), "r1/responses/answers/batch-00000/"
    with LLMTestServer(respond=first_answer_broken, batch_step_s=0.0, batch_p_fail=0.3, batch_expire_every=2,
                       seed=4) as server:
        llm = batch_llm(server, "openai", max_retries=8)
        with AnswerLog(store, prefix) as log:
            first = answer_all(llm, prompts(llm, 20, schema=Rating), answers=log)
        made = len(server.batches)
        for key in store.list_dir(prefix):
            if not key.endswith(".json"):  # the answers; the records of the batches stay
                store.delete(key)
        with AnswerLog(store, prefix) as log:
            assert log.loaded == 0
            again = answer_all(llm, prompts(llm, 20, schema=Rating), answers=log)
        assert len(server.batches) == made >= 3
    assert all(r.ok for r in first) and [r.text for r in again] == [r.text for r in first]
    assert [r.attempts for r in again] == [r.attempts for r in first] and max(r.attempts for r in first) > 1


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


def made_since(server, before: set[str]) -> list[frozenset[str]]:
    """The provider batches made since `before` (the ids there were then), each as the custom ids it holds."""
    return sorted((frozenset(cid for cid, _ in batch["requests"]) for batch_id, batch in server.batches.items()
                   if batch_id not in before), key=sorted)


@pytest.mark.slow
def test_three_kills_while_polling_or_submitting_make_exactly_the_batches_a_clean_run_makes(prefect_server, tmp_path):
    """The same run id on two stores: once to the end, once killed (-9) three times, twice while it polls a batch and
    once between the provider making a batch and the run hearing its id (the server answers a create 0.3 s late).
    The provider sees the same batches both times, and the datasets are the same."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT
    from runs import assert_whole

    from alignflow.engine.store import Store
    from flows.cli import main

    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_LOGGING_LEVEL": "ERROR"}
    with LLMTestServer(batch_step_s=0.3, batch_create_delay_s=0.3) as server:
        small = ("--set", "cache.enabled=false", "--set", "responses.batch_size=4")
        assert main(pipeline_args(server, tmp_path / "clean", "openai", *small)) == 0
        clean = made_since(server, set())
        before, rnd = set(server.batches), random.Random(3)
        command = pipeline_args(server, tmp_path / "killed", "openai", *small)
        for point in ("polling", "submitting", "polling", None):
            proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *command], cwd=ROOT, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            if point is None:
                _, err = proc.communicate(timeout=600)
                assert proc.returncode == 0, err.decode()[-2000:]
                break
            known, deadline = len(server.batches), time.time() + 120
            while len(server.batches) == known and proc.poll() is None:
                assert time.time() < deadline, "the run never made a batch"
                time.sleep(0.01)
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            if point == "polling":  # it heard the id 0.3 s after the batch was made; the batch ends at 0.9 s
                time.sleep(rnd.uniform(0.4, 0.8))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        killed = made_since(server, before)
    print(f"a clean run made {len(clean)} provider batches; killed three times, {len(killed)}")
    assert (len(killed), killed) == (len(clean), clean)
    stores = [Store(str(tmp_path / name)) for name in ("clean", "killed")]
    assert_whole(stores[1], "b1")
    clean_pairs, killed_pairs = (sorted(s.read_parquet("b1/datasets/dpo.parquet")["pair_id"]) for s in stores)
    assert killed_pairs == clean_pairs
