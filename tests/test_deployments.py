"""alignflow on a Prefect server as its users run it: `alignflow deploy`, a process worker, runs started through the
REST API with a partial config, a review answered through the API, the run found by its caller, Retry resuming."""
import contextlib
import http.server
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
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
           "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_LOOP_SECONDS": "1",
           "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"}
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


class Hook(http.server.BaseHTTPRequestHandler):
    """A webhook on loopback: what the quarantine automation's notification block posts to."""

    received: list[dict] = []

    def do_POST(self):
        Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def webhook(prefect_api):
    """A notification block on the server, posting to a loopback webhook; yields what it received."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        CustomWebhookNotificationBlock(name="alerts", url=f"http://127.0.0.1:{server.server_port}/hook",
                                       json_data={"subject": "{{subject}}", "text": "{{body}}"}).save("alerts")
    yield Hook.received
    server.shutdown()


@pytest.fixture(scope="module")
def deployed(prefect_api, project, webhook, tmp_path_factory):
    """`alignflow deploy`, then a process worker started the way deploy says, in the project directory."""
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    out = subprocess.run([BIN / "alignflow", "deploy", "--project-path", str(project), "--notify",
                          "custom-webhook/alerts"], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"cd {project} && PREFECT_API_URL={prefect_api} prefect worker start --pool alignflow" in out.stdout
    worker_env = {**env, "OPENAI_API_KEY": "sk-worker-secret", "PREFECT_WORKER_QUERY_SECONDS": "1",
                  "ALIGNFLOW_CACHE_DIR": str(tmp_path_factory.mktemp("worker-cache")),
                  "PREFECT_WORKER_PREFETCH_SECONDS": "1", "PYTHONUNBUFFERED": "1"}  # its log file as it prints
    log = open(tmp_path_factory.mktemp("worker") / "worker.log", "w")
    worker = subprocess.Popen([BIN / "prefect", "worker", "start", "--pool", "alignflow"], cwd=project, env=worker_env,
                              stdout=log, stderr=subprocess.STDOUT)
    api = API(base_url=prefect_api, timeout=30)
    api.worker_log = Path(log.name)  # what the worker prints: Prefect's lines for each flow run it runs
    try:
        yield api
    finally:
        worker.terminate()
        worker.wait(30)


SCREENSHOTS = Path(os.environ.get("ALIGNFLOW_SCREENSHOTS", "/tmp/alignflow-screenshots"))
CHROMIUM = "/usr/bin/chromium"  # Debian's package: `apt-get install chromium` (make test does it as root)


@contextlib.contextmanager
def ui(api: API):
    """A page of the server's UI in headless Chromium."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}: install Debian's chromium package to run the UI tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(60_000)
        page.base = str(api.base_url).removesuffix("/api/").removesuffix("/api")
        try:
            yield page
        finally:
            browser.close()


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / name)


def resume_form(page, flow_run_id: str):
    """The paused run's page, with its Resume form open."""
    page.goto(f"{page.base}/runs/flow-run/{flow_run_id}", wait_until="networkidle")
    page.get_by_role("button", name="Resume").first.click()
    dialog = page.get_by_role("dialog")
    dialog.locator("textarea").first.wait_for()  # the run input's form, which the UI draws once it has loaded it
    return dialog


def submit(dialog) -> None:
    """Submit the form, as a person would again if the server was busy (the form stays open on an error)."""
    for _ in range(3):
        dialog.get_by_role("button", name="Submit").click()
        try:
            dialog.wait_for(state="hidden", timeout=20_000)
            return
        except Exception:  # playwright's TimeoutError: still open
            continue
    pytest.fail("the resume form did not close after three submits")


def choose(page, dialog, option: str, nth: int = 0) -> None:
    """Pick an option of the form's `nth` select (the first: the stage's decision; then one per row): it opens from
    the keyboard."""
    dialog.locator("button.p-select-button__control").nth(nth).focus()
    page.keyboard.press("ArrowDown")
    page.locator(".p-select-options").get_by_role("option", name=option, exact=True).click()


