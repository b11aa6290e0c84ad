"""The endpoint limits: a sliding window holds its limit in every window, the first one included."""
import asyncio
import time

from alignflow.llm.limits import Limits, SlidingWindow


def test_a_window_never_lets_more_than_its_limit_through_in_any_period():
    async def go() -> list[float]:
        window = SlidingWindow(5, period=0.4)
        sent = []

        async def one():
            await window.acquire()
            sent.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(17)))
        return sorted(sent)

    sent = asyncio.run(go())
    assert len(sent) == 17
    for i, start in enumerate(sent):  # every window of one period, starting at any send, the first included
        assert sum(start <= t < start + 0.4 for t in sent[i:]) <= 5
    assert sent[5] - sent[0] >= 0.4  # the sixth waited a whole period: nothing is let through up front


def test_tokens_count_by_weight_and_an_oversized_request_still_goes_alone():
    async def go() -> list[float]:
        window = SlidingWindow(100, period=0.3)
        sent = []
        for units in (60, 50, 500):
            await window.acquire(units)
            sent.append(time.monotonic())
        return sent

    first, second, third = asyncio.run(go())
    assert second - first >= 0.3 and third - second >= 0.3


def test_the_cap_holds_and_only_tightens():
    limits = Limits(4)
    limits.tighten(8)
    assert limits.cap == 4
    limits.tighten(2, 60)
    assert limits.cap == 2 and limits.rpm.limit == 60

    async def go() -> int:
        async def one():
            async with limits.slot(10, 0):
                await asyncio.sleep(0.02)

        await asyncio.gather(*(one() for _ in range(10)))
        return limits.peak_in_flight

    assert asyncio.run(go()) == 2


def test_many_429s_cut_the_cap_and_a_few_random_ones_do_not():
    limits = Limits(16)
    for _ in range(40):  # one in ten at random: a provider shedding load, not an account over its limit
        for _ in range(9):
            limits.succeeded(0.1)
        limits.throttled(time.monotonic(), 20)
    assert limits.cap == 16 and limits.stats.cuts == 0
    for _ in range(25):  # most answers are 429s: over capacity
        limits.throttled(time.monotonic(), 20)
    assert limits.cap < 16 and limits.stats.cuts >= 1
    cut = limits.cap
    for _ in range(200):
        limits.succeeded(0.1)
    assert limits.cap == cut  # held where the cut put it ...
    limits._hold_until = 0.0  # ... for PROBE_S
    for _ in range(200):
        limits.succeeded(0.1)
    assert cut < limits.cap <= 16  # then grows back, never above what was set
    for _ in range(15):
        limits.throttled(time.monotonic(), 16)
    assert limits.cap == cut  # a probe that meets more than a few 429s goes back


def test_a_server_slowing_down_is_backed_off_but_a_fast_one_under_a_busy_client_is_not():
    fast = Limits(64)
    for latency in [0.002] * 20 + [0.05, 0.2, 0.12] * 200:  # loopback: milliseconds, then the client's own lag
        fast.succeeded(latency)
    assert fast.cap == 64 and fast.stats.cuts == 0
    slowing = Limits(64)
    for latency in [0.3] * 20 + [3.0] * 40:  # a vLLM server over its capacity: ten times slower, never a 429
        slowing.succeeded(latency)
    assert slowing.cap < 64 and slowing.stats.cuts >= 1


def test_a_429_to_a_request_sent_before_the_last_cut_cuts_nothing_more():
    limits = Limits(32)
    burst = time.monotonic()
    for _ in range(30):
        limits.throttled(burst, 20)
    assert limits.stats.cuts == 1


def test_a_spent_budget_in_the_headers_pauses_until_its_reset():
    limits = Limits(4)
    limits.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "0.3s"})

    async def go() -> float:
        started = time.monotonic()
        async with limits.slot(10, 10):
            return time.monotonic() - started

    assert asyncio.run(go()) >= 0.25 and limits.stats.paused_s > 0
    limits = Limits(4)
    limits.observe({"anthropic-ratelimit-output-tokens-remaining": "50000", "anthropic-ratelimit-output-tokens-limit":
                    "80000", "anthropic-ratelimit-output-tokens-reset": "2030-01-01T00:00:00Z"})
    assert asyncio.run(go()) < 0.1  # plenty left: no pause
