import json
import os
import shutil
from pathlib import Path

import pytest

from alignflow.quality.expectations import DERIVED, check_suite, condition_columns, load_suite
from flows.cli import main

STAGES = ("instructions", "responses", "judgments", "pairs")


def test_project_suites_are_valid(capsys):
    files = sorted(p.name for p in Path("expectations").glob("*.json"))
    assert main(["expectations", "check"]) == 0
    assert f"{len(files)} suite file(s) ok: {', '.join(files)}" in capsys.readouterr().out


@pytest.mark.parametrize("stage", STAGES)
def test_every_suite_checks_the_schema_ids_lengths_or_ratings_and_shares(stage):
    suite = json.loads(Path(f"expectations/{stage}.json").read_text())
    kinds = [(e["type"], e["kwargs"].get("column")) for e in suite["expectations"]]
    assert ("expect_table_columns_to_match_set", None) in kinds
    assert ("expect_column_values_to_be_of_type", "id") in kinds
    assert ("expect_column_values_to_be_unique", "id") in kinds
    assert ("expect_column_values_to_not_be_null", "id") in kinds
    assert ("expect_column_values_to_be_in_set", "outcome") in kinds  # the failed share
    assert len(load_suite(Path(f"expectations/{stage}.json")).expectations) == len(suite["expectations"])


def test_unknown_type_and_unknown_column_are_named(tmp_path, capsys):
    shutil.copytree("expectations", tmp_path / "suites")
    path = tmp_path / "suites" / "judgments.json"
    suite = json.loads(path.read_text())
    suite["expectations"] += [
        {"type": "expect_column_values_to_be_sparkly", "kwargs": {"column": "rating"}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "ratting", "min_value": 1, "max_value": 5}},
    ]
    path.write_text(json.dumps(suite))
    problems = check_suite(path)
    assert any("unknown type 'expect_column_values_to_be_sparkly'" in p for p in problems)
    assert any("column 'ratting' is not in the judgments schema" in p for p in problems)
    assert main(["expectations", "check", "--dir", str(tmp_path / "suites")]) == 1
    assert "2 problem(s)" in capsys.readouterr().err


def test_columns_in_row_conditions_and_column_sets_are_checked(tmp_path):
    path = tmp_path / "pairs.json"
    kept = {"type": "comparison", "column": {"name": "outcom"}, "operator": "==", "parameter": "kept"}
    query = {"type": "pass_through", "pass_through_filter": "outcome == 'kept' and scor.count() >= 12"}
    path.write_text(json.dumps({"name": "pairs", "expectations": [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "chosen", "row_condition": kept}},
        {"type": "expect_table_row_count_to_equal", "kwargs": {"value": 0, "row_condition": query}},
        {"type": "expect_table_columns_to_match_set", "kwargs": {"column_set": ["id", "duplicate", "chosn"]}},
    ]}))
    problems = check_suite(path)
    assert len(problems) == 3, problems
    assert "expectation 1 (expect_column_values_to_not_be_null): column 'outcom'" in problems[0]
    assert "column 'scor'" in problems[1] and "column 'chosn'" in problems[2]


def test_the_derived_columns_are_known():
    assert set(DERIVED) == {"outcome", "duplicate"}
    assert condition_columns({"type": "and", "conditions": [
        {"type": "comparison", "column": {"name": "outcome"}, "operator": "==", "parameter": "kept"},
        {"type": "nullity", "column": {"name": "reason"}, "is_null": True}]}) == ["outcome", "reason"]
    assert condition_columns("outcome == 'kept' and index > 2") == ["outcome"]


