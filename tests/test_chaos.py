"""Chaos, through `alignflow run` processes against the loopback server: kill -9 at random points (nothing answered
before a kill is asked again, no Prefect server left behind, no flow run left Running), two writers racing for one
run id (one wins, the other exits 2 naming it, the data is a single run's), and the S3 store going away for 10 s
in the middle of a run."""
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

# An answer is in the store within FLUSH_S of arriving (plus a write): a kill may lose the answers of the last
# seconds, and the requests in flight; anything older must never be asked again.
WINDOW_S = answers.FLUSH_S + 2.0


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


def kill_ten_times_then_finish(server: LLMTestServer, command, env: dict, seed: int, kill) -> list[float]:
    """Ten runs of `command(attempt)`, each killed by `kill` at a random point once it is asking the server, then
    one run to the end; the times of the kills. The point is drawn in requests asked, then a fraction of a second,
    not in seconds alone: a fast machine would otherwise finish the run before the tenth kill."""
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
        try:
            proc.wait(timeout=rnd.uniform(0.0, 0.5))
        except subprocess.TimeoutExpired:
            kill(proc)
            kills.append(time.time())
            proc.wait()


def test_kill_9_at_ten_random_points_with_no_cache_then_resume(tmp_path):
    """Each `alignflow run` starts its own temporary Prefect server (no PREFECT_API_URL); only the run's own process
    is killed, as the OOM killer would, so its server is left to the kernel's parent-death signal."""
    store, home = Store(str(tmp_path / "store")), tmp_path / "prefect"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")},
           "PREFECT_HOME": str(home), "PREFECT_LOGGING_LEVEL": "ERROR"}
    with LLMTestServer(latency_s=0.1) as server:
        kills = kill_ten_times_then_finish(
            server, lambda attempt: args(server, store.url, "--set", "instructions.prompts_per_round=3", "--set",
                                         "responses.batch_size=4", "--set", "cache.enabled=false", target="60"),
            env, seed=20261202, kill=lambda proc: proc.kill())
    assert len(kills) >= 7
    assert_nothing_asked_twice_but_in_flight(server.served_log, kills)
    assert_whole(store, "r1")
    left = [f"{p.pid} (parent {p.ppid()}): {' '.join(p.cmdline())[:200]}" for p in servers_of(home)]
    assert left == [], "a process of a killed run outlived it"
    with sqlite3.connect(home / "prefect.db") as db:
        states = dict(db.execute("select state_type, count(*) from flow_run group by state_type").fetchall())
    assert states == {"COMPLETED": 1, "CRASHED": len(kills)}  # each killed run marked by the one after it


def test_kill_9_on_s3_resumed_each_time_on_a_fresh_cache(tmp_path, prefect_server, s3_server):
    """On an S3 store, each resume on an empty cache directory, as another machine would."""
    store = Store(f"s3://{BUCKET}/kills")
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_LOGGING_LEVEL": "ERROR"}
    with LLMTestServer(latency_s=0.05) as server:
        kills = kill_ten_times_then_finish(
            server, lambda attempt: args(server, store.url, "--set", "instructions.prompts_per_round=3", "--set",
                                         "responses.batch_size=4", "--set", f"cache.dir={tmp_path}/cache{attempt}",
                                         target="40"),
            env, seed=7, kill=lambda proc: os.killpg(proc.pid, signal.SIGKILL))
    assert len(kills) >= 7
    assert_nothing_asked_twice_but_in_flight(server.served_log, kills)
    assert_whole(store, "r1")


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
