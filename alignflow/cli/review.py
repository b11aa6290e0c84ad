"""`alignflow review RUN_DIR [--approve | --reject | --reject-rows ID ...]`: a person's review from the command line.

Without a decision it shows what waits: each stage's sampled rows. With one, it records it in the run's
`review.json`; a flow run suspended for that review on a Prefect server is resumed with it, and a run started from
the command line picks it up when resumed with its run id.
"""
from __future__ import annotations

from alignflow.cli import fail


def register(sub) -> None:
    review = sub.add_parser("review", help="show a run's sample waiting for review, or approve or reject it")
    review.add_argument("run_dir", help="the run directory (a path or an s3:// URL)")
    review.add_argument("--stage", help="the stage to decide on (default: the one waiting)")
    decision = review.add_mutually_exclusive_group()
    decision.add_argument("--approve", action="store_true", help="the rows go into the datasets")
    decision.add_argument("--reject", action="store_true", help="none of the stage's rows go into the datasets")
    decision.add_argument("--reject-rows", nargs="+", metavar="ID",
                          help="leave out these rows (by `id`), keep the rest")
    review.add_argument("--note", default="", help="why; stored with the decision")
    review.set_defaults(func=cmd_review)


def cmd_review(args) -> int:
    from alignflow.cli import launch
    from alignflow.review import decisions as review
    from alignflow.review.quarantine import QuarantineError, open_run

    try:
        store, run_id = open_run(args.run_dir)
        stages = review.read(store, run_id)
        if not stages:
            return fail(f"run {run_id} has no review: set `review.stages` in its config")
        if not (args.approve or args.reject or args.reject_rows):
            _show(store, run_id, stages)
            return 0
        stage = args.stage or _waiting(run_id, stages)
        action = "approve" if args.approve else "reject" if args.reject else "reject_rows"
        decision = review.decide(store, run_id, stage, action, args.reject_rows, args.note, by="cli")
    except (review.ReviewError, QuarantineError) as exc:
        return fail(str(exc))
    rejected = f" ({len(decision['rows'])} rows)" if decision["rows"] else ""
    print(f"{stage} of run {run_id}: {action}{rejected}, recorded in {store.join(run_id)}/{review.REVIEW}")
    flow_run_id = stages[stage].get("flow_run_id")
    print(launch.launcher().resume_review(flow_run_id, stage, decision) if flow_run_id and launch.registered()
          else f"resume the run (`alignflow run CONFIG --run-id {run_id}`) to write its datasets")
    return 0


def _waiting(run_id: str, stages: dict) -> str:
    from alignflow.review.decisions import ReviewError

    waiting = [s for s, e in stages.items() if "decision" not in e] or list(stages)
    if len(waiting) != 1:
        raise ReviewError(f"run {run_id} has {', '.join(waiting)} waiting for review; name one with --stage")
    return waiting[0]


def _show(store, run_id: str, stages: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from alignflow.review import decisions as review

    console = Console()
    console.width = max(console.width, 160)
    for stage, entry in stages.items():
        made = entry.get("decision")
        if made:
            rows = f" ({len(made['rows'])} rows)" if made["rows"] else ""
            console.print(f"{stage}: {made['action']}{rows} by {made['by']} at {made['at']}"
                          + (f": {made['note']}" if made["note"] else ""))
            continue
        rows = review.sample_rows(store, run_id, stage)
        table = Table(title=f"{stage} of run {run_id}: {rows.height} of {entry['rows']} rows, waiting for review",
                      show_lines=True)
        for column in rows.columns:
            wide = column in ("prompt", "chosen", "rejected")
            table.add_column(column, overflow="fold", max_width=48 if wide else None)
        for row in rows.iter_rows():
            table.add_row(*(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row))
        console.print(table)
        console.print(f"decide: alignflow review {store.join(run_id)} --approve | --reject | --reject-rows ID ... "
                      "[--note TEXT]")
