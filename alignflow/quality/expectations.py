"""Expectation suites as files (GX's own JSON), loading them, and the check that they fit the stage schemas.

A suite validates one frame per batch: the stage's columns plus the derived columns the gate adds
(`DERIVED`). Row-level checks name the rows they apply to with a GX row condition (e.g. kept rows only).
Great Expectations is imported lazily, once per process: it costs seconds and most commands never need it. The
check before a run (`require_suites`) needs no GX at all: it validates each expectation's arguments against the
JSON Schemas GX's own models publish (`gx_catalogue.json`); the gate's worker builds the suite with GX.
"""
from __future__ import annotations

import ast
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import expectations
from alignflow.records import SCHEMAS, schema_for

SUITE_DIR = Path(expectations.__file__).parent  # the top-level `expectations` package: shipped, so workers need no checkout
GATED = ("instructions", "responses", "judgments", "pairs", "revisions", "cai_labels")
COLUMN_ARGS = ("column", "column_A", "column_B")
COLUMN_LIST_ARGS = ("column_list", "column_set")
# added by the gate to every batch frame: which outcome a row has, and whether dedup rejected it
DERIVED = {"outcome": "kept, rejected or failed", "duplicate": "rejected by dedup (reason starts with 'duplicate')"}
QUERY_NAMES = {"index", "True", "False", "None"}  # names a pandas query may use that are not columns


class SuiteError(Exception):
    """A suite file that cannot be used: unreadable, not JSON, or rejected by GX. One line."""


def suite_dir(directory: str | Path | None) -> Path:
    """The configured suite directory (`gate.suites`), or the suites alignflow ships."""
    return Path(directory).expanduser() if directory else SUITE_DIR


def suite_path(directory: str | Path | None, stage: str) -> Path:
    return suite_dir(directory) / f"{stage}.json"


def require_suites(directory: str | Path | None, stages: tuple[str, ...] = GATED) -> None:
    """Every gated stage has a suite GX would take: a missing or broken one is a SuiteError naming its path."""
    for stage in stages:
        path = suite_path(directory, stage)
        if not path.is_file():
            raise SuiteError(f"no expectation suite for the {stage} stage at {path} (gate.suites)")
        if problems := suite_problems(path, _read(path)):
            raise SuiteError(problems[0])


# what GX's ExpectationConfiguration hands an expectation's model besides its kwargs
ENTRY_FIELDS = ("id", "meta", "notes", "description", "rendered_content", "severity")


def suite_problems(path: Path, data: dict) -> list[str]:
    """Why GX would refuse the suite, found without GX: its shape, and each expectation's type and arguments."""
    if not isinstance(data.get("name", ""), str) or not isinstance(data.get("expectations", []), list):
        return [f"{path}: `name` must be a string and `expectations` a list"]
    catalogue = _catalogue()
    problems = []
    for number, entry in enumerate(data.get("expectations", []), 1):
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str) \
                or not isinstance(entry.get("kwargs", {}), dict):
            problems.append(f"{path}: expectation {number}: expected an object with a `type` and `kwargs`")
            continue
        validator = catalogue.get(entry["type"])
        if validator is None:
            problems.append(f"{path}: expectation {number}: unknown type {entry['type']!r}")
            continue
        arguments = {k: entry[k] for k in ENTRY_FIELDS if entry.get(k) is not None} | entry.get("kwargs", {})
        error = next(iter(sorted(validator.iter_errors({k: v for k, v in arguments.items() if v is not None}),
                                 key=lambda e: list(e.absolute_path))), None)
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path)
            problems.append(f"{path}: expectation {number} ({entry['type']}): "
                            f"{where + ': ' if where else ''}{error.message}")
    return problems


