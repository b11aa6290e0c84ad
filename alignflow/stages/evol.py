"""Evol-Instruct: rewrite accepted instructions into harder ones (in depth) or new ones of the same domain (breadth).

As in WizardLM, each evolution has its own prompt, and an evolution that failed is eliminated with a reason:
one that is no different from its original, copies the prompt's own words, is a refusal, or is only filler.
"""
from __future__ import annotations

import random
import re
from typing import Annotated, Any

from pydantic import BaseModel, Field

from alignflow.engine.step import Job, ask
from alignflow.llm.client import LLM
from alignflow.prompts import Template, load
from alignflow.quality.filters import normalise

SOURCE = "evol_instruct"

# the section names of our templates and of WizardLM's: an evolution that repeats them copied the prompt
PROMPT_WORDS = ("original task", "rewritten task", "given prompt", "rewritten prompt", "created prompt")
_PROMPT_WORDS = re.compile(r"#[A-Za-z][A-Za-z ]{2,30}#|\b(" + "|".join(PROMPT_WORDS) + r")\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9']+")
# function words only: a rewrite made of these alone says nothing
STOP_WORDS = frozenset("""a an the and or but if then so of to in on at by for with from as is are was were be been it
its this that these those there here what which who whom how why when where do does did can could should would will
shall may might must i you he she we they me him her us them my your our their not no yes ok okay please just very
also too more most some any all each other such only own same than into about over under again once""".split())


class Evolved(BaseModel):
    # bounded so a sampled model cannot run on inside the string
    instruction: Annotated[str, Field(max_length=1500)]


def template(method: str) -> Template:
    return load(f"evol_{method}")


def pick(rng: random.Random, accepted: list[dict], evolved_before: set[str], count: int,
         methods: list[str]) -> list[tuple[dict, str]]:
    """`count` accepted instructions, those never evolved first, each with a method drawn from `methods`."""
    fresh = [row for row in accepted if row["id"] not in evolved_before]
    again = [row for row in accepted if row["id"] in evolved_before]
    rng.shuffle(fresh)
    rng.shuffle(again)
    return [(row, rng.choice(methods)) for row in (fresh + again)[:count]]


def job(llm: LLM, instruction: str, method: str, sample: int, data: Any = None) -> Job:
    """One evolution of `instruction` by `method`."""
    chosen = template(method)
    return ask(llm, chosen, chosen.render(instruction=instruction), data=data, schema=Evolved, sample=sample)


def eliminate(evolved: str, original: str) -> str | None:
    """Why an evolution failed (WizardLM's elimination step), or None if it is a real rewrite."""
    words = _WORD.findall(evolved.lower().replace("\u2019", "'"))
    if normalise(evolved) == normalise(original):
        return "evolution not different from its original"
    if set(words) <= set(_WORD.findall(original.lower().replace("\u2019", "'"))):
        return "evolution adds no word to its original"
    if hit := _PROMPT_WORDS.search(evolved):
        return f"evolution copies the prompt's words: {hit.group(0)!r}"
    if "sorry" in words and len(words) < 80:
        return "evolution is a refusal (says sorry)"
    if all(w in STOP_WORDS for w in words):
        return "evolution is only stop words and punctuation"
    return None
