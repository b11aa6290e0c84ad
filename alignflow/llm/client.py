"""The LLM client: requests in, one result per request out, whatever the provider does.

Known answers (the batch's answers in the store, then the local request cache), the endpoint's limits,
retries with backoff, and structured-output parsing with bounded re-asks all happen here, the same way for
every provider. A provider or parse failure is a failed Result, but an endpoint that refuses every request stops
the run (EndpointRefused, `alignflow.llm.refused`); anything else is a bug and raises.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from alignflow.config import LLMConfig
from alignflow.llm import endpoint as endpoints
from alignflow.llm.cache import RequestCache, request_key
from alignflow.llm.ledger import Ledger
from alignflow.llm.refused import is_fatal, refusal
from alignflow.llm.structured import ParseError, parse_structured
from alignflow.llm.types import Answers, Completion, ProviderError, Request, Result

ANSWER_FIELDS = ("text", "finish_reason", "input_tokens", "output_tokens", "latency_s")


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

    def __init__(self, config: LLMConfig, cache: RequestCache | None = None, seed: int | None = None,
                 ledger: Ledger | None = None):
        self.config = config
        self.cache = cache
        self.seed = seed
        self.ledger = ledger

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

    async def answer(self, request: Request, answers: Answers | None = None) -> Result:
        """One request: a known answer if there is one, else asked (with retries and re-asks) and remembered."""
        known = self.known(request, answers)
        if known is not None:
            return known
        result = await self._ask(request)
        self.remember(request, result, answers)
        return result

    def known(self, request: Request, answers: Answers | None) -> Result | None:
        """The answer the run's store (or else the request cache) already holds."""
        key = self.key(request)
        saved = answers.get(key) if answers is not None else None
        known = saved or (self.cache.get(key) if self.cache else None)
        if not known:
            return None
        if answers is not None:
            answers.put(key, known)  # an answer from the local cache becomes part of the run's store
        return Result(ok=True, parsed=self.parse(known["text"], request), cached=True, attempts=0,
                      paid=saved is not None, **{k: known[k] for k in ANSWER_FIELDS})

    def remember(self, request: Request, result: Result, answers: Answers | None) -> None:
        """A success goes to the run's store and the request cache; a failure is asked again next time."""
        if result.ok:
            value = {k: getattr(result, k) for k in ANSWER_FIELDS}
            for store in (answers, self.cache):
                if store is not None:
                    store.put(self.key(request), value)

    def reask(self, messages: list[dict], text: str, error: ParseError) -> list[dict]:
        """The conversation again, with the invalid answer and what was wrong with it."""
        return messages + [
            {"role": "assistant", "content": text},
            {"role": "user", "content": f"That answer was not valid ({error}). Reply again with only the JSON object."},
        ]

    async def _ask(self, request: Request) -> Result:
        started = time.perf_counter()
        attempts = in_tok = out_tok = 0
        messages = list(request.messages)
        for ask in range(self.config.structured_retries + 1):
            try:
                completion, tries = await self._call(dataclasses.replace(request, messages=messages))
            except ProviderError as exc:
                return Result(ok=False, error=str(exc), text=exc.raw, attempts=attempts + getattr(exc, "attempts", 1),
                              latency_s=time.perf_counter() - started, input_tokens=in_tok, output_tokens=out_tok,
                              paid=True, refused=str(refusal(exc, self.config, request)) if is_fatal(exc) else None)
            attempts += tries
            in_tok += completion.input_tokens
            out_tok += completion.output_tokens
            try:
                parsed = self.parse(completion.text, request)
            except ParseError as exc:
                if ask == self.config.structured_retries:
                    return Result(ok=False, error=f"invalid structured output after {ask + 1} asks: {exc}",
                                  text=completion.text, finish_reason=completion.finish_reason, attempts=attempts,
                                  latency_s=time.perf_counter() - started, input_tokens=in_tok, output_tokens=out_tok,
                                  paid=True)
                messages = self.reask(messages, completion.text, exc)
                continue
            return Result(ok=True, text=completion.text, parsed=parsed, finish_reason=completion.finish_reason,
                          input_tokens=in_tok, output_tokens=out_tok, attempts=attempts, paid=True,
                          latency_s=time.perf_counter() - started)
        raise AssertionError("unreachable")

    async def prove(self) -> None:
        """One minimal real call (one token, not cached, no row's): a key, path or model the endpoint refuses shows
        as EndpointRefused before the run asks for anything. An error that may pass proves nothing either way."""
        where = self.endpoint
        request = self.request([{"role": "user", "content": "Reply with OK."}], max_tokens=1)
        try:
            await self._attempts(request, where, where.limits, None, 1)
        except ProviderError as exc:
            if is_fatal(exc):
                raise refusal(exc, self.config, request, asked="the one-token chat request preflight makes, with "
                                                               f"temperature {request.temperature}") from None

    @staticmethod
    def parse(text: str, request: Request):
        return parse_structured(text, request.schema) if request.schema is not None else None

    async def _call(self, request: Request) -> tuple[Completion, int]:
        where = self.endpoint
        limits = where.limits
        shared = endpoints.limit_name(self.config)
        prompt = sum(len(m["content"]) for m in request.messages) // 4  # tokens, roughly: before the answer counts them
        batch = self.config.mode == "batch"
        reserved = self.ledger.reserve(self.provider, self.model, prompt, request.max_tokens, batch) if self.ledger else 0.0
        spent = (0, 0)
        try:
            completion, tries = await self._attempts(request, where, limits, shared, prompt)
            spent = (completion.input_tokens, completion.output_tokens)
            return completion, tries
        finally:
            if self.ledger:
                self.ledger.settle(reserved, self.provider, self.model, *spent, batch)

    async def _attempts(self, request: Request, where: endpoints.Endpoint, limits, shared: str | None,
                        prompt: int) -> tuple[Completion, int]:
        """The call, retried with backoff while its failure may pass (429, 5xx, timeouts); a refusal counts towards
        the endpoint's stop, a stopped endpoint sends nothing, and one that never answered takes one at a time."""
        tries = 0
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and e.retryable),
            wait=_BackoffHonouringRetryAfter(),
            stop=stop_after_attempt(self.config.max_retries + 1),
            reraise=True,
        )
        try:
            async with where.first_answer():
                async for attempt in retrying:
                    with attempt:
                        tries += 1
                        async with limits.slot(prompt, request.max_tokens) as (sent_at, in_flight), \
                                endpoints.shared_limit(shared, self.config.rpm is not None):
                            where.refusals.check()
                            try:
                                completion = await where.backend.complete(request, self.config.timeout_s)
                            except ProviderError as exc:
                                limits.observe(exc.headers)
                                if exc.status == 429:
                                    limits.throttled(sent_at, in_flight)
                                if is_fatal(exc):
                                    where.refusals.refused(exc, self.config, request)
                                raise
                            where.proven = True
                            where.refusals.answered()
                            limits.observe(completion.headers)
                            limits.succeeded(time.monotonic() - sent_at, completion.output_tokens)
                            return completion, tries
        except ProviderError as exc:
            exc.attempts = tries
            raise
        raise AssertionError("unreachable")
