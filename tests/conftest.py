import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.chdir(ROOT)  # configs name paths relative to the project


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = ROOT.parent / "shared" / "data"
    assert path.is_dir(), f"{path} is missing: tests read real data from ../shared/data"
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own request cache, so no test answers another's requests."""
    monkeypatch.setenv("ALIGNFLOW_CACHE_DIR", str(tmp_path / "cache"))
