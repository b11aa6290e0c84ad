"""The bad-input catalogue: every mistake a user can make in a config, a seeds file, a suite, a store, a run id,
an API key, a run directory or a command line is stopped before the first request, as one line naming the key,
file, line or URL, with exit code 2, no traceback (nor a Prefect ERROR log), no file written (store, cache,
anything) and no request sent to the server. Whatever else goes wrong in a command is one line too (exit 1), and a
Ctrl-C in the first second, or a second writer of a run id, prints only its line."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, _free_port
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
    "key only whitespace": (lambda t, s: ["--set", "llm.api_key_env=BLANK_KEY"], "BLANK_KEY holds only whitespace"),
    "key ends in a newline": (lambda t, s: ["--set", "llm.api_key_env=NEWLINE_KEY"],
                              "NEWLINE_KEY has a trailing newline"),
    "prices file missing": (lambda t, s: ["--set", f"prices={t}/none.yaml"], "cannot read prices file"),
    "prices file not YAML": (lambda t, s: ["--set", f"prices={write(t, 'p.yaml', 'x: [')}"], "p.yaml: not valid YAML"),
    # values nested very deep, very long, or holding characters no prompt can carry
    "--set value nested 10,000 deep": (lambda t, s: ["--set", "llm.model=" + "[" * 10_000 + "]" * 10_000],
                                       "--set llm.model: the value is nested too deep"),
    "--set value nested 40 deep": (lambda t, s: ["--set", "instructions.blacklist=" + "[" * 40 + "]" * 40],
                                   "instructions.blacklist.0.0"),
    "--set value of 1 MB": (lambda t, s: ["--set", "llm.model=" + "m" * 1_000_000],
                            "llm.model: 1,000,000 characters; a config value is at most 4,096"),
    "--set key of 1 MB": (lambda t, s: ["--set", "k" * 1_000_000 + "=1"], "(1,000,000 characters): unknown key"),
    "--set a path too long for the file system": (lambda t, s: ["--set", f"seeds={t}/{'s' * 300}.jsonl"],
                                                  "seeds: cannot read"),
    "model name of 1,000 characters": (lambda t, s: ["--set", "llm.model=" + "m" * 1000],
                                       "llm.model: String should have at most 256 characters"),
    "a stage's model name of 1,000 characters": (lambda t, s: ["--set", "judge.llm.model=" + "m" * 1000],
                                                 "judge.llm.model: String should have at most 256"),
    "NUL in a --set value": (lambda t, s: ["--set", "llm.model=gen\x00x"], "--set llm.model: the value holds a NUL"),
    "NUL from a YAML escape": (lambda t, s: ["--set", 'llm.model="gen\\0x"'], "llm.model: holds a NUL character"),
    "escape character from a YAML escape": (lambda t, s: ["--set", 'seeds="data/seed\\e.jsonl"'],
                                            "seeds: holds a control character (U+001B)"),
    "lone surrogate from a YAML escape": (lambda t, s: ["--set", 'judge.llm.model="m\\ud800"'],
                                          "judge.llm.model: holds a lone surrogate (U+D800)"),
    "control character in a key": (lambda t, s: ["--set", "llm.mo\x01del=x"], "llm: the key 'mo\\x01del' holds"),
    "a mapping where text goes": (lambda t, s: ["--set", "store=::::"], "store: expected text, got a mapping"),
    # a credential in a URL
    "base_url with user:password": (lambda t, s: ["--set", f"llm.base_url=http://user:{KEY}@127.0.0.1:1/v1"],
                                    "llm.base_url: the URL holds a user name or password"),
    "a stage's base_url with user:password": (
        lambda t, s: ["--set", f"judge.llm.base_url=http://user:{KEY}@127.0.0.1:1/v1"],
        "put the key in an environment variable and name it in judge.llm.api_key_env"),
    "a generator's base_url with a token": (
        lambda t, s: ["--set", f"responses.models=[{{model: a, base_url: 'https://{KEY}@h.example/v1'}}]"],
        "responses.models.0.base_url: the URL holds a user name or password"),
    "base_url not a URL, with a password": (lambda t, s: ["--set", f"llm.base_url=user:{KEY}@host/v1"],
                                            "llm.base_url: is not an http:// or https:// URL"),
    "store with S3 credentials": (lambda t, s: ["--set", f"store=s3://AKIAEXAMPLE:{KEY}@bucket/runs"],
                                  "credentials come from the environment (AWS_* for an s3:// store)"),
    # malformed store URLs
    "store gs://": (lambda t, s: ["--set", "store=gs://bucket/runs"],
                    "store 'gs://bucket/runs': unknown scheme 'gs'; a store is a local path or s3://bucket/prefix"),
    "store foo://": (lambda t, s: ["--set", "store=foo://x"], "unknown scheme 'foo'"),
    "store file://": (lambda t, s: ["--set", "store=file://"], "unknown scheme 'file'"),
    "store http://": (lambda t, s: ["--set", "store=http://example.com/runs"], "unknown scheme 'http'"),
    "store s3: without //": (lambda t, s: ["--set", "store=s3:bucket/runs"], "unknown scheme 's3'"),
    "store s3:// alone": (lambda t, s: ["--set", "store=s3://"], "store 's3://' names no bucket"),
    "store s3:///x": (lambda t, s: ["--set", "store=s3:///x"], "store 's3:///x' names no bucket"),
    "store bucket with capitals": (lambda t, s: ["--set", "store=s3://Bad_Bucket/x"],
                                   "'Bad_Bucket' is not a valid S3 bucket name"),
    "store bucket too short": (lambda t, s: ["--set", "store=s3://ab/x"], "'ab' is not a valid S3 bucket name"),
    "store '::::'": (lambda t, s: ["--set", "store='::::'"], "store '::::': not a path"),
    "store empty": (lambda t, s: ["--set", "store=''"], "the store is empty"),
    "store path too long for the file system": (lambda t, s: ["--set", f"store={t}/{'d' * 300}/runs"],
                                                "File name too long"),
    # unusual characters in seed files
    "seeds with a lone surrogate escape": (lambda t, s: seeds(t, '{"instruction": "Name a river \\ud800 now."}'),
                                           "seeds.jsonl:1: a JSON string holds a lone surrogate (U+D800)"),
    "seeds with a NUL": (lambda t, s: seeds(t, f"{GOOD_SEED}\nName two\x00 rivers.\n"),
                         "seeds.jsonl:2: holds a NUL character (U+0000)"),
    "seeds with an escaped NUL": (lambda t, s: seeds(t, '{"instruction": "Name \\u0000 rivers."}'),
                                  "seeds.jsonl:1: a JSON string holds a NUL character"),
    "seeds with an escape character": (lambda t, s: seeds(t, "Colour this \x1b[31mred\x1b[0m text.\n"),
                                       "seeds.jsonl:1: holds a control character (U+001B)"),
    "seeds instance with a bell": (
        lambda t, s: seeds(t, '{"instruction": "x y z", "instances": [{"input": "\\u0007"}]}'),
        "seeds.jsonl:1: a JSON string holds a control character (U+0007)"),
    "seeds UTF-16": (lambda t, s: seeds(t, GOOD_SEED.encode("utf-16")), "cannot read seeds file"),
    "seeds invalid UTF-8 on line 3": (lambda t, s: seeds(t, f"{GOOD_SEED}\n{GOOD_SEED}\n".encode() + b"\xc3("),
                                      "cannot read seeds file"),
    "seeds gzip that is not": (lambda t, s: ["--set", f"seeds={write(t, 'seeds.jsonl.gz', GOOD_SEED)}"],
                               "cannot read seeds file"),
    "seeds byte-order mark then bad JSON": (lambda t, s: seeds(t, "\ufeff{\"instruction\": "),
                                            "seeds.jsonl:1: not valid JSON"),
    # seed lines that are JSON but not objects
    "seeds line an array": (lambda t, s: seeds(t, f'{GOOD_SEED}\n["Name three rivers."]\n'),
                            "seeds.jsonl:2: a JSON array, not an object"),
    "seeds line null": (lambda t, s: seeds(t, "null\n"), "seeds.jsonl:1: JSON null, not an object"),
    "seeds line a number": (lambda t, s: seeds(t, "3\n"), "seeds.jsonl:1: a JSON number, not an object"),
    "seeds line a string": (lambda t, s: seeds(t, '"Name three rivers."\n'), "seeds.jsonl:1: a JSON string, not an"),
    "seeds line true": (lambda t, s: seeds(t, "true\n"), "seeds.jsonl:1: JSON true or false, not an object"),
    "seeds line nested 10,000 deep": (lambda t, s: seeds(t, "[" * 10_000 + "]" * 10_000),
                                      "seeds.jsonl:1: nested too deep to read"),
    "seeds instruction nested 100,000 deep": (
        lambda t, s: seeds(t, '{"instruction": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        "seeds.jsonl:1: nested too deep to read"),
}


@pytest.mark.parametrize("case", RUN_CASES, ids=list(RUN_CASES))
def test_run_stops_bad_input_before_anything(case, env, server, capsys, monkeypatch):
    monkeypatch.setenv("WRONG_KEY", "sk-wrong-0123456789abcdef")
    monkeypatch.setenv("BLANK_KEY", "  ")
    monkeypatch.setenv("NEWLINE_KEY", f"{KEY}\n")
    extra, says = RUN_CASES[case]
    args = extra(env, server)
    before, project = files(env), set(os.listdir(ROOT))
    code = cli.main(["run", "configs/quickstart.yaml", "--set", f"store={env}/store", "--set", "llm.provider=openai",
                     "--set", f"llm.base_url={server.openai_base_url}", "--set", "llm.model=gen", *args])
    line = one_line(capsys)
    assert code == 2, line
    assert says in line
    assert "sk-wrong" not in line and KEY not in line
    assert files(env) == before, "a rejected run wrote files"
    assert not {name for name in set(os.listdir(ROOT)) - project if ":" in name}, "a URL was taken for a directory"
    assert server.requests == 0, "a rejected run sent requests"


PREFECT_ERROR = re.compile(r"\|\s*ERROR\s*\|")  # a Prefect log line: `12:00:00.000 | ERROR   | Flow run ...`


def one_line(capsys) -> str:
    """The one line the command printed on stderr (stdout must be empty), with no traceback."""
    out, err = capsys.readouterr()
    return the_line(out, err)


def the_line(out: str, err: str) -> str:
    """A command's output is exactly one line, `alignflow: ...`, on stderr: no traceback, no Prefect ERROR log, and
    short enough to read (a long value is cut)."""
    assert "Traceback" not in err + out and not PREFECT_ERROR.search(err + out), err + out
    assert not out.strip(), out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("alignflow: ") and len(lines[0]) < 600, lines[0]
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
    # configs nested very deep, or holding what a config never holds
    "config nested 10,000 deep": (lambda t: ["run", write(t, "deep.yaml", "llm: " + "[" * 10_000 + "]" * 10_000)],
                                  "deep.yaml: not valid YAML (nested too deep)"),
    "config as JSON nested 10,000 deep": (lambda t: ["run", write(t, "deep.json", '{"a": ' * 10_000 + "}" * 10_000)],
                                          "deep.json: not valid YAML (nested too deep)"),
    "config path too long": (["run", "c" * 5000 + ".yaml"], "(5,005 characters): File name too long"),
    "config with a NUL": (lambda t: ["run", write(t, "nul.yaml", "llm:\n  model: a\x00b\n")],
                          "nul.yaml: not valid YAML (unacceptable character #x0000"),
    "config with an escaped NUL": (lambda t: ["run", write(t, "esc.yaml", 'llm: {model: "a\\0b"}\n')],
                                   "esc.yaml: llm.model: holds a NUL character"),
    "config with a key in base_url": (
        lambda t: ["run", write(t, "key.yaml", f"llm: {{provider: openai, base_url: 'http://me:{KEY}@h.example/v1'}}")],
        "key.yaml: llm.base_url: the URL holds a user name or password"),
    "config store gs://": (lambda t: ["run", write(t, "gs.yaml", "store: gs://bucket/runs\n")],
                           "unknown scheme 'gs'"),
    "judge audit config nested deep": (lambda t: ["judge", "audit", write(t, "deep.yaml", "a: " + "[" * 10_000),
                                                  "--pairs", f"{t}/pairs.jsonl"], "deep.yaml: not valid YAML"),
    "limits config nested deep": (lambda t: ["limits", "create", write(t, "deep.yaml", "a: " + "{a: " * 10_000)],
                                  "deep.yaml: not valid YAML (nested too deep)"),
    "deploy without a server": (["deploy"], "PREFECT_API_URL is not set"),
    # a garbage manifest given to inspect
    "inspect a manifest not JSON": (lambda t: ["inspect", run_dir(t, b"not json")],
                                    "r1/manifest.json: not a manifest alignflow wrote: not valid JSON"),
    "inspect an empty manifest": (lambda t: ["inspect", run_dir(t, b"")], "r1/manifest.json: not a manifest"),
    "inspect a binary manifest": (lambda t: ["inspect", run_dir(t, bytes(range(256)))],
                                  "r1/manifest.json: not a manifest alignflow wrote"),
    "inspect a manifest that is a list": (lambda t: ["inspect", run_dir(t, b"[1, 2]")], "a JSON list, not an object"),
    "inspect a manifest of another shape": (lambda t: ["inspect", run_dir(t, b'{"a": 1}')],
                                            "not a manifest alignflow wrote (KeyError: 'run_id')"),
    "inspect a manifest whose stages are a number": (
        lambda t: ["inspect", run_dir(t, b'{"run_id": "r1", "stages": 3, "tokens": {}}')],
        "r1/manifest.json: not a manifest alignflow wrote (AttributeError"),
    "inspect a manifest nested deep": (lambda t: ["inspect", run_dir(t, b"[" * 100_000 + b"]" * 100_000)],
                                       "not valid JSON (RecursionError)"),
    "inspect a manifest.json that is a directory": (lambda t: ["inspect", run_dir(t, manifest_dir=True)],
                                                    "r1/manifest.json is a directory, not a manifest"),
    "inspect a file": (lambda t: ["inspect", write(t, "afile", "x")], "no such run directory"),
    "inspect gs://": (["inspect", "gs://bucket/runs/r1"], "unknown scheme 'gs'"),
    "inspect s3:///": (["inspect", "s3:///runs/r1"], "names no bucket"),
    "inspect a bucket": (["inspect", "s3://some-bucket"], "s3://some-bucket is a bucket"),
    "inspect a path too long": (["inspect", "r" * 5000], "(5,000 characters) (File name too long)"),
    # dedup with an unwritable output, or options that do not fit together
    "dedup out a directory": (lambda t: dedup(t, "--out", mkdir(t, "out.jsonl")), "out.jsonl: is a directory"),
    "dedup out under a file": (lambda t: dedup(t, "--out", f"{write(t, 'afile', 'x')}/out.jsonl"),
                               "no directory"),
    "dedup out where nobody may write": (lambda t: dedup(t, "--out", "/sys/alignflow-out.jsonl"),
                                         "cannot write /sys/alignflow-out.jsonl: Permission denied"),
    "dedup out path too long": (lambda t: dedup(t, "--out", f"{t}/{'o' * 300}.jsonl"), "File name too long"),
    "dedup report a directory": (lambda t: dedup(t, "--out", f"{t}/out.jsonl", "--report", mkdir(t, "r.jsonl")),
                                 "r.jsonl: is a directory"),
    "dedup out and report the same": (lambda t: dedup(t, "--out", f"{t}/o.jsonl", "--report", f"{t}/o.jsonl"),
                                      "--out and --report are the same file"),
    "dedup more bands than permutations": (lambda t: dedup(t, "--out", f"{t}/o.jsonl", method="minhash",
                                                          extra=["--bands", "200", "--permutations", "128"]),
                                           "--bands (200) must divide --permutations (128)"),
    "dedup bands not dividing": (lambda t: dedup(t, "--out", f"{t}/o.jsonl", method="minhash",
                                                extra=["--bands", "33"]), "--bands (33) must divide --permutations"),
    "dedup input path too long": (["dedup", "i" * 5000 + ".jsonl", "--column", "text", "--method", "exact", "--out",
                                   "{t}/o.jsonl"], "File name too long"),
    "dedup input a directory": (lambda t: ["dedup", mkdir(t, "in.jsonl"), "--column", "text", "--method", "exact",
                                           "--out", f"{t}/o.jsonl"], "in.jsonl: no such file"),
    "dedup input nested deep": (lambda t: ["dedup", write(t, "deep.jsonl", '{"text": ' + "[" * 100_000),
                                           "--column", "text", "--method", "exact", "--out", f"{t}/o.jsonl"],
                                "deep.jsonl: cannot read as jsonl"),
    # the other commands, given what they cannot read
    "quarantine show a batch number of 5,000 digits": (
        lambda t: ["quarantine", "show", run_dir(t), "pairs/" + "9" * 5000], "BATCH must look like responses/3"),
    "quarantine list gs://": (["quarantine", "list", "gs://bucket/runs/r1"], "unknown scheme 'gs'"),
    "review decisions nested deep": (
        lambda t: ["review", run_dir(t, review=True), "--decisions", write(t, "d.yaml", "a: " + "[" * 10_000)],
        "d.yaml: not valid JSON or YAML (nested too deep)"),
    "review decisions not UTF-8": (
        lambda t: ["review", run_dir(t, review=True), "--decisions", write(t, "d.yaml", b"\xff\xfe")],
        "cannot read decisions file"),
    "review decisions missing": (lambda t: ["review", run_dir(t, review=True), "--decisions", f"{t}/none.yaml"],
                                 "cannot read decisions file"),
    "review s3:// without a bucket": (["review", "s3:///runs/r1"], "names no bucket"),
    "import-labels of gs://": (["import-labels", "gs://bucket/runs/r1", "{t}/labels.jsonl"], "unknown scheme 'gs'"),
    "export of gs://": (["export", "gs://bucket/runs/r1", "--format", "dpo", "--out", "{t}/d.parquet"],
                        "unknown scheme 'gs'"),
    "agreement path too long": (["agreement", "a" * 5000], "File name too long"),
    "expectations directory path too long": (["expectations", "check", "--dir", "e" * 5000], "File name too long"),
    "constitution nested deep": (lambda t: ["constitution", "check", write(t, "c.yaml", "p: " + "[" * 10_000)],
                                 "c.yaml: not valid YAML (nested too deep)"),
    "constitution path too long": (["constitution", "check", "{t}/" + "c" * 300], "File name too long"),
    "prompts with a NUL": (lambda t: ["constitution", "revise", "configs/quickstart.yaml", "--prompts",
                                      write(t, "p.jsonl", '{"prompt": "Say \\u0000 hi."}')],
                           "p.jsonl:1: a JSON string holds a NUL character"),
    "prompts nested deep": (lambda t: ["constitution", "revise", "configs/quickstart.yaml", "--prompts",
                                       write(t, "p.jsonl", "[" * 10_000 + "]" * 10_000)], "p.jsonl:1: nested too deep"),
    "pairs with an escape character": (lambda t: ["constitution", "label", "configs/quickstart.yaml", "--pairs",
                                                  write(t, "p.jsonl", '{"prompt": "\\u001b[2J", "responses": []}')],
                                       "p.jsonl:1: a JSON string holds a control character (U+001B)"),
    "audit pairs nested deep": (lambda t: ["judge", "audit", "configs/quickstart.yaml", "--pairs",
                                           write(t, "p.jsonl", '{"prompt": ' + "[" * 100_000)],
                                "p.jsonl:1: nested too deep"),
    "audit pairs with a lone surrogate": (lambda t: ["judge", "audit", "configs/quickstart.yaml", "--pairs",
                                                     write(t, "p.jsonl", '{"prompt": "\\udfff", "chosen": "a", '
                                                                         '"rejected": "b"}')],
                                          "p.jsonl:1: a JSON string holds a lone surrogate (U+DFFF)"),
}


def run_dir(tmp: Path, manifest: bytes | None = None, *, manifest_dir: bool = False, review: bool = False) -> str:
    """A run directory as a killed run leaves it (its seeds stage recorded), with a manifest.json holding `manifest`
    (or one that is a directory), and a pairs sample waiting for review."""
    run = tmp / "runs" / "r1"
    (run / "seeds").mkdir(parents=True, exist_ok=True)
    (run / "seeds" / "stage.json").write_text(json.dumps({"stage": "seeds", "definition": "x"}))
    if manifest is not None:
        (run / "manifest.json").write_bytes(manifest)
    if manifest_dir:
        (run / "manifest.json").mkdir()
    if review:
        (run / "review.json").write_text(json.dumps({"stages": {"pairs": {"sample": [], "rows": 0}}}))
    return str(run)


def mkdir(tmp: Path, name: str) -> str:
    (tmp / name).mkdir()
    return str(tmp / name)


def dedup(tmp: Path, *out: str, method: str = "exact", extra: list[str] | None = None) -> list[str]:
    return ["dedup", f"{tmp}/rows.jsonl", "--column", "text", "--method", method, *(extra or []), *out]


@pytest.mark.parametrize("case", OTHER_CASES, ids=list(OTHER_CASES))
def test_commands_stop_bad_input_in_one_line(case, env, capsys):
    write(env, "bad.yaml", "llm: [unclosed")
    write(env, "list.yaml", "- a\n- b\n")
    write(env, "binary.yaml", b"\xff\xfe\x00\x01")
    write(env, "rows.jsonl", '{"text": "a b c"}\n{"text": "a b c"}\n')
    argv, says = OTHER_CASES[case]
    argv = argv(env) if callable(argv) else [a.replace("{t}", str(env)) for a in argv]
    before = files(env)
    try:
        code = cli.main(argv)
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


def test_an_error_nobody_expected_is_one_line_naming_the_command(env, capsys, monkeypatch):
    """A run's review.json that is not JSON is no user input any check knows: the command still ends in one line
    (exit 1) naming it and the error, and ALIGNFLOW_DEBUG=1 shows the traceback."""
    run = run_dir(env, review=True)
    Path(run, "review.json").write_text("{not json")
    assert cli.main(["review", run]) == 1
    line = one_line(capsys)
    assert line.startswith("alignflow: review failed: JSONDecodeError: ")
    assert line.endswith("(run with ALIGNFLOW_DEBUG=1 for the traceback)")
    monkeypatch.setenv("ALIGNFLOW_DEBUG", "1")
    assert cli.main(["review", run]) == 1
    assert "Traceback" in capsys.readouterr().err


ALIGNFLOW = str(Path(sys.executable).with_name("alignflow"))  # the console script a user runs


def command(tmp: Path, server: LLMTestServer, *extra: str) -> list[str]:
    return [ALIGNFLOW, "run", "configs/quickstart.yaml", "--set", f"store={tmp}/store", "--set", "llm.provider=openai",
            "--set", f"llm.base_url={server.openai_base_url}", "--set", "llm.model=gen", *extra]


def subprocess_env() -> dict[str, str]:
    """The test's environment (its cache directory, the key), with no Prefect server: the run starts its own."""
    return {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}


