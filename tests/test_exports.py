"""Exports of a small run built from stage frames: shapes, labelling rules, the CLI, its errors, atomic writes."""
import json
from pathlib import Path

import datasets
import polars as pl
import pytest
import yaml

from alignflow.config import parse_config
from alignflow.engine import manifest
from alignflow.engine.run import Run
from alignflow.engine.store import batch_key
from alignflow.records import frame
from alignflow.stages.exports import (
    ARGILLA_DATASET,
    ARGILLA_RECORDS,
    ARGILLA_SETTINGS,
    dpo,
    kto,
    sft,
    write_card,
    write_datasets,
)
from flows.cli import main

JUDGED = ("helpfulness", "honesty", "instruction_following", "truthfulness")
# response id -> (instruction id, model, aspect scores); None: a response the judge could not rate
RESPONSES = {
    "r00": ("i0", "gen-a", (5, 5, 4, 5)), "r01": ("i0", "gen-b", (2, 3, 1, 2)),
    "r10": ("i1", "gen-a", (3, 3, 3, 3)), "r11": ("i1", "gen-b", (3, 3, 3, 3)),
    "r20": ("i2", "gen-a", (4, 4, 4, 3)), "r21": ("i2", "gen-b", (1, 2, 1, 1)), "r22": ("i2", "gen-a", None),
    "r30": ("i3", "gen-b", (4, 3, 5, 4)),
    "r50": ("i5", "gen-a", (5, 5, 5, 5)), "r51": ("i5", "gen-b", (3, 3, 3, 3)), "r52": ("i5", "gen-a", (1, 1, 1, 2)),
}


def rating(rid: str) -> float | None:
    scores = RESPONSES[rid][2]
    return sum(scores) / len(scores) if scores else None


def responses() -> pl.DataFrame:
    return frame([{"id": rid, "instruction_id": iid, "instruction": f"task {iid}", "response": f"answer {rid}",
                   "model": model, "sample": int(rid[-1])} for rid, (iid, model, _) in RESPONSES.items()], "responses")


def judgments() -> pl.DataFrame:
    return frame([{"id": f"j{rid}", "response_id": rid, "instruction_id": iid, "rating": rating(rid),
                   "model": "judge-m", **dict(zip(JUDGED, scores or (None,) * 4))}
                  for rid, (iid, _, scores) in RESPONSES.items()], "judgments")


def pair(chosen: str, rejected: str, strategy: str = "best_vs_worst") -> dict:
    iid = RESPONSES[chosen][0]
    return {"id": f"p{chosen}{rejected}", "instruction_id": iid, "prompt": f"task {iid}", "chosen": f"answer {chosen}",
            "rejected": f"answer {rejected}", "chosen_id": chosen, "rejected_id": rejected,
            "chosen_model": RESPONSES[chosen][1], "rejected_model": RESPONSES[rejected][1],
            "score_chosen": rating(chosen), "score_rejected": rating(rejected),
            "margin": rating(chosen) - rating(rejected), "strategy": strategy,
            "chosen_scores": dict(zip(JUDGED, RESPONSES[chosen][2])),
            "rejected_scores": dict(zip(JUDGED, RESPONSES[rejected][2]))}


PAIRS = [("r00", "r01"), ("r20", "r21")]
ALL_PAIRS = [("r50", "r51"), ("r50", "r52"), ("r51", "r52")]


def pairs(which=PAIRS, strategy: str = "best_vs_worst") -> pl.DataFrame:
    return frame([pair(c, r, strategy) for c, r in which], "pairs")


def put(run: Run, stage: str, outcome: str, df: pl.DataFrame) -> None:
    """A batch straight into the store, as a finished stage leaves it (no gate: these frames are the test's input)."""
    run.store.write_parquet(batch_key(run.run_id, stage, outcome, 0), df)


def make_run(store: Path, run_id: str = "r1", stages=("responses", "judgments", "pairs"), **config) -> Run:
    run = Run(parse_config({"store": str(store), **config}), run_id)
    frames = {"responses": responses, "judgments": judgments, "pairs": pairs}
    for stage in stages:
        put(run, stage, "kept", frames[stage]())
    manifest.write(run.store, run_id)
    return run


@pytest.fixture
def run_dir(tmp_path) -> Path:
    make_run(tmp_path / "store")
    return tmp_path / "store" / "r1"


def export(run_dir, fmt: str, out: Path, *extra: str) -> int:
    return main(["export", str(run_dir), "--format", fmt, "--out", str(out), *extra])


# ---------------------------------------------------------------------------------------------------- shapes

