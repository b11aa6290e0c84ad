import logging
import os
import socket
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

BUCKET = "alignflow-test"
ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.chdir(ROOT)  # configs name paths relative to the project
# Prefect's console log handler keeps the stream it was made with; under pytest that is one test's capture, closed
# by the time a later record (e.g. the temporary server stopping) is written, and logging would print a
# "--- Logging error ---" traceback into whichever test runs then. A real process never closes its stderr.
logging.raiseExceptions = False


@pytest.fixture(scope="session")
def test_data() -> Path:
    """Small copies of public data (tests/data/README.md): the suite runs from a plain clone."""
    return ROOT / "tests" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own request cache, so no test answers another's requests."""
    monkeypatch.setenv("ALIGNFLOW_CACHE_DIR", str(tmp_path / "cache"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on loopback, with the AWS env pointing at it for the module's lifetime."""
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per S3 request in a failure's report
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
            mp.delenv(name, raising=False)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        try:
            yield
        finally:
            server.stop()


@pytest.fixture(scope="session")
def prefect_server() -> str:
    """A real Prefect server (Prefect's test harness), one for the whole session: it takes ~15 s to start."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture
def api_keys(monkeypatch):
    """Keys for the loopback server (which checks none unless it is told to)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-secret")
