"""`alignflow export RUN_DIR --format dpo|sft|kto|jsonl|argilla --out PATH`: a run's data, where it is wanted.

Needs no config file: the store and run id come from RUN_DIR itself (its parent and its name). Every export gets its
dataset card, README.md beside the file (inside the directory, for Argilla); a README.md alignflow did not write is
never replaced: the export is refused, naming it.
"""
from __future__ import annotations

from pathlib import Path

from alignflow.cli import fail
from alignflow.engine.store import RunDir, RunDirError, Store, open_run_dir
from alignflow.stages.exports import FORMATS, ExportError, card_path, export


def register(sub) -> None:
    p = sub.add_parser("export", help="write a run's data as DPO, SFT or KTO Parquet, JSONL, or an Argilla dataset")
    p.add_argument("run_dir", help="a run directory: <store>/<run_id>, a local path or s3:// URL")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, type=Path,
                   help="a local file (dpo, sft, kto: Parquet; jsonl) or a new directory (argilla); its dataset "
                        "card goes beside it as README.md")
    p.add_argument("--pairs-format", choices=("string", "messages"), default="string",
                   help="prompt/chosen/rejected (and KTO completions) as strings or as chat messages")
    p.set_defaults(func=cmd_export)


def locate(run_dir: str) -> tuple[Store, str]:
    """The store holding RUN_DIR and the run id; ExportError when RUN_DIR is not a run's directory."""
    try:
        return open_run_dir(run_dir)
    except RunDirError as exc:
        raise ExportError(str(exc)) from None


def _require(store: Store, run_id: str, fmt: str) -> None:
    stage = "judgments" if fmt == "sft" else "pairs"
    if not store.list(RunDir(store, run_id).stage_dir(stage)):
        raise ExportError(f"run {run_id} has no {stage} yet: run the pipeline through the {stage} stage first")


def cmd_export(args) -> int:
    from botocore.exceptions import BotoCoreError, ClientError  # an S3 run directory's errors, imported only here

    if str(args.out).startswith("s3:/"):
        return fail("--out must be a local path; copy the file to S3 afterwards")
    try:
        store, run_id = locate(args.run_dir)
        _require(store, run_id, args.format)
        rows = export(store, run_id, args.format, args.out, args.pairs_format)
    except ExportError as exc:
        return fail(str(exc))
    except (BotoCoreError, ClientError) as exc:
        return fail(f"cannot read {args.run_dir}: {exc}")
    except OSError as exc:
        return fail(f"{args.format} export of {args.run_dir} to {args.out} failed: {exc.strerror or exc}")
    print(f"{args.format}: {rows} rows -> {args.out} (card: {card_path(args.format, args.out)})")
    return 0
