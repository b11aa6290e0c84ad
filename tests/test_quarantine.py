"""`alignflow quarantine list|show|release|drop` through the CLI, on runs the real gate wrote; nothing is deleted."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from test_gate import judgments, responses, texts, write  # noqa: F401  (texts is a fixture)

from alignflow.engine import manifest
from alignflow.engine.store import Store
from alignflow.review import quarantine
from flows.cli import main

RUN = "run1"


def make_run(store: Store, texts) -> None:
    """One good and one empty responses batch, one judgments batch with ratings out of range, and a manifest."""
    write(store, "responses", 0, kept=responses(texts, 8))
    write(store, "responses", 1, rejected=responses(texts, 8, 8, text="", reason="empty response"))
    write(store, "judgments", 0, kept=judgments([4.0, 9.0, 2.0]))
    manifest.write(store, RUN)


@pytest.fixture
def run_dir(tmp_path, texts) -> Path:
    make_run(Store(str(tmp_path / "store")), texts)
    return tmp_path / "store" / RUN


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def cli(*args) -> int:
    return main(["quarantine", *map(str, args)])


def one_line_error(capsys, *parts):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, err
    return err


def test_list_names_every_quarantined_batch_and_why(run_dir, capsys):
    assert cli("list", run_dir) == 0
    out = capsys.readouterr().out
    assert "responses/1" in out and "judgments/0" in out and "responses/0" not in out
    assert out.count("quarantined") >= 2
    assert "expect_column_values_to_be_between(rating)" in out
    assert "expect_column_values_to_be_in_set(outcome) (kept share)" in out


def test_show_prints_the_failed_expectations_with_examples_and_where_the_rows_are(run_dir, capsys):
    for name in ("judgments/0", "judgments/batch-00000"):
        assert cli("show", run_dir, name) == 0
        out = capsys.readouterr().out
        assert out.startswith("judgments/0: quarantined (3 rows: kept 3)")
        assert "failed expect_column_values_to_be_between(rating) [between 1 and 5]: 1 unexpected (33%)" in out
        assert "failed expect_column_values_to_be_between(helpfulness)" in out
        assert "rows: outcome == kept" in out and "'value': 9.0" in out
        assert f"rows:   {run_dir}/judgments/quarantine/batch-00000.parquet" in out
        assert f"report: {run_dir}/judgments/quarantine/batch-00000.json" in out


def test_release_is_recorded_nothing_is_deleted_and_a_resume_lets_the_batch_through(run_dir, texts, capsys):
    before = files(run_dir)
    assert cli("release", run_dir, "responses/1", "--reason", "these prompts ask for no answer") == 0
    out = capsys.readouterr().out
    assert "released responses/1 (8 rows): it moves on to the next stage when the run is resumed" in out
    after = files(run_dir)
    assert {k: v for k, v in after.items() if k != "quarantine.json"} == before
    decision = json.loads(after["quarantine.json"])["decisions"][0]
    assert decision["batch"] == "responses/1" and decision["action"] == "release" and decision["rows"] == 8
    assert decision["reason"] == "these prompts ask for no answer" and decision["at"].endswith("Z")
    assert len(decision["content_hash"]) == 16
    assert cli("list", run_dir) == 0
    assert "released (moves on when the run is resumed)" in capsys.readouterr().out

    store = Store(str(run_dir.parent))
    store.delete_prefix(f"{RUN}/responses/")  # the resumed run rewrites the stage the same way
    write(store, "responses", 1, rejected=responses(texts, 8, 8, text="", reason="empty response"))
    assert (run_dir / "responses/rejected/batch-00001.parquet").is_file()
    assert cli("list", run_dir) == 0
    out = capsys.readouterr().out
    assert "responses/1" in out and "released" in out and "(moves on" not in out
    assert quarantine.state_message(store, RUN).startswith("1 batch quarantined: judgments/0")


def test_drop_keeps_the_rows_and_the_state_message_says_so(run_dir, capsys):
    before = files(run_dir)
    assert cli("drop", run_dir, "judgments/0", "--reason", "judge misread the scale") == 0
    assert "dropped judgments/0 (3 rows): its rows stay in quarantine" in capsys.readouterr().out
    assert {k: v for k, v in files(run_dir).items() if k != "quarantine.json"} == before
    assert cli("show", run_dir, "judgments/0") == 0
    out = capsys.readouterr().out
    assert out.startswith("judgments/0: dropped") and "decision: drop at" in out and "judge misread the scale" in out
    message = quarantine.state_message(Store(str(run_dir.parent)), RUN)
    assert message.startswith("2 batches quarantined: judgments/0 (expect_column_values_to_be_between(helpfulness), ")
    assert message.endswith("expect_column_values_to_be_between(rating); dropped by hand), "
                            "responses/1 (expect_column_values_to_be_in_set(outcome) (kept share))")


def test_a_later_decision_overrides_an_earlier_one_and_both_are_kept(run_dir, capsys):
    assert cli("drop", run_dir, "judgments/0", "--reason", "first look") == 0
    assert cli("release", run_dir, "judgments/0", "--reason", "second look: 9 is a typo we accept") == 0
    assert cli("show", run_dir, "judgments/0") == 0
    out = capsys.readouterr().out
    assert "released (moves on" in out and out.count("decision:") == 2
    assert cli("release", run_dir, "judgments/0", "--reason", "again") == 2
    one_line_error(capsys, "judgments/0 is already released")


@pytest.mark.parametrize("args, message", [
    (["list", "{tmp}/nowhere"], "no such run directory"),
    (["list", "{tmp}"], "not a run directory"),
    (["show", "{run}", "responses"], "BATCH must look like responses/3 or responses/batch-00003, not 'responses'"),
    (["show", "{run}", "responses/7"],
     "no quarantined batch responses/7 in {run} (in quarantine: judgments/0, responses/1)"),
    (["release", "{run}", "pairs/0", "--reason", "x"], "no quarantined batch pairs/0"),
    (["release", "{run}", "responses/0", "--reason", "x"], "no quarantined batch responses/0"),
    (["release", "{run}", "responses/1"], "--reason is required"),
    (["drop", "{run}", "responses/1", "--reason", "  "], "--reason is required"),
])
def test_user_errors_are_one_line(run_dir, tmp_path, capsys, args, message):
    before = files(run_dir)
    fill = {"tmp": tmp_path / "empty", "run": run_dir}
    (tmp_path / "empty").mkdir()
    assert cli(*(a.format(**fill) for a in args)) == 2
    one_line_error(capsys, message.format(**fill))
    assert files(run_dir) == before


def test_a_run_without_quarantine(tmp_path, texts, capsys):
    store = Store(str(tmp_path / "store"))
    write(store, "responses", 0, kept=responses(texts, 8))
    manifest.write(store, RUN)
    assert cli("list", tmp_path / "store" / RUN) == 0
    assert f"no quarantined batches in {tmp_path / 'store' / RUN}" in capsys.readouterr().out
    assert quarantine.state_message(store, RUN) is None


def test_on_an_s3_store(s3_server, texts, capsys):
    from conftest import BUCKET

    url = f"s3://{BUCKET}/{uuid.uuid4().hex}"
    store = Store(url)
    make_run(store, texts)
    assert cli("list", f"{url}/{RUN}") == 0
    assert "judgments/0" in capsys.readouterr().out
    assert cli("release", f"{url}/{RUN}/", "judgments/batch-00000", "--reason", "checked by hand") == 0
    assert store.read_json(f"{RUN}/quarantine.json")["decisions"][0]["reason"] == "checked by hand"
    assert store.exists(f"{RUN}/judgments/quarantine/batch-00000.parquet")
    assert cli("list", f"s3://{BUCKET}/nope/{RUN}") == 2
    one_line_error(capsys, "not a run directory")
