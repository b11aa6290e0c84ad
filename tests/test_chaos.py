"""Chaos, through `alignflow run` processes against the loopback server: kill -9 at random points (on a local store
nothing answered is asked again, on S3 nothing answered before the last part interval; no Prefect server left
behind, no flow run left Running), two writers racing for one run id (one wins, the other exits 2 naming it, the
data is a single run's), and the S3 store going away for 10 s in the middle of a run."""
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil
import pytest
from conftest import BUCKET, ROOT, _free_port
from llm_server import LLMTestServer
from moto.server import ThreadedMotoServer
from runs import args, assert_whole

from alignflow.engine import answers
from alignflow.engine.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("api_keys")]

# On S3 an answer is in the store within FLUSH_S of arriving, plus a part's PUT: a kill may cost the answers of
# the last part interval, and the requests in flight; anything older must never be asked again.
PART_S = answers.FLUSH_S + 0.5
WINDOW_S = answers.FLUSH_S + 2.0  # the same, for a kill whose time is known only roughly (a Dask worker's)


def start(command: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *command], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def assert_nothing_asked_twice_but_in_flight(log: list[tuple[float, int]], kills: list[float]) -> None:
    served = defaultdict(list)
    for at, digest in log:
        served[digest].append(at)
    repeated = [at for times in served.values() for at in sorted(times)[:-1]]
    lost_in_flight = [at for at in repeated if any(kill - WINDOW_S <= at <= kill + 1.0 for kill in kills)]
    print(f"{len(kills)} kills, {len(log)} answers served, {len(repeated)} asked again, all in flight at a kill")
    assert repeated == lost_in_flight  # nothing answered well before a kill was asked for again


def asked_twice(log: list[tuple[float, int]]) -> dict[int, list[float]]:
    """The requests the server answered more than once, with the times it answered them."""
    served = defaultdict(list)
    for at, digest in log:
        served[digest].append(at)
    return {digest: sorted(times) for digest, times in served.items() if len(times) > 1}


def servers_of(prefect_home: Path) -> list[psutil.Process]:
    """Live processes started with this Prefect home: the temporary servers of `alignflow run`."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("PREFECT_HOME") == str(prefect_home) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def kill_ten_times_then_finish(server: LLMTestServer, command, env: dict, seed: int, kill,
                               settle_s: tuple[float, float]) -> list[float]:
    """Ten runs of `command(attempt)`, each killed by `kill` at a random point once it is asking the server, then
    one run to the end; the times of the kills. The point is drawn in requests asked (a fast machine would otherwise
    finish the run before the tenth kill); there the server stops answering, and the kill comes a random
    `settle_s` later, while the run goes on with what it has: so every answer the server sent was received, and the
    requests in flight are the ones it holds (dropped unanswered after the kill)."""
    rnd, kills = random.Random(seed), []
    for attempt in range(11):
        proc = start(command(attempt), env)
        if attempt == 10:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err.decode()[-2000:]
            return kills
        asked = server.requests + rnd.randint(1, 12)  # a temporary Prefect server takes a while to start
        if not _wait_for(lambda: server.requests >= asked, proc):
            continue  # it finished first
        server.hold_answers()
        try:
            proc.wait(timeout=rnd.uniform(*settle_s))
        except subprocess.TimeoutExpired:
            kill(proc)
            kills.append(time.time())
            proc.wait()
        server.drop_held()


def test_kill_9_at_ten_random_points_with_no_cache_then_resume(tmp_path):
    """On a local store an answer is in the store before it counts, so no answer is ever asked for twice. Each
    `alignflow run` starts its own temporary Prefect server (no PREFECT_API_URL); only the run's own process is
    killed, as the OOM killer would, so its server is left to the kernel's parent-death signal."""
    store, home = Store(str(tmp_path / "store")), tmp_path / "prefect"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")},
           "PREFECT_HOME": str(home), "PREFECT_LOGGING_LEVEL": "ERROR"}
    with LLMTestServer(latency_s=0.1) as server:
        kills = kill_ten_times_then_finish(
            server, lambda attempt: args(server, store.url, "--set", "instructions.prompts_per_round=3", "--set",
                                         "responses.batch_size=4", "--set", "cache.enabled=false", target="60"),
            env, seed=20261202, kill=lambda proc: proc.kill(), settle_s=(0.2, 0.6))
    assert len(kills) >= 7
    print(f"{len(kills)} kills, {len(server.served_log)} answers served")
    assert asked_twice(server.served_log) == {}
    assert_whole(store, "r1")
    left = [f"{p.pid} (parent {p.ppid()}): {' '.join(p.cmdline())[:200]}" for p in servers_of(home)]
    assert left == [], "a process of a killed run outlived it"
    with sqlite3.connect(home / "prefect.db") as db:
        states = dict(db.execute("select state_type, count(*) from flow_run group by state_type").fetchall())
    assert states == {"COMPLETED": 1, "CRASHED": len(kills)}  # each killed run marked by the one after it


