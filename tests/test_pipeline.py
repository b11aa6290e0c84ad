"""End to end: `alignflow run` under a real Prefect server (the test harness) against the loopback LLM server."""
import asyncio
import hashlib
import json
import re
import time

import polars as pl
import pytest
from llm_server import LLMTestServer

from flows.cli import main

pytestmark = pytest.mark.usefixtures("prefect_server", "api_keys")


def run_cli(server, tmp_path, *extra, provider="openai", run_id="r1"):
    base = server.openai_base_url if provider == "openai" else server.url
    args = ["run", "configs/quickstart.yaml", "--set", f"store={tmp_path / 'store'}", "--set", f"llm.provider={provider}",
            "--set", f"llm.base_url={base}", "--set", "llm.model=gen-model", "--set", "instructions.target=12",
            "--set", "llm.max_concurrency=16", "--set", "judge.llm.model=judge-model", "--run-id", run_id, *extra]
    return main(args)


def manifest_of(tmp_path, run_id="r1"):
    return json.loads((tmp_path / "store" / run_id / "manifest.json").read_text())


def assert_adds_up(manifest):
    stages = manifest["stages"]
    for stage in ("responses", "judgments", "pairs"):
        assert stages[stage]["inputs"] == sum(stages[stage][o] for o in ("kept", "rejected", "failed", "quarantine"))
    assert stages["instructions"]["kept"] >= 12


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_run_writes_datasets_and_a_manifest_that_adds_up(tmp_path, capsys, provider):
    with LLMTestServer() as server:
        assert run_cli(server, tmp_path, provider=provider) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == str(tmp_path / "store" / "r1")
    manifest = manifest_of(tmp_path)
    assert_adds_up(manifest)
    dpo = pl.read_parquet(tmp_path / "store/r1/datasets/dpo.parquet")
    sft = pl.read_parquet(tmp_path / "store/r1/datasets/sft.parquet")
    assert {"prompt", "chosen", "rejected", "score_chosen", "score_rejected"} <= set(dpo.columns)
    assert (dpo["score_chosen"] > dpo["score_rejected"]).all()
    assert sft["messages"].list.len().min() == 2
    kto = pl.read_parquet(tmp_path / "store/r1/datasets/kto.parquet")
    assert manifest["datasets"] == {"dpo": dpo.height, "sft": sft.height, "kto": kto.height}
    responses = pl.read_parquet(tmp_path / "store/r1/responses/kept/")
    assert set(responses["model"]) == {"gen-model"} and set(responses["provider"]) == {provider}
    stored = "".join(p.read_bytes().decode("latin-1") for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert "sk-test-secret" not in stored and "sk-ant-test-secret" not in stored


def test_flaky_server_loses_no_row_and_a_rerun_sends_nothing(tmp_path):
    with LLMTestServer(p429=0.2, p500=0.05, seed=7) as server:
        # with no retries a fifth of the requests fail: a small run can end with an empty dataset (exit 3)
        assert run_cli(server, tmp_path, "--set", "llm.max_retries=0") in (0, 3)
        first = manifest_of(tmp_path)
        assert_adds_up(first)
        failed = sum(s["failed"] for s in first["stages"].values())
        assert failed > 0  # with no retries some requests do fail, and they are recorded
        failed_rows = pl.read_parquet(tmp_path / "store/r1/responses/failed/") if first["stages"]["responses"]["failed"] \
            else pl.read_parquet(tmp_path / "store/r1/judgments/failed/")
        assert failed_rows["error"].str.contains("HTTP").all()

        server.reset_counts()
        assert run_cli(server, tmp_path, "--set", "llm.max_retries=8") == 0  # resume: only the failures are asked
        resumed = manifest_of(tmp_path)
        assert_adds_up(resumed)
        # an instruction round's failed requests stay failed (later rounds make up for them); all others are retried
        assert sum(s["failed"] for name, s in resumed["stages"].items() if name != "instructions") == 0
        assert resumed["stages"]["instructions"]["failed"] == first["stages"]["instructions"]["failed"]

        server.reset_counts()
        assert run_cli(server, tmp_path, "--set", "llm.max_retries=8") == 0
        assert server.requests == 0
        assert manifest_of(tmp_path)["stages"] == resumed["stages"]


@pytest.mark.parametrize("args, message", [
    (["--set", "llm.providr=openai"], "llm.providr: unknown key"),
    (["--set", "responses.per_instruction=zero"], "responses.per_instruction:"),
    (["--set", "seeds=nowhere.jsonl"], "seeds file not found: nowhere.jsonl"),
    (["--set", "gate.stages={judge: fail}"], "gate.stages.judge: Input should be 'instructions', 'responses', 'judgments'"),
    (["--set", "judge.batch_size=8"], "judge.batch_size: unknown key"),
    (["--set", "instructions.target={dataset: dpo}"], "instructions.target.rows: Field required"),
    (["--set", "gate.suites=/nowhere"], "no expectation suite for the instructions stage at /nowhere/instructions.json"),
])
def test_user_errors_are_one_line(tmp_path, capsys, args, message):
    assert main(["run", "configs/quickstart.yaml", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_api_key(monkeypatch, capsys):
    monkeypatch.delenv("OPENAI_API_KEY")
    assert main(["run", "configs/quickstart.yaml", "--set", "llm.provider=openai"]) == 2
    assert "OPENAI_API_KEY" in capsys.readouterr().err


def test_the_summary_says_what_each_count_counts_and_names_the_instructions_kept_past_the_target(tmp_path, capsys):
    from alignflow.engine.manifest import summary_markdown

    with LLMTestServer() as server:  # ten tasks a prompt: the round that reaches the target of 12 keeps more
        assert run_cli(server, tmp_path, "--set", "instructions.per_prompt=10") == 0
    out = capsys.readouterr().out
    manifest = manifest_of(tmp_path)
    instructions, responses = manifest["stages"]["instructions"], manifest["stages"]["responses"]
    kept, past = instructions["kept"], instructions["kept_past_target"]
    assert (instructions["inputs_are"], instructions["rows_are"]) == ("prompts", "instructions")
    assert instructions["sent_on"] == 12 and past == kept - 12 > 0
    assert responses["inputs"] == 12 * 2 and responses["inputs_are"] == "responses asked for"  # two samples each
    said = [f"instructions: its {instructions['inputs']} inputs are prompts, one request each; the other counts are "
            "instructions (a failed request is one failed row)",
            f"instructions: 12 of the {kept} kept were sent on to the next stage; {past} kept past the target, "
            "not sent on", "every other stage: each input ends as one row, kept, rejected, failed or quarantined"]
    assert all(line in out.splitlines() for line in said), out
    assert re.search(rf"│ instructions +│ +{instructions['inputs']} prompts │ +{kept} │", out), out
    markdown = summary_markdown(manifest, str(tmp_path / "store" / "r1"))
    assert all(f"- {line}" in markdown.splitlines() for line in said)
    assert f"| instructions | {instructions['inputs']} prompts | {kept} |" in markdown


def test_inspect(tmp_path, capsys):
    with LLMTestServer() as server:
        run_cli(server, tmp_path)
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "store" / "r1")]) == 0
    out = capsys.readouterr().out
    assert "responses" in out and "judgments" in out
    assert main(["inspect", str(tmp_path)]) == 2