def fill_list(page, dialog, items: list[str]) -> None:
    """Fill the form's first list field, an item at a time (each is a text box, before the form's later fields)."""
    for index, item in enumerate(items):
        dialog.get_by_role("button", name="Add item").first.click()
        dialog.locator("textarea").nth(index).fill(item)


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
    return max(found, key=lambda a: a["updated"])  # a resumed run makes its artifacts again: the latest


def start(api: API, llm: LLMTestServer, store: Path, overrides: list[str] | None = None, **config) -> str:
    """A run of pipeline/on-demand through the REST API, sending only what it changes; its flow run id."""
    partial = {"store": str(store), "llm": {"provider": "openai", "base_url": llm.openai_base_url, "model": "m"},
               **config}
    run = api.post(f"/deployments/{deployment_id(api, 'pipeline/on-demand')}/create_flow_run",
                   json={"parameters": {"config": partial, **({"overrides": overrides} if overrides else {})}})
    assert run.status_code == 201, run.text
    return run.json()["id"]


def persisted_result(api: API, flow_run_id: str):
    """The flow run's result as a Prefect client reads it: the state's data names where the worker persisted it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: str(api.base_url).rstrip("/")}):
        with get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run_id).state.result()


def run_id_of(flow_run: dict) -> str:
    return next(t.removeprefix("run:") for t in flow_run["tags"] if t.startswith("run:"))


def test_deployed_run_with_a_partial_config_waits_for_review_resumes_through_the_api_and_is_found(deployed, project,
                                                                                                    tmp_path):
    api = deployed
    store = tmp_path / "store"
    with LLMTestServer() as llm:
        flow_run_id = start(api, llm, store, ["llm.max_concurrency=8"], instructions={"target": 20},
                            review={"stages": ["pairs"], "sample": 5})

        paused = wait_for(api, flow_run_id, "PAUSED")
        run_id = run_id_of(paused)
        assert paused["name"] == f"run-{run_id}" and "alignflow" in paused["tags"]
        assert not (store / run_id / "datasets").exists()  # nothing released before the review
        sample = artifact(api, flow_run_id, "review-pairs")
        rows = json.loads(sample["data"])
        assert len(rows) == 5 and {"id", "prompt", "chosen", "rejected", "chosen_rationale"} <= set(rows[0])
        assert rows[0]["chosen_rationale"].startswith("helpfulness: ")  # the judge's reasons, per aspect
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
        assert persisted_result(api, flow_run_id) == manifest  # the flow run's result is the manifest
        assert f"`{store / run_id}/datasets/dpo.parquet`" in artifact(api, flow_run_id, "run-summary")["data"]
        assert artifact(api, flow_run_id, "run-progress")["data"] == 100
        assert set(manifest["stages"]["judgments"]["by_model"]) == {"openai:m"}
        judged = pl.read_parquet(store / run_id / "judgments/kept/*.parquet")
        assert judged["honesty"].is_not_null().all() and judged["truthfulness"].is_null().all()  # quickstart's 2

        dpo = pl.read_parquet(store / run_id / "datasets/dpo.parquet")
        assert not set(rejected) & set(dpo["pair_id"]) and len(set(sample_ids := [r["id"] for r in rows]) -
                                                                 set(rejected) - set(dpo["pair_id"])) == 0
        decision = json.loads((store / run_id / "review.json").read_text())["stages"]["pairs"]["decision"]
        assert decision | {"at": None, "per_row": None} == {"action": "reject_rows", "rows": rejected, "by": "prefect",
                                                            "note": "two answers are off topic", "at": None,
                                                            "per_row": None}
        assert {d["decision"] for i, d in decision["per_row"].items() if i not in rejected} == {"keep"}  # the default
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
        flow_run_id = start(api, llm, store, review={"stages": ["pairs"], "timeout_h": 0.001,  # 3.6 s
                                                     "on_timeout": "approve"})
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


def test_a_quarantined_batch_fires_the_shipped_automation_and_is_released_from_the_ui_form(deployed, webhook,
                                                                                             tmp_path):
    from alignflow.engine.store import Store
    from alignflow.review.quarantine import undecided

    api = deployed
    suites = tmp_path / "suites"
    shutil.copytree(ROOT / "expectations", suites)
    suite = json.loads((suites / "responses.json").read_text())
    for expectation in suite["expectations"]:
        if expectation["type"] == "expect_column_value_lengths_to_be_between":
            expectation["kwargs"]["max_value"] = 40  # the test server's answers are longer: every batch fails
    (suites / "responses.json").write_text(json.dumps(suite))
    store = tmp_path / "store"
    pipeline = deployment_id(api, "pipeline/on-demand")
    with LLMTestServer() as llm:
        flow_run_id = start(api, llm, store, gate={"suites": str(suites)})
        paused = wait_for(api, flow_run_id, "PAUSED")
        run_id = run_id_of(paused)
        held = [e.name for e in undecided(Store(str(store)), run_id)]
        assert held and all(name.startswith("responses/") for name in held)
        form = api.get(f"/flow_runs/{flow_run_id}/input/suspended-quarantine-0-0-description").json()
        assert f"**{held[0]}**" in form and "expect_column_value_lengths_to_be_between" in form

        # the shipped automation fired on the event: a person is told, and the deployment that made it is paused
        deadline = time.time() + 60
        while not api.get(f"/deployments/{pipeline}").json()["paused"] or not webhook:
            assert time.time() < deadline, f"the quarantine automation did not act: {webhook}"
            time.sleep(1)
        told = webhook[0]
        assert told["subject"] == f"alignflow: a batch of run {run_id} is in quarantine"
        assert f"{held[0]} of run {run_id}" in told["text"] and "expect_column_value_lengths" in told["text"]

        # a person releases the batches from the paused run's form in the UI
        with ui(api) as page:
            dialog = resume_form(page, flow_run_id)
            assert f"{len(held)} batch" in dialog.inner_text() and held[0] in dialog.inner_text()
            fill_list(page, dialog, held)
            dialog.locator("textarea").last.fill("answers are long, not wrong")
            screenshot(page, "quarantine-pause.png")
            submit(dialog)
        done = wait_for(api, flow_run_id, "COMPLETED")
        api.post(f"/deployments/{pipeline}/resume_deployment").raise_for_status()
    assert done["state"]["name"] == "Completed" and "quarantine" not in done["tags"]
    manifest = json.loads((store / run_id / "manifest.json").read_text())
    assert manifest["stages"]["responses"]["quarantine"] == 0 and manifest["datasets"]["dpo"] > 0
    decisions = json.loads((store / run_id / "quarantine.json").read_text())["decisions"]
    assert sorted(d["batch"] for d in decisions) == sorted(held)
    assert {d["action"] for d in decisions} == {"release"} and decisions[0]["reason"] == "answers are long, not wrong"


def test_the_run_form_shows_titles_descriptions_and_the_real_defaults(deployed):
    api = deployed
    with ui(api) as page:
        page.goto(f"{page.base}/deployments/deployment/{deployment_id(api, 'pipeline/on-demand')}/run",
                  wait_until="networkidle")
        form = page.locator("body")
        form.get_by_text("Requests per minute").first.wait_for()
        page.wait_for_function("() => [...document.querySelectorAll('input')].some(f => f.value === '160')")  # drawn
        text = form.inner_text()
        values = page.eval_on_selector_all("input, textarea", "fields => fields.map(f => f.value)")
        screenshot(page, "run-form.png")
    for seen in ("LLM", "Requests per minute", "Timeout (seconds)", "API key variable", "Base URL",
                 "where runs go: a local path", "requests per minute to the endpoint",
                 "the run to make or resume: the same run id resumes"):
        assert seen in text, seen
    for raw in ("Llm (", "Timeout S (", "Rpm (", "Api Key Env"):
        assert raw not in text, raw
    # the deployment's config is configs/quickstart.yaml's values, and list defaults show their items
    assert {"./runs", "data/seed_tasks.jsonl", "160", "go to"} <= set(values) and "concretize" in text


def test_a_review_answered_from_the_ui_form(deployed, tmp_path):
    api = deployed
    store = tmp_path / "store"
    with LLMTestServer() as llm:
        flow_run_id = start(api, llm, store, instructions={"target": 20}, review={"stages": ["pairs"], "sample": 5})
        paused = wait_for(api, flow_run_id, "PAUSED")
        run_id = run_id_of(paused)
        sample = json.loads((store / run_id / "review.json").read_text())["stages"]["pairs"]["sample"]
        rejected = sample[1:3]
        with ui(api) as page:
            dialog = resume_form(page, flow_run_id)
            assert all(row_id in dialog.inner_text() for row_id in sample)  # the sampled rows are in the form
            text = dialog.inner_text()
            assert "**" not in text and "Chosen (the judge:" in text and "Rejected (the judge:" in text
            choose(page, dialog, "reject_rows")
            fill_list(page, dialog, rejected)
            choose(page, dialog, "swap", nth=1)  # row 1: the rejected answer is the better one
            dialog.locator("textarea").nth(len(rejected)).fill("two answers miss the question")
            dialog.get_by_text("Row 1 (").first.scroll_into_view_if_needed()
            screenshot(page, "review-pause.png")
            submit(dialog)
            wait_for(api, flow_run_id, "COMPLETED")
            page.goto(f"{page.base}/artifacts/artifact/{artifact(api, flow_run_id, 'run-summary')['id']}",
                      wait_until="networkidle")
            page.get_by_text(f"alignflow run {run_id}").first.wait_for()
            screenshot(page, "run-summary.png")
    decision = json.loads((store / run_id / "review.json").read_text())["stages"]["pairs"]["decision"]
    assert (decision["action"], decision["rows"], decision["by"], decision["note"]) == (
        "reject_rows", rejected, "prefect", "two answers miss the question")
    assert decision["per_row"][sample[0]] == {"decision": "swap"}
    dpo = pl.read_parquet(store / run_id / "datasets/dpo.parquet")
    assert not set(rejected) & set(dpo["pair_id"])
    assert dpo.filter(pl.col("pair_id") == sample[0])["margin"][0] < 0  # flipped


def test_instructions_are_curated_in_the_ui_form_before_any_response_is_asked_for(deployed, tmp_path):
    api = deployed
    store = tmp_path / "store"
    with LLMTestServer() as llm:
        flow_run_id = start(api, llm, store, instructions={"target": 20}, responses={"llm": {"model": "resp"}},
                            review={"stages": ["instructions", "pairs"], "sample": 4})
        paused = wait_for(api, flow_run_id, "PAUSED")
        run_id = run_id_of(paused)
        assert not llm.arrivals_by_model.get("resp")  # suspended before any response request; no worker held
        assert not list((store / run_id).glob("responses/*/*.parquet"))
        sample = json.loads((store / run_id / "review.json").read_text())["stages"]["instructions"]["sample"]
        order = pl.read_parquet(store / run_id / "instructions/kept/*.parquet")["id"].to_list()
        first = sorted(range(len(sample)), key=lambda n: order.index(sample[n]))  # responses go in kept order
        dropped, edited = first[0], first[1]
        with ui(api) as page:
            dialog = resume_form(page, flow_run_id)
            assert all(row_id in dialog.inner_text() for row_id in sample)
            dialog.get_by_text("Row 1 (").first.scroll_into_view_if_needed()
            screenshot(page, "review-instructions.png")
            choose(page, dialog, "drop", nth=1 + dropped)
            choose(page, dialog, "edit", nth=1 + edited)
            edit_box = dialog.locator("textarea").nth(1 + edited)  # the note's, then each row's edited text
            edit_box.fill("Explain how tides work, in three sentences.")
            submit(dialog)
        wait_for(api, flow_run_id, "PAUSED", after=paused)  # the pairs' review, answered through the API per row
        pairs = json.loads((store / run_id / "review.json").read_text())["stages"]["pairs"]["sample"]
        before = pl.read_parquet(store / run_id / "pairs/kept/*.parquet").filter(pl.col("id") == pairs[0])
        api.post(f"/flow_runs/{flow_run_id}/resume", json={"run_input": {
            "decision": "approve", "row_1": "swap", "row_2": "drop", "note": "one flipped, one off"}}).raise_for_status()
        wait_for(api, flow_run_id, "COMPLETED")
    dpo = pl.read_parquet(store / run_id / "datasets/dpo.parquet")
    assert pairs[1] not in set(dpo["pair_id"])
    assert dpo.filter(pl.col("pair_id") == pairs[0])["chosen"].to_list() == before["rejected"].to_list()
    manifest = json.loads((store / run_id / "manifest.json").read_text())
    assert manifest["review"]["pairs"]["rows_swap"] == 1 and "agreement" in manifest["review"]["pairs"]
    decision = json.loads((store / run_id / "review.json").read_text())["stages"]["instructions"]["decision"]
    assert decision["per_row"][sample[dropped]] == {"decision": "drop"}
    assert decision["per_row"][sample[edited]]["text"] == "Explain how tides work, in three sentences."
    responses = pl.read_parquet(store / run_id / "responses/kept/*.parquet")
    assert sample[dropped] not in set(responses["instruction_id"])
    assert "Explain how tides work, in three sentences." in set(responses["instruction"])
    gone = pl.read_parquet(store / run_id / "instructions/rejected/*.parquet").filter(pl.col("id") == sample[dropped])
    assert gone["reason"].to_list() == ["dropped by reviewer"]


def settled(api: API, flow_run_id: str, timeout: float = 300) -> dict:
    """The flow run once it is in a final state, whichever."""
    deadline = time.time() + timeout
    while (run := api.get(f"/flow_runs/{flow_run_id}").raise_for_status().json())["state"]["type"] not in (
            "COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        assert time.time() < deadline, f"flow run {flow_run_id} is still {run['state']['name']}"
        time.sleep(1)
    return run


def exports_of(api: API, run_dir: str) -> list[dict]:
    export = deployment_id(api, "export/on-demand")
    runs = api.post("/flow_runs/filter", json={"deployments": {"id": {"any_": [export]}}})
    return [r for r in runs.raise_for_status().json() if r["parameters"].get("run_dir") == run_dir]


def test_a_run_that_made_no_rows_says_so_and_is_not_exported(deployed, project, tmp_path):
    """Every batch quarantined, nobody asked (gate.ask off): the run is Completed but named and tagged empty, its
    messages name the run by where it is (not the relative store of the config), and the export automation, which
    fires for a run with datasets, does not fire; the export flow started by hand on it ends with one line."""
    api = deployed
    suites = tmp_path / "suites"
    shutil.copytree(ROOT / "expectations", suites)
    suite = json.loads((suites / "responses.json").read_text())
    for expectation in suite["expectations"]:
        if expectation["type"] == "expect_column_value_lengths_to_be_between":
            expectation["kwargs"]["max_value"] = 40  # the test server's answers are longer: every batch fails
    (suites / "responses.json").write_text(json.dumps(suite))
    pipeline = deployment_id(api, "pipeline/on-demand")
    with LLMTestServer() as llm:
        flow_run_id = start(api, llm, Path("runs-empty"), gate={"suites": str(suites), "ask": False})
        done = settled(api, flow_run_id)
    run_id = run_id_of(done)
    run_dir = f"{project}/runs-empty/{run_id}"  # the worker's store, relative to its project directory
    asked = json.loads(Path(run_dir, "manifest.json").read_text())["stages"]["responses"]["inputs"]
    assert (done["state"]["type"], done["state"]["name"], done["state"]["message"]) == (
        "COMPLETED", "Empty: no dpo rows", f"run {run_id} made no dpo rows: the responses stage kept none of its "
                                           f"{asked} inputs ({asked} quarantined) (see `alignflow quarantine list "
                                           f"{run_dir}`)")
    assert {"alignflow", f"run:{run_id}", "empty", "quarantine"} <= set(done["tags"])
    assert f"- run directory: `{run_dir}`" in artifact(api, flow_run_id, "run-summary")["data"]

    # the completed event reached the server, saying the run is empty; the export automation let it pass
    deadline = time.time() + 60
    while not (events := api.post("/events/filter", json={"filter": {
            "event": {"name": ["alignflow.run.completed"]}, "resource": {"id": [f"alignflow.run.{run_id}"]}}}
            ).raise_for_status().json()["events"]):
        assert time.time() < deadline, "no alignflow.run.completed event"
        time.sleep(1)
    assert events[0]["resource"]["alignflow.empty"] == "true" and events[0]["payload"]["run_url"] == run_dir
    time.sleep(10)  # an automation acts within a second or two of its event
    assert exports_of(api, run_dir) == []

    # the shipped quarantine automation paused the deployment: resume it for the tests after this one
    while not api.get(f"/deployments/{pipeline}").json()["paused"]:
        assert time.time() < deadline + 60, "the quarantine automation did not pause the deployment"
        time.sleep(1)
    api.post(f"/deployments/{pipeline}/resume_deployment").raise_for_status()

    export = api.post(f"/deployments/{deployment_id(api, 'export/on-demand')}/create_flow_run",
                      json={"parameters": {"run_dir": run_dir}})
    failed = settled(api, export.raise_for_status().json()["id"])
    assert (failed["state"]["type"], failed["state"]["message"]) == (
        "FAILED", f"alignflow: jsonl export of {run_dir}: nothing to export: run {run_id} has no kept pairs")


def test_a_misspelled_override_fails_the_run_at_its_first_step_in_one_line(deployed, tmp_path):
    """The API checks parameters against the flow's schema (409 naming what is wrong, a parameter the flow does not
    have included); `overrides` are strings it takes as they are, so a misspelled key fails the run, in one line."""
    api = deployed
    pipeline = deployment_id(api, "pipeline/on-demand")
    for parameters, said in (({"config": {"llm": {"rpm": "many"}}}, "config.llm.rpm"),
                             ({"config": {"llm": {"modle": "m"}}}, "'modle' was unexpected"),
                             ({"overides": ["llm.rpm=60"]}, "'overides' was unexpected")):
        refused = api.post(f"/deployments/{pipeline}/create_flow_run", json={"parameters": parameters})
        assert refused.status_code == 409 and said in refused.json()["detail"], refused.text
    assert api.post(f"/deployments/{pipeline}/create_flow_run", json={"parameters": []}).status_code == 422

    logged = api.worker_log.stat().st_size
    store = tmp_path / "store"
    with LLMTestServer() as llm:
        flow_run_id = start(api, llm, store, ["instructions.targt=40"])
        failed = settled(api, flow_run_id)
        assert llm.requests == 0
    assert (failed["state"]["type"], failed["state"]["message"]) == (
        "FAILED", "alignflow: overrides parameter: instructions.targt: unknown key (did you mean instructions.target?)")
    assert not store.exists()  # refused before anything was written
    # no traceback where a person looks: the flow run's log in the UI, and the worker's terminal. Under the whole
    # suite's load the run's last lines may reach neither within the wait (they are shipped by background threads
    # of a process that exits at once): what has arrived is checked.
    deadline = time.time() + 30
    while True:
        records = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}}
                           ).raise_for_status().json()
        log = api.worker_log.read_bytes()[logged:].decode()
        if "Finished in state Failed" in log + "".join(r["message"] for r in records) or time.time() > deadline:
            break
        time.sleep(1)
    time.sleep(2)  # the worker's own lines after the flow run's
    log = api.worker_log.read_bytes()[logged:].decode()
    assert not [r for r in records if "Traceback" in r["message"] or r["level"] >= logging.ERROR], records
    assert "Traceback" not in log and "ERROR" not in log, log
