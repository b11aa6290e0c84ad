"""Offline runs through the providers' Batch APIs (OpenAI Batch, Anthropic Message Batches), at their discount.

A phase's requests to one endpoint go out as provider batches (split at the providers' limits on requests and
bytes), are polled until they end, and are mapped back by custom id, in whatever order the results come. An
item that failed or expired is sent again in a new batch, up to `max_retries` times; an answer that does not
parse is re-asked in the next batch, up to `structured_retries` times.

A provider batch is made once, however often the run is killed. Each is recorded in the run's store before it is
made (an intent: its custom ids, and a tag of its own, which OpenAI's batch also carries in its `metadata`), and
again with its id once the provider answers. A resumed run replays the records in order: each request waits for
the next recorded batch that holds it (polled if it still runs, read again if it ended), so it takes the path a
run never killed would, and only what no record holds is sent. An intent without an id (a kill while it was being
sent) is looked up in the provider's list of batches: adopted if the provider made it (OpenAI: by its tag;
Anthropic, whose batches carry no metadata: the first made since, of its size), else sent now. The records go
when the run's batch is checkpointed: its failures, asked again on a later resume, go in new batches.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from alignflow.llm.ledger import BudgetReached
from alignflow.llm.structured import ParseError
from alignflow.llm.types import Answers, Completion, OnResult, ProviderError, Request, Result

if TYPE_CHECKING:
    from alignflow.llm.client import LLM

RECORD = "provider-batch-"  # the name of a provider batch's record, before its tag
SKEW_S = 5.0  # how much earlier than its intent the provider's clock may date a batch made for it


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
    seen: set[str] = field(default_factory=set)  # the provider batches it has had a result from

    @property
    def custom_id(self) -> str:
        """The request key, or for a re-ask a key of its own (a provider takes each custom id once per batch)."""
        return self.key if self.ask == 0 else hashlib.sha256(f"{self.key}:{self.ask}".encode()).hexdigest()


class Submissions:
    """The provider batches made for one endpoint in one batch of the run, oldest first, each recorded in the run's
    store when there is one (a note of the answer log)."""

    def __init__(self, answers: Answers | None, endpoint: str):
        self.notes = answers if hasattr(answers, "put_note") else None
        self.endpoint = hashlib.sha256(endpoint.encode()).hexdigest()[:12]  # a URL may hold a secret: not kept
        saved = self.notes.notes(RECORD).values() if self.notes is not None else ()
        self.records: list[dict[str, Any]] = sorted((r for r in saved if r["endpoint"] == self.endpoint),
                                                    key=lambda r: r["at"])
        self._ids = {r["tag"]: set(r["ids"]) for r in self.records}

    def next_for(self, item: Item) -> dict[str, Any] | None:
        """The first made batch that holds the item and has not given it a result yet."""
        return next((r for r in self.records if r["id"] and r["id"] not in item.seen
                     and item.custom_id in self._ids[r["tag"]]), None)

    async def submit(self, backend, lines: list[bytes], ids: list[str]) -> dict[str, Any]:
        """Record the intent, make the batch, record its id. The tag is drawn at random, not hashed from the content:
        a retry can send the very same lines again, and so can another run of the same requests."""
        record = {"endpoint": self.endpoint, "tag": uuid.uuid4().hex, "ids": ids, "id": None, "at": time.time()}
        self._save(record)  # before the provider makes anything
        record["id"] = await backend.submit(lines, record["tag"])
        self._save(record)
        self.records.append(record)
        self._ids[record["tag"]] = set(ids)
        return record

    async def reconcile(self, backend) -> None:
        """Intents a kill left without an id: adopted when the provider's list of batches has the batch made for
        them, else forgotten (their requests are sent again, in the same batches)."""
        for record in [r for r in self.records if r["id"] is None]:
            taken = {r["id"] for r in self.records if r["id"]}
            record["id"] = await backend.find(record["tag"], record["at"] - SKEW_S, len(record["ids"]), taken)
            if record["id"]:
                self._save(record)
            else:
                self.records.remove(record)
                if self.notes is not None:
                    self.notes.drop_note(RECORD + record["tag"])

    def _save(self, record: dict[str, Any]) -> None:
        if self.notes is not None:
            self.notes.put_note(RECORD + record["tag"], record)


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
    sent = Submissions(answers, llm.endpoint.name)
    if items:
        await sent.reconcile(backend)
    stopped: BudgetReached | None = None
    while items:
        waiting: dict[str, set[str]] = {}  # by batch tag: the custom ids it answers this round
        fresh = []
        for item in items.values():
            record = sent.next_for(item)
            if record is None:
                fresh.append(item)
            else:
                waiting.setdefault(record["tag"], set()).add(item.custom_id)
        for chunk in _chunks(fresh, llm, backend):
            try:
                _reserve(llm, chunk)
            except BudgetReached as exc:
                stopped = stopped or exc
                for item in chunk:
                    del items[item.custom_id]
                continue
            lines = [backend.batch_line(item.custom_id, dataclasses.replace(item.request, messages=item.messages))
                     for item in chunk]
            record = await sent.submit(backend, lines, [item.custom_id for item in chunk])
            waiting[record["tag"]] = set(record["ids"])
        for record in [r for r in sent.records if r["tag"] in waiting]:  # in the order made: a replay settles
            await _wait(backend, record["id"], llm.config.batch_poll_s)  # (and re-queues) as the first run did
            found = await backend.results(record["id"])
            for cid in record["ids"]:
                if cid in waiting[record["tag"]]:
                    item = items.pop(cid)
                    item.seen.add(record["id"])
                    _settle(llm, item, found.get(cid), items, results, answers, on_result)
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
