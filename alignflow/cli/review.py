"""`alignflow review RUN_DIR [--stage S] [--swap ID] [--drop ID] [--tie ID] [--edit ID=TEXT] [--decisions FILE]
[--approve | --reject | --reject-rows ID ...]`: a person's review from the command line.

Without a decision it shows what waits: each stage's sampled rows, each with why it was drawn. With one, it records
it in the run's `review.json`; a flow run suspended for that review on a Prefect server is resumed with it, and a
run started from the command line picks it up when resumed with its run id. Row decisions alone approve the rest.
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
    for verdict, meaning in (("keep", "the judge (or the generator) got it right"),
                             ("drop", "leave the row out (a bad prompt, or both answers bad)"),
                             ("swap", "pairs: the rejected answer is the better one; the pair is flipped"),
                             ("tie", "pairs: neither answer is better; the pair leaves the datasets")):
        review.add_argument(f"--{verdict}", nargs="+", metavar="ID", default=[], help=meaning)
    review.add_argument("--edit", nargs="+", metavar="ID=TEXT", default=[],
                        help="instructions: replace the row's text (the original is recorded)")
    review.add_argument("--decisions", metavar="FILE",
                        help="a JSON or YAML mapping of row id to a decision (`swap`, or {decision: edit, text: ...})")
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
        per_row = _per_row(args)
        if not (args.approve or args.reject or args.reject_rows or per_row):
            _show(store, run_id, stages)
            return 0
        stage = args.stage or _waiting(run_id, stages)
        action = "reject" if args.reject else "reject_rows" if args.reject_rows else "approve"
        decision = review.decide(store, run_id, stage, action, args.reject_rows, args.note, by="cli", per_row=per_row)
    except (review.ReviewError, QuarantineError) as exc:
        return fail(str(exc))
    said = [d["decision"] for d in decision["per_row"].values()]
    counted = ", ".join(f"{said.count(v)} {v}" for v in dict.fromkeys(said))
    print(f"{stage} of run {run_id}: {action}{f' ({counted})' if counted else ''}, recorded in "
          f"{store.join(run_id)}/{review.REVIEW}")
    flow_run_id = stages[stage].get("flow_run_id")
    print(launch.launcher().resume_review(flow_run_id, stage, decision) if flow_run_id and launch.registered()
          else f"resume the run (`alignflow run CONFIG --run-id {run_id}`) to write its datasets")
    return 0


def _per_row(args) -> dict:
    """Row decisions from the flags and the file; a row given two decisions is an error."""
    from alignflow.review.decisions import ReviewError

    found: dict = {}
    if args.decisions:
        found.update(_read_decisions(args.decisions))
    given = [(i, v) for v in ("keep", "drop", "swap", "tie") for i in getattr(args, v)]
    for item in args.edit:
        row_id, sep, text = item.partition("=")
        if not sep:
            raise ReviewError(f"--edit {item!r}: expected ID=TEXT")
        given.append((row_id, {"decision": "edit", "text": text}))
    for row_id, verdict in given:
        if row_id in found and found[row_id] != verdict:
            raise ReviewError(f"row {row_id} is given two decisions")
        found[row_id] = verdict
    return found


def _read_decisions(path: str) -> dict:
    import yaml

    from alignflow.review.decisions import ReviewError

    try:
        with open(path, encoding="utf-8") as file:
            data = yaml.safe_load(file)  # YAML reads JSON too
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc.reason
        raise ReviewError(f"cannot read decisions file {path}: {reason}") from None
    except yaml.YAMLError as exc:
        raise ReviewError(f"{path}: not valid JSON or YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise ReviewError(f"{path}: not valid JSON or YAML (nested too deep)") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, (str, dict)) for k, v in data.items()):
        raise ReviewError(f"{path}: expected a mapping of row id to a decision (`swap`, or {{decision: edit, text: ...}})")
    return data


def _waiting(run_id: str, stages: dict) -> str:
    from alignflow.review.decisions import ReviewError

    waiting = [s for s, e in stages.items() if "decision" not in e] or list(stages)
    if len(waiting) != 1:
        raise ReviewError(f"run {run_id} has {', '.join(waiting)} waiting for review; name one with --stage")
    return waiting[0]


def _show(store, run_id: str, stages: dict) -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    from alignflow.review import decisions as review
    from alignflow.review.shown import markdown

    console = Console()
    console.width = max(console.width, 160)
    for stage, entry in stages.items():
        made = entry.get("decision")
        if made:
            decided = made.get("per_row") or made["rows"]
            rows = f" ({len(decided)} rows decided)" if decided else ""
            console.print(f"{stage}: {made['action']}{rows} by {made['by']} at {made['at']}"
                          + (f": {made['note']}" if made["note"] else ""))
            continue
        rows = review.sample_rows(store, run_id, stage)
        console.rule(f"{stage} of run {run_id}: {rows.height} of {entry['rows']} rows, waiting for review")
        for n, row in enumerate(rows.to_dicts(), 1):
            console.print(f"\n[bold]Row {n}[/bold] · {row['id']}")
            console.print(Markdown(markdown(row)))
        verdicts = " ".join(f"--{v} ID" for v in review.row_decisions(stage) if v != "edit")
        edit = " --edit ID=TEXT" if "edit" in review.row_decisions(stage) else ""
        console.print(f"decide: alignflow review {store.join(run_id)} --stage {stage} [{verdicts}{edit} ...] "
                      "[--approve | --reject] [--note TEXT]")
