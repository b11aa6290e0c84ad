"""The backend for Anthropic's Messages API and Message Batches."""
from __future__ import annotations

import json

import anthropic
from anthropic.types import Message

from alignflow.llm.remote import BatchStatus, as_provider_error, rate_limit_headers
from alignflow.llm.structured import json_schema
from alignflow.llm.types import Completion, ProviderError, Request


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

    async def ping(self, timeout_s: float) -> list[str]:
        """The models list (its first 1,000): a refused key or an endpoint nobody answers shows before a run."""
        try:
            page = await self._client.models.list(limit=1000, timeout=timeout_s)
        except anthropic.AnthropicError as exc:
            raise as_provider_error(exc, anthropic) from None
        return [model.id for model in page.data or [] if isinstance(getattr(model, "id", None), str)]

    async def complete(self, request: Request, timeout_s: float) -> Completion:
        body = self.body(request)
        temperature = body.pop("temperature")  # this SDK version has no `temperature` argument; the API takes it
        try:
            raw = await self._client.messages.with_raw_response.create(
                **body, timeout=timeout_s, extra_body={"temperature": temperature})
            return self.completion(await raw.parse(), raw.headers)  # the async raw response parses asynchronously
        except anthropic.AnthropicError as exc:
            raise as_provider_error(exc, anthropic) from None

    # -- Message Batches: the requests in one call, polled until ended, results as JSONL

    def batch_line(self, custom_id: str, request: Request) -> bytes:
        return json.dumps({"custom_id": custom_id, "params": self.body(request)}).encode()

    async def submit(self, lines: list[bytes], tag: str) -> str:
        """Message Batches carry no metadata: `tag` is not sent, and `find` goes by time and size."""
        try:
            batch = await self._client.messages.batches.create(requests=[json.loads(line) for line in lines])
        except anthropic.AnthropicError as exc:
            raise as_provider_error(exc, anthropic) from None
        return batch.id

    async def find(self, tag: str, since: float, requests: int, taken: set[str]) -> str | None:
        """The oldest batch made since `since` with `requests` requests that no record has `taken`, if any."""
        found = None
        try:
            async for batch in self._client.messages.batches.list(limit=100):  # newest first
                if batch.created_at.timestamp() < since:
                    break
                if batch.id not in taken and sum(batch.request_counts.model_dump().values()) == requests:
                    found = batch.id
        except anthropic.AnthropicError as exc:
            raise as_provider_error(exc, anthropic) from None
        return found

    async def poll(self, batch_id: str) -> BatchStatus:
        try:
            batch = await self._client.messages.batches.retrieve(batch_id)
        except anthropic.AnthropicError as exc:
            raise as_provider_error(exc, anthropic) from None
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
            raise as_provider_error(exc, anthropic) from None
        return found
