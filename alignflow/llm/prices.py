"""What tokens cost: a price table (`prices.yaml`, overridable by the user's file) and the cost of a run.

Tokens are counted once per request (the runner charges each answer to one row), per stage and per model, in
the batch checkpoints; the manifest turns them into dollars here.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

from alignflow.config import ConfigError

DEFAULTS = Path(__file__).parent / "prices.yaml"


@dataclass(frozen=True)
class Prices:
    table: dict[str, dict[str, dict[str, float]]]  # provider -> model prefix -> {input, output} per 1M tokens
    batch_discount: float = 0.5

    def per_token(self, provider: str, model: str) -> tuple[float, float] | None:
        """USD per input and per output token, by the longest model prefix listed; None when not listed."""
        models = self.table.get(provider, {})
        match = max((name for name in models if model.startswith(name)), key=len, default=None)
        if match is None:
            return None
        return models[match]["input"] / 1e6, models[match]["output"] / 1e6

    def cost(self, provider: str, model: str, input_tokens: int, output_tokens: int, batch: bool = False) -> float | None:
        rates = self.per_token(provider, model)
        if rates is None:
            return None
        return (input_tokens * rates[0] + output_tokens * rates[1]) * (self.batch_discount if batch else 1.0)


def load_prices(path: str | None = None) -> Prices:
    """The shipped table, with the entries of `path` (same layout) over it."""
    return _load(str(path) if path else None)


@functools.lru_cache(maxsize=8)
def _load(path: str | None) -> Prices:
    table = _read(DEFAULTS)
    if path:
        for provider, models in _read(Path(path)).items():
            if provider == "batch_discount":
                table["batch_discount"] = models
            else:
                table.setdefault(provider, {}).update(models or {})
    discount = table.pop("batch_discount", 0.5)
    return Prices(table, discount)


def _read(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read prices file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    for provider, models in data.items():
        if provider == "batch_discount":
            continue
        for model, rates in (models or {}).items():
            if not isinstance(rates, dict) or not all(isinstance(rates.get(k), (int, float)) for k in ("input", "output")):
                raise ConfigError(f"{path}: {provider}.{model}: expected {{input: USD, output: USD}} per 1M tokens")
    return data
