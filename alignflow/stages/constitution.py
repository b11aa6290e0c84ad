"""Constitutions as files: the principles answers are critiqued, revised and compared by (Constitutional AI).

A constitution is YAML: a mapping with `principles` (and an optional `name`), or a bare list of principles, so the
paper's JSON file (a list of `name`, `critique_request`, `revision_request`) loads as it is. A file that cannot be
used is one ConstitutionError naming the principle and the field.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# RL-CAI asks "which response is better" under a principle; files without a `choice` get this phrasing of it
DEFAULT_CHOICE = "Which response does better by this principle: {critique_request}"


class ConstitutionError(ValueError):
    """A constitution file that cannot be used: printed as one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Example(_Strict):
    """A worked critique and revision shown to the model before the real one (few-shot)."""

    prompt: str
    response: str
    critique: str
    revision: str


class Principle(_Strict):
    name: str = Field(min_length=1)
    critique_request: str = Field(min_length=1)
    revision_request: str = Field(min_length=1)
    choice: str | None = Field(None, min_length=1, description="the principle as a question choosing between answers")
    weight: float = Field(1.0, gt=0, allow_inf_nan=False, description="relative chance of being drawn")
    tags: list[str] = []
    examples: list[Example] = []

    @property
    def choice_question(self) -> str:
        return self.choice or DEFAULT_CHOICE.format(critique_request=self.critique_request)


class _File(_Strict):
    name: str | None = None
    description: str | None = None
    principles: list = Field(min_length=1)


@dataclass(frozen=True)
class Constitution:
    name: str
    principles: tuple[Principle, ...]

    def check_rounds(self, rounds: int) -> None:
        """Principles never repeat within a row, so a row needs as many distinct principles as rounds."""
        if rounds > len(self.principles):
            raise ConstitutionError(f"constitution {self.name}: {rounds} rounds need {rounds} distinct principles, "
                                    f"it has {len(self.principles)}")

    def draw(self, key: str, k: int) -> list[Principle]:
        """`k` distinct principles, each pick weighted among those left, seeded by `key`: a row draws the same
        principles on every run, whatever batch it lands in."""
        self.check_rounds(k)
        rng = random.Random(key)
        left = list(self.principles)
        drawn = []
        for _ in range(k):
            pick = rng.choices(range(len(left)), weights=[p.weight for p in left])[0]
            drawn.append(left.pop(pick))
        return drawn

    def fingerprint(self) -> list:
        """What the constitution says, for the keys of the batches made under it."""
        return [self.name, [p.model_dump() for p in self.principles]]

    def get(self, name: str) -> Principle:
        return next(p for p in self.principles if p.name == name)


def load_constitution(path: str | Path) -> Constitution:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConstitutionError(f"cannot read constitution {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    except yaml.YAMLError as exc:
        raise ConstitutionError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise ConstitutionError(f"{path}: not valid YAML (nested too deep)") from None
    return parse_constitution(data, source=str(path), default_name=path.stem)


def parse_constitution(data: object, source: str = "constitution", default_name: str = "constitution") -> Constitution:
    if isinstance(data, list):
        data = {"principles": data}
    if not isinstance(data, dict):
        raise ConstitutionError(f"{source}: expected a mapping with `principles` or a list of principles")
    try:
        top = _File.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConstitutionError(f"{source}: {_where(first['loc'])}: {_message(first)}") from None
    principles: list[Principle] = []
    for number, item in enumerate(top.principles, 1):
        principle = _principle(item, number, source)
        earlier = next((n for n, p in enumerate(principles, 1) if p.name == principle.name), None)
        if earlier:
            raise ConstitutionError(f"{source}: principle {principle.name!r} (#{number}): name: "
                                    f"duplicate of principle #{earlier}")
        principles.append(principle)
    return Constitution(name=top.name or default_name, principles=tuple(principles))


def _principle(item: object, number: int, source: str) -> Principle:
    named = item.get("name") if isinstance(item, dict) else None
    label = f"{named!r} (#{number})" if isinstance(named, str) and named else f"#{number}"
    if not isinstance(item, dict):
        raise ConstitutionError(f"{source}: principle {label}: expected a mapping of fields")
    try:
        return Principle.model_validate(item)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConstitutionError(f"{source}: principle {label}: {_where(first['loc'])}: {_message(first)}") from None


def _where(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "principle"


def _message(error: dict) -> str:
    return "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
