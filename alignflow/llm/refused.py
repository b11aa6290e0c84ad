"""An endpoint that refuses every request: the answers that asking again cannot change, and the stop they make.

401 and 403 (the key), 404 (the path or the model), 400 and 422 (a request the server will not take) come back the
same however often a request is sent, so they are never retried. One of them is its row's failure, as any other;
but an endpoint that refuses everything stops the run, with one line naming the status, the URL, the model and the
key's variable and saying what to check, instead of failing every row and quarantining every batch: after
STOP_AFTER refusals in a row (an endpoint that never answered takes one request at a time, so that is STOP_AFTER
requests), or when it refused every request of a batch (the runner's rule). Answers that came meanwhile are saved;
the same run id resumes.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Hashable, Iterable
from http import HTTPStatus

from alignflow.config import ConfigError, LLMConfig
from alignflow.llm.remote import redact
from alignflow.llm.types import ProviderError, Request, Result

FATAL_STATUS = frozenset({400, 401, 403, 404, 422})
STOP_AFTER = 3
STOP_HOLDS_S = 60.0  # then one request may try again: a long-lived worker (Dask) serves the next run
SAID_CHARS = 160  # of the server's own message, in the line


class EndpointRefused(ConfigError):
    """An endpoint refuses every request: a key, path, model or request it will not take. The run stops; once the
    config is fixed, the same run id resumes it."""


def is_fatal(exc: ProviderError) -> bool:
    return exc.status in FATAL_STATUS


def shown_url(config: LLMConfig) -> str:
    """The endpoint as messages name it: its URL with credentials masked, or the provider's own API."""
    return redact(config.base_url) or f"the {config.provider} API"


def refusal(exc: ProviderError, config: LLMConfig, request: Request | None = None,
            asked: str | None = None) -> EndpointRefused:
    """The one line for a refusal of `request` (or of what `asked` says was asked): status, URL, model, key
    variable, and what to check."""
    try:
        phrase = HTTPStatus(exc.status).phrase
    except ValueError:
        phrase = "refused"
    where = exc.url or shown_url(config)
    key = config.key_env or "none"
    return EndpointRefused(f"the endpoint refused every request: {exc.status} {phrase} from {where} "
                           f"(model {config.model_name}, key {key}): {_hint(exc, config, request, asked)}")


def refused_throughout(results: Iterable[tuple[Hashable, Result]]) -> EndpointRefused | None:
    """The stop for an endpoint that refused every request a batch asked it, however few (a round of two): the
    batch could only make failed rows. `results` pairs each result with its endpoint."""
    lines: dict[Hashable, list[str | None]] = {}
    for where, result in results:
        lines.setdefault(where, []).append(result.refused)
    line = next((found[-1] for found in lines.values() if all(found)), None)
    return EndpointRefused(line) if line else None


def _hint(exc: ProviderError, config: LLMConfig, request: Request | None, asked: str | None) -> str:
    said = _said(exc)
    quoted = f" (the server says: {said})" if said else ""
    if exc.status in (401, 403):
        return f"check the key in {config.key_env}: this endpoint must take it for completions{quoted}"
    if exc.status == 404:
        if exc.code == "model_not_found" or _names(said, config.model_name):
            return f"check llm.model: the server has no model {config.model_name!r}{quoted}"
        if config.provider == "anthropic":
            return f"check llm.base_url is the server's root, without /v1 (the client adds /v1/messages){quoted}"
        return f"check llm.base_url ends in /v1, and llm.model names a model the server has{quoted}"
    if asked is None and request is not None:
        kind = f"a structured-output request ({request.schema.__name__})" if request.schema is not None else \
            "a chat request"
        asked = f"{kind} with max_tokens {request.max_tokens}, temperature {request.temperature}"
    return (f"the server does not take {asked or 'the request'}{quoted}: check llm.model, llm.max_tokens and "
            "llm.temperature, and that the server supports what the stage asks")


def _names(text: str, model: str) -> bool:
    """Whether the server's message names the model (as a word: a model `m` is not in `/chat/completions`)."""
    return re.search(rf"(?<![\w.-]){re.escape(model)}(?![\w.-])", text) is not None


def _said(exc: ProviderError) -> str:
    """The server's own message (from its JSON error body when it has one), on one line, cut short."""
    text = exc.raw or ""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        found = (error.get("message") if isinstance(error, dict) else error) or body.get("message") \
            or body.get("detail")
        text = found if isinstance(found, str) else json.dumps(found) if found else text
    text = " ".join(text.split())
    return text if len(text) <= SAID_CHARS else text[:SAID_CHARS - 1] + "…"


class Refusals:
    """One endpoint's refusals since its last answer, and its stop: every request to it shares one (they all run
    on the endpoints' loop)."""

    def __init__(self) -> None:
        self.count = 0
        self.stopped: EndpointRefused | None = None
        self._since = 0.0

    def check(self) -> None:
        """Before a request is sent: a stopped endpoint sends nothing (until the stop has held STOP_HOLDS_S)."""
        if self.stopped is None:
            return
        if time.monotonic() - self._since < STOP_HOLDS_S:
            raise EndpointRefused(str(self.stopped))
        self.stopped, self.count = None, STOP_AFTER - 1  # one more refusal stops it again

    def answered(self) -> None:
        self.count = 0

    def refused(self, exc: ProviderError, config: LLMConfig, request: Request) -> None:
        """Count a refusal; raise the stop once STOP_AFTER came in a row (and for any that comes after it)."""
        self.count += 1
        if self.stopped is None and self.count >= STOP_AFTER:
            self.stopped, self._since = refusal(exc, config, request), time.monotonic()
        if self.stopped is not None:
            raise EndpointRefused(str(self.stopped))

    def reset(self) -> None:
        """A new run starts: what an earlier one found here is found again."""
        self.count, self.stopped = 0, None
