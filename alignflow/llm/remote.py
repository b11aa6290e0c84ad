"""What the hosted-API backends share: errors mapped to ProviderError (redacted of keys), rate-limit headers, and
the shape of a provider batch's status.

The backends are `openai_api` (OpenAI and any OpenAI-compatible server) and `anthropic_api`; each imports only its
own SDK, so a run pays for the one it uses (the anthropic SDK alone takes 1.5 s to import). The SDKs' own retries
are off: retries, limits and caching are the client's job, the same for every provider. One backend serves one
endpoint for the life of the process (its HTTP pool lives on the endpoints' loop).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType

from alignflow.llm.limits import RATE_LIMIT_HEADERS
from alignflow.llm.types import ProviderError

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


# anything that looks like a key: OpenAI's and Anthropic's formats, masked or not, bearer tokens, and the
# user:password of a URL (http://user:KEY@host)
_KEY_LIKE = re.compile(r"(sk-[A-Za-z0-9*_\-]{4,}|(?i:bearer)\s+\S+|(?i:api[ _-]?key provided:)\s*\S+"
                       r"|(?<=://)[^/\s@]+(?=@))")


def redact(text: str | None) -> str | None:
    """Provider error texts quote the key (masked or not): nothing key-like is kept, logged or stored."""
    return _KEY_LIKE.sub("[redacted]", text) if text else text


def rate_limit_headers(headers) -> dict[str, str] | None:
    """The headers the limits read, lowercased; None when there are none."""
    if headers is None:
        return None
    found = {k.lower(): v for k, v in headers.items() if k.lower() in RATE_LIMIT_HEADERS}
    return found or None


def as_provider_error(exc: Exception, sdk: ModuleType) -> ProviderError:
    """Map an exception of `sdk` (openai or anthropic: the same shape) to a ProviderError that says whether to
    retry."""
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
            url=_url(exc),
            code=_code(exc),
        )
    if isinstance(exc, sdk.APITimeoutError):
        return ProviderError("request timed out", retryable=True)
    if isinstance(exc, sdk.APIConnectionError):
        return ProviderError(f"connection error: {exc}", retryable=True)
    return ProviderError(redact(f"{type(exc).__name__}: {exc}"), retryable=False)


def _url(exc: Exception) -> str | None:
    """Where the failed call went, as the SDK sent it (with the path it added to `base_url`)."""
    request = getattr(exc, "request", None)
    return redact(str(request.url)) if request is not None else None


def _code(exc: Exception) -> str | None:
    """The provider's error code: OpenAI's `code` (`model_not_found`), Anthropic's error `type`."""
    if code := getattr(exc, "code", None):
        return str(code)
    body = getattr(exc, "body", None)
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("type") if isinstance(error, dict) else None


@dataclass
class BatchStatus:
    """Where a provider batch is: `done` once it will change no more; `status` in the provider's words."""

    done: bool
    status: str
    counts: dict[str, int]
