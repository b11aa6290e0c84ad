import json
import shutil

from alignflow.cli import main
from alignflow.expectations import check_suite


def test_project_suites_are_valid(capsys):
    assert main(["expectations", "check"]) == 0
    assert "4 suite file(s) ok" in capsys.readouterr().out


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


def test_suite_for_an_unknown_stage_and_broken_json(tmp_path):
    (tmp_path / "nonsense.json").write_text("{}")
    (tmp_path / "pairs.json").write_text("{not json")
    assert "no stage named nonsense" in check_suite(tmp_path / "nonsense.json")[0]
    assert "not valid JSON" in check_suite(tmp_path / "pairs.json")[0]
