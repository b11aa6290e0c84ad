"""Offline runs through the providers' Batch APIs (OpenAI Batch, Anthropic Message Batches), at their discount.

A phase's requests to one endpoint go out as provider batches (split at the providers' limits on requests and
bytes), are polled until they end, and are mapped back by custom id, in whatever order the results come. An
item that failed or expired is sent again in a new batch, up to `max_retries` times; an answer that does not
parse is re-asked in the next batch, up to `structured_retries` times. The ids of the submitted batches are
saved in the run's store before polling starts, so a killed run polls them again instead of sending twice.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from alignflow.llm.ledger import BudgetReached
from alignflow.llm.structured import ParseError
from alignflow.llm.types import Answers, Completion, OnResult, ProviderError, Request, Result

if TYPE_CHECKING:
    from alignflow.llm.client import LLM


@dataclass
class Item:
    """One request on its way through provider batches: its conversation so far, and what it cost."""

    index: int
    request: Request
    messages: list[dict]
    key: str
    ask: int = 0
    tries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    reserved: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    @property
    def custom_id(self) -> str:
        """The request key, or for a re-ask a key of its own (a provider takes each custom id once per batch)."""
        return self.key if self.ask == 0 else hashlib.sha256(f"{self.key}:{self.ask}".encode()).hexdigest()


class Submissions:
    """The provider batches sent for one endpoint, kept in the run's store when there is one."""

    def __init__(self, answers: Answers | None, name: str):
        self.answers, self.name = answers, name
        saved = answers.get_note(name) if answers is not None and hasattr(answers, "get_note") else None
        self.batches: list[dict[str, Any]] = (saved or {}).get("batches", [])

    def save(self) -> None:
        if self.answers is not None and hasattr(self.answers, "put_note"):
            self.answers.put_note(self.name, {"batches": self.batches})


async def answer_in_batches(llm: LLM, requests: list[Request], answers: Answers | None,
                            on_result: OnResult | None) -> list[Result]:
    backend = llm.endpoint.backend
    results: list[Result | None] = [llm.known(r, answers) for r in requests]
    items: dict[str, Item] = {}
    for i, (request, known) in enumerate(zip(requests, results)):
        if known is not None:
            _report(on_result, known)
        else:
            item = Item(i, request, list(request.messages), llm.key(request))
            items.setdefault(item.custom_id, item)  # the same request twice is one item: both get its answer
    twins = {i: items[llm.key(r)] for i, (r, known) in enumerate(zip(requests, results)) if known is None}
    sent = Submissions(answers, f"provider-batches-{hashlib.sha256(llm.endpoint.name.encode()).hexdigest()[:12]}")
    stopped: BudgetReached | None = None
    while items:
        pending = [b for b in sent.batches if not b["collected"] and set(b["ids"]) & set(items)]
        waiting = {cid for b in pending for cid in b["ids"]}
        for chunk in _chunks([items[c] for c in items if c not in waiting], llm, backend):
            try:
                _reserve(llm, chunk)
            except BudgetReached as exc:
                stopped = stopped or exc
                for item in chunk:
                    del items[item.custom_id]
                continue
            lines = [backend.batch_line(item.custom_id, dataclasses.replace(item.request, messages=item.messages))
                     for item in chunk]
            batch = {"id": await backend.submit(lines), "ids": [item.custom_id for item in chunk], "collected": False}
            sent.batches.append(batch)
            sent.save()  # before any polling: a killed run finds it
            pending.append(batch)
        for batch in pending:
            await _wait(backend, batch["id"], llm.config.batch_poll_s)
            found = await backend.results(batch["id"])
            for cid in batch["ids"]:
                if cid in items:
                    _settle(llm, items.pop(cid), found.get(cid), items, results, answers, on_result)
            batch["collected"] = True
            sent.save()
    for i, item in twins.items():
        results[i] = results[i] or results[item.index]
    if stopped:
        raise stopped
    return results  # type: ignore[return-value]


def _chunks(items: list[Item], llm: LLM, backend) -> list[list[Item]]:
    """Items in batches within the provider's limits on requests and bytes per batch."""
    chunks: list[list[Item]] = []
    size = 0
    for item in items:
        line = len(backend.batch_line(item.custom_id, dataclasses.replace(item.request, messages=item.messages)))
        if not chunks or len(chunks[-1]) >= backend.max_batch_requests or size + line > backend.max_batch_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += line
    return chunks


def _reserve(llm: LLM, chunk: list[Item]) -> None:
    if llm.ledger is None:
        return
    done = []
    try:
        for item in chunk:
            prompt = sum(len(m["content"]) for m in item.messages) // 4
            item.reserved = llm.ledger.reserve(llm.provider, llm.model, prompt, item.request.max_tokens, batch=True)
            done.append(item)
    except BudgetReached:
        for item in done:
            llm.ledger.settle(item.reserved, llm.provider, llm.model, 0, 0, batch=True)
        raise


async def _wait(backend, batch_id: str, poll_s: float) -> None:
    while not (await backend.poll(batch_id)).done:
        await asyncio.sleep(poll_s)


def _settle(llm: LLM, item: Item, outcome: Completion | ProviderError | None, items: dict[str, Item],
            results: list[Result | None], answers: Answers | None, on_result: OnResult | None) -> None:
    """One item's result: an answer, a re-ask or a retry (back into `items`), or a failure."""
    item.tries += 1
    outcome = outcome or ProviderError("the batch ended without a result for this request", retryable=True)
    if llm.ledger is not None:
        spent = (outcome.input_tokens, outcome.output_tokens) if isinstance(outcome, Completion) else (0, 0)
        llm.ledger.settle(item.reserved, llm.provider, llm.model, *spent, batch=True)
    if isinstance(outcome, ProviderError):
        if outcome.retryable and item.tries <= llm.config.max_retries:
            items[item.custom_id] = item
            return
        return _done(llm, item, Result(ok=False, error=str(outcome), text=outcome.raw), results, answers, on_result)
    item.input_tokens += outcome.input_tokens
    item.output_tokens += outcome.output_tokens
    try:
        parsed = llm.parse(outcome.text, item.request)
    except ParseError as exc:
        if item.ask < llm.config.structured_retries:
            item.messages = llm.reask(item.messages, outcome.text, exc)
            item.ask += 1
            items[item.custom_id] = item
            return
        error = f"invalid structured output after {item.ask + 1} asks: {exc}"
        return _done(llm, item, Result(ok=False, error=error, text=outcome.text, finish_reason=outcome.finish_reason),
                     results, answers, on_result)
    _done(llm, item, Result(ok=True, text=outcome.text, parsed=parsed, finish_reason=outcome.finish_reason),
          results, answers, on_result)


def _done(llm: LLM, item: Item, result: Result, results: list[Result | None], answers: Answers | None,
          on_result: OnResult | None) -> None:
    result.input_tokens, result.output_tokens = item.input_tokens, item.output_tokens
    result.attempts, result.paid = item.tries, True
    result.latency_s = time.perf_counter() - item.started
    results[item.index] = result
    llm.remember(item.request, result, answers)
    _report(on_result, result)


def _report(on_result: OnResult | None, result: Result) -> None:
    if on_result:
        on_result(result)