def test_run_on_an_s3_store(s3_server, capsys):
    from conftest import BUCKET

    from alignflow.engine.store import Store

    url = f"s3://{BUCKET}/runs"
    with LLMTestServer() as server:
        assert main(["run", "configs/quickstart.yaml", "--set", f"store={url}", "--set", "llm.provider=openai",
                     "--set", f"llm.base_url={server.openai_base_url}", "--run-id", "s3run"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"{url}/s3run"
    store = Store(url)
    manifest = store.read_json("s3run/manifest.json")
    assert manifest["datasets"]["dpo"] == store.read_parquet("s3run/datasets/dpo.parquet").height > 0
    assert main(["inspect", f"{url}/s3run"]) == 0


def empty_for_some(req, kind):
    """A provider that returns empty text for every instruction whose text hashes to 0 mod 2."""
    from llm_server import _last_user_text, _structured_schema

    if _structured_schema(req, kind) is None and req.get("model") == "gen-model":
        text = _last_user_text(req)
        return "" if int(hashlib.sha256(text.encode()).hexdigest(), 16) % 2 == 0 else None
    return None


def test_a_bad_batch_is_quarantined_and_never_reaches_later_stages(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    with LLMTestServer(respond=empty_for_some) as server:
        assert run_cli(server, tmp_path, "--set", "responses.batch_size=1", "--set", "responses.per_instruction=2") == 0
    manifest = manifest_of(tmp_path)
    assert_adds_up(manifest)
    responses = manifest["stages"]["responses"]
    assert responses["quarantine"] > 0 and responses["quarantined_batches"] > 0 and responses["kept"] > 0
    store = tmp_path / "store" / "r1"
    quarantined = pl.read_parquet(store / "responses/quarantine/*.parquet")
    assert set(quarantined["response"]) == {""}
    assert len(list((store / "responses/quarantine").glob("*.json"))) == responses["quarantined_batches"]
    bad = set(quarantined["instruction_id"])
    for later in ("judgments/kept/", "pairs/kept/", "datasets/dpo.parquet", "datasets/sft.parquet"):
        assert not bad & set(pl.read_parquet(store / later)["instruction_id"]), later
    assert pl.read_parquet(store / "datasets/dpo.parquet").height > 0

    numbers = sorted(int(p.stem.split("-")[1]) for p in (store / "responses/quarantine").glob("*.parquet"))

    async def read_back():
        async with get_client() as client:
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"gate-responses-{n}" for n in numbers])))
            events = await client.read_events(filter=EventFilter(
                event=EventNameFilter(name=["alignflow.batch.quarantined"]),
                resource=EventResourceFilter(id=["alignflow.run.r1.responses"])), limit=50)
            return artifacts, events.events

    deadline = time.monotonic() + 60
    while True:  # events reach the server asynchronously
        artifacts, events = asyncio.run(read_back())
        if len({a.key for a in artifacts}) == len(numbers) and len(events) >= min(len(numbers), 50) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {a.key for a in artifacts} == {f"gate-responses-{n}" for n in numbers}
    assert len(events) >= min(len(numbers), 50)  # the events API returns at most 50 a page


