"""One task per batch of each stage. Tasks read their input from the store, so they run in any worker."""
from __future__ import annotations

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow import exports, instructions, judge, manifest, pairs, responses
from alignflow.run import Run
from alignflow.seeds import load_seeds
from tasks.gate import publish


def publish_gate(run: Run, written: dict) -> dict[str, int]:
    """The gate's verdict on the batch, as a Prefect artifact (and an event when quarantined)."""
    publish(getattr(written, "gate", None), run.run_id)
    return dict(written)


@task(name="load-seeds", cache_policy=NO_CACHE)
def load_seeds_task(run: Run) -> int:
    run.reset_stage("seeds")
    seeds = load_seeds(run.config.seeds)
    run.write_batch("seeds", 0, kept=seeds)
    run.record_stage("seeds", seeds.height)
    return seeds.height


@task(name="instructions-round", cache_policy=NO_CACHE)
def instructions_round(run: Run, round_no: int) -> dict[str, int]:
    return publish_gate(run, instructions.run_round(run, round_no, run.read("seeds"), run.read("instructions")))


@task(name="responses-batch", cache_policy=NO_CACHE)
def responses_batch(run: Run, number: int, start: int, size: int) -> dict[str, int]:
    return publish_gate(run, responses.respond_batch(run, number, run.read("instructions").slice(start, size)))


@task(name="judge-batch", cache_policy=NO_CACHE)
def judge_batch(run: Run, number: int, start: int, size: int) -> dict[str, int]:
    """Instructions `start`..`start+size` (in id order) with all their responses: one judge call per aspect each."""
    responses = run.read("responses")
    ids = responses["instruction_id"].unique().sort().slice(start, size)
    return publish_gate(run, judge.judge_batch(run, number, responses.filter(pl.col("instruction_id").is_in(ids.implode()))))


@task(name="make-pairs", cache_policy=NO_CACHE)
def make_pairs(run: Run) -> dict[str, int]:
    return publish_gate(run, pairs.make_pairs(run, run.read("responses"), run.read("judgments")))


@task(name="write-datasets", cache_policy=NO_CACHE)
def write_datasets(run: Run) -> dict[str, int]:
    return exports.write_datasets(run)


@task(name="write-manifest", cache_policy=NO_CACHE)
def write_manifest(run: Run) -> dict:
    return manifest.write(run.store, run.run_id)
