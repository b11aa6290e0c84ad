"""The `alignflow` command. User errors are one line on stderr and a non-zero exit, never a traceback."""
from __future__ import annotations

import argparse
import importlib
import sys

from alignflow.cli import EXIT_EMPTY, EXIT_STOPPED
from alignflow.cli import fail as _fail
from alignflow.config import ConfigError, PipelineConfig, load_config
from alignflow.stages.constitution import ConstitutionError
from alignflow.stages.seeds import SeedError, load_seeds

COMMAND_GROUPS = ("dedup", "export", "quarantine", "review", "labels", "constitution", "agreement", "judge")


def _preflight(config: PipelineConfig) -> None:
    """Catch what would fail minutes later: unreadable seeds, a curator that does not import, a missing or broken
    suite, a missing or refused API key, an endpoint nobody answers, a store that cannot be written."""
    from alignflow.engine.store import Store
    from alignflow.quality.curate import resolve

    load_seeds(config.seeds)
    resolve(config.instructions.curate)
    resolve(config.responses.curate)
    Store(config.store).check_writable()
    if config.gate.enabled:
        from alignflow.quality.expectations import require_suites

        require_suites(config.gate.suites)
    if config.constitution.enabled:
        from alignflow.stages.constitution import load_constitution

        load_constitution(config.constitution.file).check_rounds(config.constitution.rounds)
    for llm in config.llms():
        llm.api_key()
    from alignflow.llm.preflight import check_endpoints

    check_endpoints(config.llms())




def _stages_named(value: str | None) -> list[str] | None:
    """The stages `--allow-config-change` names, each a stage alignflow has."""
    if value is None:
        return None
    from alignflow.stages.registry import NAMES

    named = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in named if s not in NAMES]
    if unknown or not named:
        raise ConfigError(f"--allow-config-change: {', '.join(unknown) or 'no stage'} is not a stage; "
                          f"stages: {', '.join(NAMES)}")
    return named


def _resumable(config: PipelineConfig, run_id: str, allowed: list[str] | None) -> None:
    """A run id being written by another process, or resumed with a config that would redo stages not allowed,
    stops here, before Prefect starts (the flow checks the same again, for runs started elsewhere)."""
    from alignflow.engine.lease import Lease
    from alignflow.engine.run import Run
    from alignflow.stages import registry
    from alignflow.stages.changes import allowed_changes

    run = Run(config, run_id)
    Lease(run.store, run_id).check()
    if run.dir.stage_record("seeds") is None:
        return  # a new run
    names, options = registry.pipeline_stages(config)
    allowed_changes(run, [registry.step(run, s, **options.get(s, {})) for s in names], allowed)


def cmd_run(args) -> int:
    from alignflow.engine.lease import LeaseHeld
    from alignflow.engine.run import RunIdError, check_run_id, new_run_id
    from alignflow.engine.store import StoreError
    from alignflow.quality.curate import CurateError
    from alignflow.quality.expectations import SuiteError
    from alignflow.stages.changes import ConfigChanged

    try:
        allowed = _stages_named(args.allow_config_change)
        run_id = check_run_id(args.run_id) if args.run_id is not None else new_run_id()
        config = load_config(args.config, args.set)
        _preflight(config)
        if args.run_id:
            _resumable(config, run_id, allowed)
    except (ConfigError, SeedError, ConstitutionError, SuiteError, LeaseHeld, ConfigChanged, RunIdError,
            StoreError, CurateError) as exc:
        return _fail(str(exc))
    from rich.console import Console

    from alignflow.cli import launch, progress_bars
    from alignflow.engine import progress

    with progress_bars.RichProgress(Console(stderr=True)) as sink:
        progress.set_sink(sink)
        try:
            manifest = launch.launcher().pipeline(config, run_id, allowed)
        except (LeaseHeld, ConfigChanged) as exc:  # found before anything was written
            return _fail(str(exc))
        except KeyboardInterrupt:
            return _fail(f"run {run_id} interrupted; the same command with `--run-id {run_id}` resumes it", 130)
        except Exception as exc:  # the flow run's own error, already logged by Prefect
            return _fail(f"run {run_id} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", 1)
        finally:
            progress.set_sink(None)
    _print_summary(manifest)
    if manifest.get("stopped"):
        return _fail(f"run {run_id} stopped: {manifest['stopped']}", EXIT_STOPPED)
    if manifest.get("held"):
        return _fail(f"run {run_id} made no datasets: {manifest['held']}", EXIT_EMPTY)
    from alignflow.engine.manifest import why_empty
    from alignflow.engine.store import Store
    from alignflow.stages.registry import made_through

    run_dir = Store(config.store).join(run_id)
    print(f"datasets: {run_dir}/datasets/ ({', '.join(f'{k}: {v} rows' for k, v in manifest['datasets'].items())})")
    target = manifest.get("target") or {}
    if target and not target["reached"]:
        print(f"alignflow: target not reached: {target['made']:,} of {target['rows']:,} {target['dataset']} rows "
              f"({target['stopped_by']})", file=sys.stderr)
    print(run_dir)
    asked = ["dpo", "sft", "kto", *(["cai_sft", "cai_dpo"] if config.constitution.enabled else [])]
    empty = [name for name in asked if not manifest["datasets"].get(name)]
    if empty:
        return _fail(f"run {run_id} made no {empty[0]} rows: {why_empty(manifest, empty[0], made_through(empty[0]))}", EXIT_EMPTY)
    return 0


