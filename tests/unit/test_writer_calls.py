"""The writer thread's calls run in batches that take the database turn once (SQLite shared with a
processing process): one wait for the other process per batch instead of one per call, and the turn
is always given back once nothing is queued."""

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from hub.intake import WriterCalls


class Recorded:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.fail_to_take = False

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        if self.fail_to_take:
            raise OSError("no lock")
        self.events.append("take")
        try:
            yield
        finally:
            self.events.append("give back")

    def call(self, name: str) -> str:
        self.events.append(name)
        return name


def run(coroutine_factory, hold: float = 10.0):  # type: ignore[no-untyped-def]
    recorded = Recorded()
    with ThreadPoolExecutor(max_workers=1) as executor:
        calls = WriterCalls(executor, recorded.turn, hold=hold)
        result = asyncio.run(coroutine_factory(calls, recorded))
    return recorded, result


def test_calls_queued_together_share_one_turn() -> None:
    async def scenario(calls: WriterCalls, recorded: Recorded) -> list[str]:
        release = threading.Event()
        first = asyncio.ensure_future(calls.run(lambda: release.wait(5) and recorded.call("store")))
        await asyncio.sleep(0.05)  # the writer is in the first call: the next two queue behind it
        rest = [asyncio.ensure_future(calls.run(recorded.call, name)) for name in ("claim", "settle")]
        await asyncio.sleep(0.05)
        release.set()
        return [await first, *[await r for r in rest]]

    recorded, results = run(scenario)
    assert results == ["store", "claim", "settle"]
    assert recorded.events == ["take", "store", "claim", "settle", "give back"]


def test_the_turn_is_given_back_when_nothing_waits() -> None:
    async def scenario(calls: WriterCalls, recorded: Recorded) -> list[str]:
        await calls.run(recorded.call, "store")
        await asyncio.sleep(0.05)  # nothing queued meanwhile
        after_first = list(recorded.events)
        await calls.run(recorded.call, "claim")
        return after_first

    recorded, after_first = run(scenario)
    assert after_first == ["take", "store", "give back"]
    assert recorded.events == ["take", "store", "give back", "take", "claim", "give back"]


def test_the_turn_is_given_back_after_the_hold_even_with_calls_waiting() -> None:
    """The other process gets its turn while this one keeps writing."""
    async def scenario(calls: WriterCalls, recorded: Recorded) -> None:
        await asyncio.gather(*(calls.run(recorded.call, name) for name in ("store", "claim")))

    recorded, _ = run(scenario, hold=0.0)
    assert recorded.events == ["take", "store", "give back", "take", "claim", "give back"]


def test_a_failing_call_fails_its_caller_only() -> None:
    async def scenario(calls: WriterCalls, recorded: Recorded) -> str:
        with pytest.raises(ZeroDivisionError):
            await calls.run(lambda: 1 / 0)
        return await calls.run(recorded.call, "store")

    recorded, result = run(scenario)
    assert result == "store" and recorded.events[-2:] == ["store", "give back"]
    assert recorded.events.count("take") == recorded.events.count("give back")


def test_a_caller_that_stops_waiting_leaves_no_turn_held() -> None:
    async def scenario(calls: WriterCalls, recorded: Recorded) -> None:
        release = threading.Event()
        busy = asyncio.ensure_future(calls.run(release.wait, 5))
        await asyncio.sleep(0.05)
        abandoned = asyncio.ensure_future(calls.run(recorded.call, "claim"))
        await asyncio.sleep(0.01)
        abandoned.cancel()
        release.set()
        await busy
        await asyncio.sleep(0.05)

    recorded, _ = run(scenario)
    assert recorded.events[0] == "take" and recorded.events[-1] == "give back"
    assert recorded.events.count("take") == recorded.events.count("give back")


def test_a_turn_that_cannot_be_taken_fails_the_calls_and_the_next_ones_run() -> None:
    async def scenario(calls: WriterCalls, recorded: Recorded) -> str:
        recorded.fail_to_take = True
        with pytest.raises(OSError):
            await calls.run(recorded.call, "store")
        recorded.fail_to_take = False
        return await calls.run(recorded.call, "claim")

    recorded, result = run(scenario)
    assert result == "claim" and recorded.events == ["take", "claim", "give back"]
