"""Prompt templates live in text files beside this module; the first line names the version."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template as _Template

_DIR = Path(__file__).parent


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    text: str

    def render(self, **values: object) -> str:
        return _Template(self.text).substitute(**values).strip()


@cache
def load(name: str) -> Template:
    """`# version: N` on the first line, then the prompt with $placeholders."""
    header, _, body = (_DIR / f"{name}.txt").read_text().partition("\n")
    return Template(name=name, version=header.removeprefix("# version:").strip(), text=body)