def test_on_failure_fail_fails_the_run_naming_the_expectation(tmp_path, capsys):
    with LLMTestServer(respond=empty_for_some) as server:
        code = run_cli(server, tmp_path, "--set", "responses.batch_size=1", "--set", "gate.stages={responses: fail}")
    assert code == 1
    err = capsys.readouterr().err
    assert "expect_column_values_to_be_in_set" in err and "responses/" in err


def test_the_constitution_stage_runs_in_the_pipeline_and_is_gated(tmp_path):
    with LLMTestServer() as server:
        assert run_cli(server, tmp_path, "--set", "constitution.enabled=true") == 0
    manifest = manifest_of(tmp_path)
    revisions = manifest["stages"]["revisions"]
    assert revisions["inputs"] == sum(revisions[o] for o in ("kept", "rejected", "failed", "quarantine")) > 0
    assert revisions["kept"] > 0
    assert manifest["datasets"]["cai_sft"] == manifest["datasets"]["cai_dpo"] == revisions["kept"]
    store = tmp_path / "store" / "r1"
    assert list((store / "revisions/kept").glob("*.parquet"))


def judge_says_three(req, kind):
    """A judge that rates everything 3: a broken batch as a whole, though every row is valid."""
    if req.get("model") == "judge-model":
        from llm_server import _structured_schema

        schema, _ = _structured_schema(req, kind)
        count = schema["properties"]["ratings"]["minItems"]
        return {"ratings": [{"rationale": "fine", "rating": 3}] * count}
    return None


