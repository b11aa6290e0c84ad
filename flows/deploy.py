"""`alignflow deploy`: everything a Prefect server needs to run alignflow, in one command.

The work pool, the global concurrency limits the config's endpoints name, the shipped automations
(`deployments/automations.yaml`) and the deployments: the pipeline on demand and nightly, each stage on its own
(to run it on an existing run id) and the export. Their default config is the config file itself, read when you
deploy, not a copy. Workers run the flows from the project directory, which must be at the same path on their
hosts: deploy checks it has what the config names and says how to start a worker there.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import yaml

from alignflow.cli import fail
from alignflow.config import ConfigError, load_config

AUTOMATIONS = Path(__file__).resolve().parent.parent / "deployments" / "automations.yaml"
NIGHTLY = "0 2 * * *"
# deployment: (flow entrypoint, what it is for)
DEPLOYMENTS = {
    "pipeline/on-demand": ("flows/pipeline.py:pipeline", "The whole pipeline, started from the UI, the API or the "
                                                         "CLI; a partial config is merged over this one."),
    "pipeline/nightly": ("flows/pipeline.py:pipeline", "The whole pipeline every night; each run gets a new run id "
                                                       "and so new samples."),
    "instructions/on-demand": ("flows/instructions.py:instructions_flow", "Instruction rounds on a run id."),
    "responses/on-demand": ("flows/responses.py:responses_flow", "Responses for a run's kept instructions."),
    "judge/on-demand": ("flows/preferences.py:judge_flow", "Judge a run's kept responses."),
    "pairs/on-demand": ("flows/preferences.py:pairs_flow", "Preference pairs from a run's judgments."),
    "constitution/on-demand": ("flows/constitution.py:constitution_flow", "Critique and revise a run's answers."),
    "cai-labels/on-demand": ("flows/constitution.py:cai_labels_flow", "RL-CAI preference labels on a run."),
    "judge-audit/on-demand": ("flows/judge_audit.py:judge_audit_flow", "Measure the judge against human "
                                                                       "preference labels (a pairs file)."),
    "export/on-demand": ("flows/export.py:export_flow", "Export a run's data (the automation runs it after each "
                                                        "pipeline run)."),
}


class DeployError(Exception):
    """Something deploy cannot do as asked: one line."""


def register(sub) -> None:
    deploy = sub.add_parser("deploy", help="create the work pool, limits, automations and deployments on the Prefect "
                                           "server PREFECT_API_URL names")
    deploy.add_argument("config", nargs="?", default="configs/quickstart.yaml",
                        help="the deployments' default config (default: configs/quickstart.yaml)")
    deploy.add_argument("--project-path", default=".", help="where workers find this project (default: here); the "
                                                            "same path must hold it on every worker's host")
    deploy.add_argument("--pool", default="alignflow", help="the process work pool (made if missing)")
    deploy.add_argument("--nightly", default=NIGHTLY, metavar="CRON", help=f"the nightly schedule, UTC (default: "
                                                                           f"{NIGHTLY!r})")
    deploy.add_argument("--notify", metavar="TYPE/NAME", help="a notification block (e.g. slack-webhook/alerts) the "
                                                              "quarantine automation sends its message to")
    deploy.set_defaults(func=cmd_deploy)


def cmd_deploy(args) -> int:
    if not os.environ.get("PREFECT_API_URL"):
        return fail("PREFECT_API_URL is not set: deploy to a Prefect server (`prefect server start` prints its URL)")
    try:
        project = _project(args.project_path)
        with contextlib.chdir(project):  # the config's relative paths are the workers' paths, from the project
            raw = _raw_config(args.config)
            config = load_config(args.config)
        from tasks import limits

        steps = [_work_pool(args.pool)]
        if limits.wanted(config.llms()):
            from alignflow.llm import endpoint

            steps += endpoint.run(limits.create(config.llms()))
        with contextlib.chdir(project):
            steps += [_deploy(name, project, args.pool, raw, args.nightly) for name in DEPLOYMENTS]
        steps += _automations(args.notify)
    except (ConfigError, DeployError) as exc:
        return fail(str(exc))
    for line in steps:
        print(line)
    print(f"\nStart a worker on each host that has the project at {project} (with the API keys the config needs):\n"
          f"  cd {project} && PREFECT_API_URL={os.environ['PREFECT_API_URL']} prefect worker start --pool {args.pool}\n"
          f"Then run: prefect deployment run pipeline/on-demand (or from the UI: Deployments > pipeline)")
    return 0


def _project(path: str) -> Path:
    project = Path(path).resolve()
    for needed in ("flows/pipeline.py", "alignflow/__init__.py"):
        if not (project / needed).is_file():
            raise DeployError(f"--project-path {project} is not the alignflow project: it has no {needed}")
    return project


def _raw_config(path: str) -> dict[str, Any]:
    """The config file as written: the deployments' parameters, so the form shows what it sets."""
    if not Path(path).is_file():
        raise ConfigError(f"config file not found: {path}")
    return yaml.safe_load(Path(path).read_text(encoding="utf-8-sig")) or {}


