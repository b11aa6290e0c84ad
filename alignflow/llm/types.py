"""The request and result types every provider speaks: one result per request, never an exception."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel


@dataclass(frozen=True)
class Request:
    """One chat request. `sample` makes repeated samples of the same prompt distinct requests; `seed` is the
    sampling seed sent to the provider, derived from the run's seed and the sample, so a new run samples anew."""

    messages: list[dict[str, str]]
    schema: type[BaseModel] | None = None
    temperature: float = 0.7
    max_tokens: int = 512
    sample: int = 0
    seed: int = 0


@dataclass
class Completion:
    """What a provider backend returns for one successful call."""

    text: str
    finish_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    headers: dict[str, str] | None = None  # the rate-limit headers of the response


class ProviderError(Exception):
    """A failed call. `retryable` says whether trying again may help; `retry_after` is in seconds; `url` is where
    the call went (userinfo redacted) and `code` the provider's own error code (`model_not_found`), when known."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None, raw: str | None = None,
                 status: int | None = None, headers: dict[str, str] | None = None, url: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.raw = raw
        self.status = status
        self.headers = headers
        self.url = url
        self.code = code


@dataclass
class Result:
    """The outcome of one request: ok with text (and `parsed` for structured output), or failed with the error."""

    ok: bool
    text: str | None = None
    parsed: Any = None
    error: str | None = None
    finish_reason: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 0
    cached: bool = False
    paid: bool = False  # this run paid for it: asked now, or saved from an earlier attempt (not the request cache)
    refused: str | None = None  # a refusal asking again cannot change (`llm.refused`): the line a stop would print
    extra: dict[str, Any] = field(default_factory=dict)


OnResult = Callable[[Result], None]  # told of each result as it arrives (progress)


class Answers(Protocol):
    """Somewhere successful answers are kept by request key: the request cache, a batch's answer log."""

    def get(self, key: str) -> dict[str, Any] | None: ...
    def put(self, key: str, value: dict[str, Any]) -> None: ...
