"""The gate's own checks, beside the GX suite: benchmark contamination and personal data or secrets in a batch's
kept texts. A contaminated row is rejected naming the benchmark item; a row with personal data is rejected or has
each span replaced by a typed placeholder (`gate.pii`), with what was redacted in its `redacted` column. Each check
is also an expectation on the batch: a batch with more than the allowed share of such rows is quarantined, since a
model that leaks benchmarks or personal data that often is leaking more than the check can see.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from alignflow.config import GateConfig
from alignflow.quality.contamination import benchmark_name, fingerprint, index_for
from alignflow.quality.pii import find_pii, redact

# the texts each stage makes or carries into a dataset
SCREENED = {"instructions": ("instruction",), "responses": ("instruction", "response"),
            "revisions": ("prompt", "initial", "revision"), "pairs": ("prompt", "chosen", "rejected"),
            "cai_labels": ("prompt", "response_a", "response_b")}
EXAMPLES = 3


@dataclass
class Screening:
    """What the checks found in one batch: rows rejected or redacted, and the figures the manifest sums."""

    rows: int
    columns: tuple[str, ...]
    contaminated: Counter = field(default_factory=Counter)  # benchmark → rows
    pii_rejected: int = 0
    pii_redacted: int = 0
    pii_kinds: Counter = field(default_factory=Counter)  # kind → spans
    examples: dict[str, list[dict[str, str]]] = field(default_factory=lambda: {"contamination": [], "pii": []})
    checked: tuple[str, ...] = ()  # "contamination", "pii"

    def counts(self) -> dict[str, Any]:
        counts: dict[str, Any] = {}
        if "contamination" in self.checked:
            counts |= {"contaminated": sum(self.contaminated.values()), "contaminated_by": dict(self.contaminated)}
        if "pii" in self.checked:
            counts |= {"pii_rejected": self.pii_rejected, "pii_redacted": self.pii_redacted,
                       "pii_kinds": dict(self.pii_kinds)}
        return counts


def applies(stage: str, config: GateConfig) -> bool:
    return config.enabled and stage in SCREENED and bool(config.decontaminate.benchmarks or config.pii != "off")


def definition(stage: str, config: GateConfig) -> dict | None:
    """The checks as they shape a stage's rows, for its batch keys: None when none applies."""
    if not applies(stage, config):
        return None
    return {"decontaminate": fingerprint(config.decontaminate), "pii": config.pii}


def screen(stage: str, outcomes: dict[str, pl.DataFrame], config: GateConfig
           ) -> tuple[dict[str, pl.DataFrame], Screening | None]:
    """The batch's outcomes with contaminated (and, under `reject`, personal-data) kept rows moved to rejected,
    and personal data redacted under `redact`; None when no check applies or nothing was kept."""
    kept = outcomes.get("kept")
    if kept is None or not kept.height or not applies(stage, config):
        return outcomes, None
    index = index_for(config.decontaminate)
    columns = tuple(c for c in SCREENED[stage] if c in kept.columns)
    found = Screening(rows=kept.height, columns=columns,
                      checked=(("contamination",) if index else ()) + (("pii",) if config.pii != "off" else ()))
    keep, reject = [], []
    for row in kept.iter_rows(named=True):
        texts = {c: row[c] for c in columns if isinstance(row[c], str)}
        hit = next((h for c, text in texts.items() if index and (h := index.find(text))), None)
        if hit:
            found.contaminated[hit.benchmark] += 1
            _example(found, "contamination", row, hit.reason().removeprefix("contaminated: "))
            reject.append({**row, "reason": hit.reason()})
            continue
        spans = {c: s for c, text in texts.items() if config.pii != "off" and (s := find_pii(text))}
        if not spans:
            keep.append(row)
            continue
        kinds = sorted({f.kind for s in spans.values() for f in s})
        where = ", ".join(f"{kind} in {c}" for c, s in spans.items() for kind in sorted({f.kind for f in s}))
        found.pii_kinds.update(f.kind for s in spans.values() for f in s)
        _example(found, "pii", row, where)  # what and where, never the value
        if config.pii == "reject":
            found.pii_rejected += 1
            reject.append({**row, "reason": f"personal data: {', '.join(kinds)}"})
            continue
        found.pii_redacted += 1
        row = {**row, **{c: redact(texts[c], s) for c, s in spans.items()}, "redacted": where.split(", ")}
        if isinstance(row.get("raw_output"), str):
            row["raw_output"] = redact(row["raw_output"], find_pii(row["raw_output"]))
        keep.append(row)
    if not reject and not found.pii_redacted:
        return outcomes, found
    screened = dict(outcomes)
    screened["kept"] = pl.DataFrame(keep, schema=kept.schema)
    if reject:
        rejected = pl.DataFrame(reject, schema=kept.schema)
        before = outcomes.get("rejected")
        screened["rejected"] = pl.concat([before, rejected], how="diagonal_relaxed") if before is not None \
            and before.height else rejected
    return screened, found


def checks(found: Screening, config: GateConfig) -> list[dict[str, Any]]:
    """Each check as an expectation result on the batch (the gate's `Check` fields)."""
    results = []
    if "contamination" in found.checked:
        n = sum(found.contaminated.values())
        results.append(_check("alignflow_no_benchmark_overlap", found, n, config.max_contaminated_share,
                              "contamination", {"benchmarks": sorted({benchmark_name(b) for b in
                                                                      config.decontaminate.benchmarks}),
                                                "ngram": config.decontaminate.ngram}))
    if "pii" in found.checked:
        n = found.pii_rejected + found.pii_redacted
        results.append(_check("alignflow_no_personal_data", found, n, config.max_pii_share, "pii",
                              {"pii": config.pii}))
    return results


def _check(kind: str, found: Screening, n: int, max_share: float, name: str, kwargs: dict) -> dict[str, Any]:
    share = n / found.rows if found.rows else 0.0
    return {"type": kind, "column": ", ".join(found.columns), "kwargs": {**kwargs, "max_share": max_share},
            "success": share <= max_share, "unexpected_count": n, "unexpected_percent": 100 * share,
            "examples": found.examples[name], "title": name}


def _example(found: Screening, name: str, row: dict, value: str) -> None:
    if len(found.examples[name]) < EXAMPLES:
        found.examples[name].append({"id": row.get("id"), "value": value})
