"""What every process of a run shares through the Prefect server: provider limits and the run's budget, each a
Prefect global concurrency limit.

An endpoint with `llm.limit_name: NAME` holds one slot of the limit NAME for each request it sends, and with
`llm.rpm` set also takes one slot of NAME-rpm (a limit whose slots decay at rpm/60 a second) before it. Two
flow runs on two workers then share one provider budget. `alignflow limits create CONFIG` makes them; so does

    prefect gcl create NAME --limit MAX_CONCURRENCY
    prefect gcl create NAME-rpm --limit RPM --slot-decay-per-second RPM/60

A run with `runner: dask` and `llm.budget_usd` keeps its budget in a limit of its writer's own,
`alignflow-budget-<run>-…`, made when its flow takes the run's lease (from what the store says it spent; those of
earlier writers are deleted then) and deleted when it ends: its slots are billionths of the budget, taken by the
workers' ledgers as they draw allowances and never given back. The server takes slots only if they fit under the
limit, in one transaction, so the workers together never draw more than the budget.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from httpx import HTTPStatusError
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.asyncio import concurrency, rate_limit
from prefect.exceptions import ObjectNotFound

from alignflow.config import LLMConfig
from alignflow.engine.run import Run
from alignflow.llm import endpoint, ledger

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


BUDGET_SLOTS = 1_000_000_000  # a run's budget in slots, billionths of it (a Postgres integer holds up to 2.1e9)


def budget_limits(run_url: str) -> str:
    """What the names of a run's budget limits begin with: its run id, and its store (two may hold one run id)."""
    run_id = run_url.rstrip("/").rsplit("/", 1)[-1]
    return f"alignflow-budget-{run_id}-{hashlib.sha256(run_url.encode()).hexdigest()[:8]}-"


def budget_limit(run_url: str, writer: str) -> str:
    """The limit that keeps a run's budget while the writer `writer` (its lease's token) has it."""
    return budget_limits(run_url) + writer[:12]


class PrefectBudget:
    """A run's budget (a `ledger.Pool`) as a Prefect global concurrency limit: taking is incrementing its slots, which
    the server grants only while they fit under the limit. Called from the endpoints' event loop, rarely (once per
    allowance), so a plain blocking call is cheaper than handing it to another loop."""

    def __init__(self, run_url: str, writer: str, budget: float):
        self.name, self.budget = budget_limit(run_url, writer), budget
        self._client: SyncPrefectClient | None = None

    @property
    def client(self) -> SyncPrefectClient:
        """One client for the pool's life (its ledger's: the process's), so a draw is one request, not a connection."""
        if self._client is None:
            self._client = get_client(sync_client=True)
            self._client.__enter__()
        return self._client

    def take(self, usd: float) -> bool:
        slots = max(1, math.ceil(usd / self.budget * BUDGET_SLOTS))
        try:
            granted = self.client.increment_concurrency_slots([self.name], slots, "concurrency").json()
        except HTTPStatusError as exc:
            if exc.response.status_code in (422, 423):  # more than is left (423), or than the whole budget (422)
                return False
            raise
        return any(limit["name"] == self.name for limit in granted)  # a limit that is gone grants nothing

    def spent(self) -> float | None:
        try:
            limit = self.client.read_global_concurrency_limit_by_name(self.name)
        except ObjectNotFound:
            return None
        return limit.active_slots / BUDGET_SLOTS * self.budget


ledger.share_budget(PrefectBudget)


@contextmanager
def run_budget(run: Run) -> Iterator[None]:
    """For a writer's run on Dask with a budget, the limit that keeps its budget while the flow runs: made from what
    its finished batches cost (so a resume with a higher budget counts right), deleted when the flow ends. Earlier
    writers' limits are deleted first: a writer that was killed left its own."""
    budget = run.config.llm.budget_usd
    if budget is None or run.config.dask is None or run.writer is None:
        yield
        return
    name, spent = budget_limit(run.url, run.writer), run.spent()
    with get_client(sync_client=True) as client:
        for earlier in _named(client, budget_limits(run.url)):
            _delete(client, earlier)
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
            name=name, limit=BUDGET_SLOTS, active_slots=min(BUDGET_SLOTS, math.ceil(spent / budget * BUDGET_SLOTS))))
    try:
        yield
    finally:
        with get_client(sync_client=True) as client:
            _delete(client, name)


def _named(client: SyncPrefectClient, prefix: str) -> list[str]:
    """The global concurrency limits whose name begins with `prefix`."""
    names, offset = [], 0
    while page := client.read_global_concurrency_limits(limit=200, offset=offset):
        names += [limit.name for limit in page if limit.name.startswith(prefix)]
        offset += len(page)
    return names


def _delete(client: SyncPrefectClient, name: str) -> None:
    try:
        client.delete_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        pass
