"""Endpoints: one per (provider, base_url, model, key) in a process, each with one client and one set of limits,
all served by one event loop on a background thread.

Batches run in many threads (a Prefect task runner) and stages run side by side; their requests meet here, so
the limits set for an endpoint hold for the whole process, whichever batch, stage or generator sends them.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import hashlib
import re
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

from alignflow.config import LLMConfig
from alignflow.llm.backend import Backend
from alignflow.llm.limits import Limits
from alignflow.llm.refused import Refusals

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


def _submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future:
    """Start `coro` on the endpoints' loop in the caller's context (its settings, e.g. which Prefect server)."""
    loop, context, done = event_loop(), contextvars.copy_context(), concurrent.futures.Future()

    def start() -> None:
        task = loop.create_task(coro, context=context)
        task.add_done_callback(lambda t: done.cancel() if t.cancelled() else
                               done.set_exception(t.exception()) if t.exception() else done.set_result(t.result()))

    loop.call_soon_threadsafe(start)
    return done


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the endpoints' loop and wait for its result, from any other thread."""
    return _submit(coro).result()


async def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """The same from a coroutine on another loop (its own loop keeps running meanwhile)."""
    if asyncio.get_running_loop() is event_loop():
        return await coro
    return await asyncio.wrap_future(_submit(coro))


SharedLimit = Callable[[str, bool], AbstractAsyncContextManager]
_shared: SharedLimit | None = None


def share_limits(hook: SharedLimit | None) -> None:
    """Limits shared with other processes: `hook(name, rate)` holds one slot of the limit `name` for a request
    (and, with `rate`, takes one from its per-minute twin first). The orchestrator supplies it (`tasks/limits.py`:
    Prefect's global concurrency limits); the domain only calls it."""
    global _shared
    _shared = hook


def shared_limit(name: str | None, rate: bool) -> AbstractAsyncContextManager:
    if name is None:
        return nullcontext()
    if _shared is None:
        raise RuntimeError(f"llm.limit_name is {name!r}, but nothing here shares limits across processes: "
                           "run through the alignflow command or a Prefect flow")
    return _shared(name, rate)


@dataclass
class Endpoint:
    """Where requests go, how fast they may go there, and whether it answers: `proven` once it has answered in this
    process, stopped (`refusals`) when it refuses everything. `digest` names it in a run's record, key unseen."""

    provider: str
    base_url: str | None
    model: str
    backend: Backend
    limits: Limits
    digest: str
    proven: bool = False
    refusals: Refusals = field(default_factory=Refusals)
    _trial: asyncio.Lock | None = None

    @asynccontextmanager
    async def first_answer(self) -> AsyncIterator[None]:
        """Until a hosted endpoint has answered once in this process, its requests go one at a time: one that
        refuses everything (a key, a path, a model) is asked the few requests that stop the run, not one per slot."""
        if not self.proven and self.provider != "local":
            self._trial = self._trial or asyncio.Lock()
            async with self._trial:
                if not self.proven:
                    yield
                    return
        yield

    @property
    def name(self) -> str:
        return f"{self.provider}:{self.model}" + (f"@{self.base_url}" if self.base_url else "")


def limit_name(config: LLMConfig) -> str | None:
    """The global limit an endpoint's requests share across processes: `llm.limit_name`, or with `auto` one
    derived from the endpoint (provider, model, base_url), so every run on the same endpoint finds the same."""
    if config.limit_name != "auto":
        return config.limit_name
    where = hashlib.sha256((config.base_url or "").encode()).hexdigest()[:6]
    return re.sub(r"[^a-z0-9-]+", "-", f"alignflow-{config.provider}-{config.model_name}-{where}".lower())


_endpoints: dict[tuple, Endpoint] = {}


def endpoint(config: LLMConfig) -> Endpoint:
    """The process's endpoint for `config`, made on first use; a later config may only tighten its limits."""
    key_value = config.api_key()  # raises ConfigError naming the variable when it is missing
    account = hashlib.sha256((key_value or "").encode()).hexdigest()[:16]  # two keys, two accounts; never stored
    identity = (config.provider, config.base_url, config.model_name, account)
    with _lock:
        found = _endpoints.get(identity)
        if found is None:
            digest = hashlib.sha256("\0".join(str(part) for part in identity).encode()).hexdigest()[:16]
            found = _endpoints[identity] = Endpoint(config.provider, config.base_url, config.model_name,
                                                    _backend(config, key_value), Limits(*_limits(config)), digest)
        else:
            found.limits.tighten(*_limits(config))
        return found


def _limits(config: LLMConfig) -> tuple:
    return config.max_concurrency, config.rpm, config.tpm, config.input_tpm, config.output_tpm


def endpoints() -> list[Endpoint]:
    """Every endpoint this process has used, for its stats."""
    with _lock:
        return list(_endpoints.values())


def traffic(configs: list[LLMConfig] | None = None) -> list[dict]:
    """Each endpoint's requests, 429s and concurrency in this process (of `configs` only, when given): for the
    manifest and the run's artifacts."""
    wanted = {(c.provider, c.base_url, c.model_name) for c in configs} if configs is not None else None
    return [{"endpoint": e.name, "requests": e.limits.stats.requests, "throttled": e.limits.stats.throttled,
             "throttled_share": round(e.limits.stats.throttled_share, 4), "cap": e.limits.configured,
             "lowest_cap": e.limits.stats.lowest_cap, "cap_now": int(e.limits.cap), "cuts": e.limits.stats.cuts,
             "peak_in_flight": e.limits.stats.peak_in_flight, "paused_s": round(e.limits.stats.paused_s, 1)}
            for e in endpoints() if e.limits.stats.requests
            and (wanted is None or (e.provider, e.base_url, e.model) in wanted)]


def traffic_lines() -> list[str]:
    """One line per endpoint, as the terminal shows it while a run goes."""
    return [f"{e.name}: {e.limits.in_flight} in flight, cap {int(e.limits.cap)} of {e.limits.configured}, "
            f"{e.limits.stats.throttled} 429s ({e.limits.stats.throttled_share:.0%})"
            for e in endpoints() if e.limits.stats.requests]


def _backend(config: LLMConfig, api_key: str | None) -> Backend:
    if config.provider == "local":
        from alignflow.llm.local import LocalBackend

        return LocalBackend(config.model, max_batch=config.max_concurrency)
    if config.provider == "openai":
        from alignflow.llm.openai_api import OpenAIBackend as Remote
    else:
        from alignflow.llm.anthropic_api import AnthropicBackend as Remote
    return Remote(config.model_name, api_key=api_key, base_url=config.base_url)
