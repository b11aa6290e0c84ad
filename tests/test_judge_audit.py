"""`alignflow judge audit`: the configured judge measured against people's preferences on real HH-RLHF pairs (the
first 300 of Anthropic's harmless-base test split, tests/data/hh_rlhf_harmless_sample.jsonl) and on our DPO export
format, through the loopback LLM server: a judge that prefers what people chose agrees with them, one that rates at
random agrees by chance, and every bad input is one line with exit code 2 before any request."""
from __future__ import annotations

import gzip
import json
import math

import polars as pl
import pytest
from llm_server import LLMTestServer, judge_prompt_answers, preferring_judge, random_judge

from alignflow.config import load_config
from alignflow.review.agreement import wilson
from alignflow.review.judge_audit import HH_TURN, AuditError, audit, read_pairs
from flows import cli

KEY = "sk-test-judge-audit-secret-0123456789"
SAMPLE = "hh_rlhf_harmless_sample.jsonl"


@pytest.fixture(scope="module")
def server():
    with LLMTestServer(api_key=KEY) as running:
        yield running


@pytest.fixture
def env(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server.reset_counts()
    server.respond = None
    return server


def overrides(server, store, *extra: str) -> list[str]:
    return ["--set", f"store={store}", "--set", "llm.provider=openai",
            "--set", f"llm.base_url={server.openai_base_url}", "--set", "llm.model=judge-model",
            "--set", "llm.max_concurrency=16", "--set", "seed=7", *extra]


def audit_cli(server, store, pairs, *extra: str) -> int:
    return cli.main(["judge", "audit", "configs/quickstart.yaml", "--pairs", str(pairs), *overrides(server, store),
                     *extra])


def report_of(store) -> tuple[dict, str]:
    [path] = (store / "audits").glob("*.json")
    text = path.read_text()
    return json.loads(text), text


# --------------------------------------------------------------------------- the Wilson interval

def test_wilson_against_textbook_values_and_scipy():
    low, high = wilson(81, 100)
    assert low == pytest.approx(0.7222, abs=1e-4) and high == pytest.approx(0.8749, abs=1e-4)
    low, high = wilson(50, 100)  # symmetric about one half
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    assert wilson(0, 0) is None  # no trial, no interval
    low, high = wilson(81, 100, z=2.5758)  # 99%: wider
    assert low < 0.7222 and high > 0.8749
    try:
        from scipy.stats import binomtest
    except ImportError:
        return
    for k, n in ((81, 100), (0, 7), (3, 7), (7, 7), (190, 200), (1, 1000), (517, 1033)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        z = 1.959963984540054  # scipy's exact 97.5% quantile
        assert wilson(k, n, z) == pytest.approx((ci.low, ci.high), abs=1e-9)
        assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-4)


# --------------------------------------------------------------------------- reading the pairs

def test_hh_prompt_is_everything_before_the_last_assistant_turn(test_data):
    rows = [json.loads(line) for line in (test_data / SAMPLE).read_text().splitlines()]
    found = read_pairs(test_data / SAMPLE)
    assert found.rows == len(found.pairs) == 300 and not found.skipped and dict(found.formats) == {"hh-rlhf": 300}
    for row, pair in zip(rows, found.pairs):
        cut = row["chosen"].rindex(HH_TURN)
        assert pair.prompt == row["chosen"][:cut] == row["rejected"][:row["rejected"].rindex(HH_TURN)]
        assert pair.chosen == row["chosen"][cut + len(HH_TURN):].strip()
        assert pair.rejected == row["rejected"][row["rejected"].rindex(HH_TURN) + len(HH_TURN):].strip()
    multi = next(p for p in found.pairs if p.prompt.count(HH_TURN) >= 2)  # earlier assistant turns stay in the prompt
    assert multi.prompt.startswith("\n\nHuman:") and multi.prompt.rstrip().split("\n\n")[-1].startswith("Human:")
    assert found.pairs[0].place == f"{test_data / SAMPLE}:1"
    first = read_pairs(test_data / SAMPLE, limit=5)
    assert first.pairs == found.pairs[:5] and first.rows == 5


def test_rows_skipped_and_counted_and_gzip(tmp_path, test_data):
    rows = [json.loads(line) for line in (test_data / SAMPLE).read_text().splitlines()[:4]]
    rows.insert(1, {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: bye\n\nAssistant: hello!"})
    rows.insert(3, {"chosen": "\n\nHuman: hi\n\nAssistant: same ", "rejected": "\n\nHuman: hi\n\nAssistant:  same"})
    rows.insert(4, {"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi"})
    path = tmp_path / "pairs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.write("\n".join(json.dumps(r) for r in rows) + "\n\n")
    found = read_pairs(path)
    assert found.rows == 7 and len(found.pairs) == 4
    assert dict(found.skipped) == {"the two prompts differ": 1, "the two answers are identical": 1,
                                   "a transcript has no `\\n\\nAssistant:` turn": 1}
    assert [p.place for p in found.pairs] == [f"{path}:{n}" for n in (1, 3, 6, 7)]
    # the limit counts usable pairs, in file order
    assert [p.place for p in read_pairs(path, limit=2).pairs] == [f"{path}:1", f"{path}:3"]


def test_our_dpo_format(tmp_path):
    rows = [{"prompt": f"Name a colour, {n}.", "chosen": f"Blue {n}.", "rejected": f"A colour {n}.", "margin": 2.0}
            for n in range(6)]
    rows.append({"prompt": "Same?", "chosen": "Yes.", "rejected": "Yes."})
    jsonl = tmp_path / "dpo.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    found = read_pairs(jsonl)
    assert [(p.prompt, p.chosen, p.rejected) for p in found.pairs] == [(r["prompt"], r["chosen"], r["rejected"])
                                                                       for r in rows[:6]]
    assert dict(found.skipped) == {"the two answers are identical": 1} and dict(found.formats) == {"dpo": 6}
    # the export's Parquet, as strings and as chat messages (`--pairs-format messages`)
    pl.DataFrame(rows[:6]).write_parquet(tmp_path / "dpo.parquet")
    assert read_pairs(tmp_path / "dpo.parquet").pairs[2].chosen == "Blue 2."
    assert read_pairs(tmp_path / "dpo.parquet").pairs[2].place == f"{tmp_path / 'dpo.parquet'}:row 3"
    messages = pl.DataFrame([{"prompt": [{"role": "user", "content": r["prompt"]}],
                              "chosen": [{"role": "assistant", "content": r["chosen"]}],
                              "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows[:6]])
    messages.write_parquet(tmp_path / "messages.parquet")
    assert [(p.prompt, p.chosen) for p in read_pairs(tmp_path / "messages.parquet").pairs] == \
        [(p.prompt, p.chosen) for p in found.pairs]


def test_domain_errors_are_audit_errors(tmp_path):
    with pytest.raises(AuditError, match="pairs file not found"):
        read_pairs(tmp_path / "nowhere.jsonl")
    (tmp_path / "one.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    with pytest.raises(AuditError, match="--limit 0"):
        read_pairs(tmp_path / "one.jsonl", limit=0)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(AuditError, match="cannot read pairs file"):
        read_pairs(tmp_path / "bad.parquet")
    pl.DataFrame({"prompt": ["p"], "answer": ["a"]}).write_parquet(tmp_path / "cols.parquet")
    with pytest.raises(AuditError, match="no column chosen, rejected"):
        read_pairs(tmp_path / "cols.parquet")


# --------------------------------------------------------------------------- the audit through the CLI

def test_a_judge_that_prefers_what_people_chose(env, tmp_path, test_data, capsys):
    server = env
    server.respond = preferring_judge({p.chosen for p in read_pairs(test_data / SAMPLE).pairs})
    (tmp_path / "prices.yaml").write_text("openai:\n  judge-model: {input: 1.0, output: 2.0}\n")
    store = tmp_path / "store"
    assert audit_cli(server, store, test_data / SAMPLE, "--limit", "200", "--set",
                     f"prices={tmp_path / 'prices.yaml'}") == 0
    out = capsys.readouterr().out
    report, text = report_of(store)
    assert report["pairs"] == report["rated"] == 200 and report["rows_read"] == 200
    assert report["agreement"] >= 0.95 and report["interval"][0] > 0.9
    assert report["requests"] == 200 * 2 * 2 == server.served  # quickstart's 2 aspects, both orders
    assert report["failed_requests"] == 0 and report["order"]["flip_share"] == 0.0
    assert set(report["by_aspect"]) == {"helpfulness", "honesty"}
    assert all(a["agreement"] >= 0.95 for a in report["by_aspect"].values())
    assert report["tokens"] == {"input": server.tokens_in, "output": server.tokens_out}
    assert report["cost_usd"] == pytest.approx(server.tokens_in * 1e-6 + server.tokens_out * 2e-6, rel=1e-6)
    assert report["judge"]["model"] == "judge-model" and report["reference"]["gpt4_vs_people"] == 0.85
    assert KEY not in text and KEY[:12] not in text  # the report holds no API key
    assert "agreement with people" in out and "flips when reversed" in out and "GPT-4 vs people ~85%" in out
    assert f"report: {store / 'audits' / report['audit_id']}.json" in out
    assert f"{report['agreement']:.1%}" in out


def test_a_judge_that_rates_at_random(env, tmp_path, test_data):
    server = env
    server.respond = random_judge(seed=11)
    config = load_config("configs/quickstart.yaml", [o for o in overrides(server, tmp_path / "store") if o != "--set"])
    report = audit(config, test_data / SAMPLE, limit=120)
    low, high = report["interval"]
    assert low < 0.5 < high and report["agree"] + report["disagree"] + report["ties"] == 120
    assert report["ties"] > 0  # mean ratings tie now and then
    # a random judge flips about half its preferences when the order is reversed
    order = report["order"]
    assert 0.3 < order["flip_share"] < 0.7 and order["compared"] + order["ties"] == 120
    assert math.isclose(report["agreement"], report["agree"] / (report["agree"] + report["disagree"]), abs_tol=1e-6)
    assert (tmp_path / "store" / "audits" / f"{report['audit_id']}.json").is_file()


def test_failed_requests_are_counted(env, tmp_path, test_data):
    server = env
    chosen = {p.chosen for p in read_pairs(test_data / SAMPLE, limit=20).pairs}
    prefer = preferring_judge(chosen)
    broken = sorted(chosen)[:3]

    def respond(req, kind):  # three pairs never get a valid answer
        answer = prefer(req, kind)
        if answer is not None and set(judge_prompt_answers(req)) & set(broken):
            return {"ratings": answer["ratings"][:1]}
        return answer

    server.respond = respond
    config = load_config("configs/quickstart.yaml", [o for o in overrides(server, tmp_path, "--set",
                                                                          "llm.structured_retries=0") if o != "--set"])
    report = audit(config, test_data / SAMPLE, limit=20)
    assert report["failed_pairs"] == 3 and report["failed_requests"] == 3 * 4 and report["rated"] == 17
    assert report["agreement"] == 1.0 and "invalid structured output" in report["errors"][0]["error"]


BAD_JSON = '{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": \n'


@pytest.mark.parametrize("content, args, says", [
    (None, [], "pairs file not found: {dir}/missing.jsonl"),
    (BAD_JSON, [], "{file}:2: not valid JSON"),
    ('{"prompt": "p", "chosen": "a"}\n', [], "{file}:1: expected `prompt`, `chosen` and `rejected` strings"),
    ('{"chosen": "a", "rejected": "b"}\n', [], "{file}:1: expected `prompt`"),
    ('["a", "b"]\n', [], "{file}:1: expected"),
    ('{"prompt": "p", "chosen": "a", "rejected": "a"}\n', [],
     "holds no usable pairs (1 skipped: the two answers are identical)"),
    ("\n\n", [], "holds no usable pairs"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b"}\n', ["--limit", "0"], "--limit: expected at least 1 pair"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b"}\n', ["--limit", "x"], "--limit: expected a whole number"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b"}\n', ["--set", "judge.aspects=[kindness]"], "judge.aspects"),
], ids=["missing file", "bad JSON line", "row missing a field", "neither format", "not an object",
        "no usable pairs", "empty file", "limit 0", "limit not a number", "bad config"])
def test_user_errors_are_one_line_and_exit_2(env, tmp_path, capsys, content, args, says):
    server = env
    file = tmp_path / ("missing.jsonl" if content is None else "pairs.jsonl")
    if content is not None:
        file.write_text(content)
    capsys.readouterr()
    with pytest.raises(SystemExit) if args[:1] == ["--limit"] else _nothing() as raised:
        code = audit_cli(server, tmp_path / "store", file, *args)
    code = raised.value.code if raised else code
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert says.format(dir=tmp_path, file=file) in err
    assert server.requests == 0 and not (tmp_path / "store").exists()


def test_missing_api_key_is_one_line(env, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    file = tmp_path / "pairs.jsonl"
    file.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    capsys.readouterr()
    assert audit_cli(env, tmp_path / "store", file) == 2
    err = capsys.readouterr().err
    assert "missing API key: set the environment variable OPENAI_API_KEY" in err and len(err.strip().splitlines()) == 1


class _nothing:
    """A context manager that catches nothing and is falsy (pytest.raises for the cases that raise)."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------- the flow

def test_the_flow_publishes_its_figures(env, tmp_path, test_data, prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.deploy import DEPLOYMENTS
    from flows.judge_audit import judge_audit_flow

    server = env
    server.respond = preferring_judge({p.chosen for p in read_pairs(test_data / SAMPLE, limit=10).pairs})
    config = load_config("configs/quickstart.yaml", [o for o in overrides(server, tmp_path) if o != "--set"])
    result = judge_audit_flow(config=config, pairs=str(test_data / SAMPLE), limit=10)
    assert result["pairs"] == 10 and result["agreement"] == 1.0 and "details" not in result
    assert (tmp_path / "audits" / f"{result['audit_id']}.json").is_file()
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["judge-audit"])),
                                           limit=1)
    assert f"# Judge audit {result['audit_id']}" in artifact.data
    assert "| agreement with people | 100.0%" in artifact.data
    assert DEPLOYMENTS["judge-audit/on-demand"][0] == "flows/judge_audit.py:judge_audit_flow"
