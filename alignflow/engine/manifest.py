"""The run's manifest: rows per stage and outcome, tokens and requests, from the batch checkpoints alone.

Counting from checkpoints (and dataset sizes from Parquet footers) keeps the manifest cheap at any run size:
no batch file is read.
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Any

from alignflow.engine.store import RunDir, Store
from alignflow.llm.prices import Prices, load_prices
from alignflow.records import OUTCOMES

SUMMED = ("inputs", "requests", "cached", "input_tokens", "output_tokens")
# what a stage's `inputs` count, and what its outcomes (kept, rejected, failed, quarantine) count. Each input ends as
# one row, but in the instructions stage, whose inputs are prompts: each proposes several instructions, or fails as one.
COUNTED = {"seeds": ("seed tasks", "seed tasks"), "instructions": ("prompts", "instructions"),
           "responses": ("responses asked for", "responses"), "judgments": ("responses", "judgments"),
           "pairs": ("candidate pairs", "pairs"), "revisions": ("answers", "revisions"),
           "cai_labels": ("pairs", "labels")}
PROPOSING = {"instructions"}  # stages whose inputs do not each end as one row
DATASETS = ("dpo", "sft", "kto", "cai_sft", "cai_dpo")  # as `alignflow run` names them


def stage_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    counts = {o: sum(r["counts"][o] for r in records) for o in OUTCOMES}
    counts |= {k: sum(r.get(k) or 0 for r in records) for k in SUMMED}
    # judgments whose `overall` contradicts the aspects (Notus); the gate's own checks, when they ran
    for key in ("inconsistent", "contaminated", "pii_rejected", "pii_redacted"):
        if any(key in r for r in records):
            counts[key] = sum(r.get(key) or 0 for r in records)
    for key in ("contaminated_by", "pii_kinds"):
        if any(key in r for r in records):
            counts[key] = dict(sum((Counter(r.get(key) or {}) for r in records), Counter()))
    counts["batches"] = len(records)
    counts["quarantined_batches"] = sum(r.get("gate") in ("quarantined", "dropped") for r in records)
    return counts


def costs(records: list[dict[str, Any]], prices: Prices) -> dict[str, Any]:
    """Requests, tokens and dollars per model over batches; cost None where a model has no price."""
    models: dict[str, dict[str, Any]] = {}
    for record in records:
        for key, spent in (record.get("by_model") or {}).items():
            entry = models.setdefault(key, {k: spent[k] for k in ("provider", "model", "batch")} |
                                      {"requests": 0, "input_tokens": 0, "output_tokens": 0})
            for k in ("requests", "input_tokens", "output_tokens"):
                entry[k] += spent[k]
    for entry in models.values():
        cost = prices.cost(entry["provider"], entry["model"], entry["input_tokens"], entry["output_tokens"], entry["batch"])
        entry["cost_usd"] = None if cost is None else round(cost, 6)
    known = [e["cost_usd"] for e in models.values() if e["cost_usd"] is not None]
    unpriced = [key for key, e in models.items() if e["cost_usd"] is None]
    return {"cost_usd": round(sum(known), 6) if known or not models else None, "unpriced": unpriced, "by_model": models}


def spending(store: Store, run_id: str, prices: Prices) -> dict[str, dict[str, Any]]:
    """Cost per stage of the run's finished batches."""
    return {stage: costs(records, prices) for stage, records in RunDir(store, run_id).stages().items()}


def sending(kept: int, sent_on: int | None) -> dict[str, Any]:
    """How many of a stage's kept rows the next stage took, and the rest: rows kept past the target, not sent on."""
    return {} if sent_on is None else {"sent_on": sent_on, "kept_past_target": kept - sent_on}


def build(store: Store, run_id: str, extra: dict[str, Any] | None = None, prices: Prices | None = None,
          sent_on: dict[str, int] | None = None) -> dict:
    """`sent_on`: per stage, how many of its kept rows the next stage takes, where it takes fewer than all (the
    instructions a target of N instructions sends on): only the pipeline knows it, from the config."""
    prices = prices or load_prices()
    stages, by_model = {}, {}
    for stage, records in RunDir(store, run_id).stages().items():
        spent = costs(records, prices)
        counts = stage_counts(records)
        inputs_are, rows_are = COUNTED.get(stage, ("inputs", "rows"))
        stages[stage] = {**counts, "cost_usd": spent["cost_usd"], "by_model": spent["by_model"],
                         "inputs_are": inputs_are, "rows_are": rows_are,
                         **sending(counts["kept"], (sent_on or {}).get(stage))}
        for key, entry in spent["by_model"].items():
            total = by_model.setdefault(key, {**entry, "requests": 0, "input_tokens": 0, "output_tokens": 0,
                                              "cost_usd": 0.0})
            for k in ("requests", "input_tokens", "output_tokens"):
                total[k] += entry[k]
            total["cost_usd"] = None if entry["cost_usd"] is None or total["cost_usd"] is None \
                else round(total["cost_usd"] + entry["cost_usd"], 6)
    datasets = {key.rsplit("/", 1)[-1].removesuffix(".parquet"): store.row_count(key)
                for key in store.list_dir(RunDir(store, run_id).datasets_dir) if key.endswith(".parquet")}
    tokens = {k: sum(s[k] for s in stages.values()) for k in ("input_tokens", "output_tokens")}
    priced = [e["cost_usd"] for e in by_model.values()]
    cost = None if any(c is None for c in priced) else round(sum(priced), 6)
    return {"run_id": run_id, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stages": stages,
            "datasets": datasets, "tokens": tokens, "cost_usd": cost, "by_model": by_model, **(extra or {})}


