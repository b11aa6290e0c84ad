"""A user's input file (seeds, prompts, pairs) read line by line: every problem is one line naming the place.

What goes into a prompt or a Parquet file is checked here, for every such file: no control character but tab (NUL
ends C strings, the others are invisible), no lone surrogate from a broken `\\ud800` escape, nothing nested deeper
than the JSON parser can follow.
"""
from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignflow.config import abbreviated, unfit_character


def lines(path: str | Path, what: str, error: type[Exception]) -> Iterator[tuple[str, str]]:
    """The file's non-blank lines (gzipped when it ends in .gz), stripped, each with its place (`path:number`);
    `what` names the file in errors."""
    path = Path(path)
    try:
        # utf-8-sig: a byte-order mark (editors on Windows write one) is not part of the first line
        with (gzip.open(path, "rt", encoding="utf-8-sig") if path.suffix == ".gz"
              else open(path, encoding="utf-8-sig")) as file:
            text = file.read()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise error(f"cannot read {what} file {abbreviated(str(path))}: {reason}") from None
    # lines end at "\n" only: str.splitlines would also cut at U+2028 or a form feed, inside a JSON string
    for number, line in enumerate(text.split("\n"), 1):
        line = line.strip().lstrip("\ufeff").strip()  # a mark also starts each file of several concatenated
        if not line:
            continue
        place = f"{path}:{number}"
        if problem := unfit_character(line):
            raise error(f"{place}: holds {problem}; a prompt cannot carry it")
        yield place, line


def parse(place: str, line: str, error: type[Exception]) -> Any:
    """A JSON line's value; its texts are checked as the file's lines are (a JSON escape can make any character)."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise error(f"{place}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise error(f"{place}: nested too deep to read (arrays or objects inside each other ~1,000 levels)") from None
    stack = [value] if "\\" in line else []  # without an escape, every text is in the line, checked already
    while stack:  # not recursive: the value may be nested as deep as the parser could follow
        item = stack.pop()
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            stack += item
        elif isinstance(item, str) and (problem := unfit_character(item)):
            raise error(f"{place}: a JSON string holds {problem}; a prompt cannot carry it")
    return value


def is_json(line: str) -> bool:
    """Whether a line is a JSON value (a plain-text line is not)."""
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    except RecursionError:
        return True
    return True


def records(path: str | Path, what: str, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    """A JSONL file's values, each with its place."""
    for place, line in lines(path, what, error):
        yield place, parse(place, line, error)
