"""Programmatic curation: `module:function` curators, resolved before any request, run on the rows of a real round
(after the built-in filters, before dedup) and of a responses batch, against the loopback LLM server."""
import re
import sys

import polars as pl
import pytest
from llm_server import LLMTestServer

from alignflow.config import ConfigError, parse_config
from alignflow.engine import manifest
from alignflow.engine.run import Run
from alignflow.engine.runner import run_batch
from alignflow.engine.step import BatchRef
from alignflow.engine.store import OUTCOMES, batch_key
from alignflow.quality import curate
from alignflow.records import frame
from alignflow.stages.instructions import Instructions
from alignflow.stages.responses import Responses
from alignflow.stages.seeds import Seeds

MODULE = "af_test_curators"
CURATORS = """
def no_urls(row):
    return "mentions a URL" if "http" in row["instruction"] else True

def explodes(row):
    if "explode" in row["instruction"]:
        raise ValueError("cannot curate this one\\nsecond line")
    return True

def forty_two(row):
    return 42 if "answer" in row["instruction"] else True

def meddles(row):
    row["instruction"] = "changed by a curator"
    return True

def no_links(row):
    return "links out" if "http" in row["response"] else True

def picky(row):
    if "boom" in row["response"]:
        raise RuntimeError("boom")
    return True

def capitalised(row):  # an empty response would raise here: curators never see one
    return True if row["response"][0].isupper() else "starts in lower case"

NOT_CALLABLE = 3
"""
INSTRUCTION_CURATORS = [f"{MODULE}:no_urls", f"{MODULE}:explodes", f"{MODULE}:forty_two", f"{MODULE}:meddles"]
SEEDS = ["List five uses of a paperclip at home.", "Write a short poem about autumn leaves falling.",
         "Give three tips for learning a new language.", "Suggest a name for a new neighbourhood bakery."]

# what the one Self-Instruct prompt of the round is answered, and how each candidate must end
CANDIDATES = {
    "Too short http": ("rejected", "too short: 3 words < 4"),  # the built-in filters come first
    "Describe how tides work to a curious child, citing http://tides.example": (
        "rejected", f"curate {MODULE}:no_urls: mentions a URL"),
    "Describe how tides work to a curious child, citing examples": ("kept", None),  # not a duplicate of the one above
    "Please explode this sentence into its separate words.": (
        "failed", f"curate {MODULE}:explodes raised ValueError: cannot curate this one"),
    "What is the answer to the ultimate question of life?": (
        "failed", f"curate {MODULE}:forty_two returned 42: expected True (keep) or a reason string (reject)"),
    "Describe how tides work to a curious child, citing many examples": ("rejected", "duplicate of "),
    "Write a haiku about a quiet mountain lake at dawn.": ("kept", None),
}


