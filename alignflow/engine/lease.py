"""One writer per run id: a lease in the store (`<run>/lease.json`), taken at start and renewed while the run goes.

The lease is written with a conditional write (an exclusive file lock locally, `If-None-Match`/`If-Match` on S3),
so of two processes starting one run only one holds it; the other stops with one line naming the holder. A
lease is stale when its heartbeat is older than EXPIRES_S, when its holder is a process of this host that no
longer exists (a kill), or when it was taken by the same flow run (Prefect retrying it on another worker); a
stale lease is taken over, with a message saying whose it was.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from alignflow.engine.store import Conflict, RunDir, Store

HEARTBEAT_S = 10.0
EXPIRES_S = 60.0


class LeaseHeld(Exception):
    """Another process is writing this run."""


@dataclass
class Holder:
    token: str
    host: str
    pid: int
    flow_run: str | None
    started: float
    heartbeat: float

    def line(self) -> str:
        where = f"pid {self.pid} on {self.host}" + (f", flow run {self.flow_run}" if self.flow_run else "")
        return f"{where}, last seen {max(time.time() - self.heartbeat, 0):.0f} s ago"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    def __init__(self, store: Store, run_id: str, flow_run: str | None = None):
        self.store, self.run_id, self.key = store, run_id, RunDir(store, run_id).lease_key
        now = time.time()
        self.me = Holder(uuid.uuid4().hex, socket.gethostname(), os.getpid(), flow_run, now, now)
        self.version: str | None = None
        self.previous: Holder | None = None  # the holder of a stale lease this one took over
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """Raise LeaseHeld when another live process holds the lease (without taking it)."""
        found = self.store.read_json_versioned(self.key)
        if found is not None and not self._stale(Holder(**found[0])):
            raise LeaseHeld(self._held_message(Holder(**found[0])))

    def _held_message(self, holder: Holder) -> str:
        return (f"run {self.run_id} is being written by another process ({holder.line()}); "
                f"it stops holding it {EXPIRES_S:.0f} s after it stops")

    def acquire(self) -> str | None:
        """Take the lease; returns a line when a stale one was taken over. Raises LeaseHeld naming the holder."""
        for _ in range(5):  # a lease that changes under us while we look at it is looked at again
            found = self.store.read_json_versioned(self.key)
            if found is None:
                taken_over = None
            else:
                holder, version = Holder(**found[0]), found[1]
                if not self._stale(holder):
                    raise LeaseHeld(self._held_message(holder))
                taken_over = f"run {self.run_id}: took over the lease of {holder.line()}"
                self.previous = holder
            try:
                self.version = self.store.write_json_if(self.key, vars(self.me), None if found is None else version)
            except Conflict:
                continue
            self._thread = threading.Thread(target=self._beat, name="alignflow-lease", daemon=True)
            self._thread.start()
            return taken_over
        raise LeaseHeld(f"run {self.run_id}: its lease keeps changing; another process is starting it")

    def _stale(self, holder: Holder) -> bool:
        if holder.token == self.me.token:
            return True
        if time.time() - holder.heartbeat > EXPIRES_S:
            return True
        if holder.flow_run is not None and holder.flow_run == self.me.flow_run:
            return True  # the same flow run again: Prefect retries it, perhaps on another worker
        return holder.host == self.me.host and not _alive(holder.pid)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.me.heartbeat = time.time()
            try:
                self.version = self.store.write_json_if(self.key, vars(self.me), self.version)
            except Conflict:
                self.lost = True  # someone took it over after we looked dead: stop claiming it
                return
            except Exception:  # a store that is away for a while: try again at the next beat
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        found = self.store.read_json_versioned(self.key)
        if found is not None and found[0].get("token") == self.me.token:
            self.store.delete(self.key)
