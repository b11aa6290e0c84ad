"""UltraFeedback-style judging: per aspect, one call shows every response of an instruction, in a shuffled order
that is mapped back, and asks for exactly one rating per response. Optionally judged again in reversed order and
averaged, against position bias."""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from pydantic import BaseModel, Field, create_model

from alignflow.engine.step import Answer, Batch, BatchRef, Job, Outcomes, Step, ask
from alignflow.prompts import load
from alignflow.records import ASPECTS, stable_id

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


@dataclass(frozen=True)
class Call:
    """One judge call: which instruction group, aspect and order, and which response is shown at each position."""

    group: int
    aspect: str
    reversed: bool
    order: list[int]  # order[position] = index of the response in its group


def render(instruction: str, responses: list[str], aspect: str) -> str:
    shown = "\n\n".join(f"### Answer {i}\n{text}" for i, text in enumerate(responses, 1))
    return load("judge").render(aspect_title=aspect.replace("_", " "), rubric=load(f"rubric_{aspect}").render(),
                                instruction=instruction, responses=shown, count=len(responses))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def inconsistent(scores: dict[str, float | None], at: float) -> bool | None:
    """The Notus check: `overall` at least `at` away from the mean of the other aspects (None: not both judged)."""
    others = _mean([v for a, v in scores.items() if a != "overall" and v is not None])
    if scores.get("overall") is None or others is None:
        return None
    return abs(scores["overall"] - others) >= at


class Judge(Step):
    """Batch `n` judges the kept responses of responses batch `n`; all responses of an instruction are in it."""

    stage = STAGE

    @property
    def templates(self) -> tuple[str, ...]:
        return ("judge", *(f"rubric_{a}" for a in self.config.judge.aspects))

    def settings(self) -> dict:
        cfg = self.config.judge
        return {"aspects": cfg.aspects, "both_orders": cfg.both_orders, "llm": self.llm_settings(self.config.llm_for("judge")),
                **({"inconsistent_at": cfg.inconsistent_at} if "overall" in cfg.aspects else {})}

    def refs(self) -> list[BatchRef]:
        return self.following("responses")

    def load(self, ref: BatchRef) -> Batch:
        responses = self.run.dir.read_batch("responses", ref.number)
        return self.batch_of(ref, responses.select("id", "instruction_id", "instruction", "response").sort("id"))

    def jobs(self, batch: Batch) -> list[Job]:
        cfg, llm, template = self.config.judge, self.run.llm("judge"), load("judge")
        groups = [g for _, g in batch.inputs.group_by("instruction_id", maintain_order=True)]
        batch.state = groups
        jobs = []
        for g, group in enumerate(groups):
            texts = group["response"].to_list()
            forward = shown_order(self.run.seed, group["instruction_id"][0], len(texts))
            for aspect in cfg.aspects:
                for reverse in (False, True) if cfg.both_orders else (False,):
                    order = forward[::-1] if reverse else forward
                    text = render(group["instruction"][0], [texts[i] for i in order], aspect)
                    jobs.append(ask(llm, template, text, label=f"{aspect}{' reversed' if reverse else ''}",
                                    data=Call(g, aspect, reverse, order), schema=ratings_for(len(texts)),
                                    max_tokens=max(llm.config.max_tokens, 120 * len(texts))))
        return jobs

    def rows(self, batch: Batch, answered: list[Answer]) -> Outcomes:
        """Every response of the batch ends as one kept judgment (all aspects rated) or one failed row."""
        out = Outcomes()
        rated = set()
        by_group: dict[int, list[Answer]] = {}
        for answer in answered:
            by_group.setdefault(answer.job.data.group, []).append(answer)
        for g, group in enumerate(batch.state):
            answers = tuple(by_group[g])
            failed = any(not a.result.ok for a in answers)
            # scores[response][(aspect, reversed)] = rating; rationales from the forward order
            scores: list[dict] = [{} for _ in range(group.height)]
            rationales: list[dict] = [{} for _ in range(group.height)]
            for answer in answers:
                call, result = answer.job.data, answer.result
                if result.ok:
                    for position, rating in enumerate(result.parsed.ratings):
                        scores[call.order[position]][(call.aspect, call.reversed)] = rating.rating
                        if not call.reversed:
                            rationales[call.order[position]][call.aspect] = rating.rationale
            forward = next(a.job.data.order for a in answers if not a.job.data.reversed)
            for i, row in enumerate(group.iter_rows(named=True)):
                llm = answers[0].job.llm
                base = {"id": stable_id(STAGE, row["id"], llm.provider, llm.model), "response_id": row["id"],
                        "instruction_id": row["instruction_id"], "position": forward.index(i)}
                if failed:
                    out.fail(base, *answers)
                    continue
                aspect_scores = {a: _mean([v for (asp, _), v in scores[i].items() if asp == a])
                                 for a in self.config.judge.aspects}
                fwd = _mean([v for (_, rev), v in scores[i].items() if not rev])
                rev = _mean([v for (_, rev), v in scores[i].items() if rev])
                rated.add(row["instruction_id"])
                out.keep({**base, **aspect_scores, "rating": _mean(list(aspect_scores.values())), "rating_forward": fwd,
                          "rating_reversed": rev, "rationales": {a: rationales[i].get(a) for a in ASPECTS},
                          "inconsistent": inconsistent(aspect_scores, self.config.judge.inconsistent_at)}, *answers)
        out.notes["rated_instructions"] = len(rated)  # the SFT rows this batch can make
        if "overall" in self.config.judge.aspects:
            out.notes["inconsistent"] = sum(bool(row.get("inconsistent")) for row, _ in out.kept)
        return out
