"""One writer per run id: a lease in the store (`<run>/lease.json`), taken at start, renewed while the run goes, and
confirmed before every call the run makes to its store.

The lease is written with a conditional write (an exclusive file lock locally, `If-None-Match`/`If-Match` on S3),
so of two processes starting one run only one holds it; the other stops with one line naming the holder. A
lease is stale when its heartbeat is older than the expiry its holder wrote in it (`expires_s`: 60 s, or
`ALIGNFLOW_LEASE_EXPIRES_S`), when its holder is a process of this host that no longer exists (a kill), or when it
was taken by the same flow run (Prefect retrying it on another worker); a stale lease is taken over, with a
message saying whose it was.

A holder paused for longer than its expiry (SIGSTOP, a laptop asleep, a frozen VM) may have been taken over
without knowing it. So the run's store is a FencedStore: a writer trusts its lease for half its expiry after the
last heartbeat of its own it knows of; past that, before its next store call, the holder renews the lease (a
conditional write, which fails if anyone took it) and a process working for the holder (a Dask worker) reads it
again. A writer that finds the lease another's raises LeaseLost from that call and from every later one: it
writes nothing more. The other half of the expiry absorbs clock skew between hosts. Not covered: a writer stopped
in the instant between its check and its write (a rename locally, one PUT on S3) lands that one write on waking.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alignflow.engine.store import Conflict, RunDir, Store

EXPIRES_S = 60.0
EXPIRES_ENV = "ALIGNFLOW_LEASE_EXPIRES_S"
HEARTBEATS = 6  # renewals per expiry: every 10 s for 60 s


class LeaseHeld(Exception):
    """Another process is writing this run."""


class LeaseLost(Exception):
    """Another writer took this run over while this one was paused: this one stops, having written nothing since."""


def expires_s() -> float:
    """The expiry this process promises for the leases it takes: another may take one over once it is this silent."""
    value = os.environ.get(EXPIRES_ENV, "").strip()
    if not value:
        return EXPIRES_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 1.0 <= seconds <= 86_400.0:
        raise LeaseHeld(f"{EXPIRES_ENV}={value[:40]!r}: give the lease's expiry in seconds, from 1 to 86400")
    return seconds


@dataclass
class Holder:
    token: str
    host: str
    pid: int
    flow_run: str | None
    started: float
    heartbeat: float
    expires_s: float = EXPIRES_S  # a lease written by an older alignflow promised 60 s

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


def _taken_message(run_id: str, holder: Holder | None) -> str:
    by = f"({holder.line()})" if holder else "(which has since finished)"
    return f"run {run_id} was taken over by another writer {by} while this one was paused; nothing more was written"


class Fence:
    """Whether a run is still the writer `token`'s, as a process working for that writer (a Dask worker) sees it:
    trusted until half an expiry after the freshest heartbeat of the writer's it has read, then read again."""

    def __init__(self, store: Store, run_id: str, token: str):
        self.store, self.run_id, self.token = store, run_id, token
        self.key = RunDir(store, run_id).lease_key
        self.trusted_until = 0.0  # wall-clock time, as heartbeats are: hosts compare them
        self.taken: str | None = None  # why LeaseLost is raised, once it is known
        self._lock = threading.Lock()

    @property
    def lost(self) -> bool:
        return self.taken is not None

    def confirm(self) -> None:
        """Return when the run is still this writer's; raise LeaseLost when another has taken it over."""
        if self.taken is None and time.time() < self.trusted_until:
            return
        with self._lock:
            if self.taken is None and time.time() >= self.trusted_until:
                self._refresh()
        if self.taken is not None:
            raise LeaseLost(self.taken)

    def _refresh(self) -> None:
        """Read the lease: the writer's still, trusted again from its heartbeat (not at all while it is silent, so
        every call reads it until it beats again or is taken over); another's, or none, lost."""
        found = self.store.read_json_versioned(self.key)
        holder = Holder(**found[0]) if found else None
        if holder is None or holder.token != self.token:
            self.taken = _taken_message(self.run_id, holder)
        else:
            self._trust(holder)

    def _trust(self, holder: Holder) -> None:
        self.trusted_until = holder.heartbeat + holder.expires_s / 2


