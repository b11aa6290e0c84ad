"""The data-quality gate's verdict: each batch of a stage is validated against the stage's GX suite before it is
written (`alignflow.engine.outputs` writes it: a batch that fails goes to quarantine with its report, unless a
person released that very content).
GX is imported and its ephemeral context built once per process; batches validate one at a time under a lock,
because GX's pandas execution engine keeps the batch being validated as shared state (GIL-bound work anyway).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

import polars as pl

from alignflow.config import GateConfig
from alignflow.quality import screens
from alignflow.quality.expectations import GATED, SuiteError, load_suite, suite_path
from alignflow.quality.screens import Screening
from alignflow.records import content_hash

OUTCOME_ORDER = ("kept", "rejected", "failed")
QUARANTINE = "quarantine"
EXAMPLES = 3
VERDICT = {"result_format": "BOOLEAN_ONLY"}
DETAILS = {"result_format": "SUMMARY", "partial_unexpected_count": 5}
_lock = threading.Lock()


@dataclass
class Check:
    """One expectation's outcome on a batch, in the terms a person reading the report needs."""

    type: str
    column: str | None
    kwargs: dict[str, Any]
    success: bool
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    observed: Any = None
    examples: list[Any] = field(default_factory=list)
    error: str | None = None
    title: str | None = None  # from the suite's notes, "failed share: ..." → "failed share"

    def label(self) -> str:
        return f"{self.type}({self.column})" if self.column else self.type

    def name(self) -> str:
        """The label, with the suite's short title when it has one: two checks on one column stay apart."""
        return f"{self.label()} ({self.title})" if self.title else self.label()

    def rule(self) -> str:
        """The expectation's own arguments, short: 'in [kept], mostly 0.5', 'between 1 and 5'."""
        k = self.kwargs
        parts = []
        if "value_set" in k:
            parts.append(f"in {k['value_set']}")
        if k.get("min_value") is not None or k.get("max_value") is not None:
            low, high = k.get("min_value"), k.get("max_value")
            parts.append(f"between {_number(low) if low is not None else '-inf'} and "
                         f"{_number(high) if high is not None else 'inf'}")
        if "value" in k:
            parts.append(f"= {_number(k['value'])}")
        if "type_" in k:
            parts.append(k["type_"])
        if k.get("mostly") is not None:
            parts.append(f"mostly {k['mostly']}")
        if "benchmarks" in k:
            parts.append(f"no {k['ngram']}-gram of {', '.join(k['benchmarks'])}")
        if "pii" in k:
            parts.append(f"none, else {k['pii']}")
        if "max_share" in k:
            parts.append(f"at most {k['max_share']:.0%} of rows")
        return ", ".join(parts)

    def finding(self) -> str:
        """What was found, in a few words: '8 unexpected (100%)', 'observed 20', or the error."""
        if self.error:
            return f"error: {self.error}"
        if self.unexpected_count is not None:
            return f"{self.unexpected_count} unexpected ({self.unexpected_percent or 0:.0f}%)"
        return f"observed {_short(self.observed)}" if self.observed is not None else "failed"

    def line(self) -> str:
        rule = self.rule()
        return f"{self.label()}{f' [{rule}]' if rule else ''}{f' ({self.title})' if self.title else ''}: " \
               f"{self.finding()}"


