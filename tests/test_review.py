"""Review before release: a sample waits for a person, whose decision is recorded with the run and applied."""
import json

import polars as pl
import pytest
from llm_server import LLMTestServer
from runs import args, assert_whole

from alignflow.store import Store
from flows.cli import main

pytestmark = pytest.mark.usefixtures("prefect_server", "api_keys")


def test_a_command_line_run_stops_for_review_and_the_cli_decision_removes_the_rows(tmp_path, capsys):
    store = tmp_path / "store"
    with LLMTestServer() as server:
        run = args(server, store, "--set", "review.stages=[pairs]", "--set", "review.sample=5")
        assert main(run) == 4  # stopped, resumable: the datasets wait for the reviewer
        err = capsys.readouterr().err
        assert "waiting for review of pairs" in err and f"alignflow review {store / 'r1'}" in err
        assert not (store / "r1/datasets/dpo.parquet").exists()

        assert main(["review", str(store / "r1")]) == 0
        shown = capsys.readouterr().out
        assert "5 of" in shown and "waiting for review" in shown
        sample = json.loads((store / "r1/review.json").read_text())["stages"]["pairs"]["sample"]
        assert len(sample) == 5

        assert main(["review", str(store / "r1"), "--reject-rows", "nope"]) == 2
        assert "no pairs row with id nope" in capsys.readouterr().err
        assert main(["review", str(store / "r1"), "--reject-rows", *sample[:2], "--note", "off topic"]) == 0
        assert main(["review", str(store / "r1"), "--approve"]) == 2  # decided once: not overwritten
        assert "already reviewed" in capsys.readouterr().err

        requests = server.requests
        assert main(run) == 0  # resumed: the decision applied, the datasets written, nothing asked again
        assert server.requests == requests
    manifest = assert_whole(Store(str(store)), "r1")
    dpo = pl.read_parquet(store / "r1/datasets/dpo.parquet")
    assert not set(sample[:2]) & set(dpo["pair_id"]) and set(sample[2:]) <= set(dpo["pair_id"])
    rejected = pl.read_parquet(store / "r1/pairs/rejected/*.parquet").filter(pl.col("reason") == "rejected by reviewer")
    assert sorted(rejected["id"]) == sorted(sample[:2])
    assert manifest["review"]["pairs"] | {"at": None, "requested": None} == {
        "sampled": 5, "requested": None, "decision": "reject_rows", "by": "cli", "at": None, "note": "off topic",
        "rows_rejected": 2}
    decision = json.loads((store / "r1/review.json").read_text())["stages"]["pairs"]["decision"]
    assert decision["rows"] == sample[:2] and decision["note"] == "off topic"
