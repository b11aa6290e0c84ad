"""Evol-Instruct: the elimination step, the choice of what to evolve, and evolutions through a real round."""
import random

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from llm_server import LLMTestServer

from alignflow.config import parse_config
from alignflow.engine.run import Run
from alignflow.engine.runner import run_batch
from alignflow.engine.step import BatchRef
from alignflow.prompts import load
from alignflow.stages import evol
from alignflow.stages.instructions import Instructions
from alignflow.stages.seeds import Seeds, load_seeds

ORIGINAL = "Give three tips for learning a new language."


@pytest.mark.parametrize("evolved, reason", [
    ("give three tips for learning a new language", "evolution not different from its original"),
    ("Give tips for learning a language.", "evolution adds no word to its original"),
    ("#Rewritten Task#: Give three tips for learning Japanese as an adult.", "copies the prompt's words: '#Rewritten Task#'"),
    ("Rewritten prompt: give three tips for learning Japanese quickly.", "copies the prompt's words: 'Rewritten prompt'"),
    ("Sorry, I can not make this task any harder than it is.", "evolution is a refusal (says sorry)"),
    ("Do it for them and then do it again?", "evolution is only stop words and punctuation"),
])
def test_elimination_gives_the_reason(evolved, reason):
    assert reason in evol.eliminate(evolved, ORIGINAL)


@pytest.mark.parametrize("evolved", [
    "Give three tips for learning Japanese as an adult who works full time, with one example each.",
    "Write C# and F# code that parses a date string.",  # single hashes are not a copied heading
    "Explain how a lighthouse keeper in 1900 would have kept the lamp burning all night.",  # breadth: all new
])
def test_real_rewrites_pass(evolved):
    assert evol.eliminate(evolved, ORIGINAL) is None


@given(st.text(min_size=1))
def test_an_unchanged_text_is_always_eliminated(text):
    assert evol.eliminate(text, text) is not None


def test_pick_prefers_instructions_not_evolved_yet():
    accepted = [{"id": f"i{n}", "instruction": f"task {n}"} for n in range(6)]
    picks = evol.pick(random.Random(0), accepted, {"i0", "i1", "i2"}, 4, ["deepen", "breadth"])
    ids = [row["id"] for row, _ in picks]
    assert len(ids) == len(set(ids)) == 4
    assert set(ids[:3]) == {"i3", "i4", "i5"} and ids[3] in {"i0", "i1", "i2"}
    assert {method for _, method in picks} <= {"deepen", "breadth"}
    assert len(evol.pick(random.Random(0), accepted[:2], set(), 5, ["deepen"])) == 2


@pytest.mark.parametrize("method", ["deepen", "concretize", "constrain", "reasoning", "breadth"])
def test_every_method_has_a_versioned_template(method):
    template = evol.template(method)
    assert template.name == f"evol_{method}" and template.version
    text = template.render(instruction="Say hello to $name in {braces}.")
    assert text.endswith("Say hello to $name in {braces}.") and "#Original Task#" in text


# what the server answers when asked to evolve each seed, and the outcome that answer must get
EVOLUTIONS = {
    "Explain how rainbows form after a summer storm.":
        ("explain how rainbows form after a summer storm", "evolution not different from its original"),
    "Write a short poem about autumn leaves falling.":
        ("Write a poem about autumn leaves.", "evolution adds no word to its original"),
    "Give three tips for learning a new language.":
        ("#Rewritten Task#: Give three tips for learning Japanese as an adult.", "copies the prompt's words"),
    "Summarize the plot of a famous novel briefly.":
        ("I am sorry, I can not rewrite this task.", "evolution is a refusal"),
    "List five uses of a paperclip at home.": ("Do it for them and then do it again?", "only stop words"),
    "Explain why the sea is salty to a child.": ("Explain why the sea is salty to a curious child.", "duplicate of "),
    "Describe the water cycle for a school class.":
        ("Describe the water cycle for a school class of ten-year-olds, naming each of its four stages "
         "and giving one everyday example of each.", None),
    "Suggest a name for a new neighbourhood bakery.":
        ("As an AI, I suggest names for a bakery that sells only rye bread.", "refusal phrase: 'as an ai'"),
}


def _answer_evolutions(req, kind):
    prompt = req["messages"][-1]["content"]
    if "#Original Task#" not in prompt:
        return None  # Self-Instruct prompts get the server's own answers
    original = prompt.split("#Original Task#", 1)[1].strip()
    return {"instruction": EVOLUTIONS[original][0]}


def test_evolutions_in_a_round_are_kept_or_rejected_with_their_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("\n".join(EVOLUTIONS) + "\n")
    with LLMTestServer(respond=_answer_evolutions) as server:
        config = parse_config({"store": str(tmp_path / "store"), "seeds": str(seeds),
                               "llm": {"provider": "openai", "base_url": server.openai_base_url},
                               "instructions": {"prompts_per_round": 1,
                                                "evol": {"enabled": True, "per_round": len(EVOLUTIONS)}}})
        run = Run(config, "evol")
        seed_rows = load_seeds(seeds)
        run_batch(run, Seeds(run), BatchRef(0))
        record = run_batch(run, Instructions(run), BatchRef(0)).record
    assert record["requests"] == record["inputs"] == 1 + len(EVOLUTIONS) and record["counts"]["failed"] == 0
    rows = pl.concat([run.dir.read("instructions", "kept"), run.dir.read("instructions", "rejected")])
    evolved = rows.filter(pl.col("source") == "evol_instruct")
    assert evolved.height == len(EVOLUTIONS)
    seed_id = dict(zip(seed_rows["instruction"], seed_rows["id"]))
    for row in evolved.to_dicts():
        parent = next(text for text, (answer, _) in EVOLUTIONS.items() if answer == row["instruction"])
        expected = EVOLUTIONS[parent][1]
        assert row["parent_ids"] == [seed_id[parent]]
        assert row["template"] == f"evol_{row['evolution']}" and row["evolution"] in config.instructions.evol.evolutions
        if expected is None:
            assert row["reason"] is None and 0 < row["max_similarity"] <= 0.7
        else:
            assert expected in row["reason"]
    duplicate = evolved.filter(pl.col("reason").str.starts_with("duplicate of")).row(0, named=True)
    assert duplicate["reason"] == f"duplicate of {seed_id['Explain why the sea is salty to a child.']} (rouge 0.95)"
    assert rows.filter(pl.col("source") == "self_instruct").height > 0
    assert load("self_instruct").name in set(rows["template"])
