"""The bad-input catalogue: every mistake a user can make in a config, a seeds file, a suite, a store, a run id,
an API key or a command line is stopped before the first request, as one line naming the key, file or line,
with exit code 2, no traceback, no file written (store, cache, anything) and no request sent to the server."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import _free_port
from llm_server import LLMTestServer

from flows import cli

KEY = "sk-test-catalogue-key-0123456789"


@pytest.fixture(scope="module")
def server():
    with LLMTestServer(api_key=KEY) as running:
        yield running


class NoLauncher:
    """Stands in for Prefect: a case that gets as far as starting a flow has slipped through every check."""

    def __getattr__(self, name):
        raise AssertionError(f"bad input reached the flow ({name})")


@pytest.fixture
def env(tmp_path, monkeypatch, server):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setattr(cli, "PrefectLauncher", NoLauncher)
    server.reset_counts()
    return tmp_path


def write(tmp: Path, name: str, content: str | bytes) -> str:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def suites_with(tmp: Path, stage: str, content: str) -> str:
    """A copy of the shipped suites with one file replaced."""
    directory = tmp / "suites"
    shutil.copytree(Path(cli.__file__).resolve().parent.parent / "expectations", directory)
    (directory / f"{stage}.json").write_text(content)
    return str(directory)


def seeds(tmp: Path, content: str | bytes) -> list[str]:
    return ["--set", f"seeds={write(tmp, 'seeds.jsonl', content)}"]


GOOD_SEED = json.dumps({"instruction": "Name three rivers.", "instances": [{"input": "", "output": "Nile"}]})

# id: (extra arguments to `alignflow run` (a function of the tmp dir and the server), what the one line says)
RUN_CASES = {
    # config values
    "unknown key": (lambda t, s: ["--set", "llm.colour=red"], "llm.colour: unknown key"),
    "unknown section": (lambda t, s: ["--set", "judges.aspects=[helpfulness]"], "judges: unknown key"),
    "batch_size 1e21": (lambda t, s: ["--set", "responses.batch_size=1e21"], "responses.batch_size"),
    "judge.batch_size (removed)": (lambda t, s: ["--set", "judge.batch_size=8"], "judge.batch_size: unknown key"),
    "max_tokens 1e21": (lambda t, s: ["--set", "llm.max_tokens=1e21"], "llm.max_tokens"),
    "prompts_per_round 1e21": (lambda t, s: ["--set", "instructions.prompts_per_round=1e21"],
                               "instructions.prompts_per_round"),
    "per_instruction 1e21": (lambda t, s: ["--set", "responses.per_instruction=1e21"], "responses.per_instruction"),
    "constitution batch 1e21": (lambda t, s: ["--set", "constitution.batch_size=1e21"], "constitution.batch_size"),
    "max_rounds 0": (lambda t, s: ["--set", "instructions.max_rounds=0"], "instructions.max_rounds"),
    "shown_machine above shown": (lambda t, s: ["--set", "instructions.shown=1", "--set", "instructions.shown_machine=2"],
                                  "shown_machine (2) cannot be more than shown (1)"),
    "min_words above max_words": (lambda t, s: ["--set", "instructions.min_words=50", "--set",
                                                "instructions.max_words=10"], "min_words (50) cannot be more"),
    "base_url not a URL": (lambda t, s: ["--set", "llm.base_url=localhost:8000/v1"],
                           "llm.base_url: 'localhost:8000/v1' is not an http:// or https:// URL"),
    "unknown provider": (lambda t, s: ["--set", "llm.provider=azure"], "llm.provider"),
    "temperature 5": (lambda t, s: ["--set", "llm.temperature=5"], "llm.temperature"),
    "max_concurrency 0": (lambda t, s: ["--set", "llm.max_concurrency=0"], "llm.max_concurrency"),
    "negative budget": (lambda t, s: ["--set", "llm.budget_usd=-1"], "llm.budget_usd"),
    "gate stage misnamed": (lambda t, s: ["--set", "gate.stages={judge: fail}"], "gate.stages"),
    "unknown target dataset": (lambda t, s: ["--set", "instructions.target={dataset: kto, rows: 5}"],
                               "instructions.target"),
    "no judge aspect": (lambda t, s: ["--set", "judge.aspects=[]"], "judge.aspects"),
    "unknown judge aspect": (lambda t, s: ["--set", "judge.aspects=[politeness]"], "judge.aspects"),
    "dedup threshold 2": (lambda t, s: ["--set", "instructions.dedup.threshold=2"], "instructions.dedup.threshold"),
    "bands not dividing permutations": (lambda t, s: ["--set", "instructions.dedup.permutations=100", "--set",
                                                      "instructions.dedup.bands=33"], "instructions.dedup"),
    "unknown key in a generator": (lambda t, s: ["--set", "responses.models=[{model: a, colour: b}]"],
                                   "responses.models.0.colour: unknown key"),
    "curator module missing": (lambda t, s: ["--set", "instructions.curate=[no_such_curators:keep]"],
                               "curate no_such_curators:keep: no module named 'no_such_curators'"),
    "curator not module:function": (lambda t, s: ["--set", "instructions.curate=[no_such_curators.keep]"],
                                    "instructions: curate: 'no_such_curators.keep' is not module:function"),
    "--set without =": (lambda t, s: ["--set", "llm.model"], "--set llm.model: expected KEY=VALUE"),
    "--set into a value": (lambda t, s: ["--set", "store.path=x"], "store"),
    "--allow-config-change misnamed": (lambda t, s: ["--allow-config-change", "judge"],
                                       "--allow-config-change: judge is not a stage"),
    # seeds
    "seeds missing": (lambda t, s: ["--set", f"seeds={t}/nope.jsonl"], "seeds file not found"),
    "seeds a directory": (lambda t, s: ["--set", f"seeds={t}"], "is a directory, not a file"),
    "seeds empty": (lambda t, s: seeds(t, "\n\n"), "holds no instructions"),
    "seeds not UTF-8": (lambda t, s: seeds(t, b"\xff\xfe\x00bad"), "cannot read seeds file"),
    "seeds bad JSON on line 3": (lambda t, s: seeds(t, f"{GOOD_SEED}\n{GOOD_SEED}\n{{\"instruction\": \n"),
                                 "seeds.jsonl:3: not valid JSON"),
    "seeds instances a dict": (lambda t, s: seeds(t, '{"instruction": "x y z", "instances": {"input": "a"}}'),
                               "seeds.jsonl:1: `instances` must be a list"),
    "seeds instances an int": (lambda t, s: seeds(t, f'{GOOD_SEED}\n{{"instruction": "x y z", "instances": 3}}'),
                               "seeds.jsonl:2: `instances` must be a list"),
    "seeds input an int": (lambda t, s: seeds(t, '{"instruction": "x y z", "instances": [{"input": 5}]}'),
                           "seeds.jsonl:1: `instances[0].input` must be a string"),
    "seeds without instruction": (lambda t, s: seeds(t, '{"prompt": "x y z"}'), "seeds.jsonl:1: no `instruction`"),
    "seeds line of 50 MB": (lambda t, s: seeds(t, "word " * 10_000_000), "seeds.jsonl:1: the task is"),
    # suites and constitution
    "suites directory missing": (lambda t, s: ["--set", f"gate.suites={t}/nosuites"],
                                 "no expectation suite for the instructions stage"),
    "suite not JSON": (lambda t, s: ["--set", f"gate.suites={suites_with(t, 'pairs', '{not json')}"],
                       "pairs.json: not valid JSON"),
    "suite not an object": (lambda t, s: ["--set", f"gate.suites={suites_with(t, 'judgments', '[1, 2]')}"],
                            "judgments.json: expected a JSON object"),
    "constitution missing": (lambda t, s: ["--set", "constitution.enabled=true", "--set",
                                           f"constitution.file={t}/none.yaml"], "cannot read constitution"),
    "constitution not YAML": (lambda t, s: ["--set", "constitution.enabled=true", "--set",
                                            f"constitution.file={write(t, 'c.yaml', 'principles: [unclosed')}"],
                              "c.yaml: not valid YAML"),
    # store
    "store is a file": (lambda t, s: ["--set", f"store={write(t, 'afile', 'x')}"], "is a file, not a directory"),
    "store not writable": (lambda t, s: ["--set", "store=/proc/alignflow-store"],
                           "cannot write to the store /proc/alignflow-store"),
    # run id
    "run id escapes the store": (lambda t, s: ["--run-id", "../escaped-run"], "run id '../escaped-run' is not a plain"),
    "run id absolute": (lambda t, s: ["--run-id", f"{t}/abs"], "is not a plain name"),
    "run id with a slash": (lambda t, s: ["--run-id", "a/b"], "run id 'a/b' is not a plain name"),
    "run id empty": (lambda t, s: ["--run-id", ""], "run id '' is not a plain name"),
    # endpoint and key
    "key refused (401)": (lambda t, s: ["--set", "llm.api_key_env=WRONG_KEY"],
                          "refused the API key in WRONG_KEY (HTTP 401)"),
    "key refused for one stage": (lambda t, s: ["--set", "judge.llm.api_key_env=WRONG_KEY"],
                                  "refused the API key in WRONG_KEY (HTTP 401)"),
    "key variable unset": (lambda t, s: ["--set", "llm.api_key_env=NO_SUCH_KEY_VARIABLE"],
                           "missing API key: set the environment variable NO_SUCH_KEY_VARIABLE"),
    "anthropic key unset": (lambda t, s: ["--set", "llm.provider=anthropic", "--set", f"llm.base_url={s.url}"],
                            "set the environment variable ANTHROPIC_API_KEY"),
    "nothing listens at base_url": (lambda t, s: ["--set", f"llm.base_url=http://127.0.0.1:{_free_port()}/v1"],
                                    "nothing answers at http://127.0.0.1:"),
}


@pytest.mark.parametrize("case", RUN_CASES, ids=list(RUN_CASES))
def test_run_stops_bad_input_before_anything(case, env, server, capsys, monkeypatch):
    monkeypatch.setenv("WRONG_KEY", "sk-wrong-0123456789abcdef")
    extra, says = RUN_CASES[case]
    args = extra(env, server)
    before = files(env)
    code = cli.main(["run", "configs/quickstart.yaml", "--set", f"store={env}/store", "--set", "llm.provider=openai",
                     "--set", f"llm.base_url={server.openai_base_url}", "--set", "llm.model=gen", *args])
    line = one_line(capsys)
    assert code == 2, line
    assert says in line
    assert "sk-wrong" not in line and KEY not in line
    assert files(env) == before, "a rejected run wrote files"
    assert server.requests == 0, "a rejected run sent requests"


def one_line(capsys) -> str:
    """The one line the command printed on stderr (stdout must be empty), with no traceback."""
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    assert not out.strip(), out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("alignflow: ")
    return lines[0]


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


OTHER_CASES = {
    "config file missing": (["run", "{t}/nowhere.yaml"], "config file not found"),
    "config not YAML": (["run", "{t}/bad.yaml"], "bad.yaml: not valid YAML"),
    "config a list": (["run", "{t}/list.yaml"], "list.yaml: expected a mapping at the top level"),
    "config not UTF-8": (["run", "{t}/binary.yaml"], "cannot read config file"),
    "run without a config": (["run"], "the following arguments are required: config"),
    "unknown flag": (["run", "configs/quickstart.yaml", "--colour"], "unrecognized arguments: --colour"),
    "unknown command": (["make-data"], "invalid choice: 'make-data'"),
    "dedup shingle size 1e21": (["dedup", "{t}/rows.jsonl", "--column", "text", "--method", "minhash",
                                 "--shingle-size", "1e21", "--out", "{t}/out.jsonl"], "--shingle-size"),
    "dedup input missing": (["dedup", "{t}/none.jsonl", "--column", "text", "--method", "exact", "--out",
                             "{t}/out.jsonl"], "none.jsonl"),
    "dedup column missing": (["dedup", "{t}/rows.jsonl", "--column", "prompt", "--method", "exact", "--out",
                              "{t}/out.jsonl"], "prompt"),
    "inspect no run": (["inspect", "{t}/norun"], "no such run directory"),
    "export no run": (["export", "{t}/norun", "--format", "dpo", "--out", "{t}/dpo.parquet"], "no such run directory"),
    "quarantine list not a run": (["quarantine", "list", "{t}"], "not a run directory"),
}


@pytest.mark.parametrize("case", OTHER_CASES, ids=list(OTHER_CASES))
def test_commands_stop_bad_input_in_one_line(case, env, capsys):
    write(env, "bad.yaml", "llm: [unclosed")
    write(env, "list.yaml", "- a\n- b\n")
    write(env, "binary.yaml", b"\xff\xfe\x00\x01")
    write(env, "rows.jsonl", '{"text": "a b c"}\n{"text": "a b c"}\n')
    argv, says = OTHER_CASES[case]
    before = files(env)
    try:
        code = cli.main([a.replace("{t}", str(env)) for a in argv])
    except SystemExit as exc:  # argparse's errors exit from inside the parser
        code = exc.code
    assert code == 2
    assert says in one_line(capsys)
    assert files(env) == before


def test_s3_store_without_credentials(env, server, capsys, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(env / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(env / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setattr("boto3.DEFAULT_SESSION", None)  # as in a fresh process: no credentials cached by other tests
    code = cli.main(["run", "configs/quickstart.yaml", "--set", "store=s3://some-bucket/runs", "--set",
                     "llm.provider=openai", "--set", f"llm.base_url={server.openai_base_url}", "--set", "llm.model=gen"])
    line = one_line(capsys)
    assert code == 2 and "cannot write to the store s3://some-bucket/runs: Unable to locate credentials" in line
    assert server.requests == 0


def test_s3_store_whose_bucket_is_missing(env, server, capsys, s3_server):
    code = cli.main(["run", "configs/quickstart.yaml", "--set", "store=s3://no-such-bucket/runs", "--set",
                     "llm.provider=openai", "--set", f"llm.base_url={server.openai_base_url}", "--set", "llm.model=gen"])
    line = one_line(capsys)
    assert code == 2 and "cannot write to the store s3://no-such-bucket/runs" in line and "NoSuchBucket" in line
    assert server.requests == 0


def test_inspect_reads_a_run_that_never_wrote_its_manifest(env, capsys):
    """A killed run has stages but no manifest yet: inspect counts it from its checkpoints, like `quarantine list`."""
    (env / "r1" / "seeds").mkdir(parents=True)
    (env / "r1" / "seeds" / "stage.json").write_text(json.dumps({"stage": "seeds", "definition": "x"}))
    assert cli.main(["inspect", str(env / "r1")]) == 0
    assert "no manifest.json yet" in capsys.readouterr().out
