"""The writer thread keeps its database turn across the calls queued behind the one it took it for
(SQLite shared with a processing process): one wait for the other process instead of one per call."""

import contextlib
from collections.abc import Iterator

import pytest

from hub.intake import HeldTurn


class Recorded:
    def __init__(self) -> None:
        self.events: list[str] = []

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        self.events.append("take")
        try:
            yield
        finally:
            self.events.append("give back")

    def call(self, name: str) -> str:
        self.events.append(name)
        return name


def test_calls_queued_together_share_one_turn() -> None:
    recorded = Recorded()
    held = HeldTurn(recorded.turn, hold=10.0)
    for _ in ("store", "claim", "settle"):
        held.queued()
    assert [held.run(recorded.call, name) for name in ("store", "claim", "settle")] == ["store", "claim", "settle"]
    assert recorded.events == ["take", "store", "claim", "settle", "give back"]


def test_the_turn_is_given_back_when_nothing_waits() -> None:
    recorded = Recorded()
    held = HeldTurn(recorded.turn, hold=10.0)
    for name in ("store", "claim"):
        held.queued()
        held.run(recorded.call, name)
    assert recorded.events == ["take", "store", "give back", "take", "claim", "give back"]


def test_the_turn_is_given_back_after_the_hold_even_with_calls_waiting() -> None:
    """The other process must get its turn while this one keeps writing."""
    recorded = Recorded()
    held = HeldTurn(recorded.turn, hold=0.0)
    held.queued()
    held.queued()
    held.run(recorded.call, "store")
    assert recorded.events == ["take", "store", "give back"]


def test_a_failing_call_gives_the_turn_back() -> None:
    recorded = Recorded()
    held = HeldTurn(recorded.turn)
    held.queued()
    with pytest.raises(ZeroDivisionError):
        held.run(lambda: 1 / 0)
    assert recorded.events == ["take", "give back"]
