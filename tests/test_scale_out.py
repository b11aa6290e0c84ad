"""Scale-out, as it runs in production: the pipeline's batch tasks on the workers of a Dask LocalCluster started
on its own (another directory, its own processes: no project path, no cache shared with the driver), the store
on an S3 server, the endpoint's limit shared through a Prefect global concurrency limit. One worker is killed
mid-run; then the run is resumed by a fresh process on a fresh cluster with empty caches."""
import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
from conftest import BUCKET, ROOT, _free_port
from distributed import Client
from llm_server import LLMTestServer
from runs import args, assert_whole
from test_chaos import assert_nothing_asked_twice_but_in_flight

from alignflow.engine.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("api_keys")]

LIMIT = 8  # the Prefect global concurrency limit both workers share
CLUSTER = """
import sys, time
from distributed import LocalCluster
cluster = LocalCluster(n_workers=2, threads_per_worker=4, processes=True, scheduler_port={port},
                       host="127.0.0.1", dashboard_address=None)
print(cluster.scheduler_address, flush=True)
while True:
    time.sleep(60)
"""


class Cluster:
    """A LocalCluster in its own process, started in `cwd` with `env`, as an existing cluster would be."""

    def __init__(self, cwd, env: dict):
        port = _free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-c", CLUSTER.format(port=port)], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        assert self.proc.stdout.readline().decode().strip() == self.address
        self.client = Client(self.address, timeout=60)
        self.client.wait_for_workers(2, timeout=120)

    def kill_busiest_worker(self) -> int:
        """SIGKILL the worker running the most tasks, as the OOM killer would; its nanny starts a new one."""
        pids, processing = self.client.run(os.getpid), self.client.processing()
        busiest = max(pids, key=lambda worker: len(processing.get(worker, ())))
        os.kill(pids[busiest], signal.SIGKILL)
        return len(processing.get(busiest, ()))

    def finish(self, proc: subprocess.Popen) -> None:
        """Wait for the run; if it hangs, stop it and fail with what the cluster was doing and what it said."""
        try:
            _, err = proc.communicate(timeout=420)
        except subprocess.TimeoutExpired:
            doing = {worker: len(keys) for worker, keys in self.client.processing().items()}
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"the run hung; tasks on the workers: {doing}; it said: {err.decode()[-3000:]}")
        assert proc.returncode == 0, err.decode()[-3000:]

    def close(self) -> None:
        self.client.close()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def cluster_env(tmp_path, name: str, prefect_server: str) -> dict:
    """What a worker host has: the API keys, the AWS settings, the Prefect server; a cache of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PYTHONPATH"))}
    return {**env, "PREFECT_API_URL": prefect_server, "PREFECT_LOGGING_LEVEL": "ERROR",
            "ALIGNFLOW_CACHE_DIR": str(tmp_path / f"cache-{name}"), "DASK_LOGGING__DISTRIBUTED": "error"}


def test_a_dask_cluster_on_s3_survives_a_killed_worker_and_a_fresh_process_resumes(tmp_path, prefect_server,
                                                                                  s3_server):
    store = Store(f"s3://{BUCKET}/dask")
    (tmp_path / "elsewhere").mkdir()
    with LLMTestServer(latency_s=0.05) as server:
        shared = ["--set", "llm.limit_name=dask-endpoint", "--set", f"llm.max_concurrency={LIMIT}"]
        created = subprocess.run([sys.executable, "-m", "flows.cli", "limits", "create", "configs/quickstart.yaml",
                                  *shared], cwd=ROOT, env=cluster_env(tmp_path, "limits", prefect_server),
                                 capture_output=True, text=True)
        assert created.returncode == 0, created.stderr

        def run(cluster: Cluster, name: str) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-m", "flows.cli", *args(
                server, store.url, *shared, "--set", f"runner.dask.address={cluster.address}",
                "--set", "responses.batch_size=4", "--set", "instructions.prompts_per_round=4", target="48")],
                cwd=ROOT, env=cluster_env(tmp_path, name, prefect_server), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        cluster = Cluster(tmp_path / "elsewhere", cluster_env(tmp_path, "first", prefect_server))
        try:
            proc = run(cluster, "first-driver")
            while server.requests < 80 and proc.poll() is None:
                time.sleep(0.05)
            assert proc.poll() is None, "the run ended before a worker could be killed"
            killed_at, running = time.time(), cluster.kill_busiest_worker()
            asked_before_kill = server.requests
            cluster.finish(proc)
        finally:
            cluster.close()
        assert server.requests > asked_before_kill, "the kill came after the last request"
        print(f"killed a worker running {running} tasks after {asked_before_kill} requests")
        assert_nothing_asked_twice_but_in_flight(server.served_log, [killed_at])
        assert server.peak_in_flight <= LIMIT, server.peak_in_flight
        manifest = assert_whole(store, "r1")
        assert {e["endpoint"].rsplit(" on ", 1)[0] for e in manifest["endpoints"]} == {
            f"openai:gen-model@{server.openai_base_url}"}

        asked = server.requests
        cluster = Cluster(tmp_path / "elsewhere", cluster_env(tmp_path, "second", prefect_server))
        try:
            cluster.finish(run(cluster, "second-driver"))
        finally:
            cluster.close()
        assert server.requests == asked, "a fresh process on a fresh cluster asked again what the store has"
    assert assert_whole(store, "r1")["datasets"] == manifest["datasets"]


def _answered_costs(root, price: float) -> list[float]:
    """What each answer saved in a local store cost, at `price` dollars a token (answer parts and answer logs)."""
    rows = [pl.read_parquet(part).to_dicts() for part in root.rglob("answers/**/*.parquet")]
    rows += [[json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]
             for log in root.rglob("answers/**/*.jsonl")]
    return [(r["input_tokens"] + r["output_tokens"]) * price for found in rows for r in found]


def test_a_budget_holds_for_the_run_across_two_dask_workers(tmp_path, prefect_server):
    """A budget some 20 requests spend, on a 2-worker cluster of its own, four batches at once on each: the loopback
    server is asked for no more than the budget and one request's cost, though each worker alone could have spent
    the whole budget, and the run stops with exit code 4 naming it."""
    price, budget = 0.001, 20.0  # dollars a token: one request costs about $1
    prices, store = tmp_path / "prices.yaml", tmp_path / "store"
    prices.write_text(f"openai:\n  gen-model: {{input: {price * 1e6:.0f}, output: {price * 1e6:.0f}}}\n")
    (tmp_path / "elsewhere").mkdir()
    with LLMTestServer(latency_s=0.05) as server:
        cluster = Cluster(tmp_path / "elsewhere", cluster_env(tmp_path, "budget", prefect_server))
        try:
            proc = subprocess.run([sys.executable, "-m", "flows.cli", *args(
                server, str(store), "--set", f"runner.dask.address={cluster.address}", "--set", f"prices={prices}",
                "--set", f"llm.budget_usd={budget}", "--set", "cache.enabled=false", "--set", "responses.batch_size=2",
                "--set", "instructions.prompts_per_round=4", target="48")],
                cwd=ROOT, env=cluster_env(tmp_path, "driver", prefect_server), capture_output=True, timeout=420)
        finally:
            cluster.close()
        spent = (server.tokens_in + server.tokens_out) * price
    costs = _answered_costs(store, price)
    print(f"{server.requests} requests, ${spent:.2f} spent of ${budget:.2f}; the dearest ${max(costs):.2f}")
    err = proc.stderr.decode()
    assert proc.returncode == 4, err[-3000:]
    [line] = [line for line in err.splitlines() if line.startswith("alignflow:")]
    assert line.startswith(f"alignflow: run r1 stopped: llm.budget_usd ${budget:.2f} reached")
    assert spent <= budget + max(costs)
    assert spent > 0.75 * budget  # what is left: each worker's last allowance, and the last request's most
    workers = Store(str(store)).read_json("r1/manifest.json")["endpoints"]
    assert len(workers) == 2 and all(w["requests"] for w in workers)  # both spent from the one budget