def write(store: Store, run_id: str, extra: dict[str, Any] | None = None, prices: Prices | None = None,
          sent_on: dict[str, int] | None = None) -> dict:
    """Count the run again; what an earlier write added (`extra`, e.g. the target) stays unless given anew."""
    key = RunDir(store, run_id).manifest_key
    before = store.read_json(key) if store.exists(key) else {}
    manifest = build(store, run_id, prices=prices, sent_on=sent_on)
    manifest = {**{k: v for k, v in before.items() if k not in manifest}, **manifest, **(extra or {})}
    store.write_json(key, manifest)
    return manifest


def dollars(cost: float | None) -> str:
    return "?" if cost is None else f"${cost:,.4f}" if cost < 1 else f"${cost:,.2f}"


def inputs_cell(stage: str, counts: dict) -> str:
    """A stage's inputs, with what they are where they are not its rows (the instructions stage's prompts)."""
    inputs = str(counts.get("inputs", ""))
    return f"{inputs} {COUNTED[stage][0]}" if stage in PROPOSING and inputs else inputs


def table(manifest: dict) -> list[list[str]]:
    """Rows per stage and outcome; `counting_lines` says what the numbers count."""
    rows = [["stage", "inputs", *OUTCOMES, "batches q.", "tokens in", "tokens out", "cost"]]
    for stage, counts in manifest["stages"].items():
        rows.append([stage, inputs_cell(stage, counts), *(str(counts.get(o, 0)) for o in OUTCOMES),
                     str(counts.get("quarantined_batches", 0)),
                     str(counts.get("input_tokens", 0)), str(counts.get("output_tokens", 0)),
                     dollars(counts.get("cost_usd")) if counts.get("by_model") else "-"])
    return rows


def model_table(manifest: dict) -> list[list[str]]:
    """Requests, tokens and cost per model over the run."""
    rows = [["model", "requests", "tokens in", "tokens out", "cost"]]
    for key, entry in (manifest.get("by_model") or {}).items():
        rows.append([key, str(entry["requests"]), str(entry["input_tokens"]), str(entry["output_tokens"]),
                     dollars(entry["cost_usd"])])
    return rows


def empty_datasets(manifest: dict) -> list[str]:
    """The datasets the run wrote without a row, in the order `alignflow run` names them (it exits 3 on the first)."""
    empty = [name for name, rows in manifest["datasets"].items() if not rows]
    return sorted(empty, key=lambda name: DATASETS.index(name) if name in DATASETS else len(DATASETS))


def why_empty(manifest: dict, dataset: str, made_through: tuple[str, ...], run_url: str = "") -> str:
    """Which of the stages a dataset is made through (in order) emptied it, and how its rows ended, in one line;
    `run_url` goes in the command it suggests."""
    for stage in made_through:
        counts = manifest["stages"].get(stage)
        if counts is None:
            return f"the {stage} stage did not run"
        if counts["kept"] == 0:
            ended = ", ".join(f"{counts[o]} {o if o != 'quarantine' else 'quarantined'}"
                              for o in ("rejected", "failed", "quarantine") if counts[o])
            command = f"alignflow quarantine list {run_url}".strip()
            hint = f" (see `{command}`)" if counts["quarantine"] else ""
            return f"the {stage} stage kept none of its {counts['inputs']} inputs ({ended or 'none made'}){hint}"
    return "every stage kept rows, but none made a row of it"


