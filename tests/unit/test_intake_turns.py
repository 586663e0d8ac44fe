"""The intake's processing turns (processing on the server's writer): short while processing keeps up,
three times longer once a stream has kept it behind, short again in a burst (the ACKs come first)."""

import time

from hub.intake import Intake


def intake_behind(seconds: float | None, eager_share: float = 0.0) -> Intake:
    intake = Intake(lambda: None, {}, turn_budget=0.02, long_turn_budget=0.06, long_turn_after=0.5)  # type: ignore[arg-type]
    intake._seconds_per_message = 0.002
    intake._behind_since = None if seconds is None else time.monotonic() - seconds
    intake._senders.eager_share = eager_share
    return intake


def test_turns_are_short_while_processing_keeps_up() -> None:
    assert intake_behind(None)._turn() == 10  # 20 ms at 2 ms a message
    assert intake_behind(0.1)._turn() == 10  # behind for a moment: a turn or two catches up


def test_a_stream_that_keeps_processing_behind_gets_longer_turns() -> None:
    assert intake_behind(2.0)._turn() == 30  # 60 ms: the transaction's fixed cost over three times the messages


def test_a_burst_keeps_its_probe_turns_short() -> None:
    assert intake_behind(2.0, eager_share=0.9)._turn() == 10