@pytest.fixture
def curators(tmp_path, monkeypatch):
    """The curator module, importable from tmp_path; and a module whose own import fails."""
    (tmp_path / f"{MODULE}.py").write_text(CURATORS)
    (tmp_path / "af_broken_curators.py").write_text("import af_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in (MODULE, "af_broken_curators"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    curate.resolve.cache_clear()
    yield tmp_path
    curate.resolve.cache_clear()
    for name in (MODULE, "af_broken_curators", "af_cwd_curators"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("path, says", [
    ("no_colon_here", "curate 'no_colon_here': not module:function"),
    ("mod:", "not module:function"),
    ("mod:not-a-name", "not module:function"),
    ("bad..module:f", "not module:function"),
    ("af_no_such_module:f", ("curate af_no_such_module:f: no module named 'af_no_such_module' (not installed, nor "
                             "in the working directory")),
    ("af_test_curators.sub:f", f"no module named '{MODULE}.sub'"),
    ("af_broken_curators:f", ("curate af_broken_curators:f: importing af_broken_curators failed: "
                              "ModuleNotFoundError: No module named 'af_no_such_dependency'")),
    (f"{MODULE}:missing", f"curate {MODULE}:missing: module {MODULE} has no attribute 'missing'"),
    (f"{MODULE}:NOT_CALLABLE", f"curate {MODULE}:NOT_CALLABLE: {MODULE}.NOT_CALLABLE is not callable (a int)"),
])
def test_resolve_names_the_curator_and_why_in_one_line(curators, path, says):
    with pytest.raises(curate.CurateError) as caught:
        curate.resolve([f"{MODULE}:no_urls", path])
    assert says in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_resolve_imports_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "af_cwd_curators.py").write_text("def keep(row):\n    return True\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    curate.resolve.cache_clear()
    try:
        [curator] = curate.resolve(["af_cwd_curators:keep"])
        assert curator.path == "af_cwd_curators:keep" and curator.function({}) is True and curator.source
        assert sys.path[-1] == str(tmp_path)  # appended: a module of the project shadows no installed one
    finally:
        curate.resolve.cache_clear()
        sys.modules.pop("af_cwd_curators", None)


def test_resolution_is_cached_per_list(curators):
    first = curate.resolve([f"{MODULE}:no_urls", f"{MODULE}:explodes"])
    assert curate.resolve([f"{MODULE}:no_urls", f"{MODULE}:explodes"]) == first
    assert [c.path for c in curate.resolve([f"{MODULE}:explodes"])] == [f"{MODULE}:explodes"]


def test_first_rejection_keeps_rejects_or_fails_a_row(curators):
    chain = curate.resolve(INSTRUCTION_CURATORS)
    row = {"instruction": "Write a haiku about a lake.", "parent_ids": ["a"]}
    assert curate.first_rejection(row, chain) is None
    assert row == {"instruction": "Write a haiku about a lake.", "parent_ids": ["a"]}  # `meddles` changed its copy
    assert curate.first_rejection({"instruction": "see http://x"}, chain) == f"curate {MODULE}:no_urls: mentions a URL"
    with pytest.raises(curate.CurateFailed, match=r"^curate af_test_curators:explodes raised ValueError: cannot "
                                                  r"curate this one$"):
        curate.first_rejection({"instruction": "explode it"}, chain)
    with pytest.raises(curate.CurateFailed, match="returned 42"):
        curate.first_rejection({"instruction": "the answer"}, chain)
    for returned in ("", "  ", None, False, 1, ["reason"]):
        odd = curate.Curator("m:f", lambda row, r=returned: r, None)
        with pytest.raises(curate.CurateFailed, match=re.escape(f"curate m:f returned {returned!r}: expected True")):
            curate.first_rejection({}, [odd])
    assert curate.first_rejection({}, []) is None


@pytest.mark.parametrize("stage", ["instructions", "responses"])
def test_the_config_checks_the_shape_at_load_time_not_the_import(stage):
    with pytest.raises(ConfigError, match=rf"^config: {stage}: curate: 'nocolon' is not module:function"):
        parse_config({stage: {"curate": ["nocolon"]}})
    with pytest.raises(ConfigError, match=f"{stage}: curate: 'a:b:c'"):
        parse_config({stage: {"curate": ["a.b:c", "a:b:c"]}})
    config = parse_config({stage: {"curate": ["af_not_imported_yet.sub:fn_1"]}})
    assert getattr(config, stage).curate == ["af_not_imported_yet.sub:fn_1"]
    assert "af_not_imported_yet" not in sys.modules


def test_curators_are_part_of_the_stage_definition(curators, tmp_path):
    def definitions(**sections):
        run = Run(parse_config({"store": str(tmp_path / "store"), **sections}), "d")
        return Instructions(run).definition(), Responses(run).definition()

    plain = definitions()
    no_curators = Run(parse_config({"store": str(tmp_path / "store")}), "d")
    assert "curate" not in Instructions(no_curators).settings() | Responses(no_curators).settings()  # as before curate
    with_instructions = definitions(instructions={"curate": [f"{MODULE}:no_urls"]})
    with_responses = definitions(responses={"curate": [f"{MODULE}:no_links"]})
    assert with_instructions[0] != plain[0] and with_instructions[1] == plain[1]
    assert with_responses[1] != plain[1] and with_responses[0] == plain[0]
    reordered = definitions(instructions={"curate": [f"{MODULE}:explodes", f"{MODULE}:no_urls"]})
    assert reordered[0] != definitions(instructions={"curate": [f"{MODULE}:no_urls", f"{MODULE}:explodes"]})[0]

    # an edited curator is a changed definition too (in a fresh process, which imports the edited file)
    (curators / f"{MODULE}.py").write_text(CURATORS + "\n# edited\n")
    sys.modules.pop(MODULE)
    curate.resolve.cache_clear()
    assert definitions(instructions={"curate": [f"{MODULE}:no_urls"]})[0] != with_instructions[0]


def _answer_round(req, kind):
    if "response_format" in req:  # the Self-Instruct prompt
        return {"instructions": list(CANDIDATES)}
    return None


def test_a_round_curated_before_dedup_with_every_candidate_accounted_for(curators, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("\n".join(SEEDS) + "\n")
    with LLMTestServer(respond=_answer_round) as server:
        config = parse_config({"store": str(tmp_path / "store"), "seeds": str(seeds),
                               "llm": {"provider": "openai", "base_url": server.openai_base_url},
                               "instructions": {"prompts_per_round": 1, "curate": INSTRUCTION_CURATORS}})
        run = Run(config, "curated")
        run_batch(run, Seeds(run), BatchRef(0))
        record = run_batch(run, Instructions(run), BatchRef(0)).record
        written = manifest.write(run.store, run.run_id)
        rows = {o: run.dir.read("instructions", o) for o in ("kept", "rejected", "failed")}

        # other curators remake the round (from its saved answers: no new request)
        asked = server.requests
        other = Run(parse_config({**config.model_dump(), "instructions": {"prompts_per_round": 1,
                                                                         "curate": [f"{MODULE}:no_urls"]}}), "curated")
        again = run_batch(other, Instructions(other), BatchRef(0)).record
        assert again["key"] != record["key"] and server.requests == asked
        assert again["counts"] == {"kept": 4, "rejected": 3, "failed": 0, "quarantine": 0}

    ended = {row["instruction"]: (outcome, row["reason"] or row["error"])
             for outcome, frame_ in rows.items() for row in frame_.to_dicts()}
    assert set(ended) == set(CANDIDATES)
    for text, (outcome, says) in CANDIDATES.items():
        assert ended[text][0] == outcome, text
        assert (ended[text][1] is None) if says is None else ended[text][1].startswith(says), (text, ended[text])
    kept_ids = dict(zip(rows["kept"]["instruction"], rows["kept"]["id"]))
    duplicate = rows["rejected"].filter(pl.col("reason").str.starts_with("duplicate of")).row(0, named=True)
    assert duplicate["reason"].startswith(
        f"duplicate of {kept_ids['Describe how tides work to a curious child, citing examples']} (rouge")
    assert rows["failed"]["reason"].is_null().all() and rows["kept"]["instruction"].str.contains("changed").not_().all()
    assert (rows["failed"]["raw_output"].is_not_null() & rows["failed"]["template"].eq("self_instruct")).all()

    # every candidate is kept, rejected or failed, and the checkpoint and the manifest say so
    counts = {"kept": 2, "rejected": 3, "failed": 2, "quarantine": 0}
    assert record["counts"] == counts and record["inputs"] == record["requests"] == 1
    assert {o: written["stages"]["instructions"][o] for o in OUTCOMES} == counts
    assert sum(counts.values()) == len(CANDIDATES)


ANSWERS = {  # instruction: (the answer, how its response row must end)
    "Name a good source on tides.": ("See http://tides.example for more.",
                                     ("rejected", f"curate {MODULE}:no_links: links out")),
    "Say a word loudly.": ("Boom, and boom again.", ("failed", f"curate {MODULE}:picky raised RuntimeError: boom")),
    "Reply with nothing at all.": ("", ("rejected", "empty response")),
    "Name a colour.": ("lower case blue.", ("rejected", f"curate {MODULE}:capitalised: starts in lower case")),
    **{f"Explain topic number {n} briefly.": (None, ("kept", None)) for n in range(5)},
}


def _answer_responses(req, kind):
    prompt = req["messages"][-1]["content"]
    return ANSWERS[prompt.strip()][0]


def test_responses_curated_after_the_empty_check(curators, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with LLMTestServer(respond=_answer_responses) as server:
        config = parse_config({"store": str(tmp_path / "store"),
                               "llm": {"provider": "openai", "base_url": server.openai_base_url},
                               "responses": {"per_instruction": 1, "curate": [
                                   f"{MODULE}:no_links", f"{MODULE}:picky", f"{MODULE}:capitalised"]}})
        run = Run(config, "responses")
        instructions = frame([{"id": f"i{n}", "instruction": text} for n, text in enumerate(ANSWERS)], "instructions")
        run.store.write_parquet(batch_key(run.run_id, "instructions", "kept", 0), instructions)
        record = run_batch(run, Responses(run), BatchRef(0, 0, 0, len(ANSWERS))).record
    ended = {row["instruction"]: (outcome, row["reason"] or row["error"])
             for outcome in ("kept", "rejected", "failed") for row in run.dir.read("responses", outcome).to_dicts()}
    assert ended == {text: outcome for text, (_, outcome) in ANSWERS.items()}
    assert record["counts"] == {"kept": 5, "rejected": 3, "failed": 1, "quarantine": 0}
    assert record["inputs"] == sum(record["counts"].values()) == len(ANSWERS)


def test_a_flow_run_stops_at_a_bad_curator_before_anything(tmp_path):
    from tasks.stages import start_run

    run = Run(parse_config({"store": str(tmp_path / "store"), "responses": {"curate": ["af_no_such_module:f"]}}), "r")
    with pytest.raises(curate.CurateError, match="^curate af_no_such_module:f: no module named"):
        start_run.fn(run, ["seeds", "instructions", "responses"], {})
    assert not (tmp_path / "store").exists()
