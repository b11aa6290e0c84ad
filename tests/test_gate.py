"""The data-quality gate: real GX suites (expectations/*.json) on batches built from the Self-Instruct seed tasks."""
from __future__ import annotations

import asyncio
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import polars as pl
import pytest

from alignflow.config import GateConfig
from alignflow.engine import outputs
from alignflow.engine.store import Store, batch_key
from alignflow.quality import gate
from alignflow.quality.expectations import SuiteError
from alignflow.records import frame, stable_id
from alignflow.review import quarantine

RUN = "run1"


@pytest.fixture(scope="module")
def texts(test_data) -> list[tuple[str, str]]:
    """(instruction, answer) pairs written by people: realistic text for every stage."""
    rows = [json.loads(line) for line in (test_data / "self_instruct_seed_tasks.jsonl").read_text().splitlines()]
    return [(r["instruction"], r["instances"][0]["output"]) for r in rows]


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(str(tmp_path / "store"))


def _provenance(text: str, error: str | None = None) -> dict:
    return {"provider": "openai", "model": "gpt-4o-mini", "template": "respond", "template_version": "1",
            "raw_output": text, "input_tokens": 120, "output_tokens": None if error else 80, "latency_s": 1.3,
            "attempts": 1, "finish_reason": None if error else "stop", "cached": False, "error": error}


def instructions(texts, n, start=0, reason=None) -> list[dict]:
    return [{"id": stable_id("instructions", text), "instruction": text, "source": "self_instruct",
             "parent_ids": ["seed_task_0", "seed_task_1"], "round": 0, "max_similarity": 0.3, "mean_similarity": 0.1,
             "most_similar": [{"id": "seed_task_0", "score": 0.3}], "reason": reason, **_provenance(text)}
            for text, _ in texts[start:start + n]]


def responses(texts, n, start=0, text=None, error=None, reason=None) -> list[dict]:
    rows = []
    for i, (instruction, answer) in enumerate(texts[start:start + n], start):
        body = answer if text is None else text
        rows.append({"id": stable_id("responses", i), "instruction_id": stable_id("instructions", instruction),
                     "instruction": instruction, "response": None if error else body,
                     "generator": "0:openai:gpt-4o-mini",
                     "sample": i % 2, "temperature": 0.7, "max_tokens": 512, "reason": reason,
                     **_provenance(body, error)})
    return rows


