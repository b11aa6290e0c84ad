import json

import pytest

from alignflow.stages.seeds import SeedError, load_seeds


def test_project_seeds_are_varied():
    seeds = load_seeds("data/seed_tasks.jsonl")
    assert seeds.height >= 20
    assert seeds["id"].n_unique() == seeds.height


def test_self_instruct_format_with_instances(test_data):
    seeds = load_seeds(test_data / "self_instruct_seed_tasks.jsonl")
    assert seeds.height == 175


def test_plain_text_lines(tmp_path):
    path = tmp_path / "seeds.txt"
    path.write_text("Explain gravity to a child.\n\nWrite a limerick about tea.\n")
    assert load_seeds(path)["instruction"].to_list() == ["Explain gravity to a child.", "Write a limerick about tea."]


@pytest.mark.parametrize("content, message", [
    ("", "holds no instructions"),
    ('{"instruction": 3}\n', "no `instruction` string"),
    ('{"instruction": "x"\n', "not valid JSON"),
])
def test_bad_seeds_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "seeds.jsonl"
    path.write_text(content)
    with pytest.raises(SeedError, match=message):
        load_seeds(path)


def test_instances_input_is_part_of_the_instruction(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"instruction": "Sort the list.", "instances": [{"input": "3, 1, 2", "output": ""}]}))
    assert load_seeds(path)["instruction"][0] == "Sort the list.\n3, 1, 2"


def test_a_byte_order_mark_is_not_part_of_the_first_task(tmp_path):
    """Editors on Windows start a UTF-8 file with one; it must not turn the first JSON line into plain text."""
    path = tmp_path / "seeds.jsonl"
    path.write_bytes("\ufeff".encode() + b'{"instruction": "Name three rivers."}\n{"instruction": "Sort these."}\n')
    assert load_seeds(path)["instruction"].to_list() == ["Name three rivers.", "Sort these."]
