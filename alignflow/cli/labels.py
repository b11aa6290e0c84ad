"""`alignflow import-labels RUN_DIR PATH`: the labels people gave in Argilla, applied to the run as a review.

PATH is what `alignflow export RUN_DIR --format argilla` made, after annotation: the dataset directory Argilla's
`Dataset.to_disk` writes, or its records as a JSON list or JSON lines.
"""
from __future__ import annotations

from pathlib import Path

from alignflow.cli import fail


def register(sub) -> None:
    command = sub.add_parser("import-labels", help="apply Argilla annotators' preferences to a run's pairs")
    command.add_argument("run_dir", help="the run directory (a path or an s3:// URL)")
    command.add_argument("path", type=Path, help="the annotated Argilla dataset directory, or its records (.json, "
                                                 ".jsonl)")
    command.add_argument("--note", default="", help="stored with the decision (default: the counts)")
    command.set_defaults(func=cmd_import_labels)


def cmd_import_labels(args) -> int:
    from alignflow.cli import launch
    from alignflow.review.decisions import read
    from alignflow.review.labels import LabelsError, import_labels
    from alignflow.review.quarantine import QuarantineError, open_run

    try:
        store, run_id = open_run(args.run_dir)
        waiting = read(store, run_id).get("pairs", {}).get("flow_run_id")
        decision = import_labels(store, run_id, args.path, args.note)
    except (LabelsError, QuarantineError) as exc:
        return fail(str(exc))
    verdicts = ", ".join(f"{n} {v}" for v, n in sorted(decision["verdicts"].items()))
    said = [d["decision"] for d in decision["per_row"].values()]
    print(f"pairs of run {run_id}: {decision['labelled']} labelled ({verdicts}); {said.count('swap')} flipped, "
          f"{said.count('tie')} leave the datasets as ties")
    print(launch.launcher().resume_review(waiting, "pairs", decision) if waiting and launch.registered()
          else f"resume the run (`alignflow run CONFIG --run-id {run_id}`) to write its datasets without them")
    return 0