@dataclass
class GateResult:
    """The gate's verdict on one batch: what Prefect shows, what the report keeps, what a person decides on."""

    stage: str
    batch: int
    passed: bool
    rows: int
    policy: str
    checks: list[Check]
    outcomes: dict[str, int] = field(default_factory=dict)
    content_hash: str = ""
    released: bool = False
    dropped: bool = False
    decision: dict | None = None
    report_key: str | None = None
    screens: dict[str, Any] = field(default_factory=dict)  # contamination and personal data found (screens.counts)

    @property
    def name(self) -> str:
        return f"{self.stage}/{self.batch}"

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.success]

    @property
    def quarantined(self) -> bool:
        return not self.passed and not self.released

    def summary(self) -> str:
        """One line: the batch, what happened to it, and the failed expectations."""
        if self.passed:
            return f"{self.name}: passed {len(self.checks)} expectations ({self.rows} rows)"
        state = "released by hand" if self.released else "dropped by hand, stays quarantined" if self.dropped \
            else "quarantined"
        failed = "; ".join(c.line() for c in self.failed)
        return f"{self.name} {state} ({self.rows} rows): {failed}"

    def markdown(self) -> str:
        """The Prefect artifact: verdict, counts, and one table row per expectation."""
        verdict = "passed" if self.passed else "released by hand" if self.released else \
            "quarantined (dropped by hand)" if self.dropped else "quarantined"
        counts = ", ".join(f"{k} {v}" for k, v in self.outcomes.items())
        lines = [f"## Gate: {self.stage} batch {self.batch}: {verdict}", "",
                 f"{self.rows} rows ({counts}); {len(self.checks) - len(self.failed)} of {len(self.checks)} "
                 f"expectations passed; policy `{self.policy}`."]
        if self.report_key:
            lines += ["", f"Report: `{self.report_key}`"]
        if self.decision:
            lines += ["", f"Decision: {self.decision['action']} at {self.decision['at']}: {self.decision['reason']}"]
        lines += ["", "| | expectation | rule | rows | result |", "|---|---|---|---|---|"]
        for c in sorted(self.checks, key=lambda c: c.success):
            where = condition_text(c.kwargs.get("row_condition")) or "all"
            result = ("passed" + (f" ({c.finding()})" if c.unexpected_count else "")) if c.success else c.finding()
            lines.append(f"| {'✅' if c.success else '❌'} | {cell(c.name())} | {cell(c.rule())} | {cell(where)} "
                         f"| {cell(result)} |")
        for c in sorted(self.checks, key=lambda c: c.success):  # below the table, which then fits a screen
            if c.examples:
                lines += ["", f"Examples {'found by' if c.success else 'failing'} {cell(c.name())}:",
                          *(f"- `{cell(e)}`" for e in c.examples)]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GateResult":
        return cls(**{**data, "checks": [Check(**c) for c in data["checks"]]})


def apply_decision(result: GateResult, decision: dict | None) -> None:
    """A person's decision on a quarantined batch holds only for the content it was made on: a batch made
    differently is judged afresh."""
    if decision is None or decision["content_hash"] != result.content_hash:
        return
    result.decision = decision
    result.released = decision["action"] == "release"
    result.dropped = decision["action"] == "drop"


def check(stage: str, number: int, outcomes: dict[str, pl.DataFrame], config: GateConfig,
          screening: Screening | None = None) -> tuple[GateResult, dict, pl.DataFrame] | None:
    """Validate one batch against its stage's suite and the gate's own checks (`screening`, already applied to
    `outcomes`): our result, GX's report and the batch frame; None when the stage is not gated or the batch has no
    rows. Every stage in `GATED` must have its suite (a missing one is a SuiteError naming the path)."""
    if not (config.enabled and stage in GATED and any(df.height for df in outcomes.values())):
        return None
    path = suite_path(config.suites, stage)
    if not path.is_file():
        raise SuiteError(f"no expectation suite for the {stage} stage at {path} (gate.suites)")
    frame = batch_frame(outcomes)
    result, report = validate(stage, number, frame, load_suite(path), config.policy(stage))
    if screening is not None:
        own = [Check(**c) for c in screens.checks(screening, config)]
        result.checks += own
        result.passed = result.passed and all(c.success for c in own)
        result.screens = screening.counts()
    return result, report, frame


