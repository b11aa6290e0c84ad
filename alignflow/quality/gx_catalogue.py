"""The arguments each GX expectation takes, as JSON Schema, read once from GX and shipped as `gx_catalogue.json`.

The command checks a suite against it before a run starts, without importing GX (seconds of the start-up);
the gate's worker still builds the suite with GX itself. Rebuild it after upgrading GX:

    .venv/bin/python -m alignflow.quality.gx_catalogue

(tests/test_expectations.py fails while the shipped file differs from what the installed GX says.)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CATALOGUE = Path(__file__).with_name("gx_catalogue.json")
PROSE = ("title", "description")  # the schema says what is valid without them (as a key of `properties`,
EXAMPLES = "examples"               # "description" is an argument, kept)


def build() -> dict[str, Any]:
    """Every registered expectation type and the JSON Schema of its pydantic model (prose removed)."""
    import great_expectations as gx
    from great_expectations.expectations.registry import _registered_expectations, get_expectation_impl

    types = {name: _plain(json.loads(json.dumps(get_expectation_impl(name).schema(), default=str)))
             for name in sorted(_registered_expectations)}
    return {"great_expectations": gx.__version__, "expectations": types}


def _plain(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items()
                if k != EXAMPLES and not (k in PROSE and isinstance(v, str))}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


def write(path: Path = CATALOGUE) -> None:
    path.write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write()
    print(f"wrote {CATALOGUE}")
