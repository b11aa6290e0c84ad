"""`alignflow agreement RUN_DIR`: the judge's position bias on a run judged in both orders."""
from __future__ import annotations

from alignflow.cli import fail


def cmd_agreement(args) -> int:
    from alignflow.engine.store import RunDir, RunDirError, open_run_dir
    from alignflow.review.position_bias import NotBothOrders, measure

    run_dir = args.run_dir.rstrip("/")
    try:
        store, run_id = open_run_dir(run_dir)
    except RunDirError as exc:
        return fail(str(exc))
    judged = RunDir(store, run_id)
    if not store.list_dir(judged.outcome_dir("judgments")):
        return fail(f"no judgments in {run_dir}: the judge stage has not run")
    try:
        result = measure(judged.read("judgments"))
    except NotBothOrders as exc:
        return fail(f"{run_dir}: {exc}")
    print("\n".join(result.lines()))
    return 0


def register(sub) -> None:
    p = sub.add_parser("agreement", help="measure judge position bias on a run judged in both orders")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_agreement)
