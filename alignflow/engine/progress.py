"""Progress of long work, reported by the domain and shown by whoever listens (the CLI draws bars).

The domain only counts; a sink decides how to show it, so workers without a terminal pay nothing.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Protocol


class Sink(Protocol):
    def start(self, stage: str, total: int) -> None: ...
    def advance(self, stage: str, done: int = 1, failed: int = 0) -> None: ...
    def finish(self, stage: str) -> None: ...


class _Silent:
    def start(self, stage: str, total: int) -> None: ...
    def advance(self, stage: str, done: int = 1, failed: int = 0) -> None: ...
    def finish(self, stage: str) -> None: ...


_sink: Sink = _Silent()


def set_sink(sink: Sink | None) -> None:
    global _sink
    _sink = sink or _Silent()


@contextmanager
def track(stage: str, total: int) -> Iterator[Sink]:
    _sink.start(stage, total)
    try:
        yield _sink
    finally:
        _sink.finish(stage)
