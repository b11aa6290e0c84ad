"""How the command line starts runs. The domain says what to run; an orchestrator says how, by registering a
Launcher: the `alignflow` command (`flows.cli:main`) registers the Prefect flows, so the domain imports no Prefect.
"""
from __future__ import annotations

from typing import Protocol

from alignflow.config import LLMOverride, PipelineConfig


class Launcher(Protocol):
    def pipeline(self, config: PipelineConfig, run_id: str, allow_config_change: list[str] | None) -> dict: ...
    def constitution(self, config: PipelineConfig, run_id: str, prompts: str | None,
                     initial: LLMOverride | None) -> dict: ...
    def cai_labels(self, config: PipelineConfig, run_id: str, pairs: str | None) -> dict: ...
    def resume_review(self, flow_run_id: str, stage: str, decision: dict) -> str:
        """Resume a flow run suspended for a review with its decision; returns what happened, in one line."""


_launcher: Launcher | None = None


def register(launcher: Launcher) -> None:
    global _launcher
    _launcher = launcher


def registered() -> bool:
    return _launcher is not None


def launcher() -> Launcher:
    if _launcher is None:
        raise RuntimeError("no orchestrator to start runs: use the `alignflow` command (flows.cli:main)")
    return _launcher
