"""A batch's answers, saved in the store as they arrive: what a resume on any machine reads instead of asking again.

On a local store `put` appends the answer to the batch's log, one JSON line handed to the OS, before it returns,
so before the runner counts the answer: a `kill -9` costs no answer, only the requests in flight. A background
thread fsyncs the log every `FLUSH_S` rather than once per answer: bytes a killed process wrote are the kernel's
and reach the disk anyway, so the fsync only matters when the machine itself goes down (power, kernel panic), and
then at most the answers of the last `FLUSH_S` are asked again, for one disk flush a second instead of one per
answer. A line a kill tore is left out when the log is read.

On S3 an object cannot be added to: answers are buffered and written as small Parquet parts every `FLUSH_S`
seconds or `FLUSH_N` answers, whichever comes first, so a kill costs the answers of the last `FLUSH_S` (those that
arrived since the last part, and a part's PUT) besides the requests in flight.

Logs and parts are only ever added (each has a unique name), so two attempts at one batch never overwrite each
other; `compact` folds them into one part when the batch is done.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import polars as pl

from alignflow.engine.store import Appender, Store

FLUSH_S = 1.0
FLUSH_N = 200
SCHEMA = {"key": pl.String, "text": pl.String, "finish_reason": pl.String, "input_tokens": pl.Int64,
          "output_tokens": pl.Int64, "latency_s": pl.Float64}


class AnswerLog:
    """Known answers by request key (`get`), and new ones saved as they come (`put`). Use as a context manager."""

    def __init__(self, store: Store, prefix: str):
        self.store = store
        self.prefix = prefix
        names = store.list_dir(prefix)
        self._files = [k for k in names if k.endswith((".parquet", ".jsonl"))]
        parts = [k for k in self._files if k.endswith(".parquet")]
        known = pl.concat([store.read_parquet(k) for k in parts]) if parts else pl.DataFrame(schema=SCHEMA)
        self._known: dict[str, dict[str, Any]] = {row["key"]: row for row in known.iter_rows(named=True)}
        for log in (k for k in self._files if k.endswith(".jsonl")):
            self._known.update((row["key"], row) for row in _lines(store.read_bytes(log)))
        self.loaded = len(self._known)
        self._buffer: list[dict[str, Any]] = []
        self._appender: Appender | None = None
        self._appendable = True  # until the store says it cannot append (S3)
        self._unsynced = False
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
        if self._appender is not None:
            self._appender.close()

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._known.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            if key in self._known:
                return
            row = {"key": key, **{name: value.get(name) for name in SCHEMA if name != "key"}}
            log = self._log()
            if log is not None:
                log.write((json.dumps(row) + "\n").encode())  # escaped: any text encodes, lone surrogates too
                self._unsynced = True
            else:
                self._buffer.append(row)
            self._known[key] = row
            full = len(self._buffer) >= FLUSH_N
        if full:
            self._wake.set()

    def _log(self) -> Appender | None:
        """The log this process appends to, made at its first answer; None on a store that cannot append."""
        if self._appender is None and self._appendable:
            key = f"{self.prefix}log-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
            self._appender = self.store.appender(key)
            self._appendable = self._appender is not None
            if self._appender is not None:
                self._files.append(key)
        return self._appender

    def _flush_periodically(self) -> None:
        """Until the batch ends; a write that fails (the store gone, the lease taken over) ends the thread quietly:
        its rows stay buffered, and the batch's own last flush, in the batch's thread, says what went wrong."""
        while not self._stop.is_set():
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            try:
                self._flush()
            except Exception:  # noqa: BLE001 - raised again where it can be handled, by __exit__'s flush
                return

    def _flush(self) -> None:
        """Locally an fsync of the log, if it grew; on S3 a part of the answers buffered since the last."""
        with self._lock:
            rows, self._buffer = self._buffer, []
            sync, self._unsynced = self._unsynced, False
        if sync:
            self._appender.sync()
        if rows:
            key = f"{self.prefix}part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
            try:
                self.store.write_parquet(key, pl.DataFrame(rows, schema=SCHEMA, orient="row"))
            except BaseException:
                with self._lock:
                    self._buffer[:0] = rows  # not lost: the next flush writes them
                raise
            with self._lock:
                self._files.append(key)

    def notes(self, kind: str) -> dict[str, Any]:
        """The small records the LLM layer keeps with the batch (the provider batches it sent) whose name begins
        with `kind`, by name."""
        keys = [k for k in self.store.list_dir(self.prefix) if k.endswith(".json")]
        names = {k.removeprefix(self.prefix).removesuffix(".json"): k for k in keys}
        return {name: self.store.read_json(key) for name, key in names.items() if name.startswith(kind)}

    def put_note(self, name: str, value: Any) -> None:
        """A record written whole (atomically) under `name`."""
        self.store.write_json(f"{self.prefix}{name}.json", value)

    def drop_note(self, name: str) -> None:
        self.store.delete(f"{self.prefix}{name}.json")

    def compact(self) -> None:
        """One part holding every answer of the batch, instead of logs and parts (call after the context, once the
        batch's checkpoint is written). The notes go too: what they track is answered, and a later attempt at the
        batch's failures asks anew."""
        if len(self._files) > 1 or any(k.endswith(".jsonl") for k in self._files):
            with self._lock:
                rows = list(self._known.values())
            key = f"{self.prefix}part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
            self.store.write_parquet(key, pl.DataFrame(rows, schema=SCHEMA, orient="row"))
            old, self._files = self._files, [key]
            for name in old:
                self.store.delete(name)
        for key in self.store.list_dir(self.prefix):
            if key.endswith(".json"):
                self.store.delete(key)


def _lines(data: bytes) -> list[dict[str, Any]]:
    """The answers of a log, one JSON object a line. A last line without its newline is a write a kill cut short,
    and a line that does not parse is one a crash of the machine left half on disk: each is left out (asked again)."""
    rows = []
    for line in data.split(b"\n")[:-1]:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("key"), str):
            rows.append(row)
    return rows
