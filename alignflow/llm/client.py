"""The LLM client: requests in, one result per request out, whatever the provider does.

Caching, concurrency and rate limits, retries with backoff, and structured-output parsing with
bounded re-asks all happen here, the same way for every provider backend.
"""
from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence

from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from alignflow.config import LLMConfig
from alignflow.llm.backend import Backend
from alignflow.llm.cache import RequestCache, request_key
from alignflow.llm.structured import ParseError, parse_structured
from alignflow.llm.types import Completion, ProviderError, Request, Result

OnResult = Callable[[Result], None]


def make_backend(config: LLMConfig) -> Backend:
    """Remote clients are made per event loop (their HTTP pools are bound to it); a local model is one per process."""
    if config.provider == "local":
        return _local_backend(config.model, config.max_concurrency)
    from alignflow.llm.remote import AnthropicBackend, OpenAIBackend

    cls = OpenAIBackend if config.provider == "openai" else AnthropicBackend
    return cls(config.model_name, api_key=config.api_key(), base_url=config.base_url, timeout_s=config.timeout_s)


@functools.cache
def _local_backend(model: str | None, max_batch: int) -> Backend:
    from alignflow.llm.local import LocalBackend

    return LocalBackend(model, max_batch=max_batch)


class _BackoffHonouringRetryAfter:
    """Exponential backoff with full jitter, never shorter than the server's Retry-After."""

    def __init__(self) -> None:
        self._jitter = wait_random_exponential(multiplier=0.5, max=30)

    def __call__(self, state) -> float:
        exc = state.outcome.exception()
        return max(self._jitter(state), getattr(exc, "retry_after", None) or 0.0)


class LLM:
    """One configured model. `generate` never raises for a single bad request: it returns a failed Result."""

    def __init__(self, config: LLMConfig, cache: RequestCache | None = None):
        self.config = config
        self.cache = cache
        self.requests_sent = 0

    @property
    def provider(self) -> str:
        return self.config.provider

    @property
    def model(self) -> str:
        return self.config.model_name

    def request(self, messages: list[dict[str, str]], *, schema=None, sample: int = 0,
                temperature: float | None = None, max_tokens: int | None = None) -> Request:
        return Request(
            messages=messages,
            schema=schema,
            temperature=self.config.temperature if temperature is None else temperature,
            max_tokens=max_tokens or self.config.max_tokens,
            sample=sample,
        )

    def generate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Result]:
        return asyncio.run(self.agenerate(requests, on_result))

    async def agenerate(self, requests: Sequence[Request], on_result: OnResult | None = None) -> list[Result]:
        backend = make_backend(self.config)
        limits = _Limits(self.config)

        async def one(request: Request) -> Result:
            try:
                result = await self._one(backend, limits, request)
            except Exception as exc:  # a bug or an SDK surprise fails this request, not the batch
                result = Result(ok=False, error=f"{type(exc).__name__}: {exc}")
            if on_result:
                on_result(result)
            return result

        try:
            return list(await asyncio.gather(*(one(r) for r in requests)))
        finally:
            if hasattr(backend, "aclose"):  # close HTTP pools while their event loop still runs
                await backend.aclose()

    async def _one(self, backend: Backend, limits: "_Limits", request: Request) -> Result:
        key = request_key(self.provider, self.model, request)
        if self.cache and (hit := self.cache.get(key)):
            return Result(ok=True, parsed=self._parse(hit["text"], request), cached=True, attempts=0, **_cached_fields(hit))
        started = time.perf_counter()
        attempts = 0
        messages = list(request.messages)
        in_tok = out_tok = 0
        for ask in range(self.config.structured_retries + 1):
            call = Request(messages, request.schema, request.temperature, request.max_tokens, request.sample + ask * 1000)
            try:
                completion, tries = await self._call(backend, limits, call)
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
            result = Result(ok=True, text=completion.text, parsed=parsed, finish_reason=completion.finish_reason,
                            input_tokens=in_tok, output_tokens=out_tok, attempts=attempts,
                            latency_s=time.perf_counter() - started)
            if self.cache:
                self.cache.put(key, {"text": result.text, "finish_reason": result.finish_reason,
                                     "input_tokens": in_tok, "output_tokens": out_tok, "latency_s": result.latency_s})
            return result
        raise AssertionError("unreachable")

    @staticmethod
    def _parse(text: str, request: Request):
        return parse_structured(text, request.schema) if request.schema is not None else None

    async def _call(self, backend: Backend, limits: "_Limits", request: Request) -> tuple[Completion, int]:
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
                    async with limits.slot(request):
                        self.requests_sent += 1
                        return await backend.complete(request), tries
        except ProviderError as exc:
            exc.attempts = tries
            raise
        raise AssertionError("unreachable")


class _Limits:
    """A concurrency cap plus token buckets for requests/min and tokens/min."""

    def __init__(self, config: LLMConfig):
        self._sem = asyncio.Semaphore(config.max_concurrency)
        self._rpm = AsyncLimiter(config.rpm, 60) if config.rpm else None
        self._tpm = AsyncLimiter(config.tpm, 60) if config.tpm else None
        self._tpm_max = config.tpm or 0

    def slot(self, request: Request):
        return _Slot(self, request)


class _Slot:
    def __init__(self, limits: _Limits, request: Request):
        self.limits, self.request = limits, request

    async def __aenter__(self):
        await self.limits._sem.acquire()
        if self.limits._rpm:
            await self.limits._rpm.acquire()
        if self.limits._tpm:
            estimate = sum(len(m["content"]) for m in self.request.messages) // 4 + self.request.max_tokens
            await self.limits._tpm.acquire(min(estimate, self.limits._tpm_max))

    async def __aexit__(self, *exc):
        self.limits._sem.release()


def _cached_fields(hit: dict) -> dict:
    return {k: hit[k] for k in ("text", "finish_reason", "input_tokens", "output_tokens", "latency_s")}
