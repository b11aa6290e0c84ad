"""Request cache: a content hash of the canonical request → the successful response.

Only successes are stored, so a re-run retries what failed and repeats no call that succeeded. The key holds
where the request goes (provider, base_url, model) and everything that shapes the answer, the sampling seed
included: an answer from one server is never served for another, and a new run (a new seed) asks anew.
SQLite in WAL mode keeps it safe across threads. It is a local accelerator: a run's own answers live in its
store (`alignflow.engine.answers`), which is what a resume on another machine reads.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from alignflow.llm.structured import json_schema
from alignflow.llm.types import Request


def request_key(provider: str, base_url: str | None, model: str, request: Request) -> str:
    canonical = {
        "provider": provider,
        "base_url": base_url,
        "model": model,
        "messages": request.messages,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "schema": json_schema(request.schema) if request.schema else None,
        "sample": request.sample,
        "seed": request.seed,
    }
    blob = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class RequestCache:
    def __init__(self, directory: str | Path):
        path = Path(directory).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path / "requests.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?)", (key, json.dumps(value)))
