"""Provider limits shared by every process on a Prefect server: Prefect global concurrency limits.

An endpoint with `llm.limit_name: NAME` holds one slot of the limit NAME for each request it sends, and with
`llm.rpm` set also takes one slot of NAME-rpm (a limit whose slots decay at rpm/60 a second) before it. Two
flow runs on two workers then share one provider budget. `alignflow limits create CONFIG` makes them; so does

    prefect gcl create NAME --limit MAX_CONCURRENCY
    prefect gcl create NAME-rpm --limit RPM --slot-decay-per-second RPM/60
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import concurrency, rate_limit
from prefect.exceptions import ObjectNotFound

from alignflow.config import LLMConfig
from alignflow.llm import endpoint

LEASE_S = 60  # the shortest lease the server grants: renewed while held, a dead process's slots return within it


@asynccontextmanager
async def prefect_slot(name: str, rate: bool) -> AsyncIterator[None]:
    if rate:
        await rate_limit(f"{name}-rpm", strict=True)
    async with concurrency(name, occupy=1, strict=True, lease_duration=LEASE_S):
        yield


endpoint.share_limits(prefect_slot)


def run_sync(coro):
    """A coroutine run to its end from a task (on the endpoints' loop, in the task's Prefect context)."""
    return endpoint.run(coro)


def wanted(configs: list[LLMConfig]) -> dict[str, tuple[int, float | None]]:
    """The limits these endpoints need: name -> (limit, slot decay per second or None)."""
    limits: dict[str, tuple[int, float | None]] = {}
    for config in configs:
        name = endpoint.limit_name(config)
        if name is None:
            continue
        limits[name] = (min(config.max_concurrency, limits.get(name, (config.max_concurrency, None))[0]), None)
        if config.rpm:
            limits[f"{name}-rpm"] = (config.rpm, config.rpm / 60)
    return limits


async def missing(configs: list[LLMConfig]) -> list[str]:
    """The limits these endpoints need that the Prefect server does not have."""
    names, gone = wanted(configs), []
    if not names:
        return gone
    async with get_client() as client:
        for name in names:
            try:
                await client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                gone.append(name)
    return gone


async def create(configs: list[LLMConfig]) -> list[str]:
    """Create (or set again) the limits these endpoints need; returns one line per limit."""
    lines = []
    async with get_client() as client:
        for name, (limit, decay) in wanted(configs).items():
            await client.upsert_global_concurrency_limit_by_name(name, limit, decay)
            lines.append(f"{name}: limit {limit}" + (f", slots decay at {decay:g}/s" if decay else ""))
    return lines
