"""Final datasets in the shapes trainers and reviewers take, built from a run's kept pairs, responses and judgments.

- DPO: `prompt`, `chosen`, `rejected`, `score_chosen`, `score_rejected`, `margin`, per-aspect scores, lineage.
  `pairs.format: string` is TRL's standard preference format (three strings); `messages` is its conversational
  one: prompt `[{"role": "user", ...}]`, chosen and rejected `[{"role": "assistant", ...}]`.
- SFT: the best-rated response of every judged instruction as `messages` [user, assistant], with score and lineage.
- KTO: TRL's unpaired preference format, `prompt`, `completion`, `label` (strings or messages like DPO).
  Labelling rule: the chosen response of a kept pair is desirable (True), its rejected response undesirable (False).
  This is how TRL's `unpair_preference_dataset` and the KTO paper turn paired data such as binarized UltraFeedback
  into KTO data. A label relative to a response the judge rated lower (by at least `pairs.min_margin`) does not drift
  with a lenient or harsh judge the way an absolute threshold (rating >= 4) would, and one pair per prompt gives the
  1:1 desirable/undesirable balance KTO's default weights assume. Each response appears once; one that is chosen in
  one pair and rejected in another (`all_pairs`) has no clear label and is left out.
- JSONL: the DPO rows, one JSON object per line, for tools that do not read Parquet.
- Argilla: a directory in Argilla 2.x's `Dataset.to_disk` layout (`.argilla/settings.json`, `.argilla/dataset.json`,
  `records.json`), which `rg.Dataset.from_disk(path)` imports for human review: one record per pair, the judge's
  aspect scores and preference as suggestions. It is written as plain JSON because the argilla SDK cannot build
  settings without a live server.

`write_datasets` writes dpo, sft and kto into `<run>/datasets/` at the end of a pipeline; `export` writes one
format of any run to a local path, atomically (a temp file or directory renamed into place). The pipeline writes
a dataset even when it has no rows (so no stale file survives a re-run); `export` refuses to, since
`datasets.load_dataset` cannot load an empty file.

Every dataset gets a card (`alignflow.stages.card`): `write_card` writes `<run>/datasets/README.md` for every file in
`datasets/` once the run's manifest is written, and each export writes one beside its file, `README.md` in the same
directory (inside the directory, for Argilla), describing that one config with the file's name as its path. An
export's card replaces a card alignflow wrote (of this run or another), never any other README.md: an export that
would is refused before anything is written.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal

import polars as pl

from alignflow.engine.run import Run
from alignflow.engine.store import RunDir, Store
from alignflow.records import ASPECTS
from alignflow.stages import card
from alignflow.stages.card import Facts, Table

PairsFormat = Literal["string", "messages"]
Frame = pl.DataFrame | pl.LazyFrame  # the datasets are built the same way, eagerly in tests, lazily for files
FORMATS = ("dpo", "sft", "kto", "jsonl", "argilla")
RATINGS = range(1, 6)
ARGILLA_SETTINGS = ".argilla/settings.json"
ARGILLA_DATASET = ".argilla/dataset.json"
ARGILLA_RECORDS = "records.json"
ARGILLA_GUIDELINES = (
    "Each record is a preference pair made by an AI judge: the chosen response was rated higher than the rejected "
    "one. Say which response is better, correct the judge's 1-5 aspect ratings where they are wrong, and leave a "
    "comment if the prompt or both responses are unusable."
)


class ExportError(Exception):
    """A user error in an export (where it goes, what it needs): printed as one line."""


def scan_stage(store: Store, run_id: str, stage: str) -> pl.LazyFrame:
    """A stage's kept rows as a lazy query, with every column of its schema even when older batches lack some."""
    return RunDir(store, run_id).scan(stage)


def _as_turn(column: str, role: str, pairs_format: PairsFormat) -> pl.Expr:
    """A text column as it is, or as a one-message conversation in the conversational format."""
    text = pl.col(column)
    if pairs_format == "messages":
        text = pl.concat_list(pl.struct(role=pl.lit(role), content=text))
    return text.alias(column)


