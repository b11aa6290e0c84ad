"""The dataset card of a real small run, against `datasets` itself: the front matter parses, its configs load as
they are with the sizes it states, and the body says what the run's manifest says; the same after `export`."""
import hashlib
import json
import re
import shutil
from pathlib import Path

import datasets
import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml
from llm_server import LLMTestServer
from polars.testing import assert_frame_equal
from runs import args, assert_whole

from alignflow.engine.store import Store
from alignflow.stages.card import KNOWN_SEEDS, MARK, hf_type, seeds_fingerprint
from alignflow.stages.seeds import load_seeds
from flows.cli import main

DATA = Path(__file__).parent / "data"
GSM8K = DATA / "gsm8k_test.jsonl"
PLANTED = json.loads(GSM8K.read_text().splitlines()[0])["question"]  # a GSM8K test problem, verbatim
EMAIL = "Write to maria.rossi@posteo.de for the full list."
RESPONDER = "resp-model"


def planting(req: dict, kind: str) -> str | None:
    """Answers to a quarter of the instructions are a GSM8K problem, to another quarter carry an e-mail address."""
    if req.get("model") != RESPONDER:
        return None
    prompt = req["messages"][-1]["content"]
    share = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 4
    return PLANTED if share == 0 else f"Here is what I found. {EMAIL}" if share == 1 else None


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, prefect_server) -> Path:
    """One run with decontamination against GSM8K, personal data redacted, and its pairs reviewed (one swapped)."""
    root = tmp_path_factory.mktemp("card")
    store = root / "store"
    with pytest.MonkeyPatch.context() as mp, LLMTestServer(respond=planting) as server:
        mp.setenv("OPENAI_API_KEY", "sk-test-secret")
        mp.setenv("ALIGNFLOW_CACHE_DIR", str(root / "cache"))
        run = args(server, store, "--set", f"responses.llm.model={RESPONDER}", "--set", "judge.llm.model=judge-model",
                   "--set", f"gate.decontaminate.benchmarks=[{GSM8K}]", "--set", "gate.pii=redact",
                   "--set", "gate.max_contaminated_share=1", "--set", "gate.max_pii_share=1",
                   "--set", "review.stages=[pairs]", "--set", "review.sample=4", "--set", "review.sample_by=random")
        assert main(run) == 4  # waiting for the pairs' review
        sample = json.loads((store / "r1" / "review.json").read_text())["stages"]["pairs"]["sample"]
        assert main(["review", str(store / "r1"), "--swap", sample[0], "--keep", *sample[1:]]) == 0
        assert main(run) == 0
    assert_whole(Store(str(store)), "r1")
    return store / "r1"


