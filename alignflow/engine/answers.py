"""A batch's answers, saved in the store as they arrive: what a resume on any machine reads instead of asking again.

Successful answers are buffered and written as small Parquet parts under the batch's directory, every
`FLUSH_S` seconds or `FLUSH_N` answers, whichever comes first, by a background thread: a kill loses only the
requests in flight and the answers of the last second. Parts are only ever added (each has a unique name), so
two attempts at one batch never overwrite each other; `compact` folds them into one when the batch is done.
"""
from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import polars as pl

from alignflow.engine.store import Store

FLUSH_S = 1.0
FLUSH_N = 200
SCHEMA = {"key": pl.String, "text": pl.String, "finish_reason": pl.String, "input_tokens": pl.Int64,
          "output_tokens": pl.Int64, "latency_s": pl.Float64}


class AnswerLog:
    """Known answers by request key (`get`), and new ones saved as they come (`put`). Use as a context manager."""

    def __init__(self, store: Store, prefix: str):
        self.store = store
        self.prefix = prefix
        self._parts = [k for k in store.list_dir(prefix) if k.endswith(".parquet")]
        known = pl.concat([store.read_parquet(k) for k in self._parts]) if self._parts else pl.DataFrame(schema=SCHEMA)
        self._known: dict[str, dict[str, Any]] = {row["key"]: row for row in known.iter_rows(named=True)}
        self.loaded = len(self._known)
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._flush_periodically, name="alignflow-answers", daemon=True)

    def __enter__(self) -> "AnswerLog":
        self._writer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._wake.set()
        self._writer.join()
        self._flush()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._known.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            if key in self._known:
                return
            row = {"key": key, **{name: value.get(name) for name in SCHEMA if name != "key"}}
            self._known[key] = row
            self._buffer.append(row)
            full = len(self._buffer) >= FLUSH_N
        if full:
            self._wake.set()

    def _flush_periodically(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            rows, self._buffer = self._buffer, []
        if rows:
            key = f"{self.prefix}part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
            self.store.write_parquet(key, pl.DataFrame(rows, schema=SCHEMA, orient="row"))
            with self._lock:
                self._parts.append(key)

    def get_note(self, name: str) -> Any:
        """A small record the LLM layer keeps with the batch (the provider batches it sent), or None."""
        key = f"{self.prefix}{name}.json"
        return self.store.read_json(key) if self.store.exists(key) else None

    def put_note(self, name: str, value: Any) -> None:
        self.store.write_json(f"{self.prefix}{name}.json", value)

    def compact(self) -> None:
        """One part holding every answer of the batch, instead of many small ones (call after the context)."""
        if len(self._parts) <= 1:
            return
        old, self._parts = self._parts, []
        with self._lock:
            rows = list(self._known.values())
        key = f"{self.prefix}part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        self.store.write_parquet(key, pl.DataFrame(rows, schema=SCHEMA, orient="row"))
        self._parts = [key]
        for part in old:
            self.store.delete(part)
