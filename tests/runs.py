"""Helpers for tests that run the whole pipeline: the command line, and checks that a run's store is whole."""
import polars as pl

from alignflow.engine.store import OUTCOMES, Store
from alignflow.records import schema_for

STAGES = ("instructions", "responses", "judgments", "pairs")


def args(server, store, *extra, run_id="r1", target="12"):
    return ["run", "configs/quickstart.yaml", "--set", f"store={store}", "--set", "llm.provider=openai",
            "--set", f"llm.base_url={server.openai_base_url}", "--set", "llm.model=gen-model",
            "--set", f"instructions.target={target}", "--set", "llm.max_concurrency=8", "--run-id", run_id, *extra]


def read(store: Store, run_id: str, stage: str, outcome: str = "kept") -> pl.DataFrame:
    return store.read_dir(f"{run_id}/{stage}/{outcome}", schema=schema_for(stage))


def assert_whole(store: Store, run_id: str) -> dict:
    """The manifest adds up per stage, and no id is in a stage or a dataset twice."""
    manifest = store.read_json(f"{run_id}/manifest.json")
    for stage in ("responses", "judgments", "pairs"):
        counts = manifest["stages"][stage]
        assert counts["inputs"] == sum(counts[o] for o in OUTCOMES) > 0, stage
    for stage in STAGES:
        ids = pl.concat([read(store, run_id, stage, o).select("id") for o in OUTCOMES])["id"]
        assert ids.is_unique().all() and ids.len() == sum(manifest["stages"][stage][o] for o in OUTCOMES), stage
    for name, column in (("dpo", "pair_id"), ("sft", "response_id"), ("kto", "response_id")):
        rows = store.read_parquet(f"{run_id}/datasets/{name}.parquet")
        assert rows[column].is_unique().all() and rows.height == manifest["datasets"][name] > 0, name
    return manifest
