"""Audit a judge before spending: the configured AI judge on pairs people labelled, and how often it agrees.

The pairs come from a file: our DPO export (`prompt`, `chosen`, `rejected`; JSONL or Parquet) or Anthropic's
HH-RLHF transcripts (`chosen` and `rejected` whole dialogues in `\\n\\nHuman:` / `\\n\\nAssistant:` turns, JSONL,
optionally gzipped), where the prompt is everything before the last `\\n\\nAssistant:` and the two answers are what
follows it. Either way the person preferred `chosen`.

The judge is the pipeline's (`judge.aspects`, `judge.llm`, the same prompt), asked for every pair and aspect in both
orders whatever `judge.both_orders` says. It prefers the answer with the higher mean rating over aspects and orders;
agreement is the share of pairs where that is the person's, ties apart, with a 95% Wilson score interval. For scale:
GPT-4 agrees with people on about 85% of the non-tie MT-Bench votes, people with each other on about 81%
(Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena").
"""
from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignflow.config import PipelineConfig
from alignflow.engine.run import Run, new_run_id
from alignflow.engine.step import ask
from alignflow.engine.store import Store, audit_key
from alignflow.llm.prices import load_prices
from alignflow.prompts import load
from alignflow.records import stable_id
from alignflow.review import agreement
from alignflow.stages import input_files
from alignflow.stages.judge import ratings_for, render, shown_order

HH_TURN = "\n\nAssistant:"
REFERENCE = {"gpt4_vs_people": 0.85, "people_vs_people": 0.81,
             "source": "MT-Bench, non-tie votes (Zheng et al. 2023, Judging LLM-as-a-Judge)"}
MIN_TOKENS = 240  # two ratings with their rationales, as the judge stage allows 120 tokens per response
SKIP_PROMPTS_DIFFER = "the two prompts differ"
SKIP_SAME_ANSWERS = "the two answers are identical"
SKIP_NO_TURN = "a transcript has no `\\n\\nAssistant:` turn"
ROW_FIELDS = ("expected `prompt`, `chosen` and `rejected` strings (a DPO export) or `chosen` and `rejected` "
              "transcripts with `\\n\\nHuman:` / `\\n\\nAssistant:` turns (HH-RLHF)")


class AuditError(ValueError):
    """A pairs file (or limit) the audit cannot use: printed as one line."""


@dataclass(frozen=True)
class Pair:
    place: str  # `path:line` (or `path:row N` in Parquet)
    prompt: str
    chosen: str  # the answer the person preferred
    rejected: str


@dataclass
class PairsRead:
    path: str
    pairs: list[Pair] = field(default_factory=list)
    rows: int = 0  # rows read (reading stops at the limit)
    skipped: Counter = field(default_factory=Counter)  # reason -> rows
    formats: Counter = field(default_factory=Counter)  # "dpo" / "hh-rlhf" -> pairs


# --------------------------------------------------------------------------- reading the pairs

def read_pairs(path: str | Path, limit: int | None = None) -> PairsRead:
    """The first `limit` usable pairs of the file (all when None), in file order, and the rows skipped and why."""
    if limit is not None and limit < 1:
        raise AuditError(f"--limit {limit}: give at least 1 pair")
    path = Path(path)
    if path.is_dir():
        raise AuditError(f"pairs file {path} is a directory, not a file")
    if not path.is_file():
        raise AuditError(f"pairs file not found: {path}")
    found = PairsRead(str(path))
    for place, record in _records(path):
        found.rows += 1
        pair = _pair(place, record)
        if isinstance(pair, str):
            found.skipped[pair] += 1
            continue
        found.pairs.append(pair)
        found.formats["dpo" if isinstance(record, dict) and "prompt" in record else "hh-rlhf"] += 1
        if limit is not None and len(found.pairs) >= limit:
            break
    if not found.pairs:
        why = f" ({_skips(found.skipped)})" if found.skipped else ""
        raise AuditError(f"pairs file {path} holds no usable pairs{why}")
    return found


