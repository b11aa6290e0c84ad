"""`alignflow constitution`: check a constitution file, revise answers by it (SL-CAI), label pairs under it (RL-CAI).

Everything that can be wrong with the input (config, constitution, prompts or pairs file, API keys) is checked
before a flow starts, and reported as one line.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from alignflow.cli import fail


def register(sub) -> None:
    group = sub.add_parser("constitution", help="Constitutional AI: critique and revise answers, label preferences")
    actions = group.add_subparsers(dest="action", required=True)

    check = actions.add_parser("check", help="load a constitution file; one line naming the first problem")
    check.add_argument("file")
    check.set_defaults(func=cmd_check)

    revise = actions.add_parser("revise", help="critique → revision rounds on a prompts file or a run's responses")
    _run_args(revise)
    revise.add_argument("--prompts", help="JSONL with a `prompt` a line; default: the responses of the run --run-id")
    revise.add_argument("--initial", action="append", default=[], metavar="KEY=VALUE",
                        help="an llm key of the initial-answer model (repeatable; default: the responses stage's llm)")
    revise.set_defaults(func=cmd_revise)

    label = actions.add_parser("label", help="AI preference labels under principles: both orders, soft labels")
    _run_args(label)
    label.add_argument("--pairs", help="JSONL with `prompt` and `responses` (2 or more); default: the run's responses")
    label.set_defaults(func=cmd_label)


def _run_args(parser) -> None:
    parser.add_argument("config")
    parser.add_argument("--run-id", help="the run to read from and write to; a new one when omitted")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")


def cmd_check(args) -> int:
    from alignflow.stages.constitution import ConstitutionError, load_constitution

    try:
        constitution = load_constitution(args.file)
    except ConstitutionError as exc:
        return fail(str(exc))
    tags = Counter(tag for p in constitution.principles for tag in p.tags)
    about = f" ({', '.join(f'{tag} {n}' for tag, n in sorted(tags.items()))})" if tags else ""
    print(f"{args.file}: constitution {constitution.name}, {len(constitution.principles)} principles ok{about}")
    return 0


def cmd_revise(args) -> int:
    from alignflow.config import ConfigError
    from alignflow.stages import revisions
    from alignflow.stages.constitution import ConstitutionError

    try:
        config, run = _prepare(args, ["constitution"])
        if config.constitution.confirm_with_judge:
            config.llm_for("judge").api_key()
        initial = _override(args.initial)
        config.llm_for("responses").merged(initial).api_key()
        if not args.prompts and not args.run_id:
            raise revisions.PromptsError("nothing to revise: give --prompts FILE, or the --run-id of a run with responses")
        revisions.prompts_from_file(args.prompts) if args.prompts else revisions.check_run(run)
    except (ConfigError, ConstitutionError, revisions.PromptsError) as exc:
        return fail(str(exc))
    from alignflow.cli import launch

    return _start(run, lambda: launch.launcher().constitution(config, run.run_id, args.prompts, initial),
                  lambda result: f"revisions: {_counts(result['rows'])}; datasets: {_sizes(result['datasets'])}")


def cmd_label(args) -> int:
    from alignflow.config import ConfigError
    from alignflow.stages import cai_labels
    from alignflow.stages.constitution import ConstitutionError

    try:
        config, run = _prepare(args, ["judge"])
        if not args.pairs and not args.run_id:
            raise cai_labels.PairsError("nothing to label: give --pairs FILE, or the --run-id of a run with responses")
        cai_labels.pairs_from_file(args.pairs) if args.pairs else cai_labels.check_run(run)
    except (ConfigError, ConstitutionError, cai_labels.PairsError) as exc:
        return fail(str(exc))
    from alignflow.cli import launch

    return _start(run, lambda: launch.launcher().cai_labels(config, run.run_id, args.pairs),
                  lambda result: f"labels: {_counts(result['rows'])}, {result['ties']} ties (the two orders disagreed); "
                                 f"datasets: {_sizes(result['datasets'])}")


def _prepare(args, stages: list[str]):
    """The config, the run, and the checks that would otherwise fail minutes later: constitution, API keys."""
    from alignflow.config import load_config
    from alignflow.engine.run import Run, new_run_id
    from alignflow.llm.prices import load_prices
    from alignflow.stages.constitution import load_constitution

    config = load_config(args.config, args.set)
    load_constitution(config.constitution.file).check_rounds(config.constitution.rounds)
    for stage in stages:
        config.llm_for(stage).api_key()
    load_prices(config.prices)  # the manifest prices the run: read now, not after every request
    return config, Run(config, args.run_id or new_run_id())


def _override(items: list[str]):
    """`--initial KEY=VALUE` pairs as an llm override; values read as YAML, like `--set`."""
    import yaml
    from pydantic import ValidationError

    from alignflow.config import ConfigError, LLMOverride

    if not items:
        return None
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--initial {item}: expected KEY=VALUE")
        values[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    try:
        return LLMOverride.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        what = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"--initial {'.'.join(str(p) for p in first['loc'])}: {what}") from None


def _start(run, flow_call: Callable[[], dict], summary: Callable[[dict], str]) -> int:
    """Run a flow with progress bars, as `alignflow run` does; then a summary and the run directory."""
    from rich.console import Console

    from alignflow.cli.progress_bars import RichProgress
    from alignflow.engine import progress
    from alignflow.llm.refused import EndpointRefused

    with RichProgress(Console(stderr=True)) as sink:
        progress.set_sink(sink)
        try:
            result = flow_call()
        except EndpointRefused as exc:  # the run stopped: one line, like a config error
            return fail(str(exc))
        except Exception as exc:  # the flow run's own error, already logged by Prefect
            first = str(exc).splitlines()[0] if str(exc) else ""
            return fail(f"run {run.run_id} failed: {type(exc).__name__}: {first}", 1)
        finally:
            progress.set_sink(None)
    print(summary(result))
    print(run.url)
    return 0


def _counts(rows: dict[str, int]) -> str:
    return ", ".join(f"{n} {outcome}" for outcome, n in rows.items()) or "no rows"


def _sizes(datasets: dict[str, int]) -> str:
    return ", ".join(f"{name} {n} rows" for name, n in datasets.items())