def batch_frame(outcomes: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """All outcomes of a batch in one frame, with the derived columns `outcome` and `duplicate`."""
    names = [o for o in OUTCOME_ORDER if o in outcomes] + sorted(set(outcomes) - set(OUTCOME_ORDER))
    parts = []
    for name in names:
        df = outcomes[name]
        is_dup = pl.col("reason").str.starts_with("duplicate").fill_null(False) if "reason" in df.columns \
            else pl.lit(False)
        parts.append(df.with_columns(outcome=pl.lit(name), duplicate=is_dup))
    return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame(schema={"outcome": pl.String,
                                                                                      "duplicate": pl.Boolean})


def validate(stage: str, number: int, frame: pl.DataFrame, suite: Any, policy: str) -> tuple[GateResult, dict]:
    """Run the suite on the batch frame; returns our result and GX's own result JSON.

    Most batches pass, and a verdict alone is about a third cheaper in GX; a failing batch is validated again
    with counts, examples and their row positions, for the report."""
    data = _to_pandas(frame)
    with _lock:
        batch_definition = _gx()
        report = _run(batch_definition, data, suite, VERDICT)
        if not report["success"]:
            report = _run(batch_definition, data, suite, DETAILS)
    rows = frame.select([c for c in ("id", "error") if c in frame.columns]).to_dicts() if "id" in frame.columns \
        else None
    checks = [_check(r, rows) for r in report["results"]]
    outcomes = {o: n for o, n in frame["outcome"].value_counts(sort=True).iter_rows()} if frame.height else {}
    result = GateResult(stage=stage, batch=number, passed=bool(report["success"]), rows=frame.height, policy=policy,
                        checks=checks, outcomes=outcomes, content_hash=content_hash(frame))
    return result, report


def _run(batch_definition: Any, data: Any, suite: Any, result_format: dict) -> dict:
    batch = batch_definition.get_batch(batch_parameters={"dataframe": data})
    return batch.validate(suite, result_format=result_format).to_json_dict()


def _check(result: dict, rows: list[dict] | None) -> Check:
    config, found = result["expectation_config"], result.get("result") or {}
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
    column = kwargs.get("column") or ", ".join(kwargs.get("column_list") or []) or \
        (f"{kwargs['column_A']} > {kwargs['column_B']}" if "column_A" in kwargs else None)
    exception = result.get("exception_info") or {}
    missing = ((found.get("details") or {}).get("mismatched") or {}).get("missing")  # columns absent from the batch
    examples = found.get("partial_unexpected_list") or missing or []
    index = found.get("partial_unexpected_index_list") or []
    if rows is not None and index and not isinstance(index[0], dict):  # each example's row id, and its error if any
        examples = [{"id": rows[i]["id"], "value": v, **({"error": rows[i]["error"]} if rows[i].get("error") else {})}
                    for i, v in zip(index, examples)]
    notes = (config.get("meta") or {}).get("notes") or ""
    return Check(type=config["type"], column=column, kwargs=kwargs, success=bool(result["success"]),
                 unexpected_count=found.get("unexpected_count"), unexpected_percent=found.get("unexpected_percent"),
                 observed=found.get("observed_value"), examples=[_short(e) for e in examples[:EXAMPLES]],
                 error=exception.get("exception_message") if exception.get("raised_exception") else None,
                 title=notes.split(":")[0] if ":" in notes[:40] else None)


def _to_pandas(frame: pl.DataFrame) -> Any:
    """Ints and bools as pandas' nullable types, so a null does not turn an int column into floats."""
    import pandas as pd
    import pyarrow as pa

    return frame.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get)


@cache
def _gx() -> Any:
    """GX, imported once per process: an in-memory context with progress bars off and no docs site, one asset."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                               progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
                               analytics_enabled=False)
    context = gx.get_context(project_config=config, mode="ephemeral")
    _quiet("great_expectations")
    asset = context.data_sources.add_pandas("alignflow").add_dataframe_asset("batch")
    return asset.add_batch_definition_whole_dataframe("whole batch")


def _quiet(package: str) -> None:
    """Warnings and errors only: some GX modules set their own loggers to INFO."""
    for name in [package, *(n for n in logging.Logger.manager.loggerDict if n.startswith(f"{package}."))]:
        logging.getLogger(name).setLevel(logging.WARNING)


def condition_text(condition: Any) -> str:
    """A GX row condition as a person reads it: 'outcome == kept'."""
    if isinstance(condition, dict):
        kind = condition.get("type")
        if kind == "comparison":
            return f"{condition['column']['name']} {condition['operator']} {condition['parameter']}"
        if kind == "pass_through":
            return condition.get("pass_through_filter", "")
        if kind in ("and", "or"):
            return f" {kind} ".join(condition_text(c) for c in condition.get("conditions", []))
        if kind == "nullity":
            return f"{condition['column']['name']} {'is null' if condition.get('is_null') else 'is not null'}"
    return str(condition) if condition else ""


def _short(value: Any, limit: int = 120) -> Any:
    """Examples stay readable: long texts cut, nested values as they are."""
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "…"
    if isinstance(value, dict):
        return {k: _short(v, limit) for k, v in value.items()}
    return value


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def cell(value: Any) -> str:
    """A value as one line of a markdown table cell; an example as `id: value (error)`."""
    if isinstance(value, dict) and "id" in value:  # an example: `id: value (error)`
        value = f"{value['id']}: {value.get('value')}" + (f" ({value['error']})" if value.get("error") else "")
    return str(value).replace("|", "\\|").replace("\n", " ")[:160]