def dpo(pairs: Frame, pairs_format: PairsFormat = "string") -> Frame:
    return pairs.select(
        _as_turn("prompt", "user", pairs_format), _as_turn("chosen", "assistant", pairs_format),
        _as_turn("rejected", "assistant", pairs_format), "score_chosen", "score_rejected", "margin",
        "chosen_scores", "rejected_scores", pl.col("id").alias("pair_id"), "instruction_id", "chosen_id", "rejected_id",
        "chosen_model", "rejected_model", "strategy",
    )


def sft(responses: Frame, judgments: Frame) -> Frame:
    """The best-rated response of every judged instruction as a two-turn conversation (ties: lowest response id).
    The best is chosen on ids and ratings alone; only the chosen responses' texts are joined in."""
    rated = judgments.filter(pl.col("rating").is_not_null()).select("response_id", "rating")
    chosen = (rated.join(responses.select("id", "instruction_id"), left_on="response_id", right_on="id")
              .sort(["instruction_id", "rating", "response_id"], descending=[False, True, False])
              .unique("instruction_id", keep="first", maintain_order=True))
    best = chosen.join(responses.select("id", "instruction", "response", "model"), left_on="response_id",
                       right_on="id", maintain_order="left")
    return best.select(
        pl.concat_list(pl.struct(role=pl.lit("user"), content=pl.col("instruction")),
                       pl.struct(role=pl.lit("assistant"), content=pl.col("response"))).alias("messages"),
        pl.col("rating").alias("score"), "instruction_id", "response_id", "model",
    )


def kto(pairs: Frame, pairs_format: PairsFormat = "string") -> Frame:
    """Every pair unpaired into a desirable and an undesirable row; a response on both sides of pairs is left out."""
    sides = [pairs.select("prompt", pl.col(side).alias("completion"), pl.lit(label).alias("label"),
                          pl.col(f"score_{side}").alias("score"), "instruction_id",
                          pl.col(f"{side}_id").alias("response_id"), pl.col(f"{side}_model").alias("model"))
             for side, label in (("chosen", True), ("rejected", False))]
    rows = (pl.concat(sides).sort(["instruction_id", "label"], descending=[False, True], maintain_order=True)
            .filter(pl.col("label").n_unique().over("response_id") == 1)
            .unique("response_id", keep="first", maintain_order=True))
    return rows.select(_as_turn("prompt", "user", pairs_format), _as_turn("completion", "assistant", pairs_format),
                       pl.exclude("prompt", "completion"))


def training_sets(pairs: Frame, responses: Frame, judgments: Frame,
                  pairs_format: PairsFormat = "string") -> dict[str, Frame]:
    return {"dpo": dpo(pairs, pairs_format), "sft": sft(responses, judgments), "kto": kto(pairs, pairs_format)}


def write_datasets(run: Run) -> dict[str, int]:
    """Write dpo, sft and kto into the run's `datasets/`, one lazy query each, streamed from the stages' batches to
    the dataset file (only the columns each needs are read); returns rows per dataset, from the files' footers."""
    stages = (scan_stage(run.store, run.run_id, stage) for stage in ("pairs", "responses", "judgments"))
    rows = {}
    for name, query in training_sets(*stages, run.config.pairs.format).items():
        key = run.dir.dataset_key(name)
        run.store.sink_parquet(key, query)
        rows[name] = run.store.row_count(key)
    return rows


def write_card(run: Run) -> str:
    """`datasets/README.md`: the card of every dataset in the run's `datasets/`, each read only as far as its
    schema, rows and sizes need. Written after the manifest, whose counts, review and cost it shows; returns its key."""
    keys = [k for k in run.store.list_dir(run.dir.datasets_dir) if k.endswith(".parquet")]
    tables = [Table.of(name := key.rsplit("/", 1)[-1].removesuffix(".parquet"), f"{name}.parquet",
                       run.store.scan_parquet(key)) for key in keys]
    facts = Facts.read(run.store, run.run_id)
    run.store.write_text(run.dir.card_key, card.render(facts, tables))
    return run.dir.card_key


# ---------------------------------------------------------------------------------------------------- Argilla

