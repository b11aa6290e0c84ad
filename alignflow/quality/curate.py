"""Programmatic curation: a project's own row filters, named `module:function` under a stage's `curate` key.

The built-in filters hold for any dataset; the rules particular to one (no URLs, a domain's topics, a length in
its own tokenizer) are a few lines of Python the project keeps beside its config. Each function takes a row (a
dict) and returns True to keep it or a reason (a non-empty string) to reject it; the reason is recorded as
`curate module:function: reason`, like the stage's own. A function that raises on a row, or returns anything
else, fails that row with the error, not its batch. A name that does not resolve is a config error, found before
any request. The working directory is importable (appended to `sys.path`, so it shadows no installed module).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import importlib
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


class CurateError(ValueError):
    """A curator the config names cannot be used: one line naming it and why."""


class CurateFailed(Exception):
    """A curator raised on a row or returned neither True nor a reason: that row fails with this message."""


@dataclass(frozen=True)
class Curator:
    path: str  # module:function, as the config names it
    function: Callable[[dict], Any]
    source: str | None  # a hash of the module's file: an edited curator remakes the stage, as a changed name does


def shape_error(path: str) -> str | None:
    """What is wrong with the shape of `module:function` (a dotted module, a colon, an identifier), or None."""
    module, colon, name = path.partition(":")
    if colon and name.isidentifier() and all(part.isidentifier() for part in module.split(".")):
        return None
    return f"curate {path!r}: not module:function (a dotted module name, a colon, a function name)"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _importable_cwd() -> None:
    cwd = os.getcwd()
    if cwd not in {os.path.abspath(p or os.curdir) for p in sys.path}:
        sys.path.append(cwd)


def _source_hash(module: Any) -> str | None:
    try:
        with open(module.__file__, "rb") as file:
            return hashlib.sha256(file.read()).hexdigest()[:16]
    except (AttributeError, TypeError, OSError):
        return None  # a module without a readable file (built in, or a namespace package): its name stands for it


def _resolve_one(path: str) -> Curator:
    if problem := shape_error(path):
        raise CurateError(problem)
    module_name, _, name = path.partition(":")
    _importable_cwd()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CurateError(f"curate {path}: no module named {exc.name!r} (not installed, nor in the working "
                              f"directory {os.getcwd()})") from None
        raise CurateError(f"curate {path}: importing {module_name} failed: {_one_line(exc)}") from None
    except Exception as exc:  # the module's own code: a syntax error, a failing import in it, ...
        raise CurateError(f"curate {path}: importing {module_name} failed: {_one_line(exc)}") from None
    if not hasattr(module, name):
        raise CurateError(f"curate {path}: module {module_name} has no attribute {name!r}")
    function = getattr(module, name)
    if not callable(function):
        raise CurateError(f"curate {path}: {module_name}.{name} is not callable (a {type(function).__name__})")
    return Curator(path, function, _source_hash(module))


@functools.lru_cache(maxsize=64)
def _resolve(paths: tuple[str, ...]) -> tuple[Curator, ...]:
    return tuple(_resolve_one(path) for path in paths)


def resolve(paths: Iterable[str]) -> list[Curator]:
    """The curators `paths` name, imported once per list in a process; CurateError for the first that fails."""
    return list(_resolve(tuple(paths)))


resolve.cache_clear = _resolve.cache_clear  # type: ignore[attr-defined]


def fingerprint(paths: Iterable[str]) -> list[list[str | None]]:
    """What a stage's settings hold of its curators: each name, in order, with a hash of its module's source."""
    return [[c.path, c.source] for c in resolve(paths)]


def first_rejection(row: dict, curators: Iterable[Curator]) -> str | None:
    """The reason of the first curator that rejects `row`, or None when all keep it; CurateFailed when one raises
    or returns neither True nor a non-empty string. Each curator gets its own copy: none can change the row."""
    for curator in curators:
        try:
            verdict = curator.function(copy.deepcopy(row))
        except Exception as exc:
            raise CurateFailed(f"curate {curator.path} raised {_one_line(exc)}") from exc
        if verdict is True:
            continue
        if isinstance(verdict, str) and verdict.strip():
            return f"curate {curator.path}: {verdict.strip()}"
        shown = repr(verdict)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise CurateFailed(f"curate {curator.path} returned {shown}: expected True (keep) or a reason string (reject)")
    return None