@lru_cache(maxsize=1)
def _catalogue() -> dict[str, Any]:
    """A validator per expectation type, from the shipped catalogue (see alignflow/quality/gx_catalogue.py)."""
    from jsonschema import Draft7Validator, validators

    from alignflow.quality.gx_catalogue import CATALOGUE

    # GX's models are pydantic v1, which takes a boolean where a number is asked for (as Python does)
    checker = Draft7Validator.TYPE_CHECKER.redefine_many({
        "number": lambda _, v: isinstance(v, (int, float)), "integer": lambda _, v: isinstance(v, int)})
    lenient = validators.extend(Draft7Validator, type_checker=checker)
    types = json.loads(CATALOGUE.read_text(encoding="utf-8"))["expectations"]
    return {name: lenient(schema) for name, schema in types.items()}


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SuiteError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: expected a JSON object (a GX expectation suite)")
    return data


def _build(path: Path, data: dict) -> Any:
    from great_expectations.core import ExpectationSuite

    try:
        return ExpectationSuite(**{k: v for k, v in data.items() if k in ("name", "expectations", "meta", "notes")})
    except Exception as exc:  # an expectation whose arguments GX rejects
        raise SuiteError(f"{path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None


@lru_cache(maxsize=64)
def _load(path: Path, mtime_ns: int) -> Any:
    return _build(path, _read(path))


def load_suite(path: Path) -> Any:
    """The GX ExpectationSuite in `path`, parsed once per process and again only when the file changes."""
    path = Path(path).resolve()
    return _load(path, path.stat().st_mtime_ns)


def condition_columns(condition: Any) -> list[str]:
    """Columns a row condition names: GX Condition objects as JSON, or a pandas query string."""
    if isinstance(condition, str):
        return _query_columns(condition)
    if not isinstance(condition, dict):
        return []
    kind = condition.get("type")
    if kind in ("comparison", "nullity"):
        return [condition.get("column", {}).get("name")]
    if kind in ("and", "or"):
        return [c for sub in condition.get("conditions", []) for c in condition_columns(sub)]
    if kind == "pass_through":
        return _query_columns(condition.get("pass_through_filter", ""))
    return []


def _query_columns(query: str) -> list[str]:
    try:
        tree = ast.parse(query, mode="eval")
    except SyntaxError:
        return []  # GX reports a query that does not parse when it validates
    return sorted({node.id for node in ast.walk(tree) if isinstance(node, ast.Name)} - QUERY_NAMES)


def named_columns(kwargs: dict) -> list[str]:
    """Every column an expectation's arguments name, its row condition included."""
    named = [kwargs[arg] for arg in COLUMN_ARGS if arg in kwargs]
    named += [c for arg in COLUMN_LIST_ARGS for c in kwargs.get(arg) or []]
    return named + condition_columns(kwargs.get("row_condition"))


def check_suite(path: Path) -> list[str]:
    """Every problem of one suite file, each as one line naming the file and the expectation."""
    from great_expectations.expectations.registry import get_expectation_impl

    stage = path.stem
    if stage not in SCHEMAS:
        return [f"{path}: no stage named {stage} (stages: {', '.join(SCHEMAS)})"]
    try:
        data = _read(path)
    except SuiteError as exc:
        return [str(exc)]
    problems = []
    columns = set(schema_for(stage)) | set(DERIVED)
    for number, exp in enumerate(data.get("expectations", []), 1):
        kind = exp.get("type")
        try:
            get_expectation_impl(kind)
        except Exception:  # GX raises its own not-found error types
            problems.append(f"{path}: expectation {number}: unknown type {kind!r}")
            continue
        for column in named_columns(exp.get("kwargs", {})):
            if column not in columns:
                problems.append(f"{path}: expectation {number} ({kind}): column {column!r} "
                                f"is not in the {stage} schema")
    if not problems:
        try:
            _build(path, data)
        except SuiteError as exc:
            problems.append(str(exc))
    return problems


def check_dir(directory: Path = SUITE_DIR) -> tuple[list[Path], list[str]]:
    files = sorted(directory.glob("*.json"))
    return files, [problem for path in files for problem in check_suite(path)]