def traffic_markdown(manifest: dict) -> str:
    """Cost by model and each endpoint's traffic, as the run's artifact shows them."""
    lines = [f"## Run {manifest['run_id']}: cost {dollars(manifest.get('cost_usd'))}", "",
             "| model | requests | tokens in | tokens out | cost |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in model_table(manifest)[1:]]
    lines += ["", "| endpoint | requests | 429s | concurrency now / lowest / set | peak in flight | paused s |",
              "|---|---:|---:|---:|---:|---:|"]
    for e in manifest.get("endpoints") or []:
        lines.append(f"| {e['endpoint']} | {e['requests']} | {e['throttled']} ({e['throttled_share']:.0%}) | "
                     f"{e['cap_now']} / {e['lowest_cap']} / {e['cap']} | {e['peak_in_flight']} | {e['paused_s']} |")
    return "\n".join(lines) + "\n"


def counting_lines(manifest: dict) -> list[str]:
    """What the table's numbers count, where a stage's inputs are not its rows, and the rows a stage kept that the
    next one did not take (instructions kept past the target)."""
    lines = []
    for stage, counts in manifest["stages"].items():
        if stage in PROPOSING:
            inputs_are, rows_are = COUNTED[stage]
            lines.append(f"{stage}: its {counts['inputs']:,} inputs are {inputs_are}, one request each; the other "
                         f"counts are {rows_are} (a failed request is one failed row)")
        if past := counts.get("kept_past_target"):
            lines.append(f"{stage}: {counts['sent_on']:,} of the {counts['kept']:,} kept were sent on to the next "
                         f"stage; {past:,} kept past the target, not sent on")
    if lines:
        lines.append("every other stage: each input ends as one row, kept, rejected, failed or quarantined")
    return lines


def screened_lines(manifest: dict) -> list[str]:
    """Per stage, what the gate's own checks found: rows contaminated by a benchmark, rows with personal data."""
    lines = []
    for stage, counts in manifest["stages"].items():
        found = []
        if "contaminated" in counts:
            by = ", ".join(f"{name} {n}" for name, n in sorted((counts.get("contaminated_by") or {}).items()))
            found.append(f"{counts['contaminated']} contaminated, rejected" + (f" ({by})" if by else ""))
        if "pii_redacted" in counts or "pii_rejected" in counts:
            kinds = ", ".join(f"{kind} {n}" for kind, n in sorted((counts.get("pii_kinds") or {}).items()))
            found.append(f"personal data or secrets: {counts.get('pii_redacted', 0)} rows redacted, "
                         f"{counts.get('pii_rejected', 0)} rejected" + (f" ({kinds})" if kinds else ""))
        if found:
            lines.append(f"{stage}: {'; '.join(found)}")
    return lines


def inconsistent_line(manifest: dict) -> str | None:
    """The Notus check's count, when `overall` was judged."""
    judged = manifest["stages"].get("judgments") or {}
    if "inconsistent" not in judged:
        return None
    return (f"Judgments whose `overall` contradicts the other aspects (judge.inconsistent_at): "
            f"{judged['inconsistent']} of {judged['kept']}")


def summary_markdown(manifest: dict, run_url: str, quarantine: str | None = None,
                     gates: dict[str, dict[str, list[str]]] | None = None) -> str:
    """The run at a glance, as the pipeline run's summary artifact shows it: where it is, its datasets, rows per
    stage and outcome, tokens and cost, gate verdicts (`gates`: stage -> verdict -> links to the batches' gate
    artifacts), reviews, and what waits in quarantine."""
    lines = [f"## alignflow run `{manifest['run_id']}`", "", f"- run directory: `{run_url}`",
             f"- manifest: `{run_url}/manifest.json`", f"- cost: {dollars(manifest.get('cost_usd'))}, tokens "
             f"{manifest['tokens']['input_tokens']:,} in / {manifest['tokens']['output_tokens']:,} out (by model and "
             "endpoint: the `traffic` artifact)"]
    if manifest.get("stopped"):
        lines.append(f"- **stopped**: {manifest['stopped']}")
    if quarantine:
        lines.append(f"- **{quarantine}**: `alignflow quarantine list {run_url}`, or the gate artifacts of this run")
    lines += ["", "| dataset | rows | file |", "|---|---:|---|"]
    lines += [f"| {name} | {rows:,} | `{run_url}/datasets/{name}.parquet` |"
              for name, rows in manifest["datasets"].items()]
    header, *rows = table(manifest)
    lines += ["", f"| {' | '.join(header)} |", "|---|" + "---:|" * (len(header) - 1)]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    if counted := counting_lines(manifest):
        lines += ["", *(f"- {line}" for line in counted)]
    if line := inconsistent_line(manifest):
        lines += ["", line]
    if screened := screened_lines(manifest):
        lines += ["", "The gate's own checks (gate.decontaminate, gate.pii):", "", *(f"- {line}" for line in screened)]
    if gates:
        lines += ["", "Gate verdicts, by stage (a batch links to its gate artifact):", ""]
        for stage, verdicts in gates.items():
            shown = [f"{len(links)} {verdict}" + (f": {', '.join(links[:10])}" if verdict != "passed" else "")
                     + (f", and {len(links) - 10} more" if verdict != "passed" and len(links) > 10 else "")
                     for verdict, links in verdicts.items()]
            lines.append(f"- {stage}: {'; '.join(shown)}" + (f" (e.g. {verdicts['passed'][0]})" if "passed" in verdicts
                                                             else ""))
    for stage, review in (manifest.get("review") or {}).items():
        verdict = "waiting for a reviewer" if review["decision"] is None else \
            f"{review['decision']} by {review['by']} at {review['at']}, {review['rows_rejected']} rows rejected" + \
            (f": {review['note']}" if review["note"] else "")
        lines.append(f"\nReview of {stage} ({review['sampled']} rows sampled): {verdict}")
        if found := review.get("agreement"):
            lines.append(f"\nThe judge agrees with the reviewer on {found['text']}; where it was least sure: "
                         f"{found['uncertain']['agree']} of {found['uncertain']['n']} (biased by design, shown apart)")
    if held := manifest.get("held"):
        lines.append(f"\n**Datasets held:** {held}")
    return "\n".join(lines) + "\n"
