"""`alignflow quarantine list|show|release|drop RUN_DIR [BATCH]`: the batches the gate stopped, by hand."""
from __future__ import annotations

from alignflow.cli import fail


def register(sub) -> None:
    group = sub.add_parser("quarantine", help="batches stopped by the data-quality gate: look, release, drop")
    actions = group.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="every quarantined or decided batch of a run")
    listing.add_argument("run_dir")
    listing.set_defaults(func=cmd_list)
    show = actions.add_parser("show", help="a batch's failed expectations, examples and decisions")
    show.add_argument("run_dir")
    show.add_argument("batch", help="e.g. responses/3 or responses/batch-00003")
    show.set_defaults(func=cmd_show)
    for action, text in (("release", "let the batch through: the next stage gets it when the run is resumed"),
                         ("drop", "confirm the batch stays out (its rows stay in quarantine)")):
        decide = actions.add_parser(action, help=text)
        decide.add_argument("run_dir")
        decide.add_argument("batch")
        decide.add_argument("--reason", default="", help="why (required); recorded with the decision")
        decide.set_defaults(func=cmd_decide)


def _user_errors(command):
    """A QuarantineError or a missing file becomes one line on stderr and exit code 2."""
    def run(args) -> int:
        from alignflow.review.quarantine import QuarantineError

        try:
            return command(args)
        except (QuarantineError, FileNotFoundError) as exc:
            return fail(str(exc))
    return run


@_user_errors
def cmd_list(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from alignflow.review import quarantine

    store, run_id = quarantine.open_run(args.run_dir)
    every = quarantine.entries(store, run_id)
    if not every:
        print(f"no quarantined batches in {args.run_dir}")
        return 0
    table = Table(title=f"quarantine of run {run_id}")
    for head in ("batch", "status", "rows", "failed expectations"):
        table.add_column(head, no_wrap=True)
    table.add_column("decision", overflow="fold", min_width=30)
    for e in every:
        decision = f"{e.decision['action']} {e.decision['at']}: {e.decision['reason']}" if e.decision else ""
        table.add_row(e.name, e.status, str(e.rows if e.rows is not None else ""), "\n".join(e.failed_expectations()),
                      decision)
    console = Console()
    console.width = max(console.width, 200)  # a file or a narrow pipe still gets whole cells
    console.print(table)
    return 0


@_user_errors
def cmd_show(args) -> int:
    from alignflow.review import quarantine

    store, run_id = quarantine.open_run(args.run_dir)
    entry = quarantine.find(store, run_id, args.batch)
    result = entry.result
    if result:
        counts = ", ".join(f"{k} {v}" for k, v in result.outcomes.items())
        print(f"{entry.name}: {entry.status} ({result.rows} rows: {counts}); "
              f"{len(result.checks) - len(result.failed)} of {len(result.checks)} expectations passed")
        for check in result.failed:
            print(f"  failed {check.line()}")
            print(f"    rows: {_where(check)}")
            for example in check.examples:
                print(f"    e.g. {example}")
        print(f"report: {store.join(result.report_key or '')}")
    else:
        print(f"{entry.name}: {entry.status}")
    if entry.in_quarantine:
        print(f"rows:   {store.join(quarantine.rows_key(run_id, entry))}")
    for d in quarantine.history(store, run_id, entry.name):
        print(f"decision: {d['action']} at {d['at']} ({d['rows']} rows, content {d['content_hash']}): {d['reason']}")
    return 0


def _where(check) -> str:
    from alignflow.quality.gate import condition_text

    return condition_text(check.kwargs.get("row_condition")) or "all"


@_user_errors
def cmd_decide(args) -> int:
    from alignflow.review import quarantine

    store, run_id = quarantine.open_run(args.run_dir)
    decide = quarantine.release if args.action == "release" else quarantine.drop
    decision = decide(store, run_id, args.batch, args.reason)
    after = "it moves on to the next stage when the run is resumed (alignflow run CONFIG --run-id " \
            f"{run_id})" if args.action == "release" else "its rows stay in quarantine"
    print(f"{quarantine.PAST[args.action]} {decision['batch']} ({decision['rows']} rows): {after}")
    return 0