def _work_pool(name: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process",
                                                   base_job_template=ProcessWorker.get_default_base_job_template()))
            return f"work pool {name}: created (process)"
        except ObjectAlreadyExists:
            pool = client.read_work_pool(name)
            if pool.type != "process":
                raise DeployError(f"work pool {name} exists with type {pool.type}, not process: name another "
                                  "with --pool") from None
            return f"work pool {name}: exists"


def _deploy(name: str, project: Path, pool: str, config: dict[str, Any], nightly: str) -> str:
    from prefect import Flow
    from prefect.schedules import Cron

    entrypoint, description = DEPLOYMENTS[name]
    flow_name, deployment_name = name.split("/")
    flow = Flow.from_source(source=str(project), entrypoint=entrypoint)
    parameters = {} if flow_name == "export" else {"config": config}
    schedules = [Cron(nightly, timezone="UTC")] if deployment_name == "nightly" else None
    with contextlib.redirect_stdout(io.StringIO()):  # Prefect's own table per deployment: ours is one line
        deployment_id = flow.deploy(deployment_name, work_pool_name=pool, parameters=parameters,
                                    description=description, schedules=schedules, tags=["alignflow"], build=False,
                                    push=False, print_next_steps=False, ignore_warnings=True)
    _refuse_unknown_parameters(deployment_id)
    return f"deployment {name}: {entrypoint}" + (f", nightly at {nightly} UTC" if schedules else "")


def _refuse_unknown_parameters(deployment_id) -> None:
    """Prefect's parameter schema lets a run name a parameter the flow does not have: the API takes it (201) and
    the run crashes in the worker. With the schema closed, the API refuses it (409, naming it), as it refuses an
    unknown key inside `config`."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        schema = client.read_deployment(deployment_id).parameter_openapi_schema
        client.request("PATCH", "/deployments/{id}", path_params={"id": deployment_id},
                       json={"parameter_openapi_schema": {**schema, "additionalProperties": False}})


def _automations(notify: str | None) -> list[str]:
    """Each automation of the shipped file, replacing one of the same name; a run-deployment action's
    `deployment: NAME` becomes the deployment's id, a send-notification action's `block` the --notify block's."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    specs = yaml.safe_load(AUTOMATIONS.read_text())["automations"]
    lines = []
    with get_client(sync_client=True) as client:
        block = _notification_block(client, notify) if notify else None
        for spec in specs:
            spec["actions"] = [a for a in spec["actions"] if "block" not in a or block]
            for action in spec["actions"]:
                if name := action.pop("deployment", None):
                    action["deployment_id"] = str(client.read_deployment_by_name(_full_name(name)).id)
                if action.pop("block", None):
                    action["block_document_id"] = block
            automation = AutomationCore.model_validate(spec)
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
            client.create_automation(automation)
            lines.append(f"automation {automation.name}: {', '.join(a['type'] for a in spec['actions'])} on "
                         f"{', '.join(spec['trigger']['expect'])}")
    return lines


def _notification_block(client, slug_and_name: str) -> str:
    from prefect.exceptions import ObjectNotFound

    slug, _, name = slug_and_name.partition("/")
    if not name:
        raise DeployError(f"--notify {slug_and_name}: give the block as TYPE/NAME, e.g. slack-webhook/alerts")
    try:
        return str(client.read_block_document_by_name(name, slug).id)
    except ObjectNotFound:
        raise DeployError(f"--notify {slug_and_name}: the server has no such block (create it in the UI: Blocks)") \
            from None


def _full_name(name: str) -> str:
    return name if "/" in name else f"{name}/on-demand"
