"""What the data-quality gate costs next to the rest of a stage's non-LLM work, on the same rows, side by side.

    .venv/bin/python benchmarks/gate_cost.py [--rows 10000] [--batch 128] [--repeat 3]

Response rows as the responses stage makes them (ids, provenance, `records.frame`) from real text: the T0
prompts of ../shared/data (median about 590 characters, a typical answer's length) as responses. Per batch the
stage's non-LLM steps are timed (building the rows, the empty-response filter, MinHash dedup against the run so
far, parquet writes) and then the gate: its own checks (decontamination against GSM8K's 1,319 test problems by
13-grams; personal data and secrets, redacted) and the GX suite (batch frame, polars to pandas, the suite,
content hash). Each check's rows per second (one core: this is one process) is printed too. Two shapes:
one batch of all rows, and the responses stage's default batches (64 instructions x 2 samples = 128 rows).
GX is imported once, before the timings, and its import is reported apart.
"""
from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

from alignflow.config import DedupConfig, GateConfig, LLMConfig
from alignflow.engine.runner import provenance
from alignflow.engine.step import Answer, Job
from alignflow.engine.store import Store, batch_key
from alignflow.llm.client import LLM
from alignflow.llm.types import Result
from alignflow.prompts import load
from alignflow.quality import gate
from alignflow.quality.contamination import index_for
from alignflow.quality.dedup import make_index
from alignflow.quality.expectations import load_suite, suite_path
from alignflow.quality.screens import screen
from alignflow.records import frame, stable_id

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DATA = SHARED / "t0_train_prompts.jsonl.gz"
STAGE = "responses"
DECONTAMINATE = GateConfig(decontaminate={"benchmarks": [str(SHARED / "gsm8k_test.jsonl")]}, pii="off")
PII = GateConfig(pii="redact")


def texts(n: int) -> list[tuple[str, str]]:
    """(instruction, response) pairs of real text: a T0 prompt answered by the next one's text. T0 reuses a
    document under many templates, so near-duplicates are dropped first: a batch of answers is mostly distinct."""
    with gzip.open(DATA, "rt") as f:
        prompts = [json.loads(line)["prompt"] for line in f]
    keep = make_index(DedupConfig(method="minhash")).add([str(i) for i in range(len(prompts))], prompts).keep
    distinct = [p for p, k in zip(prompts, keep) if k][:n + 1]
    if len(distinct) <= n:
        raise SystemExit(f"only {len(distinct) - 1} distinct rows available; use --rows {len(distinct) - 1}")
    return list(zip(distinct, distinct[1:]))


