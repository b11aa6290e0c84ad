"""The whole pipeline at growing sizes: wall time, time per instruction, and the driver's peak memory.

    .venv/bin/python benchmarks/scale.py [--sizes 1000 10000 100000] [--dedup rouge|minhash] [--dask 10000]

Each size is one `alignflow run` in its own process (the driver: the flow and every batch task, threads),
against the project's loopback LLM server with zero latency, on a local store, with a Prefect server started
once for all sizes. The driver's resident memory is sampled every 0.2 s. The runs share the machine with the
LLM server, so absolute times mean little; the ratios between sizes are the point: the time per instruction
should not grow with the run's size, except for the instruction stage's novelty dedup, which compares each
candidate with the whole pool (ROUGE-L: see `rouge_novelty.py`; `--dedup minhash` keeps it near-linear).

`--dask SIZE...` runs those sizes again, in the same run, as scale-out runs: `runner: dask` (a LocalCluster of 2
worker processes, 8 threads each) with the store on a moto S3 server on loopback, which counts the S3 requests.
The peak memory of the driver and of each worker is sampled the same way.
"""
from __future__ import annotations

import argparse
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from llm_server import LLMTestServer  # noqa: E402

from alignflow.engine.store import Store  # noqa: E402

BUCKET = "scale"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_prefect(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    server = subprocess.Popen([str(ROOT / ".venv/bin/prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    import urllib.request

    for _ in range(240):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            return server, url
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("the Prefect server did not start")


def start_s3() -> tuple[dict[str, str], itertools.count]:
    """A moto S3 server on loopback that counts the requests it serves; the AWS env that points at it."""
    import threading

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_request(self, *args) -> None:
            pass

    app, served = DomainDispatcherApplication(create_backend_app), itertools.count()

    def counted(environ, start_response):
        next(served)
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, counted, threaded=True, request_handler=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return env, served


def sample(driver: psutil.Process, peaks: dict[str, int]) -> None:
    """Peak RSS of the driver and of each Dask worker it spawned (by its pid)."""
    try:
        peaks["driver"] = max(peaks.get("driver", 0), driver.memory_info().rss)
        for child in driver.children(recursive=True):
            if "spawn_main" in " ".join(child.cmdline()):
                peaks[f"worker {child.pid}"] = max(peaks.get(f"worker {child.pid}", 0), child.memory_info().rss)
    except psutil.NoSuchProcess:
        pass


def run(size: int, llm_url: str, api_url: str, store: Store, dedup: str, dask: bool, env: dict) -> dict:
    """One pipeline run of `size` kept instructions; its wall time, peak RSS and manifest."""
    overrides = {
        "store": store.url, "llm.provider": "openai", "llm.base_url": llm_url, "llm.model": "bench",
        "llm.max_concurrency": 64, "cache.enabled": "false", "instructions.target": size,
        "instructions.prompts_per_round": max(8, min(size // 10, 500)), "instructions.per_prompt": 20,
        "instructions.max_rounds": 200, "instructions.dedup.method": dedup,
        "responses.batch_size": max(64, min(size // 20, 1000)), "runner": "dask" if dask else "threads",
    }
    run_id = f"scale-{size}-{'dask' if dask else 'threads'}"
    command = [str(ROOT / ".venv/bin/alignflow"), "run", "configs/quickstart.yaml", "--run-id", run_id]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    env = {**os.environ, **env, "PREFECT_API_URL": api_url, "OPENAI_API_KEY": "bench",
           "PREFECT_LOGGING_LEVEL": "ERROR"}
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    driver, peaks = psutil.Process(proc.pid), {}
    while proc.poll() is None:
        sample(driver, peaks)
        time.sleep(0.2)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"size {size}: exit {proc.returncode}: {proc.stderr.read().decode()[-3000:]}")
    checkpoints = [k for k in store.list(f"{run_id}/") if "/checkpoints/" in k]
    rounds = [store.read_json(k) for k in checkpoints if k.startswith(f"{run_id}/instructions/")]
    return {"size": size, "wall": wall, "peaks_mb": {k: v / 2**20 for k, v in peaks.items()},
            "manifest": store.read_json(f"{run_id}/manifest.json"), "batches": len(checkpoints),
            "rounds_s": sum(r["finished"] - r["started"] for r in rounds)}


def cap(manifest: dict) -> str:
    """The endpoint's concurrency cap, lowest / at the end: the adaptive limit must not throttle a healthy server."""
    endpoint = manifest["endpoints"][0]
    return f"{endpoint['lowest_cap']}/{endpoint['cap_now']}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--dedup", choices=["rouge", "minhash"], default="rouge")
    parser.add_argument("--dask", type=int, nargs="*", default=[], help="sizes to run again on Dask with S3")
    args = parser.parse_args()
    print(f"whole pipeline, zero-latency loopback server, dedup {args.dedup}; 'rounds s' is the instruction rounds'")
    print("share (their novelty dedup grows with the pool); 'rest ms/instr.' is the wall time outside them; 'cap' is the")
    print("endpoint's adaptive concurrency cap, lowest/at the end, of 64 (per process)")
    print(f"{'runner, store':>15} {'instructions':>12} {'requests':>9} {'wall s':>8} {'ms/instr.':>9} {'vs first':>8} "
          f"{'rounds s':>8} {'rest ms/instr.':>14} {'vs first':>8} {'driver MB':>9} {'workers MB':>11} "
          f"{'dpo rows':>8} {'cap':>7} {'S3 req/batch':>12}", flush=True)
    first = None
    with tempfile.TemporaryDirectory() as tmp, LLMTestServer() as llm:
        prefect, api_url = start_prefect(Path(tmp) / "prefect")
        s3_env, s3_served = start_s3() if args.dask else ({}, None)
        try:  # a row as each size finishes: the largest takes half an hour or more
            for size, dask in [(n, False) for n in args.sizes] + [(n, True) for n in args.dask]:
                store = Store(f"s3://{BUCKET}/runs" if dask else str(Path(tmp) / "store"))
                s3_before = next(s3_served) if dask else 0
                r = run(size, llm.openai_base_url, api_url, store, args.dedup, dask, s3_env if dask else {})
                s3 = f"{(next(s3_served) - s3_before) / r['batches']:.1f}" if dask else "-"
                per, rest = r["wall"] / size * 1000, (r["wall"] - r["rounds_s"]) / size * 1000
                first = first or (per, rest)
                requests = sum(s.get("requests", 0) for s in r["manifest"]["stages"].values())
                workers = "/".join(f"{mb:.0f}" for name, mb in sorted(r["peaks_mb"].items()) if name != "driver")
                print(f"{'dask, S3' if dask else 'threads, local':>15} {size:>12,} {requests:>9,} {r['wall']:>8.1f} "
                      f"{per:>9.2f} {per / first[0]:>7.2f}x {r['rounds_s']:>8.1f} {rest:>14.2f} "
                      f"{rest / first[1]:>7.2f}x {r['peaks_mb']['driver']:>9.0f} {workers or '-':>11} "
                      f"{r['manifest']['datasets'].get('dpo', 0):>8,} {cap(r['manifest']):>7} {s3:>12}", flush=True)
        finally:
            prefect.terminate()
            prefect.wait()


if __name__ == "__main__":
    main()
