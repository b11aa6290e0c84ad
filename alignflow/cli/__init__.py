"""Subcommands of `alignflow`, one module per command group, each with `register(subparsers)`.

A command returns its exit code; a user error is one line on stderr through `fail`, never a traceback.
"""
from __future__ import annotations

import sys

EXIT_FAILED = 1  # the flow run failed, or the command met an error nobody expected (its one line names it)
EXIT_USER_ERROR = 2
EXIT_EMPTY = 3  # the run finished, but a dataset it was asked for has no rows (or the datasets are held)
EXIT_STOPPED = 4  # the run stopped before its end (its budget, a review): the same command resumes it
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: the same command (with the run's --run-id) resumes it
EXIT_TAKEN_OVER = 5  # another writer took the run over while this one was paused; this one wrote nothing since


def fail(message: str, code: int = EXIT_USER_ERROR) -> int:
    print(f"alignflow: {message}", file=sys.stderr)
    return code
