"""The processing process's slice size: time-sized while processing keeps up, doubled while it is behind."""

from hub.processor import MAX_SLICE, SliceSize


def test_slices_fit_the_turn_at_the_learnt_cost_and_double_while_behind() -> None:
    slices = SliceSize(turn=0.05, seconds_per_message=0.002)
    assert slices.next() == 25
    slices.took(0.05, 25)  # a full slice: more was pending
    assert slices.next() == 50
    slices.took(0.10, 50)
    slices.took(0.20, 100)
    assert slices.next() == MAX_SLICE  # never more
    slices.took(0.01, 3)  # drained: back to what fits the turn
    assert slices.next() == 25


def test_a_cost_is_learnt_from_full_slices_only() -> None:
    slices = SliceSize(turn=0.05, seconds_per_message=0.002)
    slices.took(5.0, 2)  # a slice that drained two messages (a fixed cost) teaches nothing
    assert slices.next() == 25
    for _ in range(30):
        n = slices.next()
        slices.took(0.004 * n, n)  # full slices at 4 ms a message, ...
        slices.took(0.0, 0)  # ... each followed by a drained one
    assert slices.next() == 12  # 0.05 s / 0.004 s
