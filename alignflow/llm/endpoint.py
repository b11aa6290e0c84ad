"""Endpoints: one per (provider, base_url, model, key) in a process, each with one client and one set of limits,
all served by one event loop on a background thread.

Batches run in many threads (a Prefect task runner) and stages run side by side; their requests meet here, so
the limits set for an endpoint hold for the whole process, whichever batch, stage or generator sends them.
"""
from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from alignflow.config import LLMConfig
from alignflow.llm.backend import Backend
from alignflow.llm.limits import Limits

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def event_loop() -> asyncio.AbstractEventLoop:
    """The loop every LLM call runs on, started on first use (a daemon thread: it never blocks exit)."""
    global _loop
    with _lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="alignflow-llm", daemon=True).start()
        return _loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the endpoints' loop and wait for its result, from any other thread."""
    return asyncio.run_coroutine_threadsafe(coro, event_loop()).result()


async def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """The same from a coroutine on another loop (its own loop keeps running meanwhile)."""
    loop = event_loop()
    if asyncio.get_running_loop() is loop:
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


@dataclass
class Endpoint:
    """Where requests go and how fast they may go there."""

    provider: str
    base_url: str | None
    model: str
    backend: Backend
    limits: Limits

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.model}" + (f"@{self.base_url}" if self.base_url else "")


_endpoints: dict[tuple, Endpoint] = {}


def endpoint(config: LLMConfig) -> Endpoint:
    """The process's endpoint for `config`, made on first use; a later config may only tighten its limits."""
    key_value = config.api_key()  # raises ConfigError naming the variable when it is missing
    account = hashlib.sha256((key_value or "").encode()).hexdigest()[:16]  # two keys, two accounts; never stored
    identity = (config.provider, config.base_url, config.model_name, account)
    with _lock:
        found = _endpoints.get(identity)
        if found is None:
            found = _endpoints[identity] = Endpoint(config.provider, config.base_url, config.model_name,
                                                    _backend(config, key_value),
                                                    Limits(config.max_concurrency, config.rpm, config.tpm))
        else:
            found.limits.tighten(config.max_concurrency, config.rpm, config.tpm)
        return found


def _backend(config: LLMConfig, api_key: str | None) -> Backend:
    if config.provider == "local":
        from alignflow.llm.local import LocalBackend

        return LocalBackend(config.model, max_batch=config.max_concurrency)
    from alignflow.llm.remote import AnthropicBackend, OpenAIBackend

    cls = OpenAIBackend if config.provider == "openai" else AnthropicBackend
    return cls(config.model_name, api_key=api_key, base_url=config.base_url)
