"""A sampled row as a reviewer reads it, in Markdown: the texts to judge as blocks, the judge's scores and reasons
beside them, and why the row was drawn. The Prefect form and `alignflow review` show the same."""
from __future__ import annotations

TEXTS = {"instruction": "Instruction", "prompt": "Prompt", "response": "Response", "initial": "Initial answer",
         "revision": "Revision"}  # shown as blocks, in this order; pairs add chosen and rejected
DETAILS = ("source", "round", "evolution", "max_similarity", "generator", "model", "rating", "margin")


def markdown(row: dict) -> str:
    lines = [f"*Drawn: {row.get('why') or 'random'}*"]
    for key, title in TEXTS.items():
        if row.get(key) is not None:
            lines += ["", f"**{title}**", "", quote(row[key])]
    for side in ("chosen", "rejected"):
        if side not in row:
            continue
        scores = row.get(f"{side}_scores") or {}
        each = ", ".join(f"{a} {v:g}" for a, v in scores.items() if v is not None)
        score = row.get(f"score_{side}")
        judged = f" (the judge: {score:.2f}{f'; {each}' if each else ''})" if isinstance(score, float) else ""
        lines += ["", f"**{side.capitalize()}**{judged}", "", quote(row.get(side) or "")]
        if reason := row.get(f"{side}_rationale"):
            lines += ["", f"*Judge's reasons:* {cell(reason, 1200)}"]
    details = [f"{k}: {cell(row[k], 40)}" for k in DETAILS if row.get(k) is not None and f"score_{k}" not in row]
    if details:
        lines += ["", " · ".join(details)]
    return "\n".join(lines)


def quote(text: str) -> str:
    return "\n".join(f"> {line}" if line.strip() else ">" for line in str(text).splitlines()) or ">"


def cell(value, limit: int = 90) -> str:
    text = f"{value:.2f}" if isinstance(value, float) else str(value)
    text = " ".join(text.split()).replace("|", "\\|")
    return text[:limit] + "…" if len(text) > limit else text