def _print_summary(manifest: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from alignflow.engine.manifest import dollars, inconsistent_line, model_table, table

    console = Console()
    console.width = max(console.width, 120)  # the tables fit when output goes to a file or a narrow pipe
    for title, rows in ((f"run {manifest['run_id']}", table(manifest)), ("by model", model_table(manifest))):
        if len(rows) < 2:
            continue
        out = Table(title=title)
        for head in rows[0]:
            out.add_column(head, justify="left" if head in ("stage", "model") else "right", no_wrap=True,
                           min_width=len(head))
        for row in rows[1:]:
            out.add_row(*row)
        console.print(out)
    if line := inconsistent_line(manifest):
        print(line.replace("`", ""))
    for stage, review in (manifest.get("review") or {}).items():
        if found := review.get("agreement"):
            print(f"judge vs reviewer ({stage}): {found['text']}; where the judge was least sure: "
                  f"{found['uncertain']['agree']} of {found['uncertain']['n']} (biased by design)")
    tokens = manifest["tokens"]
    print(f"tokens: {tokens['input_tokens']} in, {tokens['output_tokens']} out; cost: {dollars(manifest.get('cost_usd'))}"
          + ("" if manifest.get("cost_usd") is not None else " (a model has no price: see `prices`)"))


def cmd_inspect(args) -> int:
    """A finished run's manifest; for one still going (or killed), the same counted from its checkpoints."""
    from alignflow.engine import manifest
    from alignflow.engine.store import RunDir, RunDirError, open_run_dir

    try:
        store, run_id = open_run_dir(args.run_dir)
    except RunDirError as exc:
        return _fail(str(exc))
    if found := RunDir(store, run_id).read_json(RunDir(store, run_id).manifest_key):
        _print_summary(found)
    else:
        _print_summary(manifest.build(store, run_id))
        print(f"(no manifest.json yet: counted from the batches {run_id} has finished)")
    return 0


def cmd_expectations_check(args) -> int:

    from alignflow.quality.expectations import check_dir, suite_dir

    directory = suite_dir(args.dir)
    if not directory.is_dir():
        return _fail(f"no expectations directory at {directory}")
    files, problems = check_dir(directory)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return _fail(f"{len(problems)} problem(s) in {len(files)} suite file(s)", 1)
    print(f"{len(files)} suite file(s) ok: {', '.join(f.name for f in files)}")
    return 0


class _Parser(argparse.ArgumentParser):
    """A usage error is one line, like every other user error (argparse prints the usage block first)."""

    def error(self, message: str):
        where = self.prog.removeprefix("alignflow").strip()
        self.exit(2, f"alignflow: {where + ': ' if where else ''}{message}\n")


def parser(extra=()) -> argparse.ArgumentParser:
    p = _Parser(prog="alignflow", description="Synthetic SFT and preference data as Prefect flows.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline on a config")
    run.add_argument("config")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    run.add_argument("--run-id", help="name the run; an existing run's id resumes it from its store")
    run.add_argument("--allow-config-change", metavar="STAGES",
                     help="stages (comma-separated) a resume with a changed config may make again")
    run.set_defaults(func=cmd_run)
    inspect = sub.add_parser("inspect", help="show a run's manifest as a table")
    inspect.add_argument("run_dir")
    inspect.set_defaults(func=cmd_inspect)
    expectations = sub.add_parser("expectations", help="work with the data-quality expectation suites")
    exp_sub = expectations.add_subparsers(dest="action", required=True)
    check = exp_sub.add_parser("check", help="check every suite file: parses, known expectation types, real columns")
    check.add_argument("--dir", help="a directory of suite files (default: the suites alignflow ships)")
    check.set_defaults(func=cmd_expectations_check)
    for group in COMMAND_GROUPS:
        importlib.import_module(f"alignflow.cli.{group}").register(sub)
    for register in extra:  # commands of the orchestrator, which the domain does not import
        register(sub)
    return p


def main(argv: list[str] | None = None, extra=()) -> int:
    args = parser(extra).parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return _fail("interrupted; run the same command again (with the same --run-id) to resume", 130)


if __name__ == "__main__":
    sys.exit(main())
