"""What the LLM client costs on top of the raw SDK: the same requests, the same loopback server, side by side.

    .venv/bin/python benchmarks/llm_overhead.py [--requests 2000] [--concurrency 32]

Prints requests/s for the bare `openai.AsyncOpenAI` client and for alignflow's `LLM` (limits, retries,
structured-output plumbing and, in a third row, the request cache), and the ratios.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import openai  # noqa: E402
from llm_server import LLMTestServer  # noqa: E402

from alignflow.config import LLMConfig  # noqa: E402
from alignflow.llm.cache import RequestCache  # noqa: E402
from alignflow.llm.client import LLM  # noqa: E402
from alignflow.llm.generate import answer_all  # noqa: E402


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Benchmark question {i}: explain something briefly."}]


async def raw_sdk(url: str, n: int, concurrency: int) -> float:
    client = openai.AsyncOpenAI(api_key="unused", base_url=url, max_retries=0)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await client.chat.completions.create(model="m", messages=messages(i), max_tokens=64)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


def alignflow_llm(url: str, n: int, concurrency: int, cache: RequestCache | None) -> float:
    llm = LLM(LLMConfig(provider="openai", model="m", base_url=url, api_key_env="BENCH_KEY",
                        max_concurrency=concurrency, max_tokens=64), cache)
    requests = [llm.request(messages(i)) for i in range(n)]
    started = time.perf_counter()
    results = answer_all(llm, requests)
    assert all(r.ok for r in results)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    os.environ["BENCH_KEY"] = "unused"
    n, c = args.requests, args.concurrency
    with LLMTestServer() as server, tempfile.TemporaryDirectory() as tmp:
        url = server.openai_base_url
        asyncio.run(raw_sdk(url, 50, c))  # warm up both paths
        alignflow_llm(url, 50, c, None)
        raw = asyncio.run(raw_sdk(url, n, c))
        ours = alignflow_llm(url, n, c, None)
        cache = RequestCache(tmp)
        cold = alignflow_llm(url, n, c, cache)
        warm = alignflow_llm(url, n, c, cache)
    print(f"{n} requests, concurrency {c}, loopback server")
    print(f"{'raw openai SDK':<28}{n / raw:10.0f} req/s")
    print(f"{'alignflow LLM, no cache':<28}{n / ours:10.0f} req/s   time {ours / raw:5.2f}x the SDK's")
    print(f"{'alignflow LLM, cold cache':<28}{n / cold:10.0f} req/s   time {cold / raw:5.2f}x the SDK's")
    print(f"{'alignflow LLM, warm cache':<28}{n / warm:10.0f} req/s   time {warm / raw:5.2f}x the SDK's (no request sent)")


if __name__ == "__main__":
    main()
