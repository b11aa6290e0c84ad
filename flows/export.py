"""A run's data exported where it is wanted, as a flow: what the shipped automation runs when a pipeline finishes.

A run directory that is not one, or a run with nothing to export, fails the flow run with one line saying so, not
with a traceback: the shipped automation does not start it for an empty run, but a person may.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.states import State

from alignflow.engine.store import RunDirError, open_run_dir
from alignflow.stages.exports import ExportError, export
from flows import deployed

EXTENSION = {"dpo": "parquet", "sft": "parquet", "kto": "parquet", "jsonl": "jsonl", "argilla": "argilla"}


@flow(name="export")
def export_flow(run_dir: str, format: Literal["dpo", "sft", "kto", "jsonl", "argilla"] = "jsonl",
                out: str | None = None, pairs_format: Literal["string", "messages"] = "string") -> dict | State:
    """Write one format of a run's kept data to a local path of the worker.

    Args:
        run_dir: the run directory, `<store>/<run id>` (a path or an s3:// URL).
        format: dpo, sft or kto (Parquet, as TRL takes them), jsonl (the pairs), or argilla (a dataset directory).
        out: where to write; default `exports/<run id>.<extension>` in the worker's working directory.
        pairs_format: prompts and answers as strings, or as chat messages.
    """
    try:
        store, run_id = open_run_dir(run_dir)
        path = Path(out or f"exports/{run_id}.{EXTENSION[format]}")
        rows = export(store, run_id, format, path, pairs_format)
    except (RunDirError, ExportError) as exc:
        return deployed.refused(f"{format} export of {run_dir}: {exc}")
    except OSError as exc:
        return deployed.refused(f"{format} export of {run_dir} to {out or 'exports/'} failed: {exc.strerror or exc}")
    get_run_logger().info("%s: %d rows of run %s -> %s", format, rows, run_id, path.resolve())
    return {"run_id": run_id, "format": format, "rows": rows, "out": str(path.resolve())}