def test_a_judge_rating_everything_the_same_is_quarantined(tmp_path, capsys):
    """All ratings equal is suspicious from 12 rows on: 12 responses per instruction make every judge batch that big."""
    with LLMTestServer(respond=judge_says_three) as server:
        assert run_cli(server, tmp_path, "--set", "responses.per_instruction=12") == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("alignflow: run r1 made no dpo rows: the judgments stage kept none of its") and "quarantined" in err
    manifest = manifest_of(tmp_path)
    assert_adds_up(manifest)
    judgments = manifest["stages"]["judgments"]
    assert judgments["kept"] == 0 and judgments["quarantine"] == judgments["inputs"] > 0
    report = json.loads(next((tmp_path / "store/r1/judgments/quarantine").glob("*.json")).read_text())
    assert "rating" in json.dumps(report["gate"])
    assert manifest["datasets"]["dpo"] == manifest["datasets"]["sft"] == 0


def mostly_failing(req, kind):
    """Three generation requests in four fail with an HTTP 500 (a responder error becomes one)."""
    from llm_server import _last_user_text, _structured_schema

    if _structured_schema(req, kind) is None:
        text = _last_user_text(req) + str(req.get("seed"))
        if int(hashlib.sha256(text.encode()).hexdigest(), 16) % 4:
            raise RuntimeError("provider down")
    return None


def test_a_failure_share_above_the_threshold_is_quarantined(tmp_path):
    with LLMTestServer(respond=mostly_failing) as server:
        assert run_cli(server, tmp_path, "--set", "responses.llm.max_retries=0",
                       "--set", "responses.batch_size=8") == 3  # every batch stopped: the run made no dataset
    manifest = manifest_of(tmp_path)
    assert_adds_up(manifest)
    responses = manifest["stages"]["responses"]
    assert responses["quarantined_batches"] > 0 and responses["failed"] == 0
    quarantined = pl.read_parquet(tmp_path / "store/r1/responses/quarantine/*.parquet")
    assert (quarantined["outcome"] == "failed").mean() > 0.5


def test_a_released_batch_moves_on_when_the_run_is_resumed(tmp_path, capsys):
    with LLMTestServer(respond=empty_for_some) as server:
        assert run_cli(server, tmp_path, "--set", "responses.batch_size=1") == 0
        before = manifest_of(tmp_path)["stages"]["responses"]
        run_dir = str(tmp_path / "store" / "r1")
        batch = sorted((tmp_path / "store/r1/responses/quarantine").glob("*.parquet"))[0].stem
        assert main(["quarantine", "release", run_dir, f"responses/{batch}", "--reason", "empty answers are expected here"]) == 0
        assert run_cli(server, tmp_path, "--set", "responses.batch_size=1") == 0
    after = manifest_of(tmp_path)["stages"]["responses"]
    assert after["quarantined_batches"] == before["quarantined_batches"] - 1
    assert after["quarantine"] < before["quarantine"] and after["rejected"] > before["rejected"]
    decisions = json.loads((tmp_path / "store/r1/quarantine.json").read_text())["decisions"]
    assert decisions[0]["action"] == "release" and decisions[0]["reason"] == "empty answers are expected here"
    capsys.readouterr()
    assert main(["quarantine", "list", run_dir]) == 0
    assert "released" in capsys.readouterr().out


def test_a_tighter_suite_file_quarantines_batches_that_passed(tmp_path):
    import shutil

    suites = tmp_path / "suites"
    shutil.copytree("expectations", suites)
    suite = json.loads((suites / "responses.json").read_text())
    for expectation in suite["expectations"]:
        if expectation["type"] == "expect_column_value_lengths_to_be_between":
            expectation["kwargs"]["max_value"] = 40  # the test server's answers are longer
    (suites / "responses.json").write_text(json.dumps(suite))
    with LLMTestServer() as server:
        assert run_cli(server, tmp_path) == 0
        assert manifest_of(tmp_path)["stages"]["responses"]["quarantine"] == 0
        assert run_cli(server, tmp_path, "--set", f"gate.suites={suites}", run_id="r2") == 3  # nothing passed
    responses = manifest_of(tmp_path, "r2")["stages"]["responses"]
    assert responses["kept"] == 0 and responses["quarantine"] == responses["inputs"]
