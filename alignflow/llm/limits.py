"""Provider limits for one endpoint: requests in flight, requests and tokens per minute, and what the provider says.

- The per-minute limits are sliding windows, not token buckets: a bucket that starts full lets through a whole
  minute's budget at once and then its refill, nearly twice the limit in the first minute. A window counts what
  was sent in the last `period` seconds, so the limit holds in every window, the first included. Input and
  output tokens have windows of their own (Anthropic limits them apart).
- The cap on requests in flight adapts (AIMD): when more than 30% of the last 64 answers are 429s, it is cut by
  the share refused and held there 30 s; then it grows by one per cap's worth of successes (never above the
  configured cap), and a probe above the held cap that meets more than a few 429s goes back to it. Random 429s
  (a blip, a provider shedding load) are rarely that many, so they do not slow a run; a server over its
  capacity answers many, and is backed off within a round trip. A server that never answers 429 (a proxy,
  vLLM) but slows down under load is backed off too, when latency climbs far above the fastest seen (and above
  a second per 100 tokens: a fast server's latency also grows with the client's own load).
- Rate-limit headers (`x-ratelimit-remaining-*`, `anthropic-ratelimit-*-remaining`) that report a budget spent
  pause new requests until its reset.

Everything here lives on one event loop (the endpoints' loop), so no locks are needed.
"""
from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

# What is sent at t may reach the server later than what is sent at t + period (a busy event loop, a new
# connection): a margin keeps the limit true where it is measured, at the server. 0.25 s was seen to fall short
# on a loaded 2-core machine; a second costs under 2% of a minute's budget.
MARGIN_S = 1.0
RECENT = 64  # answers the 429 share is judged over
JUDGED_FROM = 8  # answers needed before the share means anything
OVERLOAD = 0.30  # more 429s than this share: the server is over its capacity (random ones are rarely this many)
PROBE_FAILS = 0.15  # above the load refused before, this share of 429s ends a probe; below it the cap may grow
PROBE_S = 30.0  # after a cut, the cap is held under the load refused this long, then probes again
SLOW = 4.0  # latency this many times the fastest seen means the server is overloaded ...
# ... unless it is still this fast (per 100 tokens): a loopback server's few milliseconds grow tenfold from the
# client's own load (its event loop busy with answers), which backing off cannot help, and a cap cut to 1 then
# stays there, as latency never falls back to a few milliseconds
SLOW_FLOOR_S = 0.25
SLOW_SAMPLES = 20  # latencies seen before the fastest is trusted
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


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


@dataclass
class Stats:
    """What an endpoint did: shown while a run goes and kept in its manifest."""

    requests: int = 0
    throttled: int = 0  # answered 429
    cuts: int = 0  # times the cap was lowered
    peak_in_flight: int = 0
    lowest_cap: int = 0
    paused_s: float = 0.0  # waiting for a rate-limit reset the provider announced

    @property
    def throttled_share(self) -> float:
        return self.throttled / self.requests if self.requests else 0.0


