"""The one method a provider implements; everything else (cache, limits, retries, parsing) is shared."""
from __future__ import annotations

from typing import Protocol

from alignflow.llm.types import Completion, Request


class Backend(Protocol):
    name: str
    model: str

    async def complete(self, request: Request, timeout_s: float) -> Completion:
        """Make one call. Raise ProviderError on failure; return the raw text otherwise."""
        ...
