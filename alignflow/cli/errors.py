"""Nothing the user typed or pointed at reaches a traceback, whichever command.

Each command turns the errors it expects into a precise line of its own; `guarded` is the net under all of them. An
error in what the user gave (a class `user_errors` names: a key, a file, a URL, a run directory) is its one line and
exit 2; a Ctrl-C is one line and exit 130; anything else is one line naming the command and the error, exit 1, with
the traceback only when ALIGNFLOW_DEBUG=1.
"""
from __future__ import annotations

import argparse
import functools
import os
import traceback
from collections.abc import Callable

from alignflow.cli import EXIT_FAILED, EXIT_INTERRUPTED, fail


@functools.cache
def user_errors() -> tuple[type[Exception], ...]:
    """The errors that say, in one line, what is wrong with what the user gave; an orchestrator (`flows.cli`) keeps
    their traceback out of the terminal, as the command prints that line."""
    from alignflow.cli.dedup import InputError
    from alignflow.config import ConfigError
    from alignflow.engine.lease import LeaseHeld
    from alignflow.engine.run import RunIdError
    from alignflow.engine.store import RunDirError, StoreError
    from alignflow.quality.contamination import BenchmarkError
    from alignflow.quality.curate import CurateError
    from alignflow.quality.expectations import SuiteError
    from alignflow.review.decisions import ReviewError
    from alignflow.review.judge_audit import AuditError
    from alignflow.review.labels import LabelsError
    from alignflow.review.position_bias import NotBothOrders
    from alignflow.review.quarantine import QuarantineError
    from alignflow.stages.cai_labels import PairsError
    from alignflow.stages.changes import ConfigChanged
    from alignflow.stages.constitution import ConstitutionError
    from alignflow.stages.exports import ExportError
    from alignflow.stages.revisions import PromptsError
    from alignflow.stages.seeds import SeedError

    return (ConfigError, SeedError, StoreError, RunDirError, RunIdError, LeaseHeld, ConfigChanged, CurateError,
            SuiteError, BenchmarkError, ConstitutionError, PromptsError, PairsError, ExportError, QuarantineError,
            ReviewError, LabelsError, AuditError, NotBothOrders, InputError)


def command_name(args: argparse.Namespace) -> str:
    """`quarantine list`: the command and its action, as the user typed them."""
    return " ".join([args.command, *([args.action] if getattr(args, "action", None) else [])])


def guarded(parse: Callable[[], argparse.Namespace], extra: tuple[type[Exception], ...] = ()) -> int:
    """Parse the command line and run the command it names; whatever it raises is one line and an exit code.
    `extra`: the orchestrator's own user errors (a deploy that cannot be done as asked)."""
    name = "alignflow"
    try:
        args = parse()
        name = command_name(args)
        return args.func(args)
    except KeyboardInterrupt:
        return fail("interrupted; run the same command again (with the same --run-id) to resume", EXIT_INTERRUPTED)
    except (*user_errors(), *extra) as exc:
        return fail(str(exc))
    except RecursionError:  # a parser following a file or a value nested thousands of levels deep
        return fail(f"{name}: an input is nested too deep to read")
    except Exception as exc:
        from alignflow.config import abbreviated
        from alignflow.llm.remote import redact

        if os.environ.get("ALIGNFLOW_DEBUG"):
            traceback.print_exc()
        said = redact(abbreviated(str(exc).strip().splitlines()[0] if str(exc).strip() else "", 300))
        return fail(f"{name} failed: {type(exc).__name__}{': ' if said else ''}{said} (run with ALIGNFLOW_DEBUG=1 "
                    "for the traceback)", EXIT_FAILED)
