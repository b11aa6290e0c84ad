"""`alignflow judge audit CONFIG --pairs FILE`: the configured judge measured against people's preferences.

The pairs file, the config, the API key, the store and the endpoint are checked before the first request; each
problem is one line.
"""
from __future__ import annotations

import argparse

from alignflow.cli import EXIT_STOPPED, fail


def register(sub) -> None:
    group = sub.add_parser("judge", help="the AI judge: measure it against human preference labels")
    actions = group.add_subparsers(dest="action", required=True)
    audit = actions.add_parser("audit", help="judge pairs people labelled (a DPO export or HH-RLHF) in both orders; "
                                             "agreement with people, order flips, cost")
    audit.add_argument("config")
    audit.add_argument("--pairs", required=True, metavar="FILE",
                       help="JSONL (.gz) or Parquet: `prompt`, `chosen`, `rejected`, or HH-RLHF transcripts")
    audit.add_argument("--limit", type=_positive, metavar="N", help="audit the first N usable pairs of the file")
    audit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (repeatable)")
    audit.set_defaults(func=cmd_audit)


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of pairs, not {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 pair, not {number}")
    return number


def cmd_audit(args) -> int:
    from alignflow.config import ConfigError, load_config
    from alignflow.engine.store import Store, StoreError
    from alignflow.llm.ledger import BudgetReached
    from alignflow.llm.preflight import check_endpoints
    from alignflow.llm.prices import load_prices
    from alignflow.review import judge_audit

    try:
        config = load_config(args.config, args.set)
        pairs = judge_audit.read_pairs(args.pairs, args.limit)
        judge = config.llm_for("judge")
        judge.api_key()
        Store(config.store).check_writable()
        check_endpoints([judge])
        load_prices(config.prices)  # the report prices the audit: read now, not after every request
    except (ConfigError, StoreError, judge_audit.AuditError) as exc:
        return fail(str(exc))
    from rich.console import Console

    from alignflow.cli.progress_bars import RichProgress
    from alignflow.engine import progress

    with RichProgress(Console(stderr=True)) as sink:
        progress.set_sink(sink)
        try:
            report = judge_audit.audit(config, args.pairs, args.limit, pairs=pairs)
        except BudgetReached as exc:
            return fail(f"judge audit stopped: {exc}", EXIT_STOPPED)
        except (ConfigError, StoreError) as exc:  # the prices file; a store that went away
            return fail(str(exc))
        finally:
            progress.set_sink(None)
    _print(report)
    return 0


def _print(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from alignflow.review.judge_audit import figures

    console = Console()
    console.width = max(console.width, 120)  # the table fits when output goes to a file or a narrow pipe
    table = Table(title=f"judge audit {report['audit_id']}")
    table.add_column("figure", no_wrap=True)
    table.add_column("value")
    for name, value in figures(report):
        table.add_row(name, value)
    console.print(table)
    print(f"report: {report['report']}")