class Limits:
    """The limits every request to one endpoint shares. When stages configure one endpoint differently, the
    strictest setting wins."""

    def __init__(self, max_concurrency: int, rpm: int | None = None, tpm: int | None = None,
                 input_tpm: int | None = None, output_tpm: int | None = None):
        self.configured = max_concurrency
        self.cap = float(max_concurrency)
        self.windows: dict[str, SlidingWindow] = {}
        self.tighten(max_concurrency, rpm, tpm, input_tpm, output_tpm)
        self.in_flight = 0
        self.stats = Stats(lowest_cap=max_concurrency)
        self._free: asyncio.Condition | None = None  # made on the loop that first uses it
        self._last_cut = 0.0
        self._recent: deque[bool] = deque(maxlen=RECENT)  # was each recent answer a 429
        self._settled = float(max_concurrency)  # the cap the last overload settled on; a probe above it can fail
        self._hold_until = 0.0
        self._paused_until = 0.0
        self._fastest: float | None = None
        self._latencies = 0
        self._slow_ewma: float | None = None

    @property
    def peak_in_flight(self) -> int:
        return self.stats.peak_in_flight

    def tighten(self, max_concurrency: int, rpm: int | None = None, tpm: int | None = None,
                input_tpm: int | None = None, output_tpm: int | None = None) -> None:
        self.configured = min(self.configured, max_concurrency)
        self.cap = min(self.cap, self.configured)
        for name, limit in (("requests", rpm), ("tokens", tpm), ("input", input_tpm), ("output", output_tpm)):
            if limit and (name not in self.windows or limit < self.windows[name].limit):
                self.windows[name] = SlidingWindow(limit)

    @property
    def rpm(self) -> SlidingWindow | None:
        return self.windows.get("requests")

    @asynccontextmanager
    async def slot(self, input_tokens: int, output_tokens: int):
        """Hold one of the endpoint's slots for one call. Yields when it was sent and how many were in flight
        then (for `throttled`)."""
        if self._free is None:
            self._free = asyncio.Condition()
        async with self._free:
            await self._free.wait_for(lambda: self.in_flight < max(1, int(self.cap)))
            self.in_flight += 1
        try:
            for name, units in (("requests", 1), ("tokens", input_tokens + output_tokens), ("input", input_tokens),
                                ("output", output_tokens)):
                if name in self.windows:
                    await self.windows[name].acquire(units)
            if (wait := self._paused_until - time.monotonic()) > 0:
                self.stats.paused_s += wait
                await asyncio.sleep(wait)
            self.stats.requests += 1
            self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.in_flight)
            yield time.monotonic(), self.in_flight
        finally:
            async with self._free:
                self.in_flight -= 1
                self._free.notify(max(1, int(self.cap) - self.in_flight))  # as many as may go now, not every waiter

    def _share(self) -> float | None:
        return sum(self._recent) / len(self._recent) if len(self._recent) >= JUDGED_FROM else None

    def _held(self) -> bool:
        """Whether the cap is held where the last cut put it (for PROBE_S)."""
        return time.monotonic() < self._hold_until

    def throttled(self, sent_at: float, in_flight: int) -> None:
        """A 429 to a request sent with `in_flight` requests in flight. Only 429s to requests sent since the last
        cut say anything new. Many of them (over capacity) cut the cap by the share refused (16 sent, 12
        refused: 4.8), and hold it there a while; a few, while probing above that, bring it back."""
        self.stats.throttled += 1
        self._recent.append(True)
        share = self._share()
        if share is None or sent_at < self._last_cut:
            return
        if share > OVERLOAD:
            self._settled = self.cap * max(0.3, 1 - share)
            self._cut(self._settled)
        elif share > PROBE_FAILS and self.cap > self._settled:
            self._cut(self._settled)

    def succeeded(self, latency_s: float, output_tokens: int = 0) -> None:
        """One success: grow the cap by 1/cap (one per cap's worth) while 429s are rare, never above what is set
        nor, while held, to the load refused last; unless the server is slowing down. Latency is compared per
        length of answer, so long answers are not mistaken for an overloaded server."""
        latency_s = latency_s / (1 + output_tokens / 100)
        self._recent.append(False)
        self._latencies += 1
        self._fastest = latency_s if self._fastest is None else min(self._fastest, latency_s)
        self._slow_ewma = latency_s if self._slow_ewma is None else 0.9 * self._slow_ewma + 0.1 * latency_s
        if self._latencies >= SLOW_SAMPLES and self._slow_ewma > SLOW * max(self._fastest, SLOW_FLOOR_S):
            if time.monotonic() - self._last_cut > max(self._slow_ewma, 1.0):
                self._cut(self.cap * 0.8)
            return
        share = self._share()
        if share is not None and share < PROBE_FAILS and not self._held():
            self.cap = min(float(self.configured), self.cap + 1 / max(self.cap, 1.0))

    def _cut(self, cap: float) -> None:
        self.cap = max(1.0, min(self.cap, cap))
        self._last_cut = time.monotonic()
        self._hold_until = self._last_cut + PROBE_S
        self._recent.clear()
        self.stats.cuts += 1
        self.stats.lowest_cap = min(self.stats.lowest_cap, int(self.cap))

    def observe(self, headers: dict[str, str] | None) -> None:
        """Pause new requests until the reset of a budget the provider reports spent."""
        if not headers:
            return
        for remaining, reset, limit in _BUDGETS:
            left = _number(headers.get(remaining))
            if left is None:
                continue
            total = _number(headers.get(limit)) if limit else None
            if left <= (0.02 * total if total else 0):
                wait = _seconds_until(headers.get(reset))
                if wait:
                    self._paused_until = max(self._paused_until, time.monotonic() + min(wait, 120.0))


# (remaining, reset, limit) headers: OpenAI's and Anthropic's
_BUDGETS = [
    ("x-ratelimit-remaining-requests", "x-ratelimit-reset-requests", "x-ratelimit-limit-requests"),
    ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens", "x-ratelimit-limit-tokens"),
    ("anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset", "anthropic-ratelimit-requests-limit"),
    ("anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset", "anthropic-ratelimit-tokens-limit"),
    ("anthropic-ratelimit-input-tokens-remaining", "anthropic-ratelimit-input-tokens-reset",
     "anthropic-ratelimit-input-tokens-limit"),
    ("anthropic-ratelimit-output-tokens-remaining", "anthropic-ratelimit-output-tokens-reset",
     "anthropic-ratelimit-output-tokens-limit"),
]
RATE_LIMIT_HEADERS = {name for triple in _BUDGETS for name in triple if name} | {"retry-after", "retry-after-ms"}


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _seconds_until(reset: str | None) -> float | None:
    """OpenAI's resets are durations ("1s", "6m0s", "20ms"); Anthropic's are RFC 3339 times."""
    if not reset:
        return None
    parts = _DURATION.findall(reset)
    if parts and "".join(f"{n}{u}" for n, u in parts) == reset.strip():
        return sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)
    try:
        at = datetime.fromisoformat(reset.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max((at - datetime.now(timezone.utc)).total_seconds(), 0.0)
