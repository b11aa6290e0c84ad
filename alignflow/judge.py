"""UltraFeedback-style judging: per aspect, one call shows every response of an instruction, in a shuffled order
that is mapped back, and asks for exactly one rating per response. Optionally judged again in reversed order and
averaged, against position bias."""
from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass

import polars as pl
from pydantic import BaseModel, Field, create_model

from alignflow.llm.types import Request, Result
from alignflow.prompts import load
from alignflow.records import ASPECTS, frame, stable_id
from alignflow.run import Run, Written

STAGE = "judgments"


class AspectRating(BaseModel):
    rationale: str = Field(max_length=300)
    rating: int = Field(ge=1, le=5)


@functools.cache
def ratings_for(count: int) -> type[BaseModel]:
    """The output schema for `count` responses: the number of ratings must match, or the answer is re-asked."""
    return create_model(f"Ratings{count}", ratings=(list[AspectRating], Field(min_length=count, max_length=count)))


def shown_order(seed: int, instruction_id: str, count: int) -> list[int]:
    """Which response is shown at each position: a seeded shuffle, the same on every rerun."""
    order = list(range(count))
    random.Random(f"{seed}:{instruction_id}").shuffle(order)
    return order


@dataclass
class _Call:
    instruction: int  # index into the batch's instruction groups
    aspect: str
    reversed: bool
    order: list[int]  # order[position] = index of the response in its group
    request: Request


def _render(instruction: str, responses: list[str], aspect: str) -> str:
    shown = "\n\n".join(f"### Answer {i}\n{text}" for i, text in enumerate(responses, 1))
    return load("judge").render(aspect_title=aspect.replace("_", " "), rubric=load(f"rubric_{aspect}").render(),
                                instruction=instruction, responses=shown, count=len(responses))


def _calls(run: Run, llm, groups: list[pl.DataFrame]) -> list[_Call]:
    cfg = run.config.judge
    calls = []
    for g, group in enumerate(groups):
        texts = group["response"].to_list()
        forward = shown_order(run.config.seed, group["instruction_id"][0], len(texts))
        for aspect in cfg.aspects:
            for reverse in (False, True) if cfg.both_orders else (False,):
                order = forward[::-1] if reverse else forward
                text = _render(group["instruction"][0], [texts[i] for i in order], aspect)
                request = llm.request([{"role": "user", "content": text}], schema=ratings_for(len(texts)),
                                      max_tokens=max(llm.config.max_tokens, 120 * len(texts)))
                calls.append(_Call(g, aspect, reverse, order, request))
    return calls


def _provenance(llm, results: list[tuple[_Call, Result]], share: int, first: bool) -> dict:
    """One judgment row stands on several calls: raw outputs by aspect and order; tokens split over the responses."""
    raw = {f"{c.aspect}{' reversed' if c.reversed else ''}": r.text for c, r in results}
    tokens_in = sum(r.input_tokens for _, r in results)
    tokens_out = sum(r.output_tokens for _, r in results)
    template = load("judge")
    return {"provider": llm.provider, "model": llm.model, "template": template.name,
            "template_version": template.version, "raw_output": json.dumps(raw, ensure_ascii=False),
            "input_tokens": tokens_in // share + (tokens_in % share if first else 0),
            "output_tokens": tokens_out // share + (tokens_out % share if first else 0),
            "latency_s": round(max(r.latency_s for _, r in results), 4), "attempts": sum(r.attempts for _, r in results),
            "finish_reason": next((r.finish_reason for _, r in results if r.finish_reason != "stop"), "stop"),
            "cached": all(r.cached for _, r in results)}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def judge_batch(run: Run, number: int, responses: pl.DataFrame) -> Written:
    """Every response of the batch ends as one kept judgment (all aspects rated) or one failed row."""
    llm = run.llm("judge")
    groups = [g for _, g in responses.sort("id").group_by("instruction_id", maintain_order=True)]
    calls = _calls(run, llm, groups)
    results = run.generate(llm, [c.request for c in calls], STAGE)
    by_group: dict[int, list[tuple[_Call, Result]]] = {}
    for call, result in zip(calls, results):
        by_group.setdefault(call.instruction, []).append((call, result))

    kept, failed = [], []
    for g, group in enumerate(groups):
        answered = by_group[g]
        errors = [f"{c.aspect}{' (reversed)' if c.reversed else ''}: {r.error}" for c, r in answered if not r.ok]
        # scores[response][(aspect, reversed)] = rating; rationales from the forward order
        scores: list[dict] = [{} for _ in range(group.height)]
        rationales: list[dict] = [{} for _ in range(group.height)]
        for call, result in answered:
            if result.ok:
                for position, rating in enumerate(result.parsed.ratings):
                    scores[call.order[position]][(call.aspect, call.reversed)] = rating.rating
                    if not call.reversed:
                        rationales[call.order[position]][call.aspect] = rating.rationale
        forward = next(c.order for c, _ in answered if not c.reversed)
        for i, row in enumerate(group.to_dicts()):
            out = {"id": stable_id(STAGE, row["id"], llm.provider, llm.model), "response_id": row["id"],
                   "instruction_id": row["instruction_id"], "position": forward.index(i),
                   **_provenance(llm, answered, group.height, i == 0)}
            if errors:
                failed.append({**out, "error": "; ".join(errors)})
                continue
            aspect_scores = {a: _mean([v for (asp, _), v in scores[i].items() if asp == a])
                             for a in run.config.judge.aspects}
            fwd = _mean([v for (_, rev), v in scores[i].items() if not rev])
            rev = _mean([v for (_, rev), v in scores[i].items() if rev])
            kept.append({**out, **aspect_scores, "rating": _mean(list(aspect_scores.values())), "rating_forward": fwd,
                         "rating_reversed": rev, "rationales": {a: rationales[i].get(a) for a in ASPECTS}})
    return run.write_batch(STAGE, number, kept=frame(kept, STAGE), failed=frame(failed, STAGE))
