"""Throughput against a provider with a capacity, side by side: the bare SDK, alignflow's LLM layer, and the whole
responses stage as the pipeline runs it.

    .venv/bin/python benchmarks/throughput.py [--caps 50 200] [--requests 3000]

The loopback server answers in 150 ms + U(0, 100) ms and takes at most C requests at once (a 429 beyond), so the
most anyone can get is C / 0.2 s. Each path is configured for C: the bare `openai.AsyncOpenAI` client under an
`asyncio.Semaphore(C)` (the SDK's own retries on), alignflow's `LLM`, and alignflow's responses flow over a run
holding the instructions (its batches running at once, under Prefect, as in a pipeline). Clean, then with 10%
429s and 5% 500s injected. Printed per row: answers per second, the share of the limit, the server's peak of
requests in flight, and rows lost (requests that ended neither answered nor failed). With `--distilabel PYTHON`,
distilabel's OpenAILLM under a `Pipeline` runs the same requests in that interpreter (a side venv).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import openai  # noqa: E402
from llm_server import LLMTestServer  # noqa: E402

LATENCY_S, JITTER_S = 0.15, 0.10
FAULTS = {"clean": {}, "10% 429 + 5% 500": {"p429": 0.10, "p500": 0.05}}


def prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Benchmark instruction {i}: explain something briefly."}]


async def bare_sdk(url: str, n: int, cap: int) -> tuple[int, int]:
    client = openai.AsyncOpenAI(api_key="unused", base_url=url, max_retries=8)
    gate = asyncio.Semaphore(cap)

    async def one(i: int) -> bool:
        async with gate:
            try:
                await client.chat.completions.create(model="bench", messages=prompt(i), max_tokens=64)
                return True
            except openai.OpenAIError:
                return False

    results = await asyncio.gather(*(one(i) for i in range(n)))
    await client.close()
    return sum(results), n - sum(results)


def alignflow_llm(url: str, n: int, cap: int) -> tuple[int, int]:
    from alignflow.config import LLMConfig
    from alignflow.llm.client import LLM
    from alignflow.llm.generate import answer_all

    llm = LLM(LLMConfig(provider="openai", model="bench", base_url=url, api_key_env="BENCH_KEY", max_concurrency=cap,
                        max_tokens=64, max_retries=8))
    results = answer_all(llm, [llm.request(prompt(i)) for i in range(n)])
    return sum(r.ok for r in results), sum(not r.ok for r in results)


def alignflow_stage(url: str, n: int, cap: int, store: Path) -> tuple[int, int]:
    """The responses flow over a run whose instruction rounds hold n / 2 instructions (two samples each)."""
    from alignflow.config import parse_config
    from alignflow.engine.run import Run
    from alignflow.engine.store import batch_key
    from alignflow.records import frame, stable_id
    from flows.responses import responses_flow

    run_id = f"stage-{cap}-{time.time_ns()}"
    config = parse_config({"store": str(store), "llm": {"provider": "openai", "model": "bench", "base_url": url,
                                                         "api_key_env": "BENCH_KEY", "max_concurrency": cap,
                                                         "max_tokens": 64, "max_retries": 8},
                           "instructions": {"target": n // 2}, "responses": {"per_instruction": 2},
                           "cache": {"enabled": False}})
    run = Run(config, run_id)
    per_round = 1000
    for number, start in enumerate(range(0, n // 2, per_round)):
        rows = [{"id": stable_id("bench", i), "instruction": prompt(i)[0]["content"], "source": "self_instruct",
                 "parent_ids": [], "round": number} for i in range(start, min(start + per_round, n // 2))]
        run.store.write_parquet(batch_key(run_id, "instructions", "kept", number), frame(rows, "instructions"))
        run.dir.write_checkpoint("instructions", number, {"number": number, "key": "bench", "counts": {
            "kept": len(rows), "rejected": 0, "failed": 0, "quarantine": 0}})
    responses_flow(config, run_id)
    answered = sum(run.dir.read("responses", outcome).height for outcome in ("kept", "rejected", "quarantine"))
    return answered, run.dir.read("responses", "failed").height


def distilabel(python: str, url: str, n: int, cap: int) -> tuple[int, int]:
    script = ROOT / "benchmarks" / "_distilabel_generate.py"
    out = subprocess.run([python, str(script), url, str(n), str(cap)], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    answered = json.loads(out.stdout.strip().splitlines()[-1])
    return answered["ok"], answered["failed"]


def measure(name: str, path, url_of, n: int, cap: int, faults: dict) -> dict:
    with LLMTestServer(latency_s=LATENCY_S, latency_jitter_s=JITTER_S, max_in_flight=cap, seed=1, **faults) as server:
        ok, failed = path(url_of(server), n, cap)
        # from the first request to the last answer, as the server saw them: start-up (Prefect's) is not traffic
        wall = server.served_log[-1][0] - server.arrivals[0]
        return {"path": name, "cap": cap, "faults": faults, "rate": ok / wall, "limit": cap / (LATENCY_S + JITTER_S / 2),
                "peak": server.peak_in_flight, "lost": n - ok - failed, "failed": failed,
                "over_capacity": server.over_capacity}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--caps", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--distilabel", help="a Python interpreter with distilabel installed (a side venv)")
    args = parser.parse_args()
    os.environ["BENCH_KEY"] = "unused"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = [("bare openai SDK + semaphore", lambda url, n, c: asyncio.run(bare_sdk(url, n, c))),
                 ("alignflow LLM layer", alignflow_llm),
                 ("alignflow responses stage", lambda url, n, c: alignflow_stage(url, n, c, Path(tmp)))]
        if args.distilabel:
            paths.append(("distilabel 1.5.3 OpenAILLM", lambda url, n, c: distilabel(args.distilabel, url, n, c)))
        for cap in args.caps:
            n = max(args.requests, int(cap / 0.2 * 12))  # about 12 s at the limit
            for faults in FAULTS.values():
                for name, path in paths:
                    rows.append(measure(name, path, lambda s: s.openai_base_url, n, cap, faults))
                    print(f"  {rows[-1]['path']:<30} C={cap:<4} {next(k for k, v in FAULTS.items() if v == faults):<18} "
                          f"{rows[-1]['rate']:7.0f} req/s", file=sys.stderr)
    print(f"server: {LATENCY_S * 1000:.0f} ms + U(0, {JITTER_S * 1000:.0f}) ms a request, at most C in flight "
          "(the limit is C / 0.2 s)")
    print(f"{'path':<30} {'C':>4} {'faults':<18} {'req/s':>7} {'of limit':>8} {'peak in flight':>14} "
          f"{'429 over C':>10} {'failed':>6} {'lost':>5}")
    for r in rows:
        faults = next(k for k, v in FAULTS.items() if v == r["faults"])
        print(f"{r['path']:<30} {r['cap']:>4} {faults:<18} {r['rate']:>7.0f} {r['rate'] / r['limit']:>7.0%} "
              f"{r['peak']:>14} {r['over_capacity']:>10} {r['failed']:>6} {r['lost']:>5}")


if __name__ == "__main__":
    main()