def _records(path: Path) -> Iterator[tuple[str, Any]]:
    if path.suffix == ".parquet":
        yield from _parquet_rows(path)
    else:
        yield from input_files.records(path, "pairs", AuditError)


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import polars as pl

    try:
        frame = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise AuditError(f"cannot read pairs file {path}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in ("chosen", "rejected") if c not in frame.columns]
    if missing:
        raise AuditError(f"{path}: no column {', '.join(missing)}: {ROW_FIELDS}")
    columns = [c for c in ("prompt", "chosen", "rejected") if c in frame.columns]
    for number, row in enumerate(frame.select(columns).iter_rows(named=True), 1):
        yield f"{path}:row {number}", row


def _text(value: Any, role: str | None = None) -> str | None:
    """A string as it is; a conversation (our `messages` export format: `{role, content}` items) as its text: the
    answer's assistant turns, or the prompt's turns as a transcript."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                          for m in value):
        return None
    if role is not None:
        return "\n\n".join(m["content"] for m in value if m.get("role", role) == role) or None
    if len(value) == 1:
        return value[0]["content"]
    return "".join(f"\n\n{'Assistant' if m.get('role') == 'assistant' else 'Human'}: {m['content']}" for m in value)


def _pair(place: str, record: Any) -> Pair | str:
    """The pair a row holds, or the reason it is skipped; an AuditError when it is no pair at all."""
    if not isinstance(record, dict):
        raise AuditError(f"{place}: {ROW_FIELDS}")
    chosen, rejected = _text(record.get("chosen"), "assistant"), _text(record.get("rejected"), "assistant")
    if chosen is None or rejected is None:
        raise AuditError(f"{place}: {ROW_FIELDS}")
    if "prompt" in record:
        prompt = _text(record["prompt"])
        if prompt is None:
            raise AuditError(f"{place}: {ROW_FIELDS}")
    else:
        turns = (HH_TURN in chosen, HH_TURN in rejected)
        if not any(turns):
            raise AuditError(f"{place}: {ROW_FIELDS}")
        if not all(turns):
            return SKIP_NO_TURN
        prompt, _, chosen = chosen.rpartition(HH_TURN)
        other, _, rejected = rejected.rpartition(HH_TURN)
        if prompt != other:
            return SKIP_PROMPTS_DIFFER
    chosen, rejected = chosen.strip(), rejected.strip()
    if chosen == rejected:
        return SKIP_SAME_ANSWERS
    return Pair(place, prompt, chosen, rejected)


def _skips(skipped: Counter) -> str:
    return ", ".join(f"{n} skipped: {reason}" for reason, n in skipped.most_common())


# --------------------------------------------------------------------------- figures

def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _agreement(verdicts: list[int]) -> dict[str, Any]:
    """Verdicts +1 (the person's answer preferred), -1 (the other), 0 (a tie) as agreement with its interval."""
    found = agreement.figure(verdicts.count(1), verdicts.count(-1), verdicts.count(0))
    return {**{k: found[k] for k in ("agree", "disagree", "ties")},
            "agreement": None if found["agreement"] is None else round(found["agreement"], 6),
            "interval": None if found["low"] is None else [round(found["low"], 6), round(found["high"], 6)]}


# --------------------------------------------------------------------------- the audit

def audit(config: PipelineConfig, pairs_file: str | Path, limit: int | None = None, audit_id: str | None = None,
          pairs: PairsRead | None = None) -> dict[str, Any]:
    """Judge the first `limit` usable pairs of `pairs_file` in both orders per aspect; the report, also written to
    `audits/<audit_id>.json` in the config's store (its `report` says where)."""
    found = pairs or read_pairs(pairs_file, limit)
    audit_id = audit_id or new_run_id()
    run = Run(config, audit_id)  # its judge LLM: the request cache, the budget's ledger, the run's seed
    llm, template, aspects = run.llm("judge"), load("judge"), list(config.judge.aspects)
    max_tokens = max(llm.config.max_tokens, MIN_TOKENS)
    jobs = []
    for index, pair in enumerate(found.pairs):
        texts = (pair.chosen, pair.rejected)
        forward = shown_order(run.seed, stable_id("judge-audit", pair.prompt, pair.chosen, pair.rejected), 2)
        for aspect in aspects:
            for reverse in (False, True):
                order = forward[::-1] if reverse else forward
                text = render(pair.prompt.strip(), [texts[i] for i in order], aspect)
                jobs.append(ask(llm, template, text, label=f"{aspect}{' reversed' if reverse else ''}",
                                data=(index, aspect, reverse, order), schema=ratings_for(2),
                                max_tokens=max_tokens))
    started = time.perf_counter()
    results = run.generate([(job.llm, job.request) for job in jobs], "judge audit")
    elapsed = time.perf_counter() - started

    # diffs[pair][(aspect, reversed)] = rating of the person's answer - rating of the other
    diffs: list[dict[tuple[str, bool], float]] = [{} for _ in found.pairs]
    failed_pairs: set[int] = set()
    errors: Counter = Counter()
    for job, result in zip(jobs, results):
        index, aspect, reverse, order = job.data
        if not result.ok:
            failed_pairs.add(index)
            errors[str(result.error)] += 1
            continue
        by_side = {order[position]: rating.rating for position, rating in enumerate(result.parsed.ratings)}
        diffs[index][(aspect, reverse)] = by_side[0] - by_side[1]

    rated = [(i, d) for i, d in enumerate(diffs) if i not in failed_pairs]
    overall = [_sign(_mean(list(d.values()))) for _, d in rated]
    by_aspect = {a: _agreement([_sign(d[(a, False)] + d[(a, True)]) for _, d in rated]) for a in aspects}
    order_flips = order_compared = order_ties = 0
    details = []
    for (i, d), verdict in zip(rated, overall):
        forward = _sign(_mean([d[(a, False)] for a in aspects]))
        reverse = _sign(_mean([d[(a, True)] for a in aspects]))
        if forward and reverse:
            order_compared += 1
            order_flips += forward != reverse
        else:
            order_ties += 1
        details.append({"place": found.pairs[i].place, "verdict": verdict, "forward": forward, "reversed": reverse,
                        "margin": round(_mean(list(d.values())), 4)})

    paid = [r for r in results if r.paid]
    tokens = {"input": sum(r.input_tokens for r in paid), "output": sum(r.output_tokens for r in paid)}
    cost = load_prices(config.prices).cost(llm.provider, llm.model, tokens["input"], tokens["output"],
                                           llm.config.mode == "batch")
    secrets = [s for s in (os.environ.get(llm.config.key_env or ""),) if s]
    store = Store(config.store)
    key = audit_key(audit_id)
    report = {
        "audit_id": audit_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pairs_file": found.path,
        "formats": dict(found.formats),
        "limit": limit,
        "rows_read": found.rows,
        "skipped": dict(found.skipped),
        "pairs": len(found.pairs),
        "judge": {**llm.config.model_dump(include={"provider", "base_url", "temperature", "mode"}),
                  "max_tokens": max_tokens,
                  "model": llm.model, "aspects": aspects, "template": template.version,
                  "rubrics": {a: load(f"rubric_{a}").version for a in aspects}},
        "seed": run.seed,
        "rated": len(rated),
        "failed_pairs": len(failed_pairs),
        **_agreement(overall),
        "by_aspect": by_aspect,
        "order": {"compared": order_compared, "flipped": order_flips, "ties": order_ties,
                  "flip_share": round(order_flips / order_compared, 6) if order_compared else None},
        "requests": len(jobs),
        "failed_requests": sum(not r.ok for r in results),
        "cached_requests": sum(r.cached and not r.paid for r in results),
        "errors": [{"error": _scrub(e, secrets), "requests": n} for e, n in errors.most_common(3)],
        "tokens": tokens,
        "cost_usd": None if cost is None else round(cost, 6),
        "seconds": round(elapsed, 2),
        "reference": REFERENCE,
        "report": store.join(key),
        "details": details,
    }
    store.write_json(key, report)
    return report


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _interval(figures: dict[str, Any]) -> str:
    if figures["interval"] is None:
        return "no pair preferred either way"
    low, high = figures["interval"]
    return f"{_percent(figures['agreement'])} (95% CI {low:.1%}-{high:.1%})"


def figures(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The report's figures as (figure, value) rows, for a terminal table or a markdown artifact."""
    judge, order = report["judge"], report["order"]
    skipped = _skips(Counter(report["skipped"])) or "none skipped"
    rows = [
        ("judge", f"{judge['provider']} {judge['model']}; aspects {', '.join(judge['aspects'])}; both orders"),
        ("pairs audited", f"{report['pairs']} ({report['rows_read']} rows read, {skipped})"),
        ("agreement with people", f"{_interval(report)}: {report['agree']} agree, {report['disagree']} disagree, "
                                  f"{report['ties']} ties"),
    ]
    for aspect, found in report["by_aspect"].items():
        rows.append((f"  {aspect}", f"{_interval(found)}: {found['agree']} agree, {found['disagree']} disagree, "
                                    f"{found['ties']} ties"))
    rows += [
        ("flips when reversed", f"{_percent(order['flip_share'])} ({order['flipped']} of {order['compared']}; "
                                f"{order['ties']} with a tie in one order)"),
        ("failed requests", f"{report['failed_requests']} of {report['requests']} "
                            f"({report['failed_pairs']} pairs left out)"),
        ("tokens", f"{report['tokens']['input']:,} in, {report['tokens']['output']:,} out"
                   + (f" ({report['cached_requests']} answers from the cache)" if report["cached_requests"] else "")),
        ("cost", "? (the model has no price: see `prices`)" if report["cost_usd"] is None
         else f"${report['cost_usd']:,.4f}"),
        ("for scale", f"GPT-4 vs people ~{REFERENCE['gpt4_vs_people']:.0%}, people vs people "
                      f"~{REFERENCE['people_vs_people']:.0%} ({REFERENCE['source'].split(' (')[0]})"),
    ]
    return rows


def markdown(report: dict[str, Any]) -> str:
    """The figures as a markdown table, with where the report is."""
    lines = [f"# Judge audit {report['audit_id']}", "", f"Pairs: `{report['pairs_file']}`", "",
             "| figure | value |", "|---|---|"]
    lines += [f"| {name.strip()} | {value.replace('|', '/')} |" for name, value in figures(report)]
    lines += ["", f"Report: `{report['report']}`"]
    return "\n".join(lines)