def test_dpo_strings_with_scores_and_lineage():
    out = dpo(pairs())
    assert out.columns[:6] == ["prompt", "chosen", "rejected", "score_chosen", "score_rejected", "margin"]
    expected = {"prompt": "task i0", "chosen": "answer r00", "rejected": "answer r01", "score_chosen": 4.75,
                "score_rejected": 2.0, "margin": 2.75, "pair_id": "pr00r01", "instruction_id": "i0", "chosen_id": "r00",
                "rejected_id": "r01", "chosen_model": "gen-a", "rejected_model": "gen-b", "strategy": "best_vs_worst"}
    assert expected.items() <= out.row(0, named=True).items()
    assert out["chosen_scores"][0] == {"helpfulness": 5.0, "honesty": 5.0, "instruction_following": 4.0,
                                       "truthfulness": 5.0, "overall": None}


def test_dpo_conversational_format_is_trls():
    row = dpo(pairs(), "messages").row(0, named=True)
    assert row["prompt"] == [{"role": "user", "content": "task i0"}]
    assert row["chosen"] == [{"role": "assistant", "content": "answer r00"}]
    assert row["rejected"] == [{"role": "assistant", "content": "answer r01"}]


def test_sft_takes_the_best_rated_response_of_each_judged_instruction():
    out = sft(responses(), judgments()).sort("instruction_id")
    assert out["instruction_id"].to_list() == ["i0", "i1", "i2", "i3", "i5"]
    best = dict(zip(out["instruction_id"], out["response_id"]))
    assert best == {"i0": "r00", "i1": "r10", "i2": "r20", "i3": "r30", "i5": "r50"}  # i1 ties: lowest id
    assert out["messages"][0].to_list() == [{"role": "user", "content": "task i0"},
                                            {"role": "assistant", "content": "answer r00"}]
    assert out.row(0, named=True)["score"] == 4.75 and out.row(0, named=True)["model"] == "gen-a"


def test_kto_unpairs_chosen_as_desirable_and_rejected_as_undesirable():
    out = kto(pairs())
    assert sorted(zip(out["completion"], out["label"])) == [("answer r00", True), ("answer r01", False),
                                                           ("answer r20", True), ("answer r21", False)]
    assert out.columns[:3] == ["prompt", "completion", "label"]
    assert dict(zip(out["response_id"], out["score"])) == {r: rating(r) for r in ("r00", "r01", "r20", "r21")}


def test_kto_leaves_out_a_response_that_is_chosen_in_one_pair_and_rejected_in_another():
    out = kto(pairs(ALL_PAIRS, "all_pairs"), "messages")
    assert dict(zip(out["response_id"], out["label"])) == {"r50": True, "r52": False}
    assert out["completion"][0].to_list() == [{"role": "assistant", "content": "answer r50"}]


@pytest.mark.parametrize("pairs_format", ["string", "messages"])
def test_write_datasets_honours_the_pairs_format(tmp_path, pairs_format):
    run = make_run(tmp_path, pairs={"format": pairs_format})
    assert write_datasets(run) == {"dpo": 2, "sft": 5, "kto": 4}
    for name in ("dpo", "kto"):
        prompt = pl.read_parquet(tmp_path / "r1" / "datasets" / f"{name}.parquet")["prompt"]
        messages = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
        assert prompt.dtype == (pl.String if pairs_format == "string" else messages)


def test_write_datasets_with_no_kept_pairs_writes_empty_files_over_stale_ones(tmp_path):
    run = make_run(tmp_path)
    assert write_datasets(run)["dpo"] == 2
    run.store.delete_prefix(f"{run.run_id}/pairs/")
    put(run, "pairs", "rejected", pairs())
    assert write_datasets(run) == {"dpo": 0, "sft": 5, "kto": 0}
    assert pl.read_parquet(tmp_path / "r1" / "datasets" / "dpo.parquet").columns[:3] == ["prompt", "chosen", "rejected"]


def card_of(text: str) -> tuple[dict, str]:
    meta, body = text.removeprefix("---\n").split("\n---\n", 1)
    return yaml.safe_load(meta), body


