"""Expectation suites as files (GX's own JSON), and the check that they fit the stage schemas.

Great Expectations is imported lazily, once per process: it costs seconds and most commands never need it.
"""
from __future__ import annotations

import json
from pathlib import Path

from alignflow.records import SCHEMAS

SUITE_DIR = Path("expectations")
COLUMN_ARGS = ("column", "column_A", "column_B")


def check_suite(path: Path) -> list[str]:
    """Every problem of one suite file, each as one line naming the file and the expectation."""
    from great_expectations.core import ExpectationSuite
    from great_expectations.expectations.registry import get_expectation_impl

    stage = path.stem
    if stage not in SCHEMAS:
        return [f"{path}: no stage named {stage} (stages: {', '.join(SCHEMAS)})"]
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return [f"{path}: not valid JSON ({exc})"]
    problems = []
    columns = set(SCHEMAS[stage])
    for number, exp in enumerate(data.get("expectations", []), 1):
        kind = exp.get("type")
        try:
            get_expectation_impl(kind)
        except Exception:  # GX raises its own not-found error types
            problems.append(f"{path}: expectation {number}: unknown type {kind!r}")
            continue
        kwargs = exp.get("kwargs", {})
        named = [kwargs[arg] for arg in COLUMN_ARGS if arg in kwargs] + list(kwargs.get("column_list", []))
        for column in named:
            if column not in columns:
                problems.append(f"{path}: expectation {number} ({kind}): column {column!r} is not in the {stage} schema")
    if not problems:
        try:
            ExpectationSuite(**{k: v for k, v in data.items() if k in ("name", "expectations", "meta", "notes")})
        except Exception as exc:  # an expectation whose arguments GX rejects
            problems.append(f"{path}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    return problems


def check_dir(directory: Path = SUITE_DIR) -> tuple[list[Path], list[str]]:
    files = sorted(directory.glob("*.json"))
    return files, [problem for path in files for problem in check_suite(path)]
