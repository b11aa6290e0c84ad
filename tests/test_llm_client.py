"""The LLM client through the real openai and anthropic clients against a real HTTP server on loopback."""
import pytest
from llm_server import LLMTestServer
from pydantic import BaseModel, Field

from alignflow.config import LLMConfig
from alignflow.llm.cache import RequestCache
from alignflow.llm.client import LLM, _BackoffHonouringRetryAfter
from alignflow.llm.generate import answer_all
from alignflow.llm.types import ProviderError


class Rating(BaseModel):
    rationale: str
    rating: int = Field(ge=1, le=5)


def make_llm(server, provider="openai", cache=None, **overrides) -> LLM:
    base_url = server.openai_base_url if provider == "openai" else server.url
    settings = {"max_retries": 8, "timeout_s": 5, **overrides}
    config = LLMConfig(provider=provider, model="test-model", base_url=base_url, api_key_env="TEST_KEY", **settings)
    return LLM(config, cache)


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("TEST_KEY", "sk-test-secret")


def prompts(llm, n, **kw):
    return [llm.request([{"role": "user", "content": f"Question number {i}?"}], **kw) for i in range(n)]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_plain_and_structured(provider):
    with LLMTestServer() as server:
        llm = make_llm(server, provider)
        plain = answer_all(llm, prompts(llm, 3))
        rated = answer_all(llm, prompts(llm, 3, schema=Rating))
    assert all(r.ok and r.text and r.output_tokens > 0 and r.attempts == 1 for r in plain)
    assert all(r.ok and isinstance(r.parsed, Rating) for r in rated)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_429s_and_500s_lose_nothing(provider):
    with LLMTestServer(p429=0.2, p500=0.05, seed=3) as server:
        llm = make_llm(server, provider, max_concurrency=16)
        results = answer_all(llm, prompts(llm, 60))
    assert all(r.ok for r in results)
    assert sum(r.attempts for r in results) == server.requests > 60


def test_exhausted_retries_give_a_failed_result_not_an_exception():
    with LLMTestServer(p500=1.0) as server:
        llm = make_llm(server, max_retries=2)
        [result] = answer_all(llm, prompts(llm, 1))
    assert not result.ok and "HTTP 500" in result.error and result.attempts == 3


def test_hang_times_out_and_fails():
    with LLMTestServer(p_hang=1.0, hang_s=10) as server:
        llm = make_llm(server, timeout_s=0.3, max_retries=1)
        [result] = answer_all(llm, prompts(llm, 1))
    assert not result.ok and "timed out" in result.error and result.attempts == 2


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_malformed_structured_output_is_reasked_then_fails_with_raw_output(provider):
    with LLMTestServer(p_malformed=1.0) as server:
        llm = make_llm(server, provider, structured_retries=2)
        [result] = answer_all(llm, prompts(llm, 1, schema=Rating))
    assert not result.ok and "invalid structured output after 3 asks" in result.error
    assert "oops" in result.text
    assert server.requests == 3


def test_cache_answers_a_rerun_and_stores_only_successes(tmp_path):
    cache = RequestCache(tmp_path)
    with LLMTestServer(p500=0.3, seed=1) as server:
        llm = make_llm(server, cache=cache, max_retries=0)
        first = answer_all(llm, prompts(llm, 20))
        failed = sum(not r.ok for r in first)
        assert 0 < failed < 20
        server.reset_counts()
        second = answer_all(make_llm(server, cache=cache, max_retries=0), prompts(llm, 20))
        assert server.requests == failed  # only what failed is asked again
        assert [r.text for r, f in zip(second, first) if f.ok] == [f.text for f in first if f.ok]
        assert all(r.cached for r, f in zip(second, first) if f.ok)


def test_samples_are_distinct_requests(tmp_path):
    with LLMTestServer() as server:
        llm = make_llm(server, cache=RequestCache(tmp_path))
        msgs = [{"role": "user", "content": "Same prompt"}]
        results = answer_all(llm, [llm.request(msgs, sample=i) for i in range(3)])
        assert server.requests == 3 and len({r.text for r in results}) == 3


def test_backoff_honours_retry_after():
    class State:
        attempt_number = 1

        class outcome:
            @staticmethod
            def exception():
                return ProviderError("429", retryable=True, retry_after=7.5)

    assert _BackoffHonouringRetryAfter()(State()) >= 7.5


def test_api_key_never_in_results():
    with LLMTestServer(p500=1.0) as server:
        llm = make_llm(server, max_retries=0)
        [result] = answer_all(llm, prompts(llm, 1))
    assert "sk-test-secret" not in repr(result)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_refused_key_is_redacted_from_what_a_failed_row_keeps(provider):
    """A 401 body quotes the key, masked (`sk-t******cret`): masked or not, it is never stored with a row."""
    with LLMTestServer(api_key="sk-the-right-one") as server:
        llm = make_llm(server, provider, max_retries=0)
        [result] = answer_all(llm, prompts(llm, 1))
    stored = repr(result)  # the error, the raw body and every extra a row keeps
    assert "401" in result.error and "[redacted]" in stored
    assert "sk-test-secret" not in stored and "sk-t" not in stored and "cret" not in stored


def test_a_bug_in_our_code_raises_instead_of_becoming_a_failed_row(monkeypatch):
    """Only provider and parse failures are failed rows; anything else is a bug, and a bug must be seen."""
    from alignflow.llm.openai_api import OpenAIBackend

    async def broken(self, request, timeout_s):
        raise KeyError("a bug")

    monkeypatch.setattr(OpenAIBackend, "complete", broken)
    with LLMTestServer() as server:
        llm = make_llm(server)
        with pytest.raises(KeyError, match="a bug"):
            answer_all(llm, prompts(llm, 3))


def test_limits_hold_for_the_endpoint_across_concurrent_callers():
    """Two callers in two threads share one endpoint's cap on requests in flight."""
    from concurrent.futures import ThreadPoolExecutor

    with LLMTestServer(latency_s=0.05) as server:
        llms = [make_llm(server, max_concurrency=3) for _ in range(2)]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda llm: answer_all(llm, prompts(llm, 12)), llms))
        assert all(r.ok for batch in results for r in batch)
        assert llms[0].endpoint is llms[1].endpoint and llms[0].endpoint.limits.peak_in_flight == 3
