"""Backends for hosted APIs: OpenAI (and any OpenAI-compatible server) and Anthropic.

The SDKs' own retries are off: retries, limits and caching are the client's job, the same for every provider.
One backend serves one endpoint for the life of the process (its HTTP pool lives on the endpoints' loop).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import anthropic
import openai
from anthropic.types import Message
from openai.types.chat import ChatCompletion

from alignflow.llm.limits import RATE_LIMIT_HEADERS
from alignflow.llm.structured import json_schema
from alignflow.llm.types import Completion, ProviderError, Request

RETRYABLE_STATUS = {408, 409, 429}


def _retry_after(headers) -> float | None:
    if headers is None:
        return None
    if ms := headers.get("retry-after-ms"):
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    if value := headers.get("retry-after"):
        try:
            return float(value)
        except ValueError:
            return None
    return None


# anything that looks like a key: OpenAI's and Anthropic's formats, masked or not, and bearer tokens
_KEY_LIKE = re.compile(r"(sk-[A-Za-z0-9*_\-]{4,}|(?i:bearer)\s+\S+|(?i:api[ _-]?key provided:)\s*\S+)")


def redact(text: str | None) -> str | None:
    """Provider error texts quote the key (masked or not): nothing key-like is kept, logged or stored."""
    return _KEY_LIKE.sub("[redacted]", text) if text else text


def rate_limit_headers(headers) -> dict[str, str] | None:
    """The headers the limits read, lowercased; None when there are none."""
    if headers is None:
        return None
    found = {k.lower(): v for k, v in headers.items() if k.lower() in RATE_LIMIT_HEADERS}
    return found or None


def _as_provider_error(exc: Exception) -> ProviderError:
    """Map an SDK exception (same shape in both SDKs) to a ProviderError that says whether to retry."""
    status = getattr(exc, "status_code", None)
    if status is not None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        retryable = status in RETRYABLE_STATUS or status >= 500
        return ProviderError(
            redact(f"HTTP {status}: {getattr(exc, 'message', exc)}"),
            retryable=retryable,
            retry_after=_retry_after(headers),
            raw=redact(getattr(response, "text", None)),
            status=status,
            headers=rate_limit_headers(headers),
        )
    if isinstance(exc, (openai.APITimeoutError, anthropic.APITimeoutError)):
        return ProviderError("request timed out", retryable=True)
    if isinstance(exc, (openai.APIConnectionError, anthropic.APIConnectionError)):
        return ProviderError(f"connection error: {exc}", retryable=True)
    return ProviderError(redact(f"{type(exc).__name__}: {exc}"), retryable=False)


@dataclass
class BatchStatus:
    """Where a provider batch is: `done` once it will change no more; `status` in the provider's words."""

    done: bool
    status: str
    counts: dict[str, int]


class OpenAIBackend:
    name = "openai"
    max_batch_requests = 50_000  # the Batch API's limits per batch
    max_batch_bytes = 200 * 2**20

    def __init__(self, model: str, *, api_key: str | None, base_url: str | None):
        self.model = model
        self._client = openai.AsyncOpenAI(api_key=api_key or "unused", base_url=base_url, max_retries=0)

    def body(self, request: Request) -> dict:
        """The chat-completions parameters of a request: what a live call sends, and a batch line holds."""
        body = {"model": self.model, "messages": request.messages, "temperature": request.temperature,
                "max_tokens": request.max_tokens, "seed": request.seed}
        if request.schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema.__name__, "schema": json_schema(request.schema)},
            }
        return body

    @staticmethod
    def completion(reply: ChatCompletion, headers=None) -> Completion:
        choice, usage = reply.choices[0], reply.usage
        return Completion(text=choice.message.content or "", finish_reason=choice.finish_reason,
                          input_tokens=usage.prompt_tokens if usage else 0,
                          output_tokens=usage.completion_tokens if usage else 0, headers=rate_limit_headers(headers))

    async def ping(self, timeout_s: float) -> None:
        """One cheap call (the models list): a refused key or an endpoint nobody answers shows before a run."""
        try:
            await self._client.models.list(timeout=timeout_s)
        except openai.OpenAIError as exc:
            raise _as_provider_error(exc) from None

    async def complete(self, request: Request, timeout_s: float) -> Completion:
        try:
            raw = await self._client.chat.completions.with_raw_response.create(**self.body(request), timeout=timeout_s)
            return self.completion(raw.parse(), raw.headers)
        except openai.OpenAIError as exc:
            raise _as_provider_error(exc) from None

    # -- the Batch API: a JSONL file of requests, a batch over it, its output and error files

    def batch_line(self, custom_id: str, request: Request) -> bytes:
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                           "body": self.body(request)}).encode() + b"\n"

    async def submit(self, lines: list[bytes]) -> str:
        try:
            upload = await self._client.files.create(file=("requests.jsonl", b"".join(lines)), purpose="batch")
            batch = await self._client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                                      completion_window="24h")
        except openai.OpenAIError as exc:
            raise _as_provider_error(exc) from None
        return batch.id

    async def poll(self, batch_id: str) -> BatchStatus:
        try:
            batch = await self._client.batches.retrieve(batch_id)
        except openai.OpenAIError as exc:
            raise _as_provider_error(exc) from None
        counts = batch.request_counts.model_dump() if batch.request_counts else {}
        return BatchStatus(batch.status in ("completed", "failed", "expired", "cancelled"), batch.status, counts)

    async def results(self, batch_id: str) -> dict[str, Completion | ProviderError]:
        """Every answer and every failure the batch has, by custom id (in any order the provider gives them)."""
        try:
            batch = await self._client.batches.retrieve(batch_id)
            found: dict[str, Completion | ProviderError] = {}
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    content = await self._client.files.content(file_id)
                    for line in content.text.splitlines():
                        if line.strip():
                            item = json.loads(line)
                            found[item["custom_id"]] = self._outcome(item)
        except openai.OpenAIError as exc:
            raise _as_provider_error(exc) from None
        return found

    def _outcome(self, item: dict) -> Completion | ProviderError:
        response, error = item.get("response") or {}, item.get("error") or {}
        status = response.get("status_code")
        if status == 200:
            return self.completion(ChatCompletion.model_validate(response["body"]))
        message = error.get("message") or (response.get("body") or {}).get("error", {}).get("message") or "no answer"
        code = error.get("code") or status
        retryable = code in ("batch_expired", "batch_cancelled") or status is None or status in RETRYABLE_STATUS \
            or status >= 500
        return ProviderError(f"batch item {code}: {message}", retryable=retryable, status=status)


