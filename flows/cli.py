"""The `alignflow` command: the domain's command line, with the Prefect flows registered to start its runs."""
from __future__ import annotations

import functools
import importlib
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when main runs: a Ctrl-C while they load is one line too
    from alignflow.config import LLMOverride, PipelineConfig


class PrefectLauncher:
    """Runs start as Prefect flow runs: on the server PREFECT_API_URL names, else on a temporary local one."""

    def pipeline(self, config: PipelineConfig, run_id: str, allow_config_change: list[str] | None) -> dict:
        return _start("flows.pipeline", "pipeline", config, run_id, allow_config_change)

    def constitution(self, config: PipelineConfig, run_id: str, prompts: str | None,
                     initial: LLMOverride | None) -> dict:
        return _start("flows.constitution", "constitution_flow", config, run_id, prompts=prompts, initial_llm=initial)

    def cai_labels(self, config: PipelineConfig, run_id: str, pairs: str | None) -> dict:
        return _start("flows.constitution", "cai_labels_flow", config, run_id, pairs=pairs)

    def resume_review(self, flow_run_id: str, stage: str, decision: dict) -> str:
        if not os.environ.get("PREFECT_API_URL"):
            return (f"flow run {flow_run_id} waits for this review on a Prefect server: set PREFECT_API_URL to resume "
                    "it from here, or resume it from the UI")
        from prefect.client.orchestration import get_client
        from prefect.flow_runs import resume_flow_run

        with get_client(sync_client=True) as client:
            try:
                state = client.read_flow_run(flow_run_id).state
            except Exception as exc:  # an unreachable server, or a flow run it does not have
                from alignflow.llm.remote import redact

                return redact(f"flow run {flow_run_id} could not be read from {os.environ['PREFECT_API_URL']}: {exc}")
        if state is None or not state.is_paused():
            return f"flow run {flow_run_id} is {state.name if state else 'gone'}, not waiting: resume the run to use it"
        resume_flow_run(flow_run_id, run_input={k: decision[k] for k in ("rows", "note")} |
                        {"decision": decision["action"]})
        return f"flow run {flow_run_id} resumed"


def _start(module: str, name: str, *args, **kwargs) -> dict:
    """Calls a flow on a Prefect server; a flow run stopped by SIGINT or SIGTERM ends Cancelled, not Crashed."""
    _serve()
    from prefect.exceptions import TerminationSignal

    from flows.batches import mark_interrupted

    flow = getattr(importlib.import_module(module), name)
    _one_line_for_user_errors()
    try:
        return flow(*args, **kwargs)
    except (KeyboardInterrupt, TerminationSignal):
        mark_interrupted()
        raise KeyboardInterrupt from None


def _serve() -> None:
    """Without PREFECT_API_URL, the temporary Prefect server Prefect would start, but one that dies with this
    process: on Linux the kernel kills it when its parent goes, even by kill -9, so none is left behind
    (elsewhere Prefect starts its own, stopped by its exit handler)."""
    if os.environ.get("PREFECT_API_URL") or not sys.platform.startswith("linux"):
        return
    import ctypes
    import socket
    import subprocess

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"  # before Prefect reads its settings
    from prefect.server.api.server import SubprocessASGIServer

    def die_with_parent() -> None:  # PR_SET_PDEATHSIG: SIGKILL, as a graceful stop can wait on the dead client
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)

    class TemporaryServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            real = subprocess.Popen
            subprocess.Popen = lambda *a, **kw: real(*a, preexec_fn=die_with_parent, **kw)
            try:
                return super()._run_uvicorn_command()
            finally:
                subprocess.Popen = real

    # Prefect waits 20 s for it; a busy 2-core worker can take longer, and a run that fails to start is worse
    TemporaryServer(port=port).start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
                                                                90)))


def register_limits(sub) -> None:
    limits = sub.add_parser("limits", help="the Prefect global concurrency limits a config's endpoints share")
    actions = limits.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create or update them on the server PREFECT_API_URL names")
    create.add_argument("config")
    create.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    create.set_defaults(func=cmd_limits_create)


def cmd_limits_create(args) -> int:
    from alignflow.cli import fail
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


class _SaidInOneLine(logging.Filter):
    """Prefect logs the exception that ends a flow or task run with its traceback. When the command says that
    exception in one line itself (a user error, a lease another writer holds or took over, a refused endpoint), the
    terminal shows only that line; the log the Prefect server keeps is unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        from tasks.stages import REFUSED, TAKEN_OVER

        said = _said()
        # nor Prefect's line for a run one of them ended, nor, for a refused endpoint, for each batch the stop ended
        # or left waiting behind it
        message = record.getMessage()
        ended = message.startswith("Finished in state ") and any(f"exception {kind.__name__}:" in message
                                                                  for kind in said)
        stopped = message.startswith((f"Finished in state {REFUSED}(", f"Finished in state {TAKEN_OVER}(",
                                      "Finished in state NotReady("))
        return not (ended or stopped or record.exc_info and isinstance(record.exc_info[1], said))


@functools.cache
def _said() -> tuple[type[Exception], ...]:
    """The exceptions the command says in one line itself (built once: the filter sees every log record)."""
    from alignflow.cli.errors import user_errors
    from tasks.stages import STOPS, MissingLimit

    return (*user_errors(), *_user_errors(), MissingLimit, *STOPS)


def _one_line_for_user_errors() -> None:
    """The filter on each of Prefect's terminal handlers (set up when Prefect is imported)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in logging.Logger.manager.loggerDict)]
    for handler in {h for logger in loggers for h in getattr(logger, "handlers", ())}:
        if isinstance(handler, PrefectConsoleHandler) and not any(isinstance(f, _SaidInOneLine)
                                                                 for f in handler.filters):
            handler.addFilter(_SaidInOneLine())


def _user_errors() -> tuple[type[Exception], ...]:
    """The orchestrator's own user errors: a deploy that cannot be done as asked."""
    from flows.deploy import DeployError

    return (DeployError,)


def main(argv: list[str] | None = None) -> int:
    try:
        # read when Prefect and tqdm are imported, so set before anything imports them
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        # no network: the temporary server must not phone home
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("TQDM_DISABLE", "1")  # library bars would garble ours
        signal.signal(signal.SIGTERM, _interrupt)  # stop as Ctrl-C does: the flow run is marked Cancelled
        from alignflow.cli import launch
        from alignflow.cli import main as cli
        from flows import deploy

        launch.register(PrefectLauncher())
        return cli.main(argv, extra=[register_limits, deploy.register], errors=_user_errors())
    except KeyboardInterrupt:  # while the modules load, before any command ran
        from alignflow.cli import EXIT_INTERRUPTED, fail

        return fail("interrupted before anything ran", EXIT_INTERRUPTED)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
