"""The dataset card: a `README.md` in the Hugging Face dataset-card format, beside a run's datasets and beside every
export, saying what the run already knows so the person who publishes the data need not write it by hand.

The front matter is what the Hub and `datasets` read: `configs` (one per dataset file with rows, so
`load_dataset(dir, name)` loads it; `dpo` is the default), `dataset_info` (each file's features, derived from its
schema, and its split's size), `license`, `language`, `task_categories`, `size_categories`, `tags`. The body is made
from the run's store alone (the manifest, each stage's `stage.json`, the rejected rows' reasons, the quarantine
reports), so the card `alignflow export` writes says what the run's own card says: how the data was made (stages,
models, prompt template versions, seeds), what the gates removed and why, contamination and personal data, the
review and the judge's agreement with people, tokens and cost, and how to load it and train on it with TRL.

Licence: a run's texts descend from its seed tasks, so the card takes their licence when the seeds are a set
alignflow knows by content (its own and Self-Instruct's, both Apache-2.0); otherwise `license: other`, and the body
says the licence is unknown. `language: en` only with known (English) seeds.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import polars as pl
import yaml

from alignflow.engine import manifest as manifests
from alignflow.engine.outputs import read_decisions
from alignflow.engine.store import RunDir, Store
from alignflow.quality.gate import GateResult
from alignflow.stages import registry

CARD = "README.md"
MARK = "<!-- alignflow dataset card"  # the first line of every card alignflow writes: what it may write over
DEFAULT = "dpo"
SPLIT = "train"
DIRECTORY = "path/to/this/directory"  # how the snippets name the card's directory (or its Hub id, once pushed)
OFFSET_BYTES = 4  # per string or list value in Arrow, as `datasets` holds them (32-bit offsets)
WIDTH = {pl.Float64: 8, pl.Int64: 8, pl.UInt64: 8, pl.Float32: 4, pl.Int32: 4, pl.UInt32: 4, pl.Int16: 2,
         pl.UInt16: 2, pl.Int8: 1, pl.UInt8: 1, pl.Null: 0}
DTYPES = {pl.String: "string", pl.Boolean: "bool", pl.Float64: "float64", pl.Float32: "float32", pl.Int64: "int64",
          pl.Int32: "int32", pl.Int16: "int16", pl.Int8: "int8", pl.UInt64: "uint64", pl.UInt32: "uint32",
          pl.UInt16: "uint16", pl.UInt8: "uint8", pl.Null: "null"}
SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))
LICENCES = {"apache-2.0": "Apache-2.0", "other": "unknown"}
PAST = {"release": "released", "drop": "dropped"}  # hand decisions on quarantined batches
EXAMPLE_CHARS = 100


@dataclass(frozen=True)
class Kind:
    """What one of alignflow's datasets is, the TRL trainer that takes it, and its Hub tags."""

    what: str
    trainer: str
    tags: tuple[str, ...]


KINDS = {
    "dpo": Kind("preference pairs: `prompt`, `chosen`, `rejected`, the judge's scores per aspect, lineage", "DPO",
                ("dpo", "preference")),
    "sft": Kind("the best-rated response to each instruction as `messages` (user, assistant), with its score", "SFT",
                ("sft",)),
    "kto": Kind("unpaired preferences: `prompt`, `completion`, `label` (a pair's chosen answer True, its rejected "
                "one False)", "KTO", ("kto", "preference")),
    "cai_sft": Kind("answers revised under a constitution (critique, then revision) as `messages`", "SFT",
                    ("sft", "constitutional-ai")),
    "cai_dpo": Kind("the final revision preferred to the initial answer: `prompt`, `chosen`, `rejected`", "DPO",
                    ("dpo", "preference", "constitutional-ai")),
    "cai_labels": Kind("AI preference labels under principles, judged in both orders: `prompt`, `chosen`, "
                       "`rejected`, `label`", "DPO", ("dpo", "preference", "constitutional-ai", "rlaif")),
}
ORDER = tuple(KINDS)
MADE_BY = {"instructions": "instructions written by a model from seed tasks (Self-Instruct)",
           "responses": "answered by generator models",
           "revisions": "critiqued and revised under a constitution (Constitutional AI)",
           "judgments": "rated 1-5 per aspect by an AI judge (UltraFeedback-style)",
           "pairs": "paired into a chosen and a rejected answer",
           "cai_labels": "compared by an AI under principles, in both orders (RL-CAI)"}
