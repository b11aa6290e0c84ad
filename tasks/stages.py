"""One task per batch of each stage. Tasks read their input from the store, so they run in any worker."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from alignflow import exports, instructions, judge, manifest, pairs, responses
from alignflow.run import Run
from alignflow.seeds import load_seeds


@task(name="load-seeds", cache_policy=NO_CACHE)
def load_seeds_task(run: Run) -> int:
    run.reset_stage("seeds")
    seeds = load_seeds(run.config.seeds)
    run.write_batch("seeds", 0, kept=seeds)
    run.record_stage("seeds", seeds.height)
    return seeds.height


@task(name="instructions-round", cache_policy=NO_CACHE)
def instructions_round(run: Run, round_no: int) -> dict[str, int]:
    return instructions.run_round(run, round_no, run.read("seeds"), run.read("instructions"))


@task(name="responses-batch", cache_policy=NO_CACHE)
def responses_batch(run: Run, number: int, start: int, size: int) -> dict[str, int]:
    return responses.respond_batch(run, number, run.read("instructions").slice(start, size))


@task(name="judge-batch", cache_policy=NO_CACHE)
def judge_batch(run: Run, number: int, start: int, size: int) -> dict[str, int]:
    return judge.judge_batch(run, number, run.read("responses").slice(start, size))


@task(name="make-pairs", cache_policy=NO_CACHE)
def make_pairs(run: Run) -> dict[str, int]:
    return pairs.make_pairs(run, run.read("responses"), run.read("judgments"))


@task(name="write-datasets", cache_policy=NO_CACHE)
def write_datasets(run: Run) -> dict[str, int]:
    return exports.write_datasets(run)


@task(name="write-manifest", cache_policy=NO_CACHE)
def write_manifest(run: Run) -> dict:
    return manifest.write(run.store, run.run_id)
