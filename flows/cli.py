"""The `alignflow` command: the domain's command line, with the Prefect flows registered to start its runs."""
from __future__ import annotations

import os
import sys

from alignflow import cli, launch
from alignflow.config import LLMOverride, PipelineConfig


class PrefectLauncher:
    """Runs start as Prefect flow runs: on the server PREFECT_API_URL names, else on a temporary local one."""

    def pipeline(self, config: PipelineConfig, run_id: str) -> dict:
        from flows.pipeline import pipeline

        return pipeline(config, run_id)

    def constitution(self, config: PipelineConfig, run_id: str, prompts: str | None,
                     initial: LLMOverride | None) -> dict:
        from flows.constitution import constitution_flow

        return constitution_flow(config, run_id, prompts=prompts, initial_llm=initial)

    def cai_labels(self, config: PipelineConfig, run_id: str, pairs: str | None) -> dict:
        from flows.constitution import cai_labels_flow

        return cai_labels_flow(config, run_id, pairs=pairs)


def register_limits(sub) -> None:
    limits = sub.add_parser("limits", help="the Prefect global concurrency limits a config's endpoints share")
    actions = limits.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create or update them on the server PREFECT_API_URL names")
    create.add_argument("config")
    create.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    create.set_defaults(func=cmd_limits_create)


def cmd_limits_create(args) -> int:
    from alignflow.commands import fail
    from alignflow.config import ConfigError, load_config
    from alignflow.llm import endpoint

    try:
        config = load_config(args.config, args.set)
    except ConfigError as exc:
        return fail(str(exc))
    if not os.environ.get("PREFECT_API_URL"):
        return fail("PREFECT_API_URL is not set: global concurrency limits live on a Prefect server")
    from tasks import limits

    if not limits.wanted(config.llms()):
        return fail("no endpoint of this config sets llm.limit_name")
    for line in endpoint.run(limits.create(config.llms())):
        print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    # read when Prefect and tqdm are imported, so set before anything imports them
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network: the temporary server must not phone home
    os.environ.setdefault("TQDM_DISABLE", "1")  # library bars would garble ours
    launch.register(PrefectLauncher())
    return cli.main(argv, extra=[register_limits])


if __name__ == "__main__":
    sys.exit(main())
