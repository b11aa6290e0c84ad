"""Labels people gave in Argilla, brought back into the run: the preference each annotator chose on a pair's
record becomes the same per-row decision a reviewer makes, applied as a reviewer's is.

Most annotators prefer the chosen response: `keep`; the rejected one: `swap` (the pair is flipped, and counts as a
judge error); a tie or an even split: `tie` (the pair leaves the datasets). Records nobody answered stay as they are.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from alignflow.engine.store import Store
from alignflow.review import decisions as review
from alignflow.stages.exports import ARGILLA_RECORDS

QUESTION = "preference"  # the export's question: which response is better (chosen, rejected, tie)
AS_DECISION = {"chosen": "keep", "rejected": "swap", "tie": "tie"}


class LabelsError(Exception):
    """Records that cannot be read or do not belong to the run: one line."""


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records as Argilla writes them (`Record.to_dict`): a dataset directory (`Dataset.to_disk`), a JSON list, or
    JSON lines."""
    file = path / ARGILLA_RECORDS if path.is_dir() else path
    if not file.is_file():
        raise LabelsError(f"no Argilla records at {path} (a directory from Dataset.to_disk, or a .json/.jsonl file)")
    text = file.read_text(encoding="utf-8")
    try:
        records = [json.loads(line) for line in text.splitlines() if line.strip()] if file.suffix == ".jsonl" \
            else json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelsError(f"{file}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and "id" in r for r in records):
        raise LabelsError(f"{file}: expected a list of records, each with an id")
    return records


def verdicts(records: list[dict[str, Any]]) -> dict[str, str]:
    """Each answered record's preference, the most annotators' (an even split is a tie)."""
    out = {}
    for record in records:
        votes = Counter(answer["value"] for answer in (record.get("responses") or {}).get(QUESTION) or [])
        if not votes:
            continue
        (top, count), *rest = votes.most_common()
        out[str(record["id"])] = "tie" if rest and rest[0][1] == count else top
    return out


def import_labels(store: Store, run_id: str, path: Path, note: str = "") -> dict[str, Any]:
    """Record the annotators' verdicts on the run's pairs as a review decision; returns it, with the counts."""
    found = verdicts(read_records(path))
    if not found:
        raise LabelsError(f"no record at {path} has an answer to the {QUESTION!r} question: nothing to import")
    counts = Counter(found.values())
    summary = ", ".join(f"{counts[v]} {v}" for v in ("chosen", "rejected", "tie") if counts[v])
    per_row = {pair: AS_DECISION[verdict] for pair, verdict in sorted(found.items())}
    try:
        decision = review.decide_outside(store, run_id, "pairs", sorted(found), "approve", [],
                                         note or f"Argilla: {len(found)} pairs labelled ({summary})", by="argilla",
                                         per_row=per_row)
    except review.ReviewError as exc:
        raise LabelsError(str(exc)) from None
    return {**decision, "labelled": len(found), "verdicts": dict(counts)}