def test_arguments_gx_rejects_are_named(tmp_path):
    path = tmp_path / "responses.json"
    path.write_text(json.dumps({"name": "responses", "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "sample", "min_value": "low"}}]}))
    problems = check_suite(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: ")


def test_suite_for_an_unknown_stage_and_broken_json(tmp_path):
    (tmp_path / "nonsense.json").write_text("{}")
    (tmp_path / "pairs.json").write_text("{not json")
    assert "no stage named nonsense" in check_suite(tmp_path / "nonsense.json")[0]
    assert "not valid JSON" in check_suite(tmp_path / "pairs.json")[0]


def test_an_edited_suite_file_is_loaded_again(tmp_path):
    path = tmp_path / "pairs.json"
    suite = json.loads(Path("expectations/pairs.json").read_text())
    path.write_text(json.dumps(suite))
    assert load_suite(path) is load_suite(path)  # parsed once
    before = len(load_suite(path).expectations)
    suite["expectations"] = suite["expectations"][:3]
    path.write_text(json.dumps(suite))
    os.utime(path, ns=(1, 10**18))  # a new modification time even on a coarse clock
    assert len(load_suite(path).expectations) == 3 != before


def test_the_shipped_gx_catalogue_is_what_the_installed_gx_says():
    """The check before a run validates against this file instead of importing GX: it must not drift from GX."""
    from alignflow.quality import gx_catalogue

    assert json.loads(gx_catalogue.CATALOGUE.read_text()) == gx_catalogue.build()


def _entry(kind, kwargs, **top):
    return {"type": kind, "kwargs": kwargs, "meta": {}, **top}


BETWEEN = "expect_column_values_to_be_between"
BROKEN = {  # every one GX refuses too: the suite check before a run refuses each without importing GX
    "an argument GX does not know": _entry(BETWEEN, {"column": "rating", "bogus": 1}),
    "a required argument missing": _entry(BETWEEN, {"min_value": 1}),
    "mostly above 1": _entry(BETWEEN, {"column": "rating", "mostly": 5}),
    "mostly as a string": _entry(BETWEEN, {"column": "rating", "mostly": "0.9"}),
    "a column that is a number": _entry(BETWEEN, {"column": 3}),
    "meta that is not an object": _entry(BETWEEN, {"column": "rating"}, meta=3),
    "a value set that is a string": _entry("expect_column_values_to_be_in_set", {"column": "rating", "value_set": "abc"}),
    "an unknown condition parser": _entry("expect_column_values_to_not_be_null",
                                          {"column": "id", "row_condition": "x", "condition_parser": "sql"}),
    "an unknown result format": _entry("expect_column_values_to_not_be_null", {"column": "id", "result_format": "ALL"}),
    "a row count that is a word": _entry("expect_table_row_count_to_equal", {"value": "ten"}),
}
DROPPED_BY_GX = {  # GX logs these and drops the expectation, so the gate would not check it: refused before a run
    "an unknown type": _entry("expect_column_values_to_be_sparkly", {"column": "rating"}),
    "an unknown severity": _entry("expect_column_values_to_not_be_null", {"column": "id"}, severity="fatal"),
}


@pytest.mark.parametrize("name", [*BROKEN, *DROPPED_BY_GX])
def test_the_check_before_a_run_refuses_what_gx_refuses_without_importing_it(tmp_path, name):
    from alignflow.quality.expectations import SuiteError, _build, suite_problems

    suite = json.loads(Path("expectations/judgments.json").read_text())
    assert suite_problems(tmp_path / "judgments.json", suite) == []  # the shipped suite passes both
    _build(tmp_path / "judgments.json", suite)
    suite["expectations"].append(BROKEN.get(name) or DROPPED_BY_GX[name])
    problems = suite_problems(tmp_path / "judgments.json", suite)
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / 'judgments.json'}: expectation "
                                                         f"{len(suite['expectations'])}")
    if name in BROKEN:
        with pytest.raises(SuiteError):
            _build(tmp_path / "judgments.json", suite)
    else:
        assert len(_build(tmp_path / "judgments.json", suite).expectations) == len(suite["expectations"]) - 1


def test_the_suite_check_before_a_run_does_not_import_gx(tmp_path):
    """GX costs seconds to import: the command's check reads the suites with the catalogue, the gate imports GX."""
    import subprocess
    import sys

    code = ("import sys; from alignflow.quality.expectations import require_suites; require_suites(None); "
            "import flows.pipeline; print(sorted(m for m in sys.modules if m.startswith('great_expectations'))[:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
