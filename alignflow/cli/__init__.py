"""Subcommands of `alignflow`, one module per command group, each with `register(subparsers)`.

A command returns its exit code; a user error is one line on stderr through `fail`, never a traceback.
"""
from __future__ import annotations

import sys

EXIT_USER_ERROR = 2


def fail(message: str, code: int = EXIT_USER_ERROR) -> int:
    print(f"alignflow: {message}", file=sys.stderr)
    return code
