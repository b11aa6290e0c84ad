"""Quarantined batches, by hand: list, show, release, drop. A decision is recorded; nothing is ever deleted.

Decisions go to `<run>/quarantine.json` (outside the stage directories, which a stage rewrites on every run), each
with its reason, time and the content hash of the batch it was made on. The gate applies the latest decision on a
batch when the run is resumed and the batch comes out the same: released, it moves on; dropped, it stays.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

from alignflow.config import abbreviated
from alignflow.engine.outputs import read_decisions
from alignflow.engine.store import RunDir, RunDirError, Store, batch_key, open_run_dir
from alignflow.quality.gate import QUARANTINE, GateResult

PAST = {"release": "released", "drop": "dropped"}
_BATCH = re.compile(r"^(?P<stage>[a-z_]+)/(?:batch-)?(?P<number>\d{1,9})$")  # a batch number, not 5,000 digits


class QuarantineError(Exception):
    """A user error: a run or batch that is not there, a decision that cannot be made. One line."""


@dataclass
class Entry:
    """One batch the gate stopped (or a person decided on), as the run directory holds it now."""

    stage: str
    batch: int
    in_quarantine: bool
    result: GateResult | None
    decision: dict | None

    @property
    def name(self) -> str:
        return f"{self.stage}/{self.batch}"

    @property
    def rows(self) -> int | None:
        return self.result.rows if self.result else None

    @property
    def status(self) -> str:
        applies = self.decision is not None and self.result is not None \
            and self.decision["content_hash"] == self.result.content_hash
        if not self.in_quarantine:
            if self.result and self.result.released:
                return "released"
            return f"{PAST[self.decision['action']]} (no longer in quarantine)" if self.decision else "report only"
        if applies and self.decision["action"] == "release":
            return "released (moves on when the run is resumed)"
        return "dropped" if applies else "quarantined"

    @property
    def waiting(self) -> bool:
        """Still stopped at the gate: quarantined, or dropped by hand."""
        return self.in_quarantine and not self.status.startswith("released")

    def failed_expectations(self) -> list[str]:
        return list(dict.fromkeys(c.name() for c in self.result.failed)) if self.result else []


def open_run(run_dir: str) -> tuple[Store, str]:
    """The store holding a run directory (local path or s3:// URL), and the run's id."""
    try:
        return open_run_dir(run_dir)
    except RunDirError as exc:
        raise QuarantineError(str(exc)) from None


def parse_batch(name: str) -> tuple[str, int]:
    """`responses/3` or `responses/batch-00003` → ("responses", 3)."""
    match = _BATCH.match(name.strip().strip("/"))
    if not match:
        raise QuarantineError(f"BATCH must look like responses/3 or responses/batch-00003, not {abbreviated(name)!r}")
    return match["stage"], int(match["number"])


def entries(store: Store, run_id: str) -> list[Entry]:
    """Every batch in quarantine or with a report of a failed validation, and every batch a person decided on."""
    pattern = re.compile(rf"^{re.escape(run_id)}/([^/]+)/{QUARANTINE}/batch-(\d+)\.(parquet|json)$")
    found: dict[tuple[str, int], set[str]] = {}
    for key in store.list(RunDir(store, run_id).prefix):
        if match := pattern.match(key):
            found.setdefault((match[1], int(match[2])), set()).add(match[3])
    latest = {d["batch"]: d for d in read_decisions(store, run_id)}  # a later decision on a batch overrides
    for name in latest:
        found.setdefault(parse_batch(name), set())
    out = []
    for (stage, number), kinds in sorted(found.items()):
        result = _read_report(store, run_id, stage, number) if "json" in kinds else None
        out.append(Entry(stage, number, "parquet" in kinds, result, latest.get(f"{stage}/{number}")))
    return out


def find(store: Store, run_id: str, name: str) -> Entry:
    stage, number = parse_batch(name)
    every = entries(store, run_id)
    for entry in every:
        if (entry.stage, entry.batch) == (stage, number):
            return entry
    held = ", ".join(e.name for e in every if e.in_quarantine) or "none"
    raise QuarantineError(f"no quarantined batch {stage}/{number} in {store.join(run_id)} (in quarantine: {held})")


def history(store: Store, run_id: str, name: str) -> list[dict]:
    """Every decision made on batch `name`, oldest first."""
    return [d for d in read_decisions(store, run_id) if d["batch"] == name]


def rows_key(run_id: str, entry: Entry) -> str:
    return batch_key(run_id, entry.stage, QUARANTINE, entry.batch)


def release(store: Store, run_id: str, name: str, reason: str) -> dict:
    """Let a quarantined batch through: the next stage gets it when the run is resumed (same content only)."""
    return _decide(store, run_id, name, "release", reason)


def drop(store: Store, run_id: str, name: str, reason: str) -> dict:
    """Confirm a batch stays out. Its rows stay in quarantine; nothing is deleted."""
    return _decide(store, run_id, name, "drop", reason)


def decide_all(store: Store, run_id: str, releasing: list[str], dropping: list[str], reason: str) -> list[dict]:
    """Several decisions at once, all or none: a form answered in the Prefect UI is recorded whole, or not at all
    and asked again, saying what was wrong."""
    both = set(map(parse_batch, releasing)) & set(map(parse_batch, dropping))
    if both:
        raise QuarantineError(f"{', '.join(f'{s}/{n}' for s, n in sorted(both))} cannot be both released and dropped")
    if not reason.strip():
        raise QuarantineError("a reason is required: say why (it is recorded with each decision)")
    for name, action in [*((n, "release") for n in releasing), *((n, "drop") for n in dropping)]:
        entry = find(store, run_id, name)
        if not entry.in_quarantine or entry.result is None or entry.status.startswith(PAST[action]):
            raise QuarantineError(f"{entry.name} is {entry.status}: it cannot be {PAST[action]}")
    return [*(release(store, run_id, n, reason) for n in releasing), *(drop(store, run_id, n, reason) for n in dropping)]


def undecided(store: Store, run_id: str) -> list[Entry]:
    """Batches in quarantine nobody has decided on yet."""
    return [e for e in entries(store, run_id) if e.status == "quarantined"]


SHOWN = 5  # batches named in a state message; `alignflow quarantine list` has them all


def state_message(store: Store, run_id: str) -> str | None:
    """'2 batches quarantined: responses/3 (expect_...), judgments/0 (...)', or None when none is."""
    waiting = [e for e in entries(store, run_id) if e.waiting]
    if not waiting:
        return None
    parts = [f"{e.name} ({', '.join(e.failed_expectations()) or 'no report'}"
             f"{'; dropped by hand' if e.status == 'dropped' else ''})" for e in waiting]
    shown = ", ".join(parts[:SHOWN]) + (f", and {len(parts) - SHOWN} more" if len(parts) > SHOWN else "")
    return f"{len(waiting)} batch{'es' if len(waiting) > 1 else ''} quarantined: {shown}"


def _decide(store: Store, run_id: str, name: str, action: str, reason: str) -> dict:
    if not reason.strip():
        raise QuarantineError("--reason is required: say why (it is recorded with the decision)")
    entry = find(store, run_id, name)
    if not entry.in_quarantine or entry.result is None:
        raise QuarantineError(f"{entry.name} is not in quarantine ({entry.status})")
    if entry.status.startswith(PAST[action]):
        raise QuarantineError(f"{entry.name} is already {PAST[action]}")
    decision = {"batch": entry.name, "action": action, "reason": reason.strip(), "rows": entry.rows,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "content_hash": entry.result.content_hash}
    store.write_json(RunDir(store, run_id).quarantine_key, {"decisions": [*read_decisions(store, run_id), decision]})
    return decision


def _read_report(store: Store, run_id: str, stage: str, number: int) -> GateResult:
    return GateResult.from_dict(store.read_json(RunDir(store, run_id).report_key(stage, number))["gate"])