def judged_aspects(pairs: pl.DataFrame) -> list[str]:
    """The aspects the judge scored for at least one response of a pair, in the canonical order."""
    scores = pl.concat([pairs["chosen_scores"], pairs["rejected_scores"]]).struct.unnest()
    return [a for a in ASPECTS if a in scores.columns and scores[a].is_not_null().any()]


def _rating_question(name: str, title: str) -> dict[str, Any]:
    return {"name": name, "title": title, "description": None, "required": False, "type": "rating",
            "settings": {"type": "rating", "options": [{"value": v} for v in RATINGS]}}


def _metadata(name: str, kind: str, visible: bool = True, **bounds: float) -> dict[str, Any]:
    settings = {"type": kind, "visible_for_annotators": visible,
                **({"values": None} if kind == "terms" else {"min": bounds.get("min"), "max": bounds.get("max")})}
    return {"name": name, "title": name.replace("_", " "), "visible_for_annotators": visible, "settings": settings}


def argilla_settings(aspects: list[str]) -> dict[str, Any]:
    """Fields (prompt, both responses), questions (preference, per-aspect 1-5 ratings, comment), metadata."""
    text = {"type": "text", "use_markdown": True}
    fields = [{"name": name, "title": title, "description": None, "required": True, "type": "text", "settings": text}
              for name, title in (("prompt", "Prompt"), ("chosen", "Chosen response"),
                                  ("rejected", "Rejected response"))]
    preference = {"name": "preference", "title": "Which response is better?", "description": None, "required": True,
                  "type": "label_selection",
                  "settings": {"type": "label_selection", "visible_options": 3,
                               "options": [{"value": "chosen", "text": "Chosen"},
                                           {"value": "rejected", "text": "Rejected"}, {"value": "tie", "text": "Tie"}]}}
    ratings = [_rating_question(f"{side}_{aspect}", f"{aspect.replace('_', ' ').capitalize()} of the {side} response")
               for side in ("chosen", "rejected") for aspect in aspects]
    comment = {"name": "comment", "title": "Comment", "description": None, "required": False, "type": "text",
               "settings": {"type": "text", "use_markdown": False}}
    metadata = [*(_metadata(name, "float", min=RATINGS[0], max=RATINGS[-1])
                  for name in ("score_chosen", "score_rejected")),
                _metadata("margin", "float", min=RATINGS[0] - RATINGS[-1], max=RATINGS[-1] - RATINGS[0]),
                *(_metadata(name, "terms") for name in ("chosen_model", "rejected_model", "strategy")),
                *(_metadata(name, "terms", visible=False) for name in ("instruction_id", "chosen_id", "rejected_id"))]
    return {"guidelines": ARGILLA_GUIDELINES, "fields": fields, "questions": [preference, *ratings, comment],
            "metadata": metadata, "vectors": [], "allow_extra_metadata": False,
            "distribution": {"strategy": "overlap", "min_submitted": 1}, "mapping": None}


def _rating_value(score: float) -> int:
    """A judge score (possibly a two-order mean like 3.5) as the nearest allowed rating, halves rounded up."""
    return min(max(math.floor(score + 0.5), RATINGS[0]), RATINGS[-1])


def argilla_record(pair: dict[str, Any], aspects: list[str], judge: str) -> dict[str, Any]:
    """One pair as a record in `Record.to_dict` form: the judge's verdicts become suggestions, not responses."""
    suggestions = {"preference": {"value": "chosen", "score": None, "agent": judge}}
    for side in ("chosen", "rejected"):
        scores = pair[f"{side}_scores"] or {}
        for aspect in aspects:
            if scores.get(aspect) is not None:
                value = _rating_value(scores[aspect])
                suggestions[f"{side}_{aspect}"] = {"value": value, "score": None, "agent": judge}
    metadata = {name: pair[name] for name in ("score_chosen", "score_rejected", "margin", "chosen_model",
                                              "rejected_model", "strategy", "instruction_id", "chosen_id",
                                              "rejected_id")}
    return {"id": pair["id"], "fields": {name: pair[name] for name in ("prompt", "chosen", "rejected")},
            "metadata": {k: v for k, v in metadata.items() if v is not None}, "suggestions": suggestions,
            "responses": {}, "vectors": {}, "status": "pending", "_server_id": None}


