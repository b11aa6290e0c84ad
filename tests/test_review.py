"""Review before release: a sample waits for a person, whose decision is recorded with the run and applied."""
import json

import polars as pl
import pytest
from llm_server import LLMTestServer
from runs import args, assert_whole

from alignflow.engine.store import Store
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


def test_argilla_round_trip_annotators_preferences_become_the_review(tmp_path, capsys, monkeypatch):
    """Export to Argilla, annotate with Argilla's own SDK objects (three annotators), import the labels back."""
    import uuid

    import argilla as rg
    from test_exports import load_argilla

    from alignflow.stages.exports import ARGILLA_RECORDS

    store = tmp_path / "store"
    with LLMTestServer() as server:
        run = args(server, store)
        assert main(run) == 0
        out = tmp_path / "argilla"
        assert main(["export", str(store / "r1"), "--format", "argilla", "--out", str(out)]) == 0
        _, _, records = load_argilla(out, monkeypatch)
        assert len(records) >= 4
        annotators = [uuid.uuid4() for _ in range(3)]
        votes = {records[0].id: ["rejected", "rejected", "chosen"], records[1].id: ["tie", "chosen", "rejected"],
                 records[2].id: ["chosen", "chosen", "tie"]}  # records[3:]: nobody answered
        for record in records:
            for user, value in zip(annotators, votes.get(record.id, [])):
                record.responses.add(rg.Response("preference", value, user_id=user))
        (out / ARGILLA_RECORDS).write_text(json.dumps([r.to_dict() for r in records], default=str))
        capsys.readouterr()

        assert main(["import-labels", str(store / "r1"), str(out)]) == 0
        said = capsys.readouterr().out
        assert "3 labelled (1 chosen, 1 rejected, 1 tie); 1 flipped, 1 leave the datasets as ties" in said
        assert main(["import-labels", str(store / "r1"), str(out)]) == 2  # decided once
        assert "already reviewed" in capsys.readouterr().err

        requests = server.requests
        assert main(run) == 0  # the resume applies it, asking nothing
        assert server.requests == requests
    swapped, tie = records[0].id, records[1].id  # most preferred the rejected answer; an even split
    dpo = pl.read_parquet(store / "r1/datasets/dpo.parquet")
    assert tie not in set(dpo["pair_id"]) and {swapped, records[2].id} <= set(dpo["pair_id"])
    flipped = dpo.filter(pl.col("pair_id") == swapped).row(0, named=True)
    assert flipped["margin"] < 0  # the judge's chosen is now the rejected answer
    manifest = assert_whole(Store(str(store)), "r1")
    review = manifest["review"]["pairs"]
    assert review["by"] == "argilla" and review["rows_rejected"] == 1 and review["rows_swap"] == 1
    assert (review["agreement"]["agree"], review["agreement"]["disagree"]) == (1, 1)
    decision = json.loads((store / "r1/review.json").read_text())["stages"]["pairs"]["decision"]
    assert decision["rows"] == [tie] and decision["per_row"][swapped] == {"decision": "swap"}


def test_import_labels_user_errors_are_one_line(tmp_path, capsys):
    store = tmp_path / "store"
    with LLMTestServer() as server:
        assert main(args(server, store)) == 0
    labels = tmp_path / "labels.json"
    for content, message in [
        ("not json", "not valid JSON"),
        ('[{"fields": {}}]', "expected a list of records, each with an id"),
        ('[{"id": "x", "responses": {}}]', "no record at"),
        ('[{"id": "nope", "responses": {"preference": [{"value": "rejected", "user_id": "u"}]}}]',
         "no pairs row with id nope"),
    ]:
        labels.write_text(content)
        capsys.readouterr()
        assert main(["import-labels", str(store / "r1"), str(labels)]) == 2, content
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert main(["import-labels", str(store / "r1"), str(tmp_path / "missing")]) == 2
    assert "no Argilla records at" in capsys.readouterr().err
    assert not (store / "r1/review.json").exists()  # nothing recorded by a refused import
