"""The gate's own checks in a whole run: a loopback model that answers with planted GSM8K problems and planted
personal data and secrets; none of them reaches a dataset, each is rejected (or redacted) with its reason, the
manifest and the gate's artifacts count them, and the rows nothing was planted in pass untouched."""
from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
from llm_server import LLMTestServer, _last_user_text, _structured_schema, generate_from_schema

from alignflow.config import DecontaminateConfig, GateConfig
from alignflow.engine.store import Store
from alignflow.quality.contamination import index_for
from alignflow.quality.gate import check
from alignflow.quality.screens import SCREENED, screen
from flows.cli import main

pytestmark = pytest.mark.usefixtures("prefect_server", "api_keys")

GSM8K = Path(__file__).parent / "data" / "gsm8k_test.jsonl"
QUESTIONS = [json.loads(line)["question"] for line in GSM8K.read_text().splitlines()]
# planted personal data and secrets: none of these strings may be in any dataset
EMAIL, PHONE, CARD = "jane.doe@gmail.com", "+44 20 7946 0958", "4111 1111 1111 1111"
AWS_KEY = "AKIAZ3MHQ4RT7VXW2PLQ"
PLANTED_PII = (f"Thanks for asking! Write to me at {EMAIL} or call {PHONE}. My card is {CARD} and the server key "
               f"is {AWS_KEY}, keep it safe.")
SECRETS = (EMAIL, PHONE, CARD, AWS_KEY)
RUN_ID = "screened-1"  # the flow run `run-screened-1`: this module's own on the session's Prefect server


