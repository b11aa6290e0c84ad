"""Many requests at once, to one LLM or several: live ones each under its endpoint's limits, `mode: batch` ones
as provider batches per model."""
from __future__ import annotations

import asyncio
from collections.abc import Sequence

from alignflow.llm import endpoint as endpoints
from alignflow.llm.batches import answer_in_batches
from alignflow.llm.client import LLM
from alignflow.llm.ledger import BudgetReached
from alignflow.llm.refused import EndpointRefused, is_fatal, refusal
from alignflow.llm.types import Answers, OnResult, ProviderError, Request, Result


def answer_all(llm: LLM, requests: Sequence[Request], on_result: OnResult | None = None,
               answers: Answers | None = None) -> list[Result]:
    """Every request to `llm`, results in the order of `requests`."""
    return generate([(llm, r) for r in requests], on_result, answers)


def generate(calls: Sequence[tuple[LLM, Request]], on_result: OnResult | None = None,
             answers: Answers | None = None) -> list[Result]:
    """Every (llm, request) at once, each under its own endpoint's limits; results in the order of `calls`."""
    return endpoints.run(_generate(calls, on_result, answers))


async def _generate(calls: Sequence[tuple[LLM, Request]], on_result: OnResult | None,
                    answers: Answers | None) -> list[Result]:
    """Every call at once: live ones each on its own, `mode: batch` ones as provider batches per model. When the
    budget or an endpoint that refuses everything stops some, the others still finish (and are saved) before the
    stop is raised (a refusal first), so nothing paid for is lost."""
    stopped: list[BudgetReached | EndpointRefused] = []
    results: list[Result | None] = [None] * len(calls)

    async def one(i: int, llm: LLM, request: Request) -> None:
        try:
            results[i] = await llm.answer(request, answers)
        except (BudgetReached, EndpointRefused) as exc:
            stopped.append(exc)
            return
        if on_result:
            on_result(results[i])

    async def offline(group: list[int]) -> None:
        llm = calls[group[0]][0]
        try:
            answered = await answer_in_batches(llm, [calls[i][1] for i in group], answers, on_result)
        except BudgetReached as exc:
            stopped.append(exc)
            return
        except ProviderError as exc:  # the Batch API itself refused (creating, polling or reading a batch)
            if not is_fatal(exc):
                raise
            stopped.append(refusal(exc, llm.config, asked="a provider batch of requests"))
            return
        for i, result in zip(group, answered):
            results[i] = result

    batched: dict[tuple, list[int]] = {}
    live = []
    for i, (llm, request) in enumerate(calls):
        if llm.config.mode == "batch":
            batched.setdefault((llm.endpoint.name, llm.config.model_dump_json()), []).append(i)
        else:
            live.append(one(i, llm, request))
    await asyncio.gather(*live, *(offline(group) for group in batched.values()))
    if stopped:
        raise next((exc for exc in stopped if isinstance(exc, EndpointRefused)), stopped[0])
    return results  # type: ignore[return-value]
