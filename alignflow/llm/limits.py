"""Provider limits for one endpoint: a cap on requests in flight, and requests and tokens per minute.

The per-minute limits are sliding windows, not token buckets: a bucket that starts full lets through a
whole minute's budget at once and then its refill, nearly twice the limit in the first minute. A window
counts what was sent in the last `period` seconds, so the limit holds in every window, the first included.
Everything here lives on one event loop (the endpoints' loop), so no locks are needed.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from contextlib import asynccontextmanager

# What is sent at t may reach the server a little later than what is sent at t + period: a small margin
# keeps the limit true where it is measured, at the server.
MARGIN_S = 0.25


class SlidingWindow:
    """At most `limit` units (requests, or tokens) sent in any `period` seconds."""

    def __init__(self, limit: int, period: float = 60.0):
        self.limit = limit
        self.period = period + MARGIN_S
        self._sent: deque[tuple[float, int]] = deque()
        self._total = 0

    def _expire(self, now: float) -> None:
        while self._sent and self._sent[0][0] <= now - self.period:
            self._total -= self._sent.popleft()[1]

    async def acquire(self, units: int = 1) -> None:
        """Wait until `units` more fit in the window, then count them as sent now."""
        units = min(max(units, 1), self.limit)  # a request larger than the whole budget still goes, alone
        while True:
            now = time.monotonic()
            self._expire(now)
            if self._total + units <= self.limit:
                self._sent.append((now, units))
                self._total += units
                return
            await asyncio.sleep(self._sent[0][0] + self.period - now + 1e-3)


class Limits:
    """A cap on requests in flight plus optional request and token windows, shared by every request to one
    endpoint. The cap can only be lowered: when stages configure one endpoint differently, the strictest wins."""

    def __init__(self, max_concurrency: int, rpm: int | None = None, tpm: int | None = None):
        self.cap = max_concurrency
        self.rpm = SlidingWindow(rpm) if rpm else None
        self.tpm = SlidingWindow(tpm) if tpm else None
        self.in_flight = 0
        self.peak_in_flight = 0
        self._free: asyncio.Condition | None = None  # made on the loop that first uses it

    def tighten(self, max_concurrency: int, rpm: int | None, tpm: int | None) -> None:
        self.cap = min(self.cap, max_concurrency)
        if rpm and (self.rpm is None or rpm < self.rpm.limit):
            self.rpm = SlidingWindow(rpm)
        if tpm and (self.tpm is None or tpm < self.tpm.limit):
            self.tpm = SlidingWindow(tpm)

    @asynccontextmanager
    async def slot(self, tokens: int):
        """Hold one of the endpoint's slots for one call; `tokens` is the request's size estimate."""
        if self._free is None:
            self._free = asyncio.Condition()
        async with self._free:
            await self._free.wait_for(lambda: self.in_flight < self.cap)
            self.in_flight += 1
        try:
            if self.rpm:
                await self.rpm.acquire()
            if self.tpm:
                await self.tpm.acquire(tokens)
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            yield
        finally:
            async with self._free:
                self.in_flight -= 1
                self._free.notify()
