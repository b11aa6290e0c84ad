"""One writer per run id: the lease in the store, locally and on S3 (moto server), and through `alignflow run`."""
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import BUCKET

from alignflow.engine.lease import EXPIRES_S, Lease, LeaseHeld
from alignflow.engine.store import Store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "s3":
        request.getfixturevalue("s3_server")
        return Store(f"s3://{BUCKET}/leases-{time.time_ns()}")
    return Store(str(tmp_path / "store"))


def test_a_second_writer_is_refused_naming_the_first(store):
    first = Lease(store, "r1")
    assert first.acquire() is None
    with pytest.raises(LeaseHeld, match=rf"run r1 is being written by another process \(pid {os.getpid()} on "
                                         rf"{socket.gethostname()}, last seen \d+ s ago\)"):
        Lease(store, "r1").acquire()
    first.release()
    second = Lease(store, "r1")
    assert second.acquire() is None  # released: free again
    second.release()
    assert not store.exists("r1/lease.json")


def test_a_stale_lease_is_taken_over_with_a_message(store):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    now = time.time()
    store.write_json("r1/lease.json", {"token": "old", "host": socket.gethostname(), "pid": int(dead.stdout),
                                       "flow_run": None, "started": now, "heartbeat": now})
    lease = Lease(store, "r1")
    assert lease.acquire().startswith(f"run r1: took over the lease of pid {int(dead.stdout)}")
    lease.release()
    store.write_json("r1/lease.json", {"token": "old", "host": "elsewhere", "pid": 1, "flow_run": None,
                                       "started": now - 600, "heartbeat": now - EXPIRES_S - 1})
    lease = Lease(store, "r1")
    assert "took over" in lease.acquire()  # a holder on another host that stopped beating
    lease.release()
    store.write_json("r1/lease.json", {"token": "old", "host": "elsewhere", "pid": 1, "flow_run": "f-1",
                                       "started": now, "heartbeat": now})
    with pytest.raises(LeaseHeld):
        Lease(store, "r1").acquire()  # alive elsewhere
    lease = Lease(store, "r1", flow_run="f-1")
    assert "took over" in lease.acquire()  # ... but a retry of the same flow run takes it
    lease.release()


def test_two_racing_takers_leave_one_holder(store):
    now = time.time()
    store.write_json("r1/lease.json", {"token": "old", "host": "elsewhere", "pid": 1, "flow_run": None,
                                       "started": now - 600, "heartbeat": now - EXPIRES_S - 1})
    takers = [Lease(store, "r1") for _ in range(6)]
    outcomes = []
    from concurrent.futures import ThreadPoolExecutor

    def take(lease):
        try:
            lease.acquire()
            return lease
        except LeaseHeld:
            return None

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(take, takers))
    holders = [lease for lease in outcomes if lease is not None]
    assert len(holders) == 1
    assert store.read_json("r1/lease.json")["token"] == holders[0].me.token
    holders[0].release()