class AnthropicBackend:
    name = "anthropic"
    max_batch_requests = 100_000  # Message Batches' limits per batch
    max_batch_bytes = 256 * 2**20

    def __init__(self, model: str, *, api_key: str | None, base_url: str | None):
        self.model = model
        self._client = anthropic.AsyncAnthropic(api_key=api_key or "unused", base_url=base_url, max_retries=0)

    def body(self, request: Request) -> dict:
        """The messages parameters of a request: what a live call sends, and a batch request holds."""
        system = "\n\n".join(m["content"] for m in request.messages if m["role"] == "system")
        body = {"model": self.model, "messages": [m for m in request.messages if m["role"] != "system"],
                "max_tokens": request.max_tokens, "temperature": min(request.temperature, 1.0)}
        if system:
            body["system"] = system
        if request.schema is not None:
            tool = request.schema.__name__
            body["tools"] = [{"name": tool, "description": f"Record the {tool}.", "input_schema": json_schema(request.schema)}]
            body["tool_choice"] = {"type": "tool", "name": tool}
        return body

    @staticmethod
    def completion(reply: Message, headers=None) -> Completion:
        text = ""
        for block in reply.content:
            if block.type == "tool_use":
                text = json.dumps(block.input)
                break
            if block.type == "text":
                text += block.text
        finish = {"end_turn": "stop", "max_tokens": "length", "tool_use": "stop"}.get(reply.stop_reason, reply.stop_reason)
        return Completion(text=text, finish_reason=finish, input_tokens=reply.usage.input_tokens,
                          output_tokens=reply.usage.output_tokens, headers=rate_limit_headers(headers))

    async def ping(self, timeout_s: float) -> None:
        try:
            await self._client.models.list(timeout=timeout_s)
        except anthropic.AnthropicError as exc:
            raise _as_provider_error(exc) from None

    async def complete(self, request: Request, timeout_s: float) -> Completion:
        body = self.body(request)
        temperature = body.pop("temperature")  # this SDK version has no `temperature` argument; the API takes it
        try:
            raw = await self._client.messages.with_raw_response.create(
                **body, timeout=timeout_s, extra_body={"temperature": temperature})
            return self.completion(await raw.parse(), raw.headers)  # the async raw response parses asynchronously
        except anthropic.AnthropicError as exc:
            raise _as_provider_error(exc) from None

    # -- Message Batches: the requests in one call, polled until ended, results as JSONL

    def batch_line(self, custom_id: str, request: Request) -> bytes:
        return json.dumps({"custom_id": custom_id, "params": self.body(request)}).encode()

    async def submit(self, lines: list[bytes]) -> str:
        try:
            batch = await self._client.messages.batches.create(requests=[json.loads(line) for line in lines])
        except anthropic.AnthropicError as exc:
            raise _as_provider_error(exc) from None
        return batch.id

    async def poll(self, batch_id: str) -> BatchStatus:
        try:
            batch = await self._client.messages.batches.retrieve(batch_id)
        except anthropic.AnthropicError as exc:
            raise _as_provider_error(exc) from None
        return BatchStatus(batch.processing_status == "ended", batch.processing_status,
                           batch.request_counts.model_dump())

    async def results(self, batch_id: str) -> dict[str, Completion | ProviderError]:
        found: dict[str, Completion | ProviderError] = {}
        try:
            async for item in await self._client.messages.batches.results(batch_id):
                result = item.result
                if result.type == "succeeded":
                    found[item.custom_id] = self.completion(result.message)
                elif result.type == "errored":
                    error = result.error.error
                    retryable = error.type in ("api_error", "overloaded_error", "rate_limit_error")
                    found[item.custom_id] = ProviderError(f"batch item {error.type}: {error.message}",
                                                          retryable=retryable)
                else:  # canceled, expired
                    found[item.custom_id] = ProviderError(f"batch item {result.type}", retryable=True)
        except anthropic.AnthropicError as exc:
            raise _as_provider_error(exc) from None
        return found
