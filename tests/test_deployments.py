"""alignflow on a Prefect server as its users run it: `alignflow deploy`, a process worker, runs started through the
REST API with a partial config, a review answered through the API, the run found by its caller, Retry resuming."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
import pytest
from conftest import _free_port
from llm_server import LLMTestServer

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


class API(httpx.Client):
    """A REST caller as Prefect's own client is one: a 503 (the SQLite server's database was busy) is tried again."""

    def request(self, *args, **kwargs) -> httpx.Response:
        for attempt in range(10):
            response = super().request(*args, **kwargs)
            if response.status_code != 503:
                return response
            time.sleep(0.5 * (attempt + 1))
        return response


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """`prefect server start` in its own process, as users run it."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_LOOP_SECONDS": "1"}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen([BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("prefect server did not start")
        yield url
    finally:
        server.terminate()
        server.wait(30)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The project as workers on another host see it: a copy at its own path, not this checkout."""
    path = tmp_path_factory.mktemp("project") / "alignflow"
    for part in ("alignflow", "flows", "tasks", "configs", "data", "deployments"):
        shutil.copytree(ROOT / part, path / part, ignore=shutil.ignore_patterns("__pycache__"))
    return path


@pytest.fixture(scope="module")
def deployed(prefect_api, project, tmp_path_factory):
    """`alignflow deploy`, then a process worker started the way deploy says, in the project directory."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    out = subprocess.run([BIN / "alignflow", "deploy", "--project-path", str(project)], cwd=project, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"cd {project} && PREFECT_API_URL={prefect_api} prefect worker start --pool alignflow" in out.stdout
    worker_env = {**env, "OPENAI_API_KEY": "sk-worker-secret", "PREFECT_WORKER_QUERY_SECONDS": "1",
                  "ALIGNFLOW_CACHE_DIR": str(tmp_path_factory.mktemp("worker-cache")),
                  "PREFECT_WORKER_PREFETCH_SECONDS": "1"}
    log = open(tmp_path_factory.mktemp("worker") / "worker.log", "w")
    worker = subprocess.Popen([BIN / "prefect", "worker", "start", "--pool", "alignflow"], cwd=project, env=worker_env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        yield API(base_url=prefect_api, timeout=30)
    finally:
        worker.terminate()
        worker.wait(30)


def deployment_id(api: API, name: str) -> str:
    return api.get(f"/deployments/name/{name}").raise_for_status().json()["id"]


def wait_for(api: API, flow_run_id: str, *types: str, timeout: float = 300, after: dict | None = None) -> dict:
    """The flow run once it is in one of `types` (in a state other than `after`'s)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = api.get(f"/flow_runs/{flow_run_id}").raise_for_status().json()
        if run["state"]["type"] in types and (after is None or run["state"]["id"] != after["state"]["id"]):
            return run
        assert run["state"]["type"] not in ("FAILED", "CRASHED", "CANCELLED"), run["state"]
        time.sleep(1)
    pytest.fail(f"flow run {flow_run_id} is still {run['state']['name']}, not {types}")


def artifact(api: API, flow_run_id: str, key: str) -> dict:
    found = api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]},
                                                               "key": {"any_": [key]}}}).raise_for_status().json()
    assert found, f"no {key} artifact on flow run {flow_run_id}"
    return found[0]


def test_deployed_run_with_a_partial_config_waits_for_review_resumes_through_the_api_and_is_found(deployed, project,
                                                                                                    tmp_path):
    api = deployed
    store = tmp_path / "store"
    with LLMTestServer() as llm:
        partial = {"store": str(store), "llm": {"provider": "openai", "base_url": llm.openai_base_url, "model": "m"},
                   "instructions": {"target": 20}, "review": {"stages": ["pairs"], "sample": 5}}
        run = api.post(f"/deployments/{deployment_id(api, 'pipeline/on-demand')}/create_flow_run",
                       json={"parameters": {"config": partial, "overrides": ["llm.max_concurrency=8"]}})
        flow_run_id = run.raise_for_status().json()["id"]

        paused = wait_for(api, flow_run_id, "PAUSED")
        run_id = next(t.removeprefix("run:") for t in paused["tags"] if t.startswith("run:"))
        assert paused["name"] == f"run-{run_id}" and "alignflow" in paused["tags"]
        assert not (store / run_id / "datasets").exists()  # nothing released before the review
        sample = artifact(api, flow_run_id, "review-pairs")
        rows = json.loads(sample["data"])
        assert len(rows) == 5 and {"id", "prompt", "chosen", "rejected"} <= set(rows[0])
        # the rest of the deployment's config (configs/quickstart.yaml) is kept: the judge asks two aspects
        assert json.loads((store / run_id / "review.json").read_text())["stages"]["pairs"]["sample"] == \
            sorted(r["id"] for r in rows)
        rejected = [rows[0]["id"], rows[3]["id"]]
        requests = llm.requests

        # an answer that cannot be recorded is asked again, saying why
        api.post(f"/flow_runs/{flow_run_id}/resume", json={"run_input": {"decision": "reject_rows", "rows": ["nope"]}})
        wait_for(api, flow_run_id, "PAUSED", after=paused)
        assert llm.requests == requests
        form = api.get(f"/flow_runs/{flow_run_id}/input/suspended-review-pairs-1-description").json()
        assert "The last answer was not recorded: no pairs row with id nope" in form
        assert "decision" not in json.loads((store / run_id / "review.json").read_text())["stages"]["pairs"]

        resumed = api.post(f"/flow_runs/{flow_run_id}/resume", json={"run_input": {
            "decision": "reject_rows", "rows": rejected, "note": "two answers are off topic"}})
        assert resumed.raise_for_status().json()["status"] == "ACCEPT"
        done = wait_for(api, flow_run_id, "COMPLETED")
        assert done["state"]["name"] == "Completed"
        assert llm.requests == requests  # resumed from the store's checkpoints: nothing asked again

        # the caller finds the run: its tag, its summary and manifest artifacts, the manifest they point to
        assert f"run:{run_id}" in done["tags"] and done["name"] == f"run-{run_id}"
        link = artifact(api, flow_run_id, "run-manifest")
        manifest = json.loads(Path(re.search(r"\]\((.+)\)$", link["data"])[1]).read_text())
        assert manifest["run_id"] == run_id and manifest["datasets"]["dpo"] > 0
        assert f"`{store / run_id}/datasets/dpo.parquet`" in artifact(api, flow_run_id, "run-summary")["data"]
        assert set(manifest["stages"]["judgments"]["by_model"]) == {"openai:m"}
        judged = pl.read_parquet(store / run_id / "judgments/kept/*.parquet")
        assert judged["honesty"].is_not_null().all() and judged["truthfulness"].is_null().all()  # quickstart's 2

        dpo = pl.read_parquet(store / run_id / "datasets/dpo.parquet")
        assert not set(rejected) & set(dpo["pair_id"]) and len(set(sample_ids := [r["id"] for r in rows]) -
                                                                 set(rejected) - set(dpo["pair_id"])) == 0
        decision = json.loads((store / run_id / "review.json").read_text())["stages"]["pairs"]["decision"]
        assert decision | {"at": None} == {"action": "reject_rows", "rows": rejected, "by": "prefect",
                                           "note": "two answers are off topic", "at": None}
        assert manifest["review"]["pairs"]["rows_rejected"] == 2 and sample_ids

        # the shipped automation exports the new datasets through the export deployment
        export = deployment_id(api, "export/on-demand")
        deadline = time.time() + 120
        while not (exports := api.post("/flow_runs/filter", json={"deployments": {"id": {"any_": [export]}}}).json()):
            assert time.time() < deadline, "the export automation never ran"
            time.sleep(1)
        wait_for(api, exports[0]["id"], "COMPLETED")
        exported = pl.read_ndjson(project / "exports" / f"{run_id}.jsonl")
        assert exported.height == dpo.height and not set(rejected) & set(exported["pair_id"])

        # Retry (the UI's button: the same flow run scheduled again) resumes the same run id, asking nothing again
        awaiting_retry = {"type": "SCHEDULED", "name": "AwaitingRetry"}
        retry = api.post(f"/flow_runs/{flow_run_id}/set_state", json={"state": awaiting_retry, "force": True})
        retry.raise_for_status()
        wait_for(api, flow_run_id, "COMPLETED", after=done)
        assert llm.requests == requests
        assert sorted(p.name for p in store.iterdir()) == [run_id]


def test_a_review_nobody_answers_takes_on_timeout_when_the_failed_run_is_retried(deployed, tmp_path):
    api = deployed
    store = tmp_path / "store"
    with LLMTestServer() as llm:
        partial = {"store": str(store), "llm": {"provider": "openai", "base_url": llm.openai_base_url, "model": "m"},
                   "review": {"stages": ["pairs"], "timeout_h": 0.001, "on_timeout": "approve"}}  # 3.6 s
        run = api.post(f"/deployments/{deployment_id(api, 'pipeline/on-demand')}/create_flow_run",
                       json={"parameters": {"config": partial}})
        assert run.status_code == 201, run.text
        flow_run_id = run.json()["id"]
        wait_for(api, flow_run_id, "PAUSED")
        deadline = time.time() + 60
        while (state := api.get(f"/flow_runs/{flow_run_id}").json()["state"])["type"] != "FAILED":
            assert time.time() < deadline, f"the pause never expired: {state}"
            time.sleep(1)
        assert state["message"] == "The flow was paused and never resumed."
        api.post(f"/flow_runs/{flow_run_id}/set_state",
                 json={"state": {"type": "SCHEDULED", "name": "AwaitingRetry"}, "force": True}).raise_for_status()
        wait_for(api, flow_run_id, "COMPLETED")
    run_id = next(p.name for p in store.iterdir())
    decision = json.loads((store / run_id / "review.json").read_text())["stages"]["pairs"]["decision"]
    assert decision["action"] == "approve" and decision["by"] == "timeout"
    assert pl.read_parquet(store / run_id / "datasets/dpo.parquet").height > 0
