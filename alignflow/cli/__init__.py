"""Subcommands of `alignflow`, one module per command group, each with `register(subparsers)`.

A command returns its exit code; a user error is one line on stderr through `fail`, never a traceback.
"""
from __future__ import annotations

import sys

EXIT_USER_ERROR = 2
EXIT_EMPTY = 3  # the run finished, but a dataset it was asked for has no rows (or the datasets are held)
EXIT_STOPPED = 4  # the run stopped before its end (its budget, a review): the same command resumes it


def fail(message: str, code: int = EXIT_USER_ERROR) -> int:
    print(f"alignflow: {message}", file=sys.stderr)
    return code