def test_kill_9_on_s3_resumed_each_time_on_a_fresh_cache(tmp_path, prefect_server, s3_server):
    """On an S3 store, each resume on an empty cache directory, as another machine would: answers go in a part every
    FLUSH_S, so a kill costs at most what was answered in the last PART_S before it."""
    store = Store(f"s3://{BUCKET}/kills")
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_LOGGING_LEVEL": "ERROR"}
    with LLMTestServer(latency_s=0.05) as server:
        kills = kill_ten_times_then_finish(
            server, lambda attempt: args(server, store.url, "--set", "instructions.prompts_per_round=3", "--set",
                                         "responses.batch_size=4", "--set", f"cache.dir={tmp_path}/cache{attempt}",
                                         target="40"),
            env, seed=7, kill=lambda proc: os.killpg(proc.pid, signal.SIGKILL), settle_s=(0.0, 2 * PART_S))
    assert len(kills) >= 7
    lost = [at for times in asked_twice(server.served_log).values() for at in times[:-1]]  # answers a kill lost
    print(f"{len(kills)} kills, {len(server.served_log)} answers served, {len(lost)} asked again")
    assert all(any(kill - PART_S <= at <= kill for kill in kills) for at in lost), (kills, sorted(lost))
    assert_whole(store, "r1")


def test_an_answer_is_in_a_local_store_before_it_counts_and_a_torn_last_line_is_asked_again(tmp_path):
    """What a process killed right after `put` leaves: every answer put, readable by the next process; and a last
    line a kill cut short, which the next process leaves out instead of failing on."""
    store, prefix = Store(str(tmp_path / "store")), "r1/responses/answers/batch-00000/"
    answer = {"text": "an answer\nover two lines \u00e9", "finish_reason": "stop", "input_tokens": 3,
              "output_tokens": 5, "latency_s": 0.25}
    with answers.AnswerLog(store, prefix) as log:
        for i in range(3):
            log.put(f"k{i}", answer)
        assert answers.AnswerLog(store, prefix).get("k2") == {"key": "k2", **answer}  # before any flush or fsync
        [written] = [k for k in store.list_dir(prefix) if k.endswith(".jsonl")]
        with open(store.join(written), "ab") as torn:
            torn.write(b'{"key": "k3", "text": "cut sh')
    resumed = answers.AnswerLog(store, prefix)
    assert resumed.loaded == 3 and resumed.get("k3") is None
    with resumed:
        resumed.put("k3", answer)
    resumed.compact()
    assert [k.rsplit("/", 1)[-1][:5] for k in store.list_dir(prefix)] == ["part-"]
    assert answers.AnswerLog(store, prefix).loaded == 4


def dataset_ids(store: Store, run_id: str) -> dict[str, list[str]]:
    return {name: sorted(store.read_parquet(f"{run_id}/datasets/{name}.parquet")[column].to_list())
            for name, column in (("dpo", "pair_id"), ("sft", "response_id"))}


def test_two_writers_race_for_one_run_id(tmp_path, prefect_server):
    """Started together, seeds 0 and 1 on one run id: one runs, the other exits 2 naming it, and the run holds
    exactly what the winner's config makes alone."""
    store = Store(str(tmp_path / "store"))
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_LOGGING_LEVEL": "ERROR"}
    with LLMTestServer() as server:
        racers = {seed: start(args(server, store.url, "--set", f"seed={seed}", "--set", "cache.enabled=false",
                                   run_id="race"), env) for seed in (0, 1)}
        results = {seed: (proc.wait(timeout=600), proc.stderr.read().decode()) for seed, proc in racers.items()}
    [(winner, (_, _))] = [(seed, r) for seed, r in results.items() if r[0] == 0]
    [(loser_code, loser_err)] = [r for seed, r in results.items() if seed != winner]
    line = loser_err.strip().splitlines()[-1]
    assert loser_code == 2 and line.startswith("alignflow: run race is being written by another process (pid ")
    assert f"pid {racers[winner].pid} on {socket.gethostname()}" in line
    assert_whole(store, "race")
    with LLMTestServer() as server:  # the winner's config alone, on a server as fresh as the race's
        proc = start(args(server, store.url, "--set", f"seed={winner}", "--set", "cache.enabled=false",
                          run_id="alone"), env)
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]
    assert dataset_ids(store, "race") == dataset_ids(store, "alone")


def test_the_s3_store_gone_for_10_s_mid_run(tmp_path, prefect_server, monkeypatch):
    """The store's server stops for 10 s while batches are being written: the run rides it out (store requests
    retry with backoff) or stops with one line; run again, it finishes with nothing lost and nothing twice."""
    port = _free_port()
    s3_env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
              "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **s3_env,
           "PREFECT_API_URL": prefect_server, "PREFECT_LOGGING_LEVEL": "ERROR"}
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        import boto3

        boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        with LLMTestServer(latency_s=0.05) as server:
            command = args(server, f"s3://{BUCKET}/outage", "--set", "responses.batch_size=4", "--set",
                           "cache.enabled=false", target="40")
            proc = start(command, env)
            assert _wait_for(lambda: server.requests >= 60, proc)
            moto.stop()
            time.sleep(10)
            moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)  # the same objects: moto
            moto.start()                                                                  # keeps them in-process
            _, err = proc.communicate(timeout=600)
            if proc.returncode != 0:  # stopped: one line, and the same command resumes
                lines = [line for line in err.decode().splitlines() if line.startswith("alignflow: ")]
                assert len(lines) == 1, err.decode()[-3000:]
                print(f"the run stopped: {lines[0]}")
                proc = start(command, env)
                _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err.decode()[-3000:]
        for key, value in s3_env.items():
            monkeypatch.setenv(key, value)
        manifest = assert_whole(Store(f"s3://{BUCKET}/outage"), "r1")
        assert manifest["datasets"]["dpo"] > 0
    finally:
        moto.stop()


def _wait_for(condition, proc: subprocess.Popen, timeout_s: float = 120.0) -> bool:
    """True once `condition` holds; False if the run finished first."""
    deadline = time.time() + timeout_s
    while not condition():
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
            return False
        assert time.time() < deadline, "the run never got that far"
        time.sleep(0.1)
    return True
