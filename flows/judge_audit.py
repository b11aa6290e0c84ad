"""Audit a judge before spending, as a flow: the configured judge on pairs people labelled, its agreement with them
published as the `judge-audit` artifact (the report itself goes to `audits/<id>.json` in the store)."""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import State

import tasks.limits  # noqa: F401  a judge with `llm.limit_name` holds the Prefect limit's slots, as in a run
from alignflow.config import PipelineConfig
from alignflow.llm.refused import EndpointRefused
from alignflow.review.judge_audit import audit, markdown
from flows import deployed
from tasks.stages import refusal_state


@flow(name="judge-audit")
def judge_audit_flow(config: PipelineConfig, pairs: str, limit: int | None = None) -> dict | State:
    """Judge human-labelled pairs in both orders per aspect and measure agreement with the people's choices.

    Args:
        config: the pipeline config whose judge (`judge.aspects`, `judge.llm`) is audited.
        pairs: a file on the worker: our DPO export (`prompt`, `chosen`, `rejected`; JSONL or Parquet) or HH-RLHF
            transcripts (JSONL, optionally .gz).
        limit: audit the first `limit` usable pairs of the file; empty: all of them.
    """
    config = deployed.config_of(config, None)
    try:
        report = audit(config, pairs, limit)
    except EndpointRefused as exc:  # the judge's endpoint refuses every request: one line, no traceback
        return refusal_state(exc)
    create_markdown_artifact(markdown=markdown(report), key="judge-audit",
                             description=f"judge agreement with people: {report['agreement']} on {report['pairs']} "
                                         f"pairs of {pairs}")
    get_run_logger().info("judge audit %s: agreement %s on %d pairs; report %s", report["audit_id"],
                          report["agreement"], report["pairs"], report["report"])
    return {k: v for k, v in report.items() if k != "details"}
