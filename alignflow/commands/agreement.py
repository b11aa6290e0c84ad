"""`alignflow agreement RUN_DIR`: the judge's position bias on a run judged in both orders."""
from __future__ import annotations

from alignflow.commands import fail


def cmd_agreement(args) -> int:
    from alignflow.agreement import NotBothOrders, measure
    from alignflow.records import schema_for
    from alignflow.store import RunDirError, open_run_dir

    run_dir = args.run_dir.rstrip("/")
    try:
        store, run_id = open_run_dir(run_dir)
    except RunDirError as exc:
        return fail(str(exc))
    if not store.list_dir(f"{run_id}/judgments/kept"):
        return fail(f"no judgments in {run_dir}: the judge stage has not run")
    try:
        result = measure(store.read_dir(f"{run_id}/judgments/kept", schema=schema_for("judgments")))
    except NotBothOrders as exc:
        return fail(f"{run_dir}: {exc}")
    print("\n".join(result.lines()))
    return 0


def register(sub) -> None:
    p = sub.add_parser("agreement", help="measure judge position bias on a run judged in both orders")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_agreement)
