"""The backend for OpenAI's chat completions and Batch API, and any OpenAI-compatible server (vLLM, SGLang)."""
from __future__ import annotations

import json

import openai
from openai.types.chat import ChatCompletion

from alignflow.llm.remote import RETRYABLE_STATUS, BatchStatus, as_provider_error, rate_limit_headers
from alignflow.llm.structured import json_schema
from alignflow.llm.types import Completion, ProviderError, Request


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

    async def ping(self, timeout_s: float) -> list[str]:
        """One cheap call (the models list): a refused key or an endpoint nobody answers shows before a run. Returns
        the models it lists (none when what answered is no models list)."""
        try:
            page = await self._client.models.list(timeout=timeout_s)
        except openai.OpenAIError as exc:
            raise as_provider_error(exc, openai) from None
        return [model.id for model in page.data or [] if isinstance(getattr(model, "id", None), str)]

    async def complete(self, request: Request, timeout_s: float) -> Completion:
        try:
            raw = await self._client.chat.completions.with_raw_response.create(**self.body(request), timeout=timeout_s)
            return self.completion(raw.parse(), raw.headers)
        except openai.OpenAIError as exc:
            raise as_provider_error(exc, openai) from None

    # -- the Batch API: a JSONL file of requests, a batch over it, its output and error files

    def batch_line(self, custom_id: str, request: Request) -> bytes:
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                           "body": self.body(request)}).encode() + b"\n"

    async def submit(self, lines: list[bytes], tag: str) -> str:
        try:
            upload = await self._client.files.create(file=("requests.jsonl", b"".join(lines)), purpose="batch")
            batch = await self._client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                                      completion_window="24h", metadata={"alignflow_batch": tag})
        except openai.OpenAIError as exc:
            raise as_provider_error(exc, openai) from None
        return batch.id

    async def find(self, tag: str, since: float, requests: int, taken: set[str]) -> str | None:
        """The batch `submit` made with `tag`, if it made one, from the batches listed since `since` (newest first)."""
        try:
            async for batch in self._client.batches.list(limit=100):
                if batch.created_at < since:
                    return None
                if (batch.metadata or {}).get("alignflow_batch") == tag:
                    return batch.id
        except openai.OpenAIError as exc:
            raise as_provider_error(exc, openai) from None
        return None

    async def poll(self, batch_id: str) -> BatchStatus:
        try:
            batch = await self._client.batches.retrieve(batch_id)
        except openai.OpenAIError as exc:
            raise as_provider_error(exc, openai) from None
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
            raise as_provider_error(exc, openai) from None
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
