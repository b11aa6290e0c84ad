"""Turning model text into a validated pydantic object, leniently: fences, prose around the JSON, small syntax slips."""
from __future__ import annotations

import functools
import json
import re
from typing import TypeVar

import json_repair
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


class ParseError(ValueError):
    """The text holds no object that satisfies the schema."""


def extract_json(text: str) -> object:
    """The first JSON value in `text`, repaired if it is slightly broken."""
    fenced = _FENCE.search(text)
    candidate = fenced.group(1) if fenced else text
    start = min((i for i in (candidate.find("{"), candidate.find("[")) if i >= 0), default=-1)
    if start < 0:
        raise ParseError("no JSON object in the output")
    candidate = candidate[start:]
    try:
        return json.loads(candidate)
    except json.JSONDecodeError:
        pass
    try:
        return json.JSONDecoder().raw_decode(candidate)[0]
    except json.JSONDecodeError:
        repaired = json_repair.loads(candidate)
        if repaired in ("", None, [], {}):
            raise ParseError("no JSON object in the output") from None
        return repaired


def parse_structured(text: str, schema: type[M]) -> M:
    try:
        return schema.model_validate(extract_json(text))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "output"
        raise ParseError(f"output does not match {schema.__name__}: {where}: {first['msg']}") from None


@functools.cache
def json_schema(schema: type[BaseModel]) -> dict:
    """The model's JSON schema, built once: pydantic rebuilds it on every call, and every request needs it."""
    return schema.model_json_schema()


def schema_hint(schema: type[BaseModel]) -> str:
    """A compact, readable form of the schema: small models copy the words of a full JSON Schema into their answer."""
    fields = []
    for name, info in json_schema(schema)["properties"].items():
        kind = info.get("type", "value")
        if kind == "array":
            kind = f"list of {info.get('items', {}).get('type', 'value')}"
        if "minimum" in info and "maximum" in info:
            kind += f" from {info['minimum']} to {info['maximum']}"
        fields.append(f'"{name}": {kind}')
    return "Answer with only a JSON object: {" + ", ".join(fields) + "}"
