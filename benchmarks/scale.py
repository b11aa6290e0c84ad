"""The whole pipeline at growing sizes: wall time, time per instruction, and the driver's peak memory.

    .venv/bin/python benchmarks/scale.py [--sizes 1000 10000 100000] [--dedup rouge|minhash]

Each size is one `alignflow run` in its own process (the driver: the flow and every batch task, threads),
against the project's loopback LLM server with zero latency, on a local store, with a Prefect server started
once for all sizes. The driver's resident memory is sampled every 0.2 s. The runs share the machine with the
LLM server, so absolute times mean little; the ratios between sizes are the point: the time per instruction
should not grow with the run's size, except for the instruction stage's novelty dedup, which compares each
candidate with the whole pool (ROUGE-L: see `rouge_novelty.py`; `--dedup minhash` keeps it near-linear).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from llm_server import LLMTestServer  # noqa: E402


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


def run(size: int, llm_url: str, api_url: str, store: Path, dedup: str) -> dict:
    """One pipeline run of `size` kept instructions; its wall time, peak RSS and manifest."""
    overrides = {
        "store": str(store), "llm.provider": "openai", "llm.base_url": llm_url, "llm.model": "bench",
        "llm.max_concurrency": 64, "cache.enabled": "false", "instructions.target": size,
        "instructions.prompts_per_round": max(8, min(size // 10, 500)), "instructions.per_prompt": 20,
        "instructions.max_rounds": 200, "instructions.dedup.method": dedup,
        "responses.batch_size": max(64, min(size // 20, 1000)),
    }
    command = [str(ROOT / ".venv/bin/alignflow"), "run", "configs/quickstart.yaml", "--run-id", f"scale-{size}"]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    env = {**os.environ, "PREFECT_API_URL": api_url, "OPENAI_API_KEY": "bench", "PREFECT_LOGGING_LEVEL": "ERROR"}
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"size {size}: exit {proc.returncode}: {proc.stderr.read().decode()[-3000:]}")
    run_dir = store / f"scale-{size}"
    rounds = [json.loads(p.read_text()) for p in (run_dir / "instructions" / "checkpoints").glob("*.json")]
    return {"size": size, "wall": wall, "peak_mb": peak / 2**20, "manifest": json.loads((run_dir / "manifest.json").read_text()),
            "rounds_s": sum(r["finished"] - r["started"] for r in rounds)}


def cap(manifest: dict) -> str:
    """The endpoint's concurrency cap, lowest / at the end: the adaptive limit must not throttle a healthy server."""
    endpoint = manifest["endpoints"][0]
    return f"{endpoint['lowest_cap']}/{endpoint['cap_now']}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--dedup", choices=["rouge", "minhash"], default="rouge")
    args = parser.parse_args()
    print(f"whole pipeline, zero-latency loopback server, dedup {args.dedup}; 'rounds s' is the instruction rounds'")
    print("share (their novelty dedup grows with the pool); 'rest ms/instr.' is the wall time outside them; 'cap' is the")
    print("endpoint's adaptive concurrency cap, lowest/at the end, of 64")
    print(f"{'instructions':>12} {'requests':>9} {'wall s':>8} {'ms/instr.':>9} {'vs first':>8} {'rounds s':>8} "
          f"{'rest ms/instr.':>14} {'vs first':>8} {'peak MB':>8} {'dpo rows':>8} {'cap':>7}", flush=True)
    first = None
    with tempfile.TemporaryDirectory() as tmp, LLMTestServer() as llm:
        prefect, api_url = start_prefect(Path(tmp) / "prefect")
        try:
            for size in args.sizes:  # a row as each size finishes: the largest takes an hour or more
                r = run(size, llm.openai_base_url, api_url, Path(tmp) / "store", args.dedup)
                per, rest = r["wall"] / size * 1000, (r["wall"] - r["rounds_s"]) / size * 1000
                first = first or (per, rest)
                requests = sum(s.get("requests", 0) for s in r["manifest"]["stages"].values())
                print(f"{size:>12,} {requests:>9,} {r['wall']:>8.1f} {per:>9.2f} {per / first[0]:>7.2f}x "
                      f"{r['rounds_s']:>8.1f} {rest:>14.2f} {rest / first[1]:>7.2f}x {r['peak_mb']:>8.0f} "
                      f"{r['manifest']['datasets'].get('dpo', 0):>8,} {cap(r['manifest']):>7}", flush=True)
        finally:
            prefect.terminate()
            prefect.wait()


if __name__ == "__main__":
    main()