@pytest.mark.parametrize("delay_s", [0.2, 0.5, 1.0])
def test_ctrl_c_in_the_first_second_is_one_line(delay_s, env, server):
    """Ctrl-C while the command loads its modules or checks its input: exit 130 and one line, nothing written. (The
    bundled model: nothing of the run can reach the server, however far its checks got in that second.)"""
    before = files(env)
    proc = subprocess.Popen(command(env, server, "--run-id", "c1", "--set", "llm.provider=local"), cwd=ROOT,
                            env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(delay_s)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends it: to the whole process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in the_line(out, err)
    assert files(env) == before
    assert server.requests == 0


def children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="watches the run's child processes in /proc")
def test_the_second_writer_of_a_run_id_prints_only_its_line(env, server):
    """A run whose checks passed, but whose run id another process took before its flow began (here: this test, once
    the run starts its Prefect server), stops at the lease inside the flow: Prefect logs that flow run's exception
    with a traceback, and the terminal shows none of it, only the line naming the other writer."""
    from alignflow.engine.lease import Lease
    from alignflow.engine.store import Store

    store = Store(f"{env}/store")
    proc = subprocess.Popen(command(env, server, "--run-id", "w2"), cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not children(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the checks are done when the temporary Prefect server starts
    assert proc.poll() is None, proc.communicate()[1]
    lease = Lease(store, "w2")
    lease.acquire()
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        lease.release()
    line = the_line(out, err)
    assert proc.returncode == 2
    assert line.startswith("alignflow: run w2 is being written by another process (pid ") and \
        f"pid {os.getpid()} on {socket.gethostname()}" in line
    assert server.requests <= 1  # the checks' one-token call to the endpoint, before the other writer came
    assert store.list("") == [], "the second writer wrote something"  # the lease this test held is released


def test_unusual_characters_a_seed_may_hold_are_read(tmp_path):
    """What is not a mistake reads as it is: a byte-order mark at the start (or starting each of several files put
    together), a tab, a line separator (U+2028) inside a JSON string, Windows line ends."""
    from alignflow.stages.seeds import load_seeds

    path = write(tmp_path, "seeds.jsonl", "\ufeff" + GOOD_SEED + "\r\n\ufeffName\ttwo seas.\r\n"
                 + json.dumps({"instruction": "Split\u2028these lines."}, ensure_ascii=False) + "\n")
    assert load_seeds(path)["instruction"].to_list() == ["Name three rivers.", "Name\ttwo seas.",
                                                         "Split\u2028these lines."]
