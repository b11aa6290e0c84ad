"""The LLM client: requests in, one result per request out, whatever the provider does.

Known answers (the batch's answers in the store, then the local request cache), the endpoint's limits,
retries with backoff, and structured-output parsing with bounded re-asks all happen here, the same way for
every provider. A provider or parse failure is a failed Result; anything else is a bug and raises.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from alignflow.config import LLMConfig
from alignflow.llm import endpoint as endpoints
from alignflow.llm.cache import RequestCache, request_key
from alignflow.llm.structured import ParseError, parse_structured
from alignflow.llm.types import Completion, ProviderError, Request, Result

OnResult = Callable[[Result], None]
ANSWER_FIELDS = ("text", "finish_reason", "input_tokens", "output_tokens", "latency_s")


class Answers(Protocol):
    """Somewhere successful answers are kept by request key: the request cache, a batch's answer log."""

    def get(self, key: str) -> dict[str, Any] | None: ...
    def put(self, key: str, value: dict[str, Any]) -> None: ...


def sampling_seed(run_seed: int | None, sample: int) -> int:
    """The provider seed of one sample: a new run seed gives new samples, the same one the same requests."""
    if run_seed is None:
        return sample
    return int.from_bytes(hashlib.sha256(f"{run_seed}:{sample}".encode()).digest()[:4], "big") >> 1


class _BackoffHonouringRetryAfter:
    """Exponential backoff with full jitter, never shorter than the server's Retry-After."""

    def __init__(self) -> None:
        self._jitter = wait_random_exponential(multiplier=0.5, max=30)

    def __call__(self, state) -> float:
        exc = state.outcome.exception()
        return max(self._jitter(state), getattr(exc, "retry_after", None) or 0.0)


class LLM:
    """One configured model. `generate` never raises for a single bad request: it returns a failed Result."""

    def __init__(self, config: LLMConfig, cache: RequestCache | None = None, seed: int | None = None):
        self.config = config
        self.cache = cache
        self.seed = seed

    @property
    def provider(self) -> str:
        return self.config.provider

    @property
    def model(self) -> str:
        return self.config.model_name

    @property
    def endpoint(self) -> endpoints.Endpoint:
        return endpoints.endpoint(self.config)

    def request(self, messages: list[dict[str, str]], *, schema=None, sample: int = 0,
                temperature: float | None = None, max_tokens: int | None = None) -> Request:
        return Request(
            messages=messages,
            schema=schema,
            temperature=self.config.temperature if temperature is None else temperature,
            max_tokens=max_tokens or self.config.max_tokens,
            sample=sample,
            seed=sampling_seed(self.seed, sample),
        )

    def key(self, request: Request) -> str:
        return request_key(self.provider, self.config.base_url, self.model, request)

    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None,
                 answers: Answers | None = None) -> list[Result]:
        return generate([(self, r) for r in requests], on_result, answers)

    async def agenerate(self, requests: Sequence[Request], on_result: OnResult | None = None,
                        answers: Answers | None = None) -> list[Result]:
        return await endpoints.run_async(_generate([(self, r) for r in requests], on_result, answers))

    async def answer(self, request: Request, answers: Answers | None = None) -> Result:
        """One request: a known answer if there is one, else asked (with retries and re-asks) and remembered."""
        key = self.key(request)
        known = (answers.get(key) if answers is not None else None) or (self.cache.get(key) if self.cache else None)
        if known:
            if answers is not None:
                answers.put(key, known)  # an answer from the local cache becomes part of the run's store
            return Result(ok=True, parsed=self._parse(known["text"], request), cached=True, attempts=0,
                          **{k: known[k] for k in ANSWER_FIELDS})
        result = await self._ask(request)
        if result.ok:
            value = {k: getattr(result, k) for k in ANSWER_FIELDS}
            for store in (answers, self.cache):
                if store is not None:
                    store.put(key, value)
        return result

    async def _ask(self, request: Request) -> Result:
        started = time.perf_counter()
        attempts = in_tok = out_tok = 0
        messages = list(request.messages)
        for ask in range(self.config.structured_retries + 1):
            try:
                completion, tries = await self._call(dataclasses.replace(request, messages=messages))
            except ProviderError as exc:
                return Result(ok=False, error=str(exc), text=exc.raw, attempts=attempts + getattr(exc, "attempts", 1),
                              latency_s=time.perf_counter() - started, input_tokens=in_tok, output_tokens=out_tok)
            attempts += tries
            in_tok += completion.input_tokens
            out_tok += completion.output_tokens
            try:
                parsed = self._parse(completion.text, request)
            except ParseError as exc:
                if ask == self.config.structured_retries:
                    return Result(ok=False, error=f"invalid structured output after {ask + 1} asks: {exc}",
                                  text=completion.text, finish_reason=completion.finish_reason, attempts=attempts,
                                  latency_s=time.perf_counter() - started, input_tokens=in_tok, output_tokens=out_tok)
                messages = messages + [
                    {"role": "assistant", "content": completion.text},
                    {"role": "user", "content": f"That answer was not valid ({exc}). Reply again with only the JSON object."},
                ]
                continue
            return Result(ok=True, text=completion.text, parsed=parsed, finish_reason=completion.finish_reason,
                          input_tokens=in_tok, output_tokens=out_tok, attempts=attempts,
                          latency_s=time.perf_counter() - started)
        raise AssertionError("unreachable")

    @staticmethod
    def _parse(text: str, request: Request):
        return parse_structured(text, request.schema) if request.schema is not None else None

    async def _call(self, request: Request) -> tuple[Completion, int]:
        where = self.endpoint
        estimate = sum(len(m["content"]) for m in request.messages) // 4 + request.max_tokens
        tries = 0
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and e.retryable),
            wait=_BackoffHonouringRetryAfter(),
            stop=stop_after_attempt(self.config.max_retries + 1),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    tries += 1
                    async with where.limits.slot(estimate):
                        return await where.backend.complete(request, self.config.timeout_s), tries
        except ProviderError as exc:
            exc.attempts = tries
            raise
        raise AssertionError("unreachable")


def generate(calls: Sequence[tuple[LLM, Request]], on_result: OnResult | None = None,
             answers: Answers | None = None) -> list[Result]:
    """Every (llm, request) at once, each under its own endpoint's limits; results in the order of `calls`."""
    return endpoints.run(_generate(calls, on_result, answers))


async def _generate(calls: Sequence[tuple[LLM, Request]], on_result: OnResult | None,
                    answers: Answers | None) -> list[Result]:
    async def one(llm: LLM, request: Request) -> Result:
        result = await llm.answer(request, answers)
        if on_result:
            on_result(result)
        return result

    return list(await asyncio.gather(*(one(llm, r) for llm, r in calls)))