class Lease(Fence):
    """The lease of the process that writes a run: taken, renewed every expiry/HEARTBEATS by a thread, released."""

    def __init__(self, store: Store, run_id: str, flow_run: str | None = None):
        now = time.time()
        self.me = Holder(uuid.uuid4().hex, socket.gethostname(), os.getpid(), flow_run, now, now)
        super().__init__(store, run_id, self.me.token)
        self.version: str | None = None
        self.previous: Holder | None = None  # the holder of a stale lease this one took over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """Raise LeaseHeld when another live process holds the lease (without taking it)."""
        found = self.store.read_json_versioned(self.key)
        if found is not None and not self._stale(Holder(**found[0])):
            raise LeaseHeld(self._held_message(Holder(**found[0])))

    def _held_message(self, holder: Holder) -> str:
        return (f"run {self.run_id} is being written by another process ({holder.line()}); "
                f"it stops holding it {holder.expires_s:.0f} s after it stops")

    def acquire(self) -> str | None:
        """Take the lease; returns a line when a stale one was taken over. Raises LeaseHeld naming the holder."""
        self.me.expires_s = expires_s()
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
            self.me.heartbeat = time.time()
            try:
                self.version = self.store.write_json_if(self.key, vars(self.me), None if found is None else version)
            except Conflict:
                continue
            self._trust(self.me)
            with _fences_lock:
                _fences[(self.store.url, self.run_id, self.token)] = self
            self._thread = threading.Thread(target=self._beat, name="alignflow-lease", daemon=True)
            self._thread.start()
            return taken_over
        raise LeaseHeld(f"run {self.run_id}: its lease keeps changing; another process is starting it")

    def _stale(self, holder: Holder) -> bool:
        if holder.token == self.me.token:
            return True
        if time.time() - holder.heartbeat > holder.expires_s:
            return True
        if holder.flow_run is not None and holder.flow_run == self.me.flow_run:
            return True  # the same flow run again: Prefect retries it, perhaps on another worker
        return holder.host == self.me.host and not _alive(holder.pid)

    def _refresh(self) -> None:
        """Renew: a conditional write over the version this holder wrote last, which fails if anyone wrote since."""
        beat = time.time()
        try:
            self.version = self.store.write_json_if(self.key, {**vars(self.me), "heartbeat": beat}, self.version)
        except Conflict:
            found = self.store.read_json_versioned(self.key)
            holder = Holder(**found[0]) if found else None
            if holder is not None and holder.token == self.token:  # our own write, whose answer was lost (S3)
                self.version, self.me.heartbeat = found[1], holder.heartbeat
                self._trust(holder)
            else:
                self.taken = _taken_message(self.run_id, holder)
            return
        self.me.heartbeat = beat
        self._trust(self.me)

    def _beat(self) -> None:
        while not self._stop.wait(self.me.expires_s / HEARTBEATS):
            try:
                with self._lock:
                    if self.lost:
                        return
                    self._refresh()
            except Exception:  # a store that is away for a while: try again at the next beat
                continue

    def release(self) -> None:
        """Stop renewing, and delete the lease if it is still ours; nothing is written under it after this."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self.taken = self.taken or f"run {self.run_id}: this writer let go of its lease; nothing more was written"
        with _fences_lock:
            _fences.pop((self.store.url, self.run_id, self.token), None)
        found = self.store.read_json_versioned(self.key)
        if found is not None and found[0].get("token") == self.me.token:
            self.store.delete(self.key)


_fences: dict[tuple[str, str, str], Fence] = {}  # (store URL, run id, writer token) -> this process's fence
_stores: dict[str, Store] = {}  # the store each fence reads leases from, one per URL
_fences_lock = threading.Lock()


def fence(store_url: str, run_id: str, token: str) -> Fence:
    """This process's fence for the writer `token` of a run: the Lease itself in the process that holds it, else
    one that reads the lease (shared by every batch task of that writer here)."""
    key = (store_url, run_id, token)
    with _fences_lock:
        if key not in _fences:
            if store_url not in _stores:
                _stores[store_url] = Store(store_url)
            _fences[key] = Fence(_stores[store_url], run_id, token)
        return _fences[key]


class FencedStore(Store):
    """The run's store as its writer uses it: every call first confirms the run is still the writer's (`fence`)."""

    def __init__(self, url: str, fence: Fence):
        super().__init__(url)
        self.fence = fence
        self._backend = _Fenced(self._backend, fence.confirm)


class _Fenced:
    """A store backend whose every method confirms the fence first; a write confirms it once its bytes are ready, just
    before they are put in place, and an appender before each append. A method is fenced unless it is named in
    UNFENCED, so one added to the backends later is fenced too."""

    UNFENCED = frozenset({"join", "storage_options"})

    def __init__(self, backend: Any, confirm: Callable[[], None]):
        self._backend, self._confirm = backend, confirm

    def write(self, key: str, writer: Callable) -> None:
        def confirmed(f) -> None:
            writer(f)
            self._confirm()

        self._backend.write(key, confirmed)

    def appender(self, key: str) -> Any:
        self._confirm()
        found = self._backend.appender(key)
        return None if found is None else _FencedAppender(found, self._confirm)

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._backend, name)
        if name in self.UNFENCED or not callable(found):
            return found

        def fenced(*args: Any, **kwargs: Any) -> Any:
            self._confirm()
            return found(*args, **kwargs)

        return fenced


class _FencedAppender:
    """A store's appender (a batch's answer log) whose every append first confirms the fence."""

    def __init__(self, appender: Any, confirm: Callable[[], None]):
        self._appender, self._confirm = appender, confirm

    def write(self, data: bytes) -> None:
        self._confirm()
        self._appender.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._appender, name)
