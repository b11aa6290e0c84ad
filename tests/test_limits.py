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
    limits.tighten(8, None, None)
    assert limits.cap == 4
    limits.tighten(2, 60, None)
    assert limits.cap == 2 and limits.rpm.limit == 60

    async def go() -> int:
        async def one():
            async with limits.slot(10):
                await asyncio.sleep(0.02)

        await asyncio.gather(*(one() for _ in range(10)))
        return limits.peak_in_flight

    assert asyncio.run(go()) == 2
