"""A user's input file (seeds, prompts, pairs) read line by line: every problem is one line naming the place."""
from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
        raise error(f"cannot read {what} file {path}: {exc}") from None
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield f"{path}:{number}", line.strip()


def parse(place: str, line: str, error: type[Exception]) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise error(f"{place}: not valid JSON ({exc.msg})") from None


def records(path: str | Path, what: str, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    """A JSONL file's values, each with its place."""
    for place, line in lines(path, what, error):
        yield place, parse(place, line, error)
