"""What every stage flow does with its batches: one task each, then the totals, and stale batches dropped."""
from __future__ import annotations

from collections import Counter
from typing import Any

from alignflow.run import Run
from alignflow.step import BatchRef
from tasks.stages import BATCH


def run_stage(run: Run, stage: str, refs: list[BatchRef], options: dict[str, Any] | None = None) -> dict[str, int]:
    """Every batch of `stage` at once; returns rows per outcome over them. Batches the stage no longer has (its
    input shrank since an earlier attempt) are removed, so the stage holds exactly what this config makes."""
    futures = [BATCH[stage].submit(run, stage, ref, options) for ref in refs]
    records = [f.result() for f in futures]
    run.prune(stage, {ref.number for ref in refs})
    return totals(records)


def totals(records: list[dict[str, Any]]) -> dict[str, int]:
    """Rows per outcome over batches, zeros included."""
    total: Counter = Counter({"kept": 0, "rejected": 0, "failed": 0, "quarantine": 0})
    for record in records:
        total.update(record["counts"])
    return dict(total)