def _bucket(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % 6


def planting(req: dict, kind: str):
    """Instruction rounds: one task in three is a GSM8K problem. Answers: one in six is a GSM8K problem, one in six
    holds personal data and secrets; the judge and the rest answer as the server does."""
    structured = _structured_schema(req, kind)
    text = _last_user_text(req)
    if structured and "instructions" in json.dumps(structured[0]) and req.get("model") == "gen-model":
        import random

        tasks = generate_from_schema(structured[0], random.Random(text))
        digest = int(hashlib.sha256(text.encode()).hexdigest(), 16)
        return {"instructions": [QUESTIONS[(digest + i) % len(QUESTIONS)] if i % 3 == 0 else t
                                 for i, t in enumerate(tasks["instructions"])]}
    if structured is None and req.get("model") == "gen-model" and index_for(
            DecontaminateConfig(benchmarks=[str(GSM8K)])).find(text) is None:
        bucket = _bucket(text)
        if bucket == 0:
            return f"Here is a similar one to practise on: {QUESTIONS[_bucket(text + 'q') * 100]} Good luck!"
        if bucket == 1:
            return PLANTED_PII
    return None


def run(tmp_path, *extra, run_id="r1"):
    return main(["run", "configs/quickstart.yaml", "--set", f"store={tmp_path / 'store'}", "--set", "llm.provider=openai",
                 "--set", f"llm.base_url={SERVER.openai_base_url}", "--set", "llm.model=gen-model",
                 "--set", "judge.llm.model=judge-model", "--set", "instructions.target=12",
                 "--set", "llm.max_concurrency=16", "--set", f"gate.decontaminate.benchmarks=[{GSM8K}]",
                 "--set", "gate.max_contaminated_share=1", "--set", "gate.max_pii_share=1", "--run-id", run_id, *extra])


SERVER: LLMTestServer


@pytest.fixture(scope="module", autouse=True)
def server():
    global SERVER
    with LLMTestServer(respond=planting) as SERVER:
        yield SERVER


def texts_of(frame: pl.DataFrame) -> list[str]:
    """Every string in a frame, nested ones (messages) included."""
    return [s for row in frame.iter_rows() for s in _strings(row)]


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def read(store: Path, stage: str, outcome: str) -> pl.DataFrame:
    files = sorted((store / stage / outcome).glob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else pl.DataFrame()


def gate_artifacts(stage: str, run_id: str) -> list[str]:
    """The gate artifacts of one stage of one run (the session's Prefect server holds other tests' runs too)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterName,
    )

    async def read_back():
        async with get_client() as client:
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(
                any_=[f"run-{run_id}"])))
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(like_=f"gate-{stage}-"),
                flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in runs])))

    return [a.data for a in asyncio.run(read_back())]


@pytest.fixture(scope="module")
def redacted_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("redact")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", "sk-test-secret")
        env.setenv("ALIGNFLOW_CACHE_DIR", str(tmp_path / "cache"))
        assert run(tmp_path, run_id=RUN_ID) == 0
    return tmp_path / "store" / RUN_ID


def test_no_planted_problem_or_personal_data_reaches_a_dataset(redacted_run):
    gsm8k = index_for(DecontaminateConfig(benchmarks=[str(GSM8K)]))
    for name in ("dpo", "sft", "kto"):
        rows = pl.read_parquet(redacted_run / "datasets" / f"{name}.parquet")
        assert rows.height > 0, name
        texts = texts_of(rows)
        assert [t for t in texts if gsm8k.find(t)] == [], name
        assert [s for s in SECRETS if any(s in t for t in texts)] == [], name
    for stage in ("instructions", "responses", "pairs"):  # the texts that go on (raw outputs stay as they came)
        kept = texts_of(read(redacted_run, stage, "kept").select(SCREENED[stage]))
        assert [t for t in kept if gsm8k.find(t)] == [] and not any(s in t for t in kept for s in SECRETS), stage


def test_each_planted_row_is_rejected_or_redacted_with_its_reason(redacted_run):
    instructions = read(redacted_run, "instructions", "rejected")
    contaminated = instructions.filter(pl.col("reason").str.starts_with("contaminated: gsm8k_test item "))
    assert contaminated.height > 0
    for row in contaminated.iter_rows(named=True):  # the reason names the very item planted
        item = int(row["reason"].split("item ")[1].split(" ")[0])
        assert row["instruction"] == QUESTIONS[item - 1]
    responses = read(redacted_run, "responses", "kept")
    planted = responses.filter(pl.col("redacted").is_not_null())
    assert planted.height > 0
    for row in planted.iter_rows(named=True):
        assert {"email in response", "phone in response", "credit_card in response",
                "secret in response"} <= set(row["redacted"])
        assert "[EMAIL]" in row["response"] and "[CREDIT_CARD]" in row["response"]
        assert not any(s in row["raw_output"] for s in SECRETS)
    clean = responses.filter(pl.col("redacted").is_null())
    assert clean.height > 0 and all(_bucket(t) > 1 or t for t in clean["instruction"])
    rejected = read(redacted_run, "responses", "rejected")
    assert rejected.filter(pl.col("reason").str.starts_with("contaminated: gsm8k_test")).height > 0


def test_the_manifest_and_the_gate_artifacts_count_them(redacted_run):
    manifest = json.loads((redacted_run / "manifest.json").read_text())
    stages = manifest["stages"]
    rejected = read(redacted_run, "instructions", "rejected")
    assert stages["instructions"]["contaminated"] == rejected.filter(
        pl.col("reason").str.starts_with("contaminated")).height > 0
    assert stages["instructions"]["contaminated_by"] == {"gsm8k_test": stages["instructions"]["contaminated"]}
    redacted = read(redacted_run, "responses", "kept").filter(pl.col("redacted").is_not_null()).height
    assert stages["responses"]["pii_redacted"] == redacted and stages["responses"]["pii_rejected"] == 0
    assert stages["responses"]["pii_kinds"]["email"] == redacted
    responses = stages["responses"]
    assert responses["inputs"] == sum(responses[o] for o in ("kept", "rejected", "failed", "quarantine"))
    artifacts = gate_artifacts("responses", RUN_ID)
    assert artifacts and all("alignflow_no_benchmark_overlap" in a and "alignflow_no_personal_data" in a
                             for a in artifacts)
    assert any("Examples found by alignflow_no_personal_data" in a and "email in response" in a for a in artifacts)
    assert not any(s in a for a in artifacts for s in SECRETS)  # what and where, never the value


def test_reject_mode_rejects_the_row_naming_the_kinds(tmp_path):
    assert run(tmp_path, "--set", "gate.pii=reject") == 0
    store = tmp_path / "store" / "r1"
    rejected = read(store, "responses", "rejected").filter(pl.col("reason").str.starts_with("personal data"))
    assert rejected.height > 0
    assert set(rejected["reason"]) == {"personal data: credit_card, email, phone, secret"}
    assert read(store, "responses", "kept").filter(pl.col("redacted").is_not_null()).height == 0
    assert json.loads((store / "manifest.json").read_text())["stages"]["responses"]["pii_rejected"] == rejected.height


def test_a_batch_above_the_share_is_quarantined_not_thinned():
    kept = pl.DataFrame({"id": [f"i{n}" for n in range(10)], "instruction": QUESTIONS[:3] + [
        f"Write a haiku about the number {n} and explain its imagery." for n in range(7)], "reason": [None] * 10},
        schema_overrides={"reason": pl.String})
    config = GateConfig(decontaminate={"benchmarks": [str(GSM8K)]}, max_contaminated_share=0.2, pii="off")
    outcomes, found = screen("instructions", {"kept": kept}, config)
    assert outcomes["kept"].height == 7 and outcomes["rejected"].height == 3
    from alignflow.records import frame

    frames = {name: frame(df.to_dicts(), "instructions") for name, df in outcomes.items()}
    result, _, _ = check("instructions", 0, frames, config, found)
    assert not result.passed
    assert [c.name() for c in result.failed] == ["alignflow_no_benchmark_overlap(instruction) (contamination)"]
    assert "3 unexpected (30%)" in result.summary()
    lenient = GateConfig(decontaminate={"benchmarks": [str(GSM8K)]}, max_contaminated_share=0.5, pii="off")
    assert check("instructions", 0, frames, lenient, found)[0].passed


def test_adding_a_benchmark_to_a_finished_run_is_a_config_change(tmp_path, capsys):
    store = tmp_path / "store"
    args = ["run", "configs/quickstart.yaml", "--set", f"store={store}", "--set", "llm.provider=openai",
            "--set", f"llm.base_url={SERVER.openai_base_url}", "--set", "llm.model=gen-model",
            "--set", "instructions.target=4", "--run-id", "r2"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--set", f"gate.decontaminate.benchmarks=[{GSM8K}]"]) == 2
    assert "gate.decontaminate/pii" in capsys.readouterr().err
    assert Store(str(store)).read_json("r2/manifest.json")
