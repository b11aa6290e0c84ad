"""The `alignflow` command. User errors are one line on stderr and a non-zero exit, never a traceback."""
from __future__ import annotations

import argparse
import importlib
import sys

from alignflow.cli import EXIT_EMPTY, EXIT_STOPPED, EXIT_TAKEN_OVER
from alignflow.cli import fail as _fail
from alignflow.cli.errors import user_errors
from alignflow.config import ConfigError, PipelineConfig, abbreviated, load_config
from alignflow.stages.seeds import load_seeds

COMMAND_GROUPS = ("dedup", "export", "quarantine", "review", "labels", "constitution", "agreement", "judge")


def _preflight(config: PipelineConfig) -> None:
    """Catch what would fail minutes later: unreadable seeds, a curator that does not import, a missing or broken
    suite, a missing or refused API key, an endpoint nobody answers, a store that cannot be written, a prices file
    that does not read."""
    from alignflow.engine.lease import expires_s
    from alignflow.engine.store import Store
    from alignflow.quality.curate import resolve

    expires_s()  # a bad ALIGNFLOW_LEASE_EXPIRES_S is a LeaseHeld line, before anything is written
    load_seeds(config.seeds)
    resolve(config.instructions.curate)
    resolve(config.responses.curate)
    Store(config.store).check_writable()
    if config.gate.enabled:
        from alignflow.quality.expectations import require_suites

        require_suites(config.gate.suites)
        from alignflow.quality.contamination import index_for

        index_for(config.gate.decontaminate)  # every benchmark file read, and its text column found
    if config.constitution.enabled:
        from alignflow.stages.constitution import load_constitution

        load_constitution(config.constitution.file).check_rounds(config.constitution.rounds)
    for llm in config.llms():
        llm.api_key()
    from alignflow.llm.preflight import check_endpoints
    from alignflow.llm.prices import load_prices

    check_endpoints(config.llms())
    load_prices(config.prices)


def _prove(config: PipelineConfig, run_id: str) -> None:
    """One minimal call to each endpoint whose models list does not name its model, unless it has answered this run:
    a refusal is one line before Prefect starts (the flow records the endpoints that answered)."""
    from alignflow.engine.run import Run
    from alignflow.llm.preflight import prove_endpoints

    run = Run(config, run_id)
    prove_endpoints(config.llms(), run.dir.read_json(run.dir.endpoints_key, []))




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
    from alignflow.engine.lease import LeaseHeld, LeaseLost
    from alignflow.engine.run import check_run_id, new_run_id
    from alignflow.llm.refused import EndpointRefused
    from alignflow.stages.changes import ConfigChanged

    try:
        allowed = _stages_named(args.allow_config_change)
        run_id = check_run_id(args.run_id) if args.run_id is not None else new_run_id()
        config = load_config(args.config, args.set)
        _preflight(config)
        if args.run_id:
            _resumable(config, run_id, allowed)
        _prove(config, run_id)
    except user_errors() as exc:
        return _fail(str(exc))
    from rich.console import Console

    from alignflow.cli import launch, progress_bars
    from alignflow.engine import progress

    failure: tuple[str, int] | None = None  # said once the progress bars are gone, so it is the last line
    with progress_bars.RichProgress(Console(stderr=True)) as sink:
        progress.set_sink(sink)
        try:
            manifest = launch.launcher().pipeline(config, run_id, allowed)
        except (LeaseHeld, ConfigChanged, EndpointRefused) as exc:  # found before anything was written, or a stop
            failure = str(exc), 2
        except LeaseLost as exc:  # another writer took the run over while this one was paused
            failure = str(exc), EXIT_TAKEN_OVER
        except KeyboardInterrupt:
            failure = f"run {run_id} interrupted; the same command with `--run-id {run_id}` resumes it", 130
        except Exception as exc:  # the flow run's own error, already logged by Prefect
            failure = f"run {run_id} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", 1
        finally:
            progress.set_sink(None)
    if failure:
        return _fail(*failure)
    _print_summary(manifest)
    if manifest.get("stopped"):
        return _fail(f"run {run_id} stopped: {manifest['stopped']}", EXIT_STOPPED)
    if manifest.get("held"):
        return _fail(f"run {run_id} made no datasets: {manifest['held']}", EXIT_EMPTY)
    from alignflow.engine.manifest import DATASETS, why_empty
    from alignflow.engine.store import Store
    from alignflow.stages.registry import made_through

    run_dir = Store(config.store).join(run_id)
    print(f"datasets: {run_dir}/datasets/ ({', '.join(f'{k}: {v} rows' for k, v in manifest['datasets'].items())})")
    target = manifest.get("target") or {}
    if target and not target["reached"]:
        print(f"alignflow: target not reached: {target['made']:,} of {target['rows']:,} {target['dataset']} rows "
              f"({target['stopped_by']})", file=sys.stderr)
    print(run_dir)
    asked = [name for name in DATASETS if config.constitution.enabled or not name.startswith("cai_")]
    empty = [name for name in asked if not manifest["datasets"].get(name)]
    if empty:
        return _fail(f"run {run_id} made no {empty[0]} rows: {why_empty(manifest, empty[0], made_through(empty[0]))}", EXIT_EMPTY)
    return 0


def _print_summary(manifest: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from alignflow.engine.manifest import counting_lines, dollars, inconsistent_line, model_table, screened_lines, table

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
    for line in [*counting_lines(manifest), inconsistent_line(manifest)]:
        if line:
            print(line.replace("`", ""))
    for line in screened_lines(manifest):
        print(f"gate: {line}")
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
        run = RunDir(store, run_id)
        where = store.join(run.manifest_key)
        found = run.read_json(run.manifest_key)
        counted = found is None
        if counted:
            where = f"the checkpoints of {run.url}"
            found = manifest.build(store, run_id)
    except RunDirError as exc:
        return _fail(str(exc))
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, nested too deep
        return _fail(f"{where}: not a manifest alignflow wrote: not valid JSON ({type(exc).__name__})")
    if problem := _unshowable(found):
        return _fail(f"{where}: not a manifest alignflow wrote ({problem})")
    _print_summary(found)
    if counted:
        print(f"(no manifest.json yet: counted from the batches {run_id} has finished)")
    return 0


def _unshowable(found) -> str | None:
    """Why `_print_summary` cannot show `found` (a manifest.json of the wrong shape, or hand-edited), or None. It is
    tried on a buffer first, so a bad file prints its one line and no half table: the summary itself is the check of
    every field it reads."""
    import contextlib
    import io

    if not isinstance(found, dict):
        return f"a JSON {type(found).__name__}, not an object"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            _print_summary(found)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    return None


def cmd_expectations_check(args) -> int:

    from alignflow.quality.expectations import check_dir, suite_dir

    directory = suite_dir(args.dir)
    try:
        if not directory.is_dir():
            return _fail(f"no expectations directory at {directory}")
    except OSError as exc:  # a name too long
        return _fail(f"no expectations directory at {abbreviated(str(directory))} ({exc.strerror})")
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


def main(argv: list[str] | None = None, extra=(), errors: tuple[type[Exception], ...] = ()) -> int:
    """`extra`: the orchestrator's commands (each a `register(subparsers)`), `errors`: its user errors."""
    from alignflow.cli.errors import guarded

    return guarded(lambda: parser(extra).parse_args(argv), errors)


if __name__ == "__main__":
    sys.exit(main())
