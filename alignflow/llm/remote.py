"""Backends for hosted APIs: OpenAI (and any OpenAI-compatible server) and Anthropic.

The SDKs' own retries are off: retries, limits and caching are the client's job, the same for every provider.
One backend serves one endpoint for the life of the process (its HTTP pool lives on the endpoints' loop).
"""
from __future__ import annotations

import json

import anthropic
import openai

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


def _as_provider_error(exc: Exception) -> ProviderError:
    """Map an SDK exception (same shape in both SDKs) to a ProviderError that says whether to retry."""
    status = getattr(exc, "status_code", None)
    if status is not None:
        response = getattr(exc, "response", None)
        retryable = status in RETRYABLE_STATUS or status >= 500
        return ProviderError(
            f"HTTP {status}: {getattr(exc, 'message', exc)}",
            retryable=retryable,
            retry_after=_retry_after(getattr(response, "headers", None)),
            raw=getattr(response, "text", None),
        )
    if isinstance(exc, (openai.APITimeoutError, anthropic.APITimeoutError)):
        return ProviderError("request timed out", retryable=True)
    if isinstance(exc, (openai.APIConnectionError, anthropic.APIConnectionError)):
        return ProviderError(f"connection error: {exc}", retryable=True)
    return ProviderError(f"{type(exc).__name__}: {exc}", retryable=False)


class OpenAIBackend:
    name = "openai"

    def __init__(self, model: str, *, api_key: str | None, base_url: str | None):
        self.model = model
        self._client = openai.AsyncOpenAI(api_key=api_key or "unused", base_url=base_url, max_retries=0)

    async def complete(self, request: Request, timeout_s: float) -> Completion:
        kwargs = {}
        if request.schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": request.schema.__name__, "schema": json_schema(request.schema)},
            }
        try:
            reply = await self._client.chat.completions.create(
                model=self.model,
                messages=request.messages,
                temperature=request.temperature,
                max_tokens=request.max_tokens,
                seed=request.seed,
                timeout=timeout_s,
                **kwargs,
            )
        except openai.OpenAIError as exc:
            raise _as_provider_error(exc) from None
        choice = reply.choices[0]
        usage = reply.usage
        return Completion(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
        )


class AnthropicBackend:
    name = "anthropic"

    def __init__(self, model: str, *, api_key: str | None, base_url: str | None):
        self.model = model
        self._client = anthropic.AsyncAnthropic(api_key=api_key or "unused", base_url=base_url, max_retries=0)

    async def complete(self, request: Request, timeout_s: float) -> Completion:
        system = "\n\n".join(m["content"] for m in request.messages if m["role"] == "system")
        messages = [m for m in request.messages if m["role"] != "system"]
        kwargs = {"system": system} if system else {}
        if request.schema is not None:
            tool = request.schema.__name__
            kwargs["tools"] = [{"name": tool, "description": f"Record the {tool}.", "input_schema": json_schema(request.schema)}]
            kwargs["tool_choice"] = {"type": "tool", "name": tool}
        try:
            reply = await self._client.messages.create(
                model=self.model, messages=messages, max_tokens=request.max_tokens, timeout=timeout_s,
                # this SDK version has no `temperature` argument; the API still takes the field
                extra_body={"temperature": min(request.temperature, 1.0)}, **kwargs
            )
        except anthropic.AnthropicError as exc:
            raise _as_provider_error(exc) from None
        text = ""
        for block in reply.content:
            if block.type == "tool_use":
                text = json.dumps(block.input)
                break
            if block.type == "text":
                text += block.text
        finish = {"end_turn": "stop", "max_tokens": "length", "tool_use": "stop"}.get(reply.stop_reason, reply.stop_reason)
        return Completion(
            text=text, finish_reason=finish, input_tokens=reply.usage.input_tokens, output_tokens=reply.usage.output_tokens
        )
