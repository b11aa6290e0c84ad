"""One writer per run id: the lease in the store, locally and on S3 (moto server), and through `alignflow run`."""
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import BUCKET, ROOT
from llm_server import LLMTestServer
from runs import args, assert_whole

from alignflow.engine.lease import EXPIRES_ENV, EXPIRES_S, FencedStore, Lease, LeaseHeld, LeaseLost, fence
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


def _files(root) -> dict[str, int]:
    """Every file under a local store, hidden ones (temp files, lock files) too, with its mtime in ns."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_a_writer_silent_past_its_expiry_and_taken_over_writes_nothing_more(store, monkeypatch):
    """As a Dask worker of a paused writer sees it: the lease read, trusted while its heartbeat is fresh; once the
    writer has been silent past its expiry and another took the run, every store call raises LeaseLost."""
    monkeypatch.setenv(EXPIRES_ENV, "2")
    now = time.time()
    store.write_json("r1/lease.json", {"token": "paused", "host": "worker-1", "pid": 7, "flow_run": None,
                                       "started": now, "heartbeat": now, "expires_s": 2.0})
    worker = FencedStore(store.url, fence(store.url, "r1", "paused"))
    worker.write_json("r1/instructions/checkpoints/batch-00000.json", {"n": 0})  # fresh: written
    time.sleep(2.2)  # the writer is paused past its expiry
    taker = Lease(store, "r1")
    assert taker.acquire().startswith("run r1: took over the lease of pid 7 on worker-1")
    before = store.list("r1")
    with pytest.raises(LeaseLost, match=rf"^run r1 was taken over by another writer \(pid {os.getpid()} on "
                                        rf"{socket.gethostname()}, last seen \d+ s ago\) while this one was paused; "
                                        "nothing more was written$"):
        worker.write_json("r1/instructions/checkpoints/batch-00001.json", {"n": 1})
    for call in (lambda: worker.write_parquet("r1/responses/kept/batch-00000.parquet", pl.DataFrame({"a": [1]})),
                 lambda: worker.delete("r1/instructions/checkpoints/batch-00000.json"),
                 lambda: worker.read_json("r1/instructions/checkpoints/batch-00000.json")):
        with pytest.raises(LeaseLost):
            call()
    assert store.list("r1") == before
    if not store.url.startswith("s3://"):
        assert not [name for name in _files(Path(store.url)) if name.endswith(".tmp")]  # no temp file left either
    taker.release()


def test_the_holder_finds_out_at_its_next_heartbeat_and_lets_the_lease_be(store, monkeypatch):
    """A Prefect retry of the same flow run takes the lease at once; the first holder's next heartbeat finds it
    changed, and from then on its store refuses every call and its release leaves the new holder's lease alone."""
    monkeypatch.setenv(EXPIRES_ENV, "1.2")  # a heartbeat every 0.2 s
    first = Lease(store, "r1", flow_run="f-1")
    first.acquire()
    written = FencedStore(store.url, first)
    written.write_json("r1/manifest.json", {"stages": {}})
    second = Lease(store, "r1", flow_run="f-1")
    assert "took over" in second.acquire()
    time.sleep(0.6)
    assert first.lost
    with pytest.raises(LeaseLost, match="^run r1 was taken over by another writer"):
        written.write_json("r1/manifest.json", {"stages": {"again": 1}})
    assert store.read_json("r1/manifest.json") == {"stages": {}}
    first.release()
    assert store.read_json("r1/lease.json")["token"] == second.token
    second.release()
    with pytest.raises(LeaseLost, match="let go of its lease"):  # a straggler of a finished writer writes nothing
        FencedStore(store.url, second).write_json("r1/manifest.json", {})


def _lock_free(path: Path) -> bool:
    """Whether no process holds the lease's file lock (a writer stopped while renewing would hold it)."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


@pytest.mark.slow
@pytest.mark.usefixtures("api_keys")
def test_a_paused_writer_whose_lease_was_taken_stops_without_writing_and_the_run_resumes(tmp_path, prefect_server):
    """`alignflow run` stopped (SIGSTOP) mid-run past its lease's expiry, the lease taken from here, then woken
    (SIGCONT): it writes no file more, says so in one line and exits 5; the same run id then finishes the run."""
    root, expires = tmp_path / "store", 4.0
    store = Store(str(root))
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_LOGGING_LEVEL": "ERROR", EXPIRES_ENV: str(expires)}
    with LLMTestServer(latency_s=0.2) as server:
        command = [sys.executable, "-m", "flows.cli", *args(server, store.url, "--set", "cache.enabled=false",
                                                            "--set", "responses.batch_size=4", target="24")]
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while server.requests < 30 and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        for _ in range(10):  # stopped while holding the lease's file lock, it would keep a taker waiting: again
            os.kill(proc.pid, signal.SIGSTOP)
            if _lock_free(root / "r1" / ".lease.json.lock"):
                break
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.3)
        time.sleep(expires + 1.0)  # silent past its expiry: the lease may be taken over
        taker = Lease(store, "r1")
        assert taker.acquire().startswith(f"run r1: took over the lease of pid {proc.pid} on {socket.gethostname()}")
        lease_files = {"r1/lease.json", "r1/.lease.json.lock"}
        before = {k: v for k, v in _files(root).items() if k not in lease_files}
        asked = server.requests
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=180)
        after = {k: v for k, v in _files(root).items() if k not in lease_files}
        print(f"{len(before)} files in the store when the lease was taken; {server.requests - asked} requests the "
              "woken writer had under way finished")
        assert proc.returncode == 5, err.decode()[-3000:]
        [line] = [line for line in err.decode().splitlines() if line.startswith("alignflow:")]
        assert re.fullmatch(rf"alignflow: run r1 was taken over by another writer \(pid {os.getpid()} on "
                            rf"{re.escape(socket.gethostname())}, last seen \d s ago\) while this one was paused; "
                            "nothing more was written", line)
        assert after == before  # not one file written, changed or removed after the takeover
        assert store.read_json("r1/lease.json")["token"] == taker.token  # and the taker's lease left alone
        taker.release()
        resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    assert_whole(store, "r1")