def argilla_dataset(pairs: pl.DataFrame, judgments: pl.DataFrame, name: str) -> dict[str, Any]:
    """The files of an Argilla dataset directory: relative path -> JSON content."""
    aspects = judged_aspects(pairs)
    judges = dict(judgments.select("response_id", "model").iter_rows())
    settings = argilla_settings(aspects)
    records = [argilla_record(pair, aspects, judges.get(pair["chosen_id"]) or "judge")
               for pair in pairs.iter_rows(named=True)]
    dataset = {"name": name, "status": "draft", "guidelines": settings["guidelines"],
               "allow_extra_metadata": settings["allow_extra_metadata"], "distribution": settings["distribution"]}
    return {ARGILLA_SETTINGS: settings, ARGILLA_DATASET: dataset, ARGILLA_RECORDS: records}


# ---------------------------------------------------------------------------------------------------- export

def _temp_beside(out: Path) -> Path:
    """A hidden, unused name in `out`'s directory; created by the caller, so its mode follows the umask."""
    return out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"


def _write_file(out: Path, writer: Callable[[IO[bytes]], None]) -> None:
    """Write through a hidden temp file beside `out`, renamed into place: `out` is whole or untouched."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(out)
    try:
        with open(tmp, "xb") as f:
            writer(f)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_dir(out: Path, files: dict[str, Any]) -> None:
    """Write files (a string as it is, anything else as JSON) into a hidden temp directory beside `out`, renamed into
    place (Argilla wants a new one)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists: an Argilla export needs a new or empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(out)
    try:
        tmp.mkdir()
        for rel, content in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def card_path(fmt: str, out: Path) -> Path:
    """Where an export's card goes: beside the file, or inside the Argilla directory."""
    return out / card.CARD if fmt == "argilla" else out.parent / card.CARD


def _check_card_place(fmt: str, out: Path) -> None:
    """Refuse, before anything is written, an export whose card would replace a README.md alignflow did not write."""
    where = card_path(fmt, out)
    if where == out:
        raise ExportError(f"--out {out} is where the export's card goes: name the file otherwise")
    if where.is_dir() or (where.exists() and not card.written_by_alignflow(where.read_text(errors="replace"))):
        raise ExportError(f"{where} exists and alignflow did not write it: export to another directory "
                          "(an export's card goes beside it as README.md, and never replaces one of yours)")


def export(store: Store, run_id: str, fmt: str, out: Path, pairs_format: PairsFormat = "string") -> int:
    """Write one format of a run's kept data to the local path `out`, and its card beside it; returns the rows
    written. DPO, SFT, KTO and JSONL stream from the run's batch files like `write_datasets`; Argilla's records are one
    JSON list, built whole. The card is written after the data, both atomically.

    Zero rows is an ExportError, not an empty file: `datasets.load_dataset` cannot load one."""
    _check_card_place(fmt, out)
    pairs, responses, judgments = (scan_stage(store, run_id, stage) for stage in ("pairs", "responses", "judgments"))
    query, what = {"sft": (sft(responses, judgments), "rated responses"),
                   "kto": (kto(pairs, pairs_format), "responses with a KTO label")
                   }.get(fmt, (dpo(pairs, pairs_format), "kept pairs"))
    height = query.select(pl.len()).collect().item()  # projection pushdown: only ids and ratings are read
    if not height:
        raise ExportError(f"nothing to export: run {run_id} has no {what}")
    facts = Facts.read(store, run_id)
    if fmt == "argilla":
        records = Table("argilla", ARGILLA_RECORDS, height)
        files = argilla_dataset(pairs.collect(), judgments.collect(), f"alignflow-{run_id}")
        _write_dir(out, {**files, card.CARD: card.render(facts, [records])})
        return height
    _write_file(out, query.sink_ndjson if fmt == "jsonl" else query.sink_parquet)
    written = pl.scan_ndjson(out, schema=query.collect_schema()) if fmt == "jsonl" else pl.scan_parquet(out)
    text = card.render(facts, [Table.of("dpo" if fmt == "jsonl" else fmt, out.name, written)])
    _write_file(card_path(fmt, out), lambda f: f.write(text.encode()))
    return height