def build(pairs: list[tuple[str, str]], offset: int) -> list[dict]:
    """Rows as the responses step and the runner build them from LLM answers."""
    llm = LLM(LLMConfig(provider="openai", model="gpt-4o-mini"))
    rows, charged = [], set()
    for i, (instruction, response) in enumerate(pairs, offset):
        result = Result(ok=True, text=response, finish_reason="stop", input_tokens=len(instruction) // 4,
                        output_tokens=len(response) // 4, latency_s=1.2, attempts=1)
        answer = Answer(Job(llm, llm.request([{"role": "user", "content": instruction}]), load("respond")), result)
        instruction_id = stable_id("instructions", instruction)
        rows.append({"id": stable_id(STAGE, instruction_id, "openai", "gpt-4o-mini", 0, i % 2, None),
                     "instruction_id": instruction_id, "instruction": instruction, "response": response.strip(),
                     "generator": "0:openai:gpt-4o-mini", "sample": i % 2, "principle": None, "temperature": 0.7,
                     "max_tokens": 512, **provenance((answer,), charged)})
    return rows


def one_pass(pairs: list[tuple[str, str]], batch: int, suite, store: Store) -> dict[str, float]:
    """Every batch through the stage's non-LLM steps and the gate; seconds per step, summed over batches."""
    spent = dict.fromkeys(("build rows", "filters", "dedup (minhash)", "parquet writes", "decontamination", "pii",
                           "gate"), 0.0)
    index = make_index(DedupConfig(method="minhash"))
    for number, start in enumerate(range(0, len(pairs), batch)):
        t0 = time.perf_counter()
        rows = build(pairs[start:start + batch], start)
        t1 = time.perf_counter()
        empty = [{**r, "reason": "empty response"} for r in rows if not r["response"]]
        rows = [r for r in rows if r["response"]]
        t2 = time.perf_counter()
        decisions = index.add([r["id"] for r in rows], [r["response"] for r in rows])
        kept = [r for r, keep in zip(rows, decisions.keep) if keep]
        duplicates = [{**r, "reason": f"duplicate of {of}"} for r, keep, of in zip(rows, decisions.keep,
                                                                                   decisions.duplicate_of) if not keep]
        outcomes = {"kept": frame(kept, STAGE), "rejected": frame(empty + duplicates, STAGE)}
        t3 = time.perf_counter()
        for outcome, df in outcomes.items():
            if df.height:
                store.write_parquet(batch_key("bench", STAGE, outcome, number), df)
        t4 = time.perf_counter()
        screen(STAGE, outcomes, DECONTAMINATE)
        t5 = time.perf_counter()
        screen(STAGE, outcomes, PII)
        t6 = time.perf_counter()
        result, _ = gate.validate(STAGE, number, gate.batch_frame(outcomes), suite, "quarantine")
        t7 = time.perf_counter()
        assert result.passed, result.summary()
        for step, took in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
            spent[step] += took
    return spent


def best(pairs, batch, suite, repeat) -> dict[str, float]:
    runs = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_pass(pairs, batch, suite, Store(tmp)))
    return {step: min(run[step] for run in runs) for step in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=128, help="rows per batch in the stage's shape")
    parser.add_argument("--repeat", type=int, default=3, help="passes per shape; the fastest counts")
    args = parser.parse_args()

    pairs = texts(args.rows)
    started = time.perf_counter()
    suite = load_suite(suite_path(None, STAGE))
    gate._gx()  # GX's import, the suite and the context: once per process
    gx_once = time.perf_counter() - started
    started = time.perf_counter()
    index = index_for(DECONTAMINATE.decontaminate)
    index_once = time.perf_counter() - started

    shapes = {f"1 batch of {args.rows:,}": args.rows,
              f"{-(-args.rows // args.batch)} batches of {args.batch}": args.batch}
    figures = {name: best(pairs, size, suite, args.repeat) for name, size in shapes.items()}
    assert gate._gx.cache_info().misses == 1, "GX must be set up once per process"

    per = 10_000 / args.rows
    width = max(map(len, shapes)) + 2
    lines = [f"gate cost: {args.rows:,} response rows ({len(suite.expectations)} expectations), "
             f"fastest of {args.repeat}, seconds per 10,000 rows",
             f"GX import, suite and context, once per process: {gx_once:.1f} s",
             f"GSM8K 13-gram index ({len(index):,} items, {sum(map(len, index.grams.values())):,} n-grams), once per "
             f"process: {index_once:.2f} s", "",
             f"{'step':<26}" + "".join(f"{name:>{width}}" for name in shapes)]
    steps = list(next(iter(figures.values())))  # the gate's checks last, after the stage's own steps
    for step in steps:
        lines.append(f"{step:<26}" + "".join(f"{figures[n][step] * per:>{width}.2f}" for n in shapes))
    checks = ("decontamination", "pii", "gate")
    non_llm = {n: sum(v for k, v in f.items() if k not in checks) for n, f in figures.items()}
    lines.append(f"{'non-LLM w/o gate':<26}" + "".join(f"{non_llm[n] * per:>{width}.2f}" for n in shapes))
    for step in checks:
        lines.append(f"{step + ' / non-LLM':<26}" + "".join(f"{figures[n][step] / non_llm[n]:>{width - 1}.0%} "
                                                                 for n in shapes))
    for step in ("decontamination", "pii"):
        lines.append(f"{step + ' rows/s':<26}" + "".join(f"{args.rows / figures[n][step]:>{width},.0f}"
                                                               for n in shapes))
    lines.append(f"{'gate per batch':<26}" + "".join(
        f"{figures[n]['gate'] / -(-args.rows // shapes[n]) * 1000:>{width - 3}.0f} ms" for n in shapes))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