def test_an_empty_dataset_is_in_the_card_but_no_config(tmp_path):
    """`datasets` cannot load an empty file: the card names it, says why it is empty, and configures the others."""
    run = make_run(tmp_path)
    run.store.delete_prefix(f"{run.run_id}/pairs/")
    put(run, "pairs", "rejected", pairs())
    write_datasets(run)
    manifest.write(run.store, run.run_id)
    assert write_card(run) == "r1/datasets/README.md"
    meta, body = card_of((tmp_path / "r1" / "datasets" / "README.md").read_text())
    assert meta["configs"] == [{"config_name": "sft", "data_files": [{"split": "train", "path": "sft.parquet"}],
                                "default": True}]
    assert meta["license"] == "other" and "language" not in meta  # no seeds known: no licence claimed
    assert "| `dpo` | `dpo.parquet` | 0 | no rows, so no config: " in body and "Seed tasks: none" in body
    loaded = datasets.load_dataset(str(tmp_path / "r1" / "datasets"), split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == 5 and "messages" in loaded.column_names


def test_the_card_of_a_run_on_s3(s3_server, tmp_path):
    import boto3
    from conftest import BUCKET

    run = make_run(f"s3://{BUCKET}/cards")
    write_datasets(run)
    manifest.write(run.store, run.run_id)
    key = write_card(run)
    text = boto3.client("s3").get_object(Bucket=BUCKET, Key=f"cards/{key}")["Body"].read().decode()
    meta, _ = card_of(text)
    sizes = {info["config_name"]: info["splits"][0]["num_examples"] for info in meta["dataset_info"]}
    assert sizes == {"dpo": 2, "sft": 5, "kto": 4}


# ---------------------------------------------------------------------------------------------------- the CLI

def load(fmt: str, out: Path) -> datasets.Dataset:
    return datasets.load_dataset("json" if fmt == "jsonl" else "parquet", data_files=str(out), split="train")


@pytest.mark.parametrize("fmt, rows, columns", [
    ("dpo", 2, {"prompt", "chosen", "rejected", "score_chosen", "score_rejected", "margin", "pair_id", "chosen_id"}),
    ("sft", 5, {"messages", "score", "instruction_id", "response_id", "model"}),
    ("kto", 4, {"prompt", "completion", "label", "score", "response_id"}),
    ("jsonl", 2, {"prompt", "chosen", "rejected", "score_chosen", "score_rejected", "margin", "chosen_scores"}),
])
def test_export_writes_files_that_datasets_loads(run_dir, tmp_path, capsys, fmt, rows, columns):
    out = tmp_path / "exports" / f"{fmt}.data"
    assert export(run_dir, fmt, out) == 0
    assert capsys.readouterr().out.strip() == f"{fmt}: {rows} rows -> {out} (card: {out.parent / 'README.md'})"
    loaded = load(fmt, out)
    assert loaded.num_rows == rows and columns <= set(loaded.column_names)


def test_export_conversational_pairs(run_dir, tmp_path):
    assert export(run_dir, "dpo", tmp_path / "dpo.parquet", "--pairs-format", "messages") == 0
    row = next(r for r in load("dpo", tmp_path / "dpo.parquet") if r["pair_id"] == "pr00r01")
    assert row["prompt"] == [{"role": "user", "content": "task i0"}]
    assert row["chosen"] == [{"role": "assistant", "content": "answer r00"}]


def load_argilla(path: Path, monkeypatch):
    """Settings, dataset and records through argilla's own loaders, as `Dataset.from_disk` reads them.

    The SDK's objects need a client; there is no Argilla server here, so the client skips its connection check
    (nothing else is replaced, and nothing is sent)."""
    import argilla as rg
    from argilla._api._client import APIClient

    monkeypatch.setattr(APIClient, "_validate_connection", lambda self: None)
    monkeypatch.setattr(rg.Argilla, "_default_client", None)
    client = rg.Argilla(api_url="http://127.0.0.1:9", api_key="unused")
    settings = rg.Settings.from_json(path / ARGILLA_SETTINGS)
    settings.validate()
    model = rg.Dataset._load_dataset_model(path / ARGILLA_DATASET)
    dataset = rg.Dataset(name=model.name, settings=settings, client=client)
    records = [rg.Record.from_dict(r, dataset=dataset) for r in json.loads((path / ARGILLA_RECORDS).read_text())]
    for record in records:
        record.api_model()  # resolves every suggestion's question by name: an unknown one raises
    return model, settings, records


def check_record(record, settings) -> None:
    """What the Argilla server checks on import: known fields and metadata, values its questions allow."""
    import argilla as rg

    fields = {f.name: f for f in settings.fields}
    assert set(record.fields) <= set(fields)
    required = [name for name, field in fields.items() if field.required]
    assert all(isinstance(record.fields.get(name), str) and record.fields[name] for name in required)
    for suggestion in record.suggestions:
        question = settings.questions[suggestion.question_name]
        allowed = question.values if question.type == "rating" else list(question.labels)
        assert suggestion.value in allowed, (suggestion.question_name, suggestion.value)
    properties = {m.name: m for m in settings.metadata}
    for name, value in record.metadata.items():
        prop = properties[name]
        if isinstance(prop, rg.FloatMetadataProperty):
            assert isinstance(value, float) and prop.min <= value <= prop.max, (name, value)
        else:
            assert isinstance(value, str)


def test_export_argilla_dataset_that_argilla_loads(run_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "review"
    assert export(run_dir, "argilla", out) == 0
    assert capsys.readouterr().out.strip() == f"argilla: 2 rows -> {out} (card: {out / 'README.md'})"
    model, settings, records = load_argilla(out, monkeypatch)
    assert model.name == "alignflow-r1"
    assert [f.name for f in settings.fields] == ["prompt", "chosen", "rejected"]
    ratings = {q.name for q in settings.questions if q.type == "rating"}
    assert ratings == {f"{side}_{a}" for side in ("chosen", "rejected") for a in JUDGED}  # "overall" was not judged
    assert {"margin", "chosen_model", "score_chosen", "instruction_id"} <= {m.name for m in settings.metadata}
    for record in records:
        check_record(record, settings)
    first = next(r for r in records if r.id == "pr00r01")
    assert first.fields["prompt"] == "task i0" and first.metadata["margin"] == 2.75
    assert first.suggestions["chosen_instruction_following"].value == 4
    assert first.suggestions["preference"].value == "chosen" and first.suggestions["preference"].agent == "judge-m"


def test_argilla_suggestions_are_allowed_ratings_halves_rounded_up_and_clamped(tmp_path, monkeypatch):
    run = make_run(tmp_path / "store", stages=("judgments",))
    halves = pair("r00", "r01") | {"chosen_scores": dict.fromkeys(JUDGED, 3.5),
                                   "rejected_scores": dict.fromkeys(JUDGED, 0.4)}
    put(run, "pairs", "kept", frame([halves], "pairs"))
    assert export(run.url, "argilla", tmp_path / "review") == 0
    _, settings, records = load_argilla(tmp_path / "review", monkeypatch)
    check_record(records[0], settings)
    assert records[0].suggestions["chosen_helpfulness"].value == 4
    assert records[0].suggestions["rejected_helpfulness"].value == 1


def test_export_from_an_s3_run_directory(s3_server, tmp_path):
    from conftest import BUCKET

    url = f"s3://{BUCKET}/runs"
    make_run(url)
    assert export(f"{url}/r1", "kto", tmp_path / "kto.parquet") == 0
    assert load("kto", tmp_path / "kto.parquet").num_rows == 4


# ---------------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("where, fmt, message", [
    ("nowhere", "dpo", "no such run directory: "),
    ("empty", "dpo", "not a run directory (no manifest.json, no stage written): "),
    ("store", "dpo", "not a run directory (no manifest.json, no stage written): "),
    ("unpaired", "dpo", "run unpaired has no pairs yet"),
    ("unpaired", "argilla", "run unpaired has no pairs yet"),
    ("unjudged", "sft", "run unjudged has no judgments yet"),
    ("nokept", "jsonl", "nothing to export: run nokept has no kept pairs"),
    ("nokept", "argilla", "nothing to export: run nokept has no kept pairs"),
    ("unrated", "sft", "nothing to export: run unrated has no rated responses"),
])
def test_bad_run_directory_is_one_line(tmp_path, capsys, where, fmt, message):
    store = tmp_path / "store"
    make_run(store, "unpaired", stages=("responses", "judgments"))
    make_run(store, "unjudged", stages=("responses",))
    put(make_run(store, "nokept", stages=("responses", "judgments")), "pairs", "rejected", pairs())
    put(make_run(store, "unrated", stages=("responses",)), "judgments", "failed",
        judgments().with_columns(error=pl.lit("HTTP 500")))
    (tmp_path / "empty").mkdir()
    run_dir = store / where if where in ("unpaired", "unjudged", "nokept", "unrated") else tmp_path / where
    assert export(run_dir, fmt, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_s3_errors_are_one_line(s3_server, tmp_path, capsys):
    from conftest import BUCKET

    assert export(f"s3://{BUCKET}", "dpo", tmp_path / "out") == 2
    assert export(f"s3://{BUCKET}/runs/none", "dpo", tmp_path / "out") == 2
    assert export(f"s3://{BUCKET}/runs/none", "dpo", "s3://elsewhere/dpo.parquet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3
    assert "is a bucket" in err[0] and "not a run directory" in err[1] and "must be a local path" in err[2]


def test_a_failed_write_leaves_the_previous_file_whole(run_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "exports" / "dpo.parquet"
    assert export(run_dir, "dpo", out) == 0
    before = out.read_bytes()

    def disk_full(query, file):  # half a file, then the disk is full
        file.write(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pl.LazyFrame, "sink_parquet", disk_full)
    assert export(run_dir, "dpo", out) == 2
    assert capsys.readouterr().err.strip().endswith(f"to {out} failed: No space left on device")
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["README.md", "dpo.parquet"]  # no temp file left behind


def test_argilla_export_never_writes_into_an_existing_directory(run_dir, tmp_path, capsys):
    out = tmp_path / "review"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert export(run_dir, "argilla", out) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