def judgments(ratings, error=None) -> list[dict]:
    return [{"id": stable_id("judgments", i), "response_id": stable_id("responses", i),
             "instruction_id": stable_id("instructions", i // 2), "position": i % 2, "helpfulness": rating,
             "honesty": rating, "rating": rating, "rationales": {"helpfulness": "clear and correct"},
             **_provenance(json.dumps({"rating": rating}), error)} for i, rating in enumerate(ratings)]


def pairs(texts, n, same_text=False) -> list[dict]:
    rows = []
    for i, (instruction, answer) in enumerate(texts[:n]):
        rejected = answer if same_text else texts[i + 1][1]
        rows.append({"id": stable_id("pairs", i), "instruction_id": stable_id("instructions", instruction),
                     "prompt": instruction, "chosen": answer, "rejected": rejected, "chosen_id": f"c{i}",
                     "rejected_id": f"r{i}", "chosen_model": "m", "rejected_model": "m", "score_chosen": 4.5,
                     "score_rejected": 2.0, "margin": 2.5, "strategy": "best_vs_random"})
    return rows


def write(store, stage, number=0, config=None, **outcomes):
    frames = {name: rows if isinstance(rows, pl.DataFrame) else frame(rows, stage) for name, rows in outcomes.items()}
    return outputs.write_batch(store, RUN, stage, number, frames, config or GateConfig())


def failed_types(result) -> set[str]:
    return {c.type for c in result.failed}


def assert_quarantined(store, stage, number, counts, result, rows):
    assert not result.passed and result.quarantined
    assert counts == {"kept": 0, "rejected": 0, "failed": 0, "quarantine": rows}
    held = store.read_parquet(batch_key(RUN, stage, "quarantine", number))
    assert held.height == rows and set(held["outcome"]) <= {"kept", "rejected", "failed"}
    assert not any(store.exists(batch_key(RUN, stage, o, number)) for o in ("kept", "rejected", "failed"))
    report = store.read_json(result.report_key)
    assert report["validation"]["success"] is False and report["gate"]["content_hash"] == result.content_hash
    assert report["summary"] == result.summary()
    for check in result.failed:
        assert check.type in result.summary() and check.type in result.markdown()


# -- good batches pass --------------------------------------------------------------------------------------------

def test_good_batches_of_every_stage_pass_and_are_written(store, texts):
    cases = {
        "instructions": dict(kept=instructions(texts, 6),
                             rejected=instructions(texts, 3, 6, "duplicate of 3fa2c1 (rouge 0.80)")),
        "responses": dict(kept=responses(texts, 14), failed=responses(texts, 2, 14, error="HTTP 500")),
        "judgments": dict(kept=judgments([4.0, 2.0, 5.0, 3.0] * 4)),
        "pairs": dict(kept=pairs(texts, 10)),
    }
    for stage, outcomes in cases.items():
        counts, result = write(store, stage, **outcomes)
        assert result.passed and not result.quarantined, result.summary()
        assert counts == {"kept": len(outcomes.get("kept", [])), "rejected": len(outcomes.get("rejected", [])),
                          "failed": len(outcomes.get("failed", [])), "quarantine": 0}
        assert store.read_dir(f"{RUN}/{stage}/kept").height == counts["kept"]
        assert not store.list(f"{RUN}/{stage}/quarantine/") and result.report_key is None
        assert "passed" in result.summary() and "passed" in result.markdown()


def test_gate_disabled_writes_without_a_gate(store, texts):
    bad = dict(rejected=responses(texts, 4, text="", reason="empty response"))
    counts, result = write(store, "responses", 0, GateConfig(enabled=False), **bad)
    assert result is None and counts["rejected"] == 4


def test_a_missing_suite_is_an_error_naming_its_path_and_nothing_is_written(store, texts, tmp_path):
    """A gate that cannot find its suite must not let the batch through unchecked (run from another directory, say)."""
    bad = dict(rejected=responses(texts, 4, text="", reason="empty response"))
    with pytest.raises(SuiteError, match=f"no expectation suite for the responses stage at {tmp_path / 'none'}"):
        write(store, "responses", 1, GateConfig(suites=str(tmp_path / "none")), **bad)
    assert not store.list(f"{RUN}/responses/")


def test_the_shipped_suites_are_found_from_any_working_directory(store, texts, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    counts, result = write(store, "responses", 0, **dict(rejected=responses(texts, 4, text="", reason="empty response")))
    assert result is not None and result.quarantined


# -- each kind of broken batch is quarantined with a report --------------------------------------------------------

def test_empty_responses_are_quarantined(store, texts):
    """A provider returning empty text: the stage's filter rejects every row, so almost nothing is kept."""
    counts, result = write(store, "responses", 3, rejected=responses(texts, 8, text="", reason="empty response"))
    assert_quarantined(store, "responses", 3, counts, result, 8)
    assert store.read_dir(f"{RUN}/responses/quarantine").height == 8  # the report beside the rows is not read as rows
    check = next(c for c in result.failed if c.column == "outcome" and c.kwargs["value_set"] == ["kept"])
    assert check.unexpected_count == 8 and check.examples[0]["value"] == "rejected"


def test_empty_text_kept_by_a_stage_fails_the_length_bound(store, texts):
    counts, result = write(store, "responses", 0, kept=responses(texts, 8, text=""))
    assert_quarantined(store, "responses", 0, counts, result, 8)
    assert ("expect_column_value_lengths_to_be_between", "response") in {(c.type, c.column) for c in result.failed}


def test_ratings_out_of_range(store):
    counts, result = write(store, "judgments", 0, kept=judgments([4.0, 7.0, 2.0, 0.0, 3.0]))
    assert_quarantined(store, "judgments", 0, counts, result, 5)
    check = next(c for c in result.failed if c.column == "rating")
    assert check.unexpected_count == 2 and {e["value"] for e in check.examples} == {7.0, 0.0}
    assert all(e["id"] for e in check.examples)  # examples name the rows


def test_all_equal_ratings_bite_from_twelve_rows(store):
    counts, result = write(store, "judgments", 0, kept=judgments([3.0] * 8))  # a tiny honest batch may be uniform
    assert result.passed
    counts, result = write(store, "judgments", 1, kept=judgments([3.0] * 12))
    assert_quarantined(store, "judgments", 1, counts, result, 12)
    assert failed_types(result) == {"expect_table_row_count_to_equal"}
    counts, result = write(store, "judgments", 2, kept=judgments([3.0] * 11 + [4.0]))
    assert result.passed


def test_missing_column(store, texts):
    counts, result = write(store, "responses", 0, kept=frame(responses(texts, 6), "responses").drop("response"))
    assert_quarantined(store, "responses", 0, counts, result, 6)
    check = next(c for c in result.failed if c.type == "expect_table_columns_to_match_set")
    assert check.examples == ["response"]


def test_failure_share_above_the_threshold(store, texts):
    counts, result = write(store, "responses", 0, kept=responses(texts, 5),
                           failed=responses(texts, 3, 5, error="HTTP 429"))
    assert result.passed  # 3 of 8 failed: within 50%
    counts, result = write(store, "responses", 1, kept=responses(texts, 2),
                           failed=responses(texts, 6, 2, error="HTTP 429"))
    assert_quarantined(store, "responses", 1, counts, result, 8)
    check = next(c for c in result.failed if c.kwargs.get("value_set") == ["kept", "rejected"])
    assert check.unexpected_count == 6
    assert check.examples[0]["value"] == "failed" and check.examples[0]["error"] == "HTTP 429"  # why it failed
    markdown = result.markdown()
    assert f"- `{check.examples[0]['id']}: failed (HTTP 429)`" in markdown
    assert max(len(line) for line in markdown.splitlines() if line.startswith("|")) < 240  # the table fits a screen


def test_near_duplicate_share_above_the_threshold(store, texts):
    dup = "duplicate of 3fa2c1 (rouge-l 0.82)"
    counts, result = write(store, "instructions", 0, kept=instructions(texts, 3),
                           rejected=instructions(texts, 17, 3, dup))
    assert result.passed  # 85% duplicates: a late Self-Instruct round
    counts, result = write(store, "instructions", 1, kept=instructions(texts, 1),
                           rejected=instructions(texts, 19, 1, dup))
    assert_quarantined(store, "instructions", 1, counts, result, 20)
    assert [c.column for c in result.failed] == ["duplicate"]


def test_chosen_equal_to_rejected(store, texts):
    counts, result = write(store, "pairs", 0, kept=pairs(texts, 6, same_text=True))
    assert_quarantined(store, "pairs", 0, counts, result, 6)
    assert failed_types(result) == {"expect_select_column_values_to_be_unique_within_record"}


def test_chosen_not_scored_higher(store, texts):
    rows = [{**row, "score_rejected": row["score_chosen"]} for row in pairs(texts, 4)]
    counts, result = write(store, "pairs", 0, kept=rows)
    assert "expect_column_pair_values_a_to_be_greater_than_b" in failed_types(result)


# -- suites are files ----------------------------------------------------------------------------------------------

def test_a_tighter_suite_file_quarantines_a_batch_that_passed(store, texts, tmp_path):
    batch = dict(kept=responses(texts, 8))
    assert write(store, "responses", 0, **batch)[1].passed
    suites = tmp_path / "suites"
    shutil.copytree("expectations", suites)
    suite = json.loads((suites / "responses.json").read_text())
    for exp in suite["expectations"]:
        if exp["type"] == "expect_column_value_lengths_to_be_between" and exp["kwargs"]["column"] == "response":
            exp["kwargs"]["max_value"] = 40
    (suites / "responses.json").write_text(json.dumps(suite))
    counts, result = write(store, "responses", 1, GateConfig(suites=str(suites)), **batch)
    assert_quarantined(store, "responses", 1, counts, result, 8)
    assert [(c.type, c.column) for c in result.failed] == [("expect_column_value_lengths_to_be_between", "response")]


def test_a_broken_suite_file_is_a_clear_error(store, texts, tmp_path):
    (tmp_path / "responses.json").write_text("{not json")
    with pytest.raises(Exception, match="responses.json: not valid JSON"):
        write(store, "responses", 0, GateConfig(suites=str(tmp_path)), kept=responses(texts, 2))


# -- hand decisions ------------------------------------------------------------------------------------------------

def test_a_released_batch_passes_when_made_again_and_a_changed_one_does_not(store, texts):
    bad = dict(kept=responses(texts, 2), failed=responses(texts, 6, 2, error="HTTP 429"))
    _, first = write(store, "responses", 1, **bad)
    quarantine.release(store, RUN, "responses/1", "the provider was rate limiting; the kept rows are fine")
    store.delete_prefix(f"{RUN}/responses/")  # a resumed run rewrites the stage, from the request cache
    again = {k: [{**row, "latency_s": 0.0, "cached": True} for row in rows] for k, rows in bad.items()}
    counts, result = write(store, "responses", 1, **again)
    assert result.released and not result.passed and not result.quarantined
    assert counts == {"kept": 2, "rejected": 0, "failed": 6, "quarantine": 0}
    assert store.read_dir(f"{RUN}/responses/kept").height == 2
    assert not store.exists(f"{RUN}/responses/quarantine/batch-00001.parquet")
    assert "released" in result.summary() and result.decision["reason"].startswith("the provider")
    assert store.exists(result.report_key)  # the failed validation stays on record

    store.delete_prefix(f"{RUN}/responses/")
    changed = dict(kept=responses(texts, 2, text="Something else entirely."), failed=bad["failed"])
    counts, result = write(store, "responses", 1, **changed)
    assert result.quarantined and not result.released and counts["quarantine"] == 8


def test_a_dropped_batch_stays_quarantined(store, texts):
    bad = dict(rejected=responses(texts, 6, text="", reason="empty response"))
    write(store, "responses", 2, **bad)
    quarantine.drop(store, RUN, "responses/2", "the provider returned nothing")
    store.delete_prefix(f"{RUN}/responses/")
    counts, result = write(store, "responses", 2, **bad)
    assert result.quarantined and result.dropped and counts["quarantine"] == 6
    assert "dropped" in result.summary() and "dropped" in result.markdown()


# -- one GX per process, thread-safe, quiet ------------------------------------------------------------------------

def test_concurrent_batches_each_get_their_own_verdict(store, texts):
    """Stages validate batches from threads at once: no batch may see another's rows."""
    def one(number: int):
        good = number % 2 == 0
        rows = judgments([4.0, 2.0, 5.0, 3.0] * 3) if good else judgments([9.0] * (3 + number))
        return number, good, write(store, "judgments", number, kept=rows)[1]

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(one, range(12)))
    for number, good, result in results:
        assert result.batch == number and result.passed is good
        if not good:
            assert result.rows == 3 + number
            assert next(c for c in result.failed if c.column == "rating").unexpected_count == 3 + number
    assert gate._gx.cache_info().misses == 1


def test_validation_prints_no_progress_bars(store, texts, capfd):
    write(store, "responses", 0, kept=responses(texts, 30))
    out, err = capfd.readouterr()
    assert "Calculating Metrics" not in out + err and "%|" not in out + err


# -- Prefect: artifact, event, fail policy, final state ------------------------------------------------------------

def _read_back(read) -> list:
    """Events reach the server's database asynchronously: ask until they are there (or give up)."""
    from prefect.client.orchestration import get_client

    async def attempt():
        async with get_client() as client:
            return await read(client)

    deadline = time.monotonic() + 60
    while not (found := asyncio.run(attempt())) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


@pytest.mark.slow
def test_publish_makes_an_artifact_and_an_event(prefect_server, store, texts):
    from prefect import flow
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    from alignflow.engine.manifest import build
    from tasks.gate import EVENT, publish
    from tasks.report import QUARANTINE_STATE, final_state

    @flow
    def stage_flow():
        _, good = write(store, "responses", 0, kept=responses(texts, 8))
        publish(good, "r-art")
        _, bad = write(store, "responses", 1, rejected=responses(texts, 8, text="", reason="empty response"))
        publish(bad, "r-art")
        return final_state(store, RUN, build(store, RUN))

    state = stage_flow(return_state=True)
    assert state.is_completed() and state.result()["run_id"] == RUN  # the caller still gets the manifest

    async def flow_run(client):
        return [await client.read_flow_run(state.state_details.flow_run_id)]

    shown = _read_back(flow_run)[0].state
    assert shown.is_completed() and shown.name == QUARANTINE_STATE  # completed, and seen to need a person
    assert shown.message.startswith("1 batch quarantined: responses/1 (expect_column_values_to_be_in_set(outcome)")

    async def artifacts(client):  # this flow run's: the server is shared with the session's other tests
        return await client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["gate-responses-0", "gate-responses-1"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))

    async def events(client):
        return (await client.read_events(filter=EventFilter(
            event=EventNameFilter(name=[EVENT]), resource=EventResourceFilter(id=["alignflow.run.r-art.responses"])),
            limit=50)).events

    by_key = {a.key: a for a in _read_back(artifacts)}
    assert "passed" in by_key["gate-responses-0"].data
    assert "quarantined" in by_key["gate-responses-1"].data
    assert "expect_column_values_to_be_in_set(outcome)" in by_key["gate-responses-1"].data

    found = _read_back(events)
    assert len(found) == 1  # the passing batch made none
    event = found[0]
    assert event.resource["alignflow.stage"] == "responses" and event.resource["alignflow.batch"] == "1"
    assert event.payload["batch"] == 1 and event.payload["rows"] == 8
    assert event.payload["failed"][0]["type"] == "expect_column_values_to_be_in_set"
    assert any(r.role == "expectation" for r in event.related)


@pytest.mark.slow
def test_fail_policy_fails_the_flow_naming_the_expectations(prefect_server, store, texts):
    from prefect import flow

    from tasks.gate import GateFailed, publish

    @flow
    def strict_flow():
        _, result = write(store, "judgments", 0, GateConfig(stages={"judgments": "fail"}), kept=judgments([9.0, 3.0]))
        publish(result, "r-fail")

    with pytest.raises(GateFailed, match=r"judgments/0 quarantined .*expect_column_values_to_be_between\(rating\)"):
        strict_flow()
    assert store.exists(f"{RUN}/judgments/quarantine/batch-00000.parquet")  # kept for a person to look at
