"""Seed tasks: the Self-Instruct JSONL format (`instruction`, optional `instances`) or plain text lines."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from alignflow.engine.step import Answer, Batch, BatchRef, Outcomes, Step
from alignflow.records import content_hash, frame, stable_id
from alignflow.stages import input_files

MAX_CHARS = 16_000  # a seed is shown in every Self-Instruct prompt: the longest public seed is 6,114; far longer is a mistake


class SeedError(ValueError):
    """The seeds file cannot be read: a user error, printed as one line."""


def load_seeds(path: str | Path) -> pl.DataFrame:
    rows = []
    for place, line in input_files.lines(path, "seeds", SeedError):
        text = _instruction(line, place)
        if len(text) > MAX_CHARS:
            raise SeedError(f"{place}: the task is {len(text):,} characters; a seed task is at most "
                            f"{MAX_CHARS:,} (each is shown in every Self-Instruct prompt)")
        if text:
            rows.append({"id": stable_id("seed", text), "instruction": text, "source": "seed", "parent_ids": [], "round": 0})
    if not rows:
        raise SeedError(f"seeds file {path} holds no instructions")
    return frame(rows, "seeds").unique("id", keep="first", maintain_order=True)


JSON_KINDS = {list: "a JSON array", str: "a JSON string", int: "a JSON number", float: "a JSON number",
              bool: "JSON true or false", type(None): "JSON null"}


def _instruction(line: str, place: str) -> str:
    """A seed line's task: a JSON object's `instruction` (with its first instance's input), or the line itself when
    it is plain text; a line that is JSON but not an object (`[...]`, `null`, `3`, `"text"`) is a mistake."""
    if not line.startswith("{") and not input_files.is_json(line):
        return line
    record = input_files.parse(place, line, SeedError)
    if not isinstance(record, dict):
        raise SeedError(f"{place}: {JSON_KINDS[type(record)]}, not an object; a seed line is a JSON object with an "
                        "`instruction`, or plain text")
    if not isinstance(record.get("instruction"), str):
        raise SeedError(f"{place}: no `instruction` string")
    text = record["instruction"].strip()
    instances = record.get("instances") or []
    if not isinstance(instances, list) or not all(isinstance(i, dict) for i in instances):
        raise SeedError(f"{place}: `instances` must be a list of {{input, output}} objects")
    first_input = instances[0].get("input", "") if instances else ""
    if not isinstance(first_input, str):
        raise SeedError(f"{place}: `instances[0].input` must be a string")
    first_input = first_input.strip()
    return f"{text}\n{first_input}" if first_input else text


class Seeds(Step):
    """The seed file as the run's first stage, so every later batch key follows from its content."""

    stage = "seeds"

    def settings(self) -> dict:
        return {"content": content_hash(load_seeds(self.config.seeds))}

    def refs(self) -> list[BatchRef]:
        return [BatchRef(0)]

    def load(self, ref: BatchRef) -> Batch:
        return self.batch_of(ref, load_seeds(self.config.seeds))

    def rows(self, batch: Batch, answered: list[Answer]) -> Outcomes:
        out = Outcomes()
        for row in batch.inputs.iter_rows(named=True):
            out.keep(row)
        return out