ROLES = {"llm": "", "generators": "", "initial": "initial answers: ", "judge": "judge: "}  # the LLMs in a stage's settings


@dataclass(frozen=True)
class SeedSet:
    name: str
    source: str
    license: str  # the Hub's licence id


def seeds_fingerprint(ids: Iterable[str]) -> str:
    """A seed set by its content: the seed rows' ids are hashes of their texts, so any change of a task changes it."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


KNOWN_SEEDS = {
    "bb7e2c405b4b0b02": SeedSet("alignflow's own seed tasks", "`data/seed_tasks.jsonl`, written for alignflow",
                                "apache-2.0"),
    "ff339cce90592dda": SeedSet("the Self-Instruct seed tasks", "yizhongw/self-instruct `data/seed_tasks.jsonl`",
                                "apache-2.0"),
}


# ---------------------------------------------------------------------------------------------------- the files

@dataclass(frozen=True)
class Table:
    """One dataset file the card describes: its config name, its path relative to the card, its size and features
    (None: not a table `datasets` loads, as an Argilla directory's records)."""

    name: str
    path: str
    rows: int
    num_bytes: int = 0
    features: list[dict[str, Any]] | None = None

    @classmethod
    def of(cls, name: str, path: str, frame: pl.LazyFrame) -> Table:
        """Measured in one streamed pass: rows, and the bytes of its Arrow columns."""
        schema = frame.collect_schema()
        size = frame.select(rows=pl.len(), bytes=pl.sum_horizontal(_column_bytes(pl.col(c), t)
                                                                    for c, t in schema.items())).collect()
        return cls(name, path, size["rows"].item(), size["bytes"].item() or 0,
                   [{"name": c, **hf_type(t)} for c, t in schema.items()])

    @property
    def loadable(self) -> bool:
        return self.features is not None and self.rows > 0

    @property
    def conversational(self) -> bool:
        """Prompts as chat messages (TRL's conversational format) rather than strings."""
        first = (self.features or [{}])[0]
        return "list" in first


def hf_type(dtype: pl.DataType) -> dict[str, Any]:
    """A polars type as the `datasets` feature YAML spells it: `dtype: string`, `struct: [...]`, `list: ...`. Strings
    and lists are the plain Arrow types (`datasets` casts polars' large ones on load)."""
    if isinstance(dtype, pl.Struct):
        return {"struct": [{"name": f.name, **hf_type(f.dtype)} for f in dtype.fields]}
    if isinstance(dtype, pl.List | pl.Array):
        inner = hf_type(dtype.inner)
        return {"list": inner.get("dtype", inner.get("struct", inner))}
    return {"dtype": DTYPES[dtype.base_type()]}


def _column_bytes(column: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """The bytes of a column in Arrow, as `datasets` counts a split's `num_bytes`: values, offsets, and a validity
    bitmap where there are nulls."""
    count = column.len().cast(pl.Int64)
    bitmap = (count + 7) // 8
    validity = pl.when(column.null_count() > 0).then(bitmap).otherwise(0)
    if dtype == pl.String:
        values = column.str.len_bytes().cast(pl.Int64).sum() + OFFSET_BYTES * count
    elif isinstance(dtype, pl.List | pl.Array):
        values = OFFSET_BYTES * count + _column_bytes(column.explode(keep_nulls=False), dtype.inner)
    elif isinstance(dtype, pl.Struct):
        values = pl.sum_horizontal(_column_bytes(column.struct.field(f.name), f.dtype) for f in dtype.fields)
    elif dtype == pl.Boolean:
        values = bitmap
    else:
        values = WIDTH[dtype.base_type()] * count
    return values + validity


def ordered(tables: list[Table]) -> list[Table]:
    """alignflow's datasets in their usual order (dpo first), then any other by name."""
    return sorted(tables, key=lambda t: (ORDER.index(t.name) if t.name in ORDER else len(ORDER), t.name))


# ---------------------------------------------------------------------------------------------------- the run

@dataclass
class Facts:
    """What the store says of a run, read once for the card."""

    run_id: str
    manifest: dict[str, Any]
    stages: dict[str, dict[str, Any]]  # stage -> its description in stage.json, in pipeline order
    seeds: int | None  # seed tasks, when the run had a seeds stage
    seed_set: SeedSet | None
    reasons: dict[str, list[dict[str, Any]]]  # stage -> [{kind, rows, example}], most rows first
    quarantined: list[tuple[str, list[str]]]  # batches the gate holds, with their failed expectations
    decisions: list[dict[str, Any]]  # releases and drops made by hand

    @classmethod
    def read(cls, store: Store, run_id: str) -> Facts:
        run = RunDir(store, run_id)
        manifest = run.read_json(run.manifest_key) or manifests.build(store, run_id)
        stages = {name: record["description"] for name in registry.NAMES
                  if (record := run.stage_record(name)) is not None}
        counted = manifest["stages"]
        seed_ids = run.scan("seeds").select("id").collect()["id"] if "seeds" in counted else None
        return cls(
            run_id=run_id, manifest=manifest, stages=stages,
            seeds=None if seed_ids is None else seed_ids.len(),
            seed_set=None if seed_ids is None else KNOWN_SEEDS.get(seeds_fingerprint(seed_ids)),
            reasons={stage: rejection_reasons(run.scan(stage, "rejected")) for stage, counts in counted.items()
                     if counts.get("rejected")},
            quarantined=[held for stage, counts in counted.items() if counts.get("quarantine")
                         for held in _quarantined(store, run, stage)],
            decisions=read_decisions(store, run_id))

    @property
    def license(self) -> str:
        return self.seed_set.license if self.seed_set else "other"


def rejection_reasons(rejected: pl.LazyFrame) -> list[dict[str, Any]]:
    """Rejected rows counted by the kind of their reason: the reason up to its first `: `, without a trailing
    parenthesis and with each word holding a digit as `…`, so `duplicate of 3f2a… (rouge 0.83)` and `too short: 3
    words < 4` count as `duplicate of …` and `too short`; each kind keeps one whole reason as an example (the first in
    sort order, so the card is the same however often it is written). Only the `reason` column is read."""
    reason = pl.col("reason").fill_null("no reason given")
    kind = reason.str.split(": ").list.first().str.replace(r" \([^)]*\)$", "").str.replace_all(r"\S*\d\S*", "…")
    counted = (rejected.select(kind.alias("kind"), reason.alias("example")).group_by("kind")
               .agg(pl.len().alias("rows"), pl.col("example").min()).sort(["rows", "kind"], descending=[True, False]))
    return counted.collect().to_dicts()


def _quarantined(store: Store, run: RunDir, stage: str) -> list[tuple[str, list[str]]]:
    reports = [k for k in store.list_dir(run.outcome_dir(stage, "quarantine")) if k.endswith(".json")]
    held = []
    for key in reports:
        result = GateResult.from_dict(store.read_json(key)["gate"])
        held.append((result.name, list(dict.fromkeys(check.name() for check in result.failed))))
    return held


# ---------------------------------------------------------------------------------------------------- the card

def written_by_alignflow(text: str) -> bool:
    """Whether a README.md is a card alignflow wrote (its body starts with the mark), which it may write again."""
    return text.split("\n---\n", 1)[-1].lstrip().startswith(MARK)


def render(facts: Facts, tables: list[Table]) -> str:
    """The card of `tables` (files beside it) from the run's `facts`: YAML front matter, then the body."""
    tables = ordered(tables)
    meta = yaml.safe_dump(front_matter(facts, tables), sort_keys=False, allow_unicode=True, width=120)
    sections = [_intro(facts, tables), _made(facts), _gates(facts), _screens(facts), _review(facts), _cost(facts),
                _use(tables), _licence(facts)]
    return f"---\n{meta}---\n\n" + "\n\n".join(s for s in sections if s) + "\n"


def front_matter(facts: Facts, tables: list[Table]) -> dict[str, Any]:
    loadable = [t for t in tables if t.loadable]
    default = next((t for t in loadable if t.name == DEFAULT), loadable[0] if loadable else None)
    tags = ["alignflow", "synthetic", *dict.fromkeys(tag for t in tables for tag in _kind(t.name).tags)]
    meta: dict[str, Any] = {"pretty_name": f"alignflow run {facts.run_id}", "license": facts.license}
    if facts.seed_set:
        meta["language"] = ["en"]
    meta |= {"task_categories": ["text-generation"],
             "size_categories": [size_category(max((t.rows for t in tables), default=0))], "tags": tags}
    if loadable:
        meta["configs"] = [{"config_name": t.name, "data_files": [{"split": SPLIT, "path": t.path}],
                            **({"default": True} if t is default else {})} for t in loadable]
        meta["dataset_info"] = [{"config_name": t.name, "features": t.features,
                                 "splits": [{"name": SPLIT, "num_bytes": t.num_bytes, "num_examples": t.rows}],
                                 "dataset_size": t.num_bytes} for t in loadable]
    return meta


def size_category(rows: int) -> str:
    return next((name for bound, name in SIZES if rows < bound), "n>100M")


def _kind(name: str) -> Kind:
    return KINDS.get(name, Kind("", "", ()))


def _cell(text: Any) -> str:
    """Text fit for one markdown table cell: one line, no column bar, at most EXAMPLE_CHARS."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    align = "|".join("---:" if i in numeric else "---" for i in range(len(header)))
    return "\n".join([f"| {' | '.join(header)} |", f"|{align}|", *(f"| {' | '.join(map(str, r))} |" for r in rows)])


def _n(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _intro(facts: Facts, tables: list[Table]) -> str:
    made = [MADE_BY[s] for s in facts.stages if s in MADE_BY]
    updated = facts.manifest.get("updated", "")[:10]
    lines = [f"{MARK}: run {facts.run_id}. alignflow writes this file from the run's store, and writes it again with "
             "the datasets and with every `alignflow export`. -->", "",
             f"# alignflow run `{facts.run_id}`", "",
             f"Synthetic training data made by alignflow{f' ({updated})' if updated else ''}: "
             f"{', '.join(made) or 'made from the run below'}. Each stage's filters and deduplication, and the "
             "data-quality gate (a Great Expectations suite on every batch) when it was on, decided which rows "
             "reached these files: what they removed is below.", ""]
    rows = []
    default = next((t for t in tables if t.loadable and t.name == DEFAULT), next((t for t in tables if t.loadable),
                                                                                  None))
    for t in tables:
        what = _kind(t.name).what
        if t.features is None:
            what = "an Argilla dataset directory (`rg.Dataset.from_disk`): one record per pair, the judge's " \
                   "verdicts as suggestions"
        elif not t.rows:
            what = f"no rows, so no config: {_why_empty(facts.manifest, t.name)}"
        elif t.conversational:
            what += " (chat messages: TRL's conversational format)"
        name = f"`{t.name}`" + (" (default)" if t is default else "")
        rows.append([name, f"`{t.path}`", _n(t.rows), what])
    lines.append(_table(["config", "file", "rows", "what it is"], rows, {2}))
    return "\n".join(lines)


def _why_empty(manifest: dict[str, Any], dataset: str) -> str:
    through = registry.made_through(dataset)
    return manifests.why_empty(manifest, dataset, through) if through else "none was made"


def _made(facts: Facts) -> str:
    counted = facts.manifest["stages"]
    rows = []
    for stage, description in facts.stages.items():
        models = _models(description.get("settings") or {})
        templates = ", ".join(f"`{name}` v{version}" for name, version in (description.get("templates") or {}).items())
        kept = (counted.get(stage) or {}).get("kept")
        rows.append([stage, "; ".join(models) or "-", templates or "-", _n(kept) if kept is not None else "-"])
    lines = ["## How it was made", "", _table(["stage", "models", "prompt templates", "rows kept"], rows, {3}), ""]
    lines.append(_seeds_line(facts))
    seeds = {d.get("seed") for d in facts.stages.values() if d.get("seed") is not None}
    if len(seeds) == 1:
        lines.append(f"Sampling seed: {seeds.pop()} (in every request, so the run's requests can be repeated).")
    if target := facts.manifest.get("target"):
        what = "instructions" if target["dataset"] == "instructions" else f"{target['dataset']} rows"
        lines.append(f"Target: {_n(target['rows'])} {what}; made {_n(target['made'])}"
                     f"{'' if target.get('reached') else ' (not reached' + _stopped_by(target) + ')'}.")
    settings = {stage: _without_urls(d) for stage, d in facts.stages.items()}
    lines += ["", "<details><summary>Each stage's settings, as the run recorded them (<code>stage.json</code>)"
              "</summary>", "", "```yaml", yaml.safe_dump(settings, sort_keys=False, allow_unicode=True, width=120)
              .rstrip(), "```", "", "</details>"]
    return "\n".join(lines)


def _stopped_by(target: dict[str, Any]) -> str:
    return f": stopped by {target['stopped_by']}" if target.get("stopped_by") else ""


def _models(settings: dict[str, Any]) -> list[str]:
    """The LLMs a stage's settings name, by role: `openai gpt-4o-mini (temperature 0.7)`."""
    found = []
    for key, role in ROLES.items():
        value = settings.get(key)
        for llm in value if isinstance(value, list) else [value] if isinstance(value, dict) else []:
            temperature = f" (temperature {llm['temperature']:g})" if llm.get("temperature") is not None else ""
            found.append(f"{role}{llm.get('provider', '')} `{llm.get('model')}`{temperature}")
    return found


def _without_urls(value: Any) -> Any:
    """Settings without endpoint URLs (a host of the user's network is no part of the data)."""
    if isinstance(value, dict):
        return {k: _without_urls(v) for k, v in value.items() if k != "base_url"}
    if isinstance(value, list):
        return [_without_urls(v) for v in value]
    return value


def _seeds_line(facts: Facts) -> str:
    if facts.seeds is None:
        return "Seed tasks: none (the prompts came from a file given to the run)."
    if facts.seed_set:
        return (f"Seed tasks: {_n(facts.seeds)}, {facts.seed_set.name} ({facts.seed_set.source}; "
                f"{LICENCES[facts.seed_set.license]}).")
    return f"Seed tasks: {_n(facts.seeds)}, a set alignflow does not know: its licence is unknown."


def _gates(facts: Facts) -> str:
    counted = facts.manifest["stages"]
    rows = [[stage, _n(c.get("inputs", "")), _n(c["kept"]), _n(c["rejected"]), _n(c["failed"]),
             f"{_n(c['quarantine'])} ({c.get('quarantined_batches', 0)} batches)" if c["quarantine"] else "0"]
            for stage, c in _in_order(counted)]
    lines = ["## What the gates removed", "",
             "Every row a stage made ends kept, rejected (with its reason), failed (its request could not be "
             "answered) or quarantined (its batch failed the expectation suite and is held, not in the datasets).", "",
             _table(["stage", "inputs", "kept", "rejected", "failed", "quarantined"], rows, {1, 2, 3, 4, 5})]
    reasons = [[stage, _cell(r["kind"]), _n(r["rows"]), _cell(r["example"])]
               for stage, found in _in_order(facts.reasons) for r in found]
    if reasons:
        lines += ["", "Rejected rows by reason:", "", _table(["stage", "reason", "rows", "e.g."], reasons, {2})]
    if facts.quarantined:
        lines += ["", "Batches the gate holds:", ""]
        lines += [f"- `{name}`: {', '.join(f'`{c}`' for c in failed) or 'no failed expectation recorded'}"
                  for name, failed in facts.quarantined]
    if facts.decisions:
        lines += ["", "Decided by hand:", ""]
        lines += [f"- `{d['batch']}` {PAST.get(d['action'], d['action'])} ({d['at']}): {_cell(d['reason'])}"
                  for d in facts.decisions]
    if line := manifests.inconsistent_line(facts.manifest):
        lines += ["", line + "."]
    return "\n".join(lines)


def _in_order(by_stage: dict[str, Any]) -> list[tuple[str, Any]]:
    order = {name: i for i, name in enumerate(registry.NAMES)}
    return sorted(by_stage.items(), key=lambda item: order.get(item[0], len(order)))


def _counts(found: dict[str, int] | None) -> str:
    return ", ".join(f"{k} {_n(v)}" for k, v in sorted((found or {}).items(), key=lambda kv: -kv[1])) or "-"


def _screens(facts: Facts) -> str:
    """Benchmark contamination and personal data, per stage whose texts the gate screens: "not checked" where the
    manifest has no figure."""
    rows = []
    for stage, c in _in_order(facts.manifest["stages"]):
        if stage == "seeds":
            continue
        contaminated = [_n(c["contaminated"]), _counts(c.get("contaminated_by"))] if "contaminated" in c \
            else ["not checked", "-"]
        pii = [_n(c["pii_rejected"]), _n(c.get("pii_redacted", 0)), _counts(c.get("pii_kinds"))] \
            if "pii_rejected" in c else ["not checked", "-", "-"]
        rows.append([stage, *contaminated, *pii])
    return "\n".join(["### Benchmark contamination, personal data and secrets", "",
                      "Rows sharing a word n-gram with a benchmark item are rejected; personal data and secrets "
                      "(e-mail, phone, card numbers, IBAN, IP addresses, API keys, private keys) are rejected or "
                      "replaced by a typed placeholder, as `gate.pii` says.", "",
                      _table(["stage", "contaminated rows", "by benchmark", "personal data: rows rejected",
                              "rows redacted", "spans by kind"], rows)])


def _review(facts: Facts) -> str:
    reviews = facts.manifest.get("review") or {}
    lines = ["## Review by people", ""]
    if not reviews:
        lines.append("No person reviewed this run's rows (`review.stages` was empty).")
        return "\n".join(lines)
    rows = []
    for stage, r in reviews.items():
        if r.get("decision") is None:
            rows.append([stage, _n(r["sampled"]), "waiting for a reviewer", "-", "-", "-"])
            continue
        changed = ", ".join(f"{_n(r[k])} {k.removeprefix('rows_')}" for k in ("rows_swap", "rows_tie", "rows_edit")
                            if r.get(k)) or "-"
        rows.append([stage, _n(r["sampled"]), f"{r['decision']} by {r['by']} ({r['at']})", _n(r["rows_rejected"]),
                     changed, _cell(r.get("note") or "-")])
    lines.append(_table(["stage", "rows shown", "decision", "rows taken out", "rows changed", "note"], rows, {1, 3}))
    for stage, r in reviews.items():
        if found := r.get("agreement"):
            lines += ["", _agreement(stage, found)]
    return "\n".join(lines)


def _agreement(stage: str, found: dict[str, Any]) -> str:
    uncertain = found.get("uncertain") or {}
    lines = [f"The judge agrees with the reviewer ({stage}) on {found['text']}; where it was least sure: "
             f"{uncertain.get('agree', 0)} of {uncertain.get('n', 0)} (biased toward its mistakes by design, shown "
             "apart). Agreement is keep / (keep + swap), with a 95% Wilson interval, on the pairs drawn at random."]
    aspects = [[aspect, f"{f['agreement']:.2f}", f"[{f['low']:.2f}, {f['high']:.2f}]", _n(f["n"])]
               for aspect, f in (found.get("aspects") or {}).items() if f.get("n")]
    if aspects:
        lines += ["", _table(["aspect", "agreement", "95% interval", "pairs"], aspects, {1, 3})]
    return "\n".join(lines)


def _cost(facts: Facts) -> str:
    m = facts.manifest
    rows = [[f"{e['provider']} `{e['model']}`" + (" (Batch API)" if e.get("batch") else ""), _n(e["requests"]),
             _n(e["input_tokens"]), _n(e["output_tokens"]), manifests.dollars(e.get("cost_usd"))]
            for e in (m.get("by_model") or {}).values()]
    tokens = m.get("tokens") or {}
    total = (f"In all: {_n(tokens.get('input_tokens', 0))} tokens in, {_n(tokens.get('output_tokens', 0))} out, "
             f"{manifests.dollars(m.get('cost_usd'))}")
    unpriced = " (`?`: a model alignflow's price table does not list; see `prices`)" if m.get("cost_usd") is None \
        else " at list prices"
    lines = ["## Tokens and cost", ""]
    if rows:
        lines += [_table(["model", "requests", "tokens in", "tokens out", "cost"], rows, {1, 2, 3, 4}), ""]
    lines.append(total + unpriced + ".")
    return "\n".join(lines)


def _use(tables: list[Table]) -> str:
    loadable = [t for t in tables if t.loadable]
    lines = ["## Use"]
    if loadable:
        first = loadable[0]
        builder = "json" if first.path.endswith((".jsonl", ".json")) else "parquet"
        lines += ["", "```python", "from datasets import load_dataset", "",
                  *(f'{t.name} = load_dataset("{DIRECTORY}", "{t.name}", split="{SPLIT}")' for t in loadable),
                  f'# or one file: load_dataset("{builder}", data_files="{first.path}", split="{SPLIT}")', "```",
                  "", "Train with TRL (each trainer takes its dataset as it is; extra columns are ignored):", "",
                  "```python", _trl(loadable), "```"]
    if any(t.features is None for t in tables):
        lines += ["", "```python", "import argilla as rg", "", f'dataset = rg.Dataset.from_disk("{DIRECTORY}")  # '
                  "with an Argilla client, to review the pairs by hand", "```"]
    return "\n".join(lines)


def _trl(tables: list[Table]) -> str:
    trainers = list(dict.fromkeys(_kind(t.name).trainer for t in tables if _kind(t.name).trainer))
    imports = ", ".join(f"{name}{part}" for name in trainers for part in ("Config", "Trainer"))
    lines = ["from transformers import AutoModelForCausalLM, AutoTokenizer", f"from trl import {imports}", "",
             'model_id = "HuggingFaceTB/SmolLM2-135M-Instruct"  # any causal LM',
             "model, tokenizer = AutoModelForCausalLM.from_pretrained(model_id), AutoTokenizer.from_pretrained(model_id)"]
    for trainer in trainers:
        t = next(t for t in tables if _kind(t.name).trainer == trainer)
        lines += ["", f"{trainer}Trainer(model=model, args={trainer}Config(output_dir=\"{t.name}-model\"), "
                      f"train_dataset={t.name}, processing_class=tokenizer).train()"]
    return "\n".join(lines)


def _licence(facts: Facts) -> str:
    models = sorted({f"{e['provider']} `{e['model']}`" for e in (facts.manifest.get("by_model") or {}).values()})
    terms = (f" What the models wrote ({', '.join(models)}) is also subject to their providers' terms: check them "
             "before you publish.") if models else ""
    if facts.seed_set:
        said = (f"{LICENCES[facts.seed_set.license]}, the licence of the seed tasks every row descends from "
                f"({facts.seed_set.name}).")
    else:
        said = ("Unknown: the seed tasks are not a set alignflow knows, so `license` says `other`. Set it to the "
                "licence of the data the run started from.")
    return f"## Licence\n\n{said}{terms}"