@pytest.fixture
def hf(tmp_path, monkeypatch) -> Path:
    """`datasets` offline, with a cache of its own."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


def card(directory: Path) -> tuple[dict, str]:
    """The front matter, parsed, and the body."""
    text = (directory / "README.md").read_text()
    assert text.startswith("---\n")
    meta, body = text.removeprefix("---\n").split("\n---\n", 1)
    return yaml.safe_load(meta), body


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def section(body: str, heading: str) -> str:
    """From `heading` to the next `## ` heading."""
    return re.search(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", body, flags=re.S | re.M)[0]


def large_to_plain(features: list) -> list:
    """`datasets`' features of a polars-written file, with its large Arrow types as the card's plain ones."""
    text = json.dumps(features).replace('"large_string"', '"string"').replace('"large_list"', '"list"')
    return json.loads(text)


def load(directory: Path, cache: Path, name: str | None = None) -> datasets.Dataset:
    return datasets.load_dataset(str(directory), name, split="train", cache_dir=str(cache))


def check_loads(directory: Path, meta: dict, cache: Path) -> None:
    """Every configured split loads as it is: the rows of its file, the sizes and features the card states."""
    infos = {info["config_name"]: info for info in meta["dataset_info"]}
    assert [c["config_name"] for c in meta["configs"]] == list(infos)
    for config in meta["configs"]:
        (files,) = config["data_files"]
        path = directory / files["path"]
        assert files["split"] == "train" and path.is_file()
        parquet = path.suffix == ".parquet"
        rows = pl.read_parquet(path) if parquet else pl.read_ndjson(path)
        info = infos[config["config_name"]]
        assert info["splits"][0]["num_examples"] == rows.height > 0
        if parquet:
            reference = datasets.Features.from_arrow_schema(pq.read_schema(path))._to_yaml_list()
            assert info["features"] == large_to_plain(reference)
        loaded = load(directory, cache, config["config_name"])
        assert loaded.num_rows == rows.height
        assert_frame_equal(loaded.to_polars(), rows, check_dtypes=parquet)
        recorded = loaded.info.splits["train"].num_bytes
        assert abs(info["splits"][0]["num_bytes"] - recorded) <= 0.01 * recorded + 16
    default = next(c["config_name"] for c in meta["configs"] if c.get("default"))
    assert load(directory, cache).num_rows == infos[default]["splits"][0]["num_examples"]


# ---------------------------------------------------------------------------------------------------- the run's card

def test_the_datasets_card_front_matter_is_the_hubs_and_loads_as_it_is(run_dir, hf):
    meta, body = card(run_dir / "datasets")
    assert body.lstrip().startswith(MARK)
    assert [c["config_name"] for c in meta["configs"]] == ["dpo", "sft", "kto"]
    assert next(c for c in meta["configs"] if c.get("default"))["config_name"] == "dpo"
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en"]  # the bundled seeds
    assert meta["task_categories"] == ["text-generation"] and meta["size_categories"] == ["n<1K"]
    assert {"alignflow", "synthetic", "dpo", "sft", "kto", "preference"} <= set(meta["tags"])
    check_loads(run_dir / "datasets", meta, hf)


def test_the_body_says_what_the_manifest_says(run_dir):
    found = manifest(run_dir)
    _, body = card(run_dir / "datasets")
    for entry in found["by_model"].values():
        assert f"{entry['provider']} `{entry['model']}` | {entry['requests']:,} |" in body
    made = section(body, "## How it was made")
    assert "| responses | openai `resp-model` (temperature 0.8) | `respond` v1 |" in made
    assert "| judgments | openai `judge-model` (temperature 0) | `judge` v" in made
    assert "alignflow's own seed tasks" in made and "127.0.0.1" not in body  # no endpoint of the user's network
    gates = section(body, "## What the gates removed")
    reasons = gates.split("Rejected rows by reason:\n\n", 1)[1].split("\n\n", 1)[0]  # that table alone
    for stage, c in found["stages"].items():
        assert f"| {stage} | {c['inputs']:,} | {c['kept']:,} | {c['rejected']:,} | {c['failed']:,} |" in gates
        counted = re.findall(rf"^\| {stage} \| .+? \| (\d+) \| ", reasons, flags=re.M)
        assert sum(int(n) for n in counted) == c["rejected"], stage
    responses = found["stages"]["responses"]
    assert responses["contaminated"] > 0 and responses["pii_redacted"] > 0  # what the server planted was caught
    assert f"| responses | contaminated | {responses['contaminated']} | contaminated: gsm8k_test item 1 (" in reasons
    row = (f"| responses | {responses['contaminated']} | gsm8k_test {responses['contaminated']} | "
           f"{responses['pii_rejected']} | {responses['pii_redacted']} | email ")
    assert row in gates and "| judgments | not checked | - | not checked | - | - |" in gates
    review = found["review"]["pairs"]
    assert f"| pairs | 4 | {review['decision']} by cli (" in body and "1 swap" in body
    assert review["agreement"]["text"] in body
    tokens = found["tokens"]
    assert f"In all: {tokens['input_tokens']:,} tokens in, {tokens['output_tokens']:,} out" in body
    assert "sk-test-secret" not in body


def test_the_snippets_name_the_configs_and_their_trainers(run_dir):
    _, body = card(run_dir / "datasets")
    use = section(body, "## Use")
    for name in ("dpo", "sft", "kto"):
        assert f'{name} = load_dataset("path/to/this/directory", "{name}", split="train")' in use
    for trainer, name in (("DPO", "dpo"), ("SFT", "sft"), ("KTO", "kto")):
        assert f"{trainer}Trainer(model=model, args={trainer}Config(output_dir=\"{name}-model\"), " \
               f"train_dataset={name}, processing_class=tokenizer)" in use


@pytest.mark.usefixtures("api_keys")
def test_the_constitutions_datasets_join_the_card(run_dir, tmp_path, hf):
    """`constitution revise` on the run (a copy of it) writes cai_sft and cai_dpo, and the card configures them."""
    store = tmp_path / "store"
    shutil.copytree(run_dir, store / "r1")
    with LLMTestServer() as server:
        assert main(["constitution", "revise", "configs/quickstart.yaml", "--set", f"store={store}", "--set",
                     "llm.provider=openai", "--set", f"llm.base_url={server.openai_base_url}", "--set",
                     "llm.model=gen-model", "--set", "constitution.llm.model=cai-model", "--run-id", "r1"]) == 0
    meta, body = card(store / "r1" / "datasets")
    assert [c["config_name"] for c in meta["configs"]] == ["dpo", "sft", "kto", "cai_sft", "cai_dpo"]
    assert "constitutional-ai" in meta["tags"] and "| revisions | openai `cai-model`" in body
    check_loads(store / "r1" / "datasets", meta, hf)


# ---------------------------------------------------------------------------------------------------- exports

@pytest.mark.parametrize("fmt, file, pairs_format", [("dpo", "dpo.parquet", "string"),
                                                     ("sft", "sft.parquet", "string"),
                                                     ("kto", "kto-chat.parquet", "messages"),
                                                     ("jsonl", "pairs.jsonl", "string")])
def test_every_export_gets_a_card_that_loads(run_dir, tmp_path, hf, capsys, fmt, file, pairs_format):
    out = tmp_path / "release" / file
    assert main(["export", str(run_dir), "--format", fmt, "--out", str(out), "--pairs-format", pairs_format]) == 0
    assert capsys.readouterr().out.strip().endswith(f"-> {out} (card: {out.parent / 'README.md'})")
    meta, body = card(out.parent)
    config = "dpo" if fmt == "jsonl" else fmt
    assert meta["configs"] == [{"config_name": config, "data_files": [{"split": "train", "path": file}],
                                "default": True}]
    check_loads(out.parent, meta, hf)
    _, run_body = card(run_dir / "datasets")
    for heading in ("## How it was made", "## What the gates removed", "## Review by people", "## Tokens and cost"):
        assert section(body, heading) == section(run_body, heading)  # the export's card says what the run's says


def test_an_argilla_export_has_its_card_inside(run_dir, tmp_path):
    out = tmp_path / "review"
    assert main(["export", str(run_dir), "--format", "argilla", "--out", str(out)]) == 0
    meta, body = card(out)
    assert "configs" not in meta and meta["license"] == "apache-2.0"
    assert "rg.Dataset.from_disk(" in body and "| `argilla` | `records.json` |" in body


def test_an_export_replaces_an_alignflow_card_and_never_a_readme_of_yours(run_dir, tmp_path, capsys):
    out = tmp_path / "release"
    assert main(["export", str(run_dir), "--format", "dpo", "--out", str(out / "dpo.parquet")]) == 0
    assert main(["export", str(run_dir), "--format", "sft", "--out", str(out / "sft.parquet")]) == 0
    assert [c["config_name"] for c in card(out)[0]["configs"]] == ["sft"]  # the card of the latest export
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("# My dataset\n")
    capsys.readouterr()
    assert main(["export", str(run_dir), "--format", "kto", "--out", str(mine / "kto.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"alignflow: {mine / 'README.md'} exists and alignflow did not write it")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in mine.iterdir()) == ["README.md"] and (mine / "README.md").read_text() == "# My dataset\n"


# ---------------------------------------------------------------------------------------------------- parts

def test_the_known_seed_sets_are_the_files_they_name(test_data):
    fingerprints = {seeds_fingerprint(load_seeds(path)["id"]): path for path in
                    (Path("data/seed_tasks.jsonl"), test_data / "self_instruct_seed_tasks.jsonl")}
    assert set(fingerprints) == set(KNOWN_SEEDS)
    assert {KNOWN_SEEDS[f].license for f in fingerprints} == {"apache-2.0"}


@pytest.mark.parametrize("dtype", [
    pl.String, pl.Float64, pl.Int64, pl.Boolean, pl.List(pl.String), pl.List(pl.List(pl.Int64)),
    pl.Struct({"a": pl.Float64, "b": pl.String}), pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
    pl.Struct({"steps": pl.List(pl.Struct({"round": pl.Int64, "ok": pl.Boolean}))}),
])
def test_feature_types_are_the_ones_datasets_writes(tmp_path, dtype):
    path = tmp_path / "one.parquet"
    pl.DataFrame({"x": [None]}, schema={"x": dtype}).write_parquet(path)
    reference = datasets.Features.from_arrow_schema(pq.read_schema(path))._to_yaml_list()
    assert [{"name": "x", **hf_type(dtype)}] == large_to_plain(reference)
