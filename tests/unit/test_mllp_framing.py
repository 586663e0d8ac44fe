"""MLLP deframing (`FrameReader`): 0x0B, message, 0x1C 0x0D — however the bytes are cut into reads.

Pure byte handling; no sockets.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from adapters.transport.mllp import END, START, FrameReader, frame

ADT = b"MSH|^~\\&|NWADT|NORTHWIND|HUB|HUBFAC|20240301101500||ADT^A01|CTL-0001|P|2.5.1\rPID|1||QX4471902^^^NORTHWIND^MR\r"
ORU = b"MSH|^~\\&|NWLAB|NORTHWIND|HUB|HUBFAC|20240301101600||ORU^R01|CTL-0002|P|2.5.1\rOBX|1|NM|GLU||5.4\r"
SIU = b"MSH|^~\\&|NWSCH|NORTHWIND|HUB|HUBFAC|20240301101700||SIU^S12|CTL-0003|P|2.5.1\r"


def feed_all(reader: FrameReader, chunks: Iterable[bytes]) -> list[tuple[str, bytes]]:
    events: list[tuple[str, bytes]] = []
    for chunk in chunks:
        events += reader.feed(chunk)
    return events


def split_at(data: bytes, *offsets: int) -> list[bytes]:
    cuts = [0, *offsets, len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:])]


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def test_frame_wraps_the_payload():
    assert frame(b"MSH|x") == b"\x0bMSH|x\x1c\x0d"
    assert (START, END) == (b"\x0b", b"\x1c\x0d")


def test_one_frame_in_one_read():
    assert FrameReader(1024).feed(frame(ADT)) == [("frame", ADT)]


@pytest.mark.parametrize("offset", range(1, len(frame(ADT))))
def test_a_frame_split_into_two_reads_at_any_offset(offset):
    reader = FrameReader(1024)
    assert feed_all(reader, split_at(frame(ADT), offset)) == [("frame", ADT)]
    assert reader.buffer == b""


def test_a_frame_split_into_three_reads_at_every_pair_of_offsets():
    data = frame(SIU)
    for first in range(1, len(data)):
        for second in range(first, len(data)):
            reader = FrameReader(1024)
            assert feed_all(reader, split_at(data, first, second)) == [("frame", SIU)], (first, second)


def test_a_frame_arriving_one_byte_at_a_time():
    reader = FrameReader(1024)
    events = feed_all(reader, byte_by_byte(frame(ADT)))
    assert events == [("frame", ADT)]


def test_the_frame_is_delivered_only_once_the_end_is_complete():
    reader = FrameReader(1024)
    assert reader.feed(frame(ADT)[:-1]) == []  # 0x1C received, 0x0D not yet
    assert reader.feed(b"\x0d") == [("frame", ADT)]


def test_several_frames_in_one_read_come_out_in_order():
    data = frame(ADT) + frame(ORU) + frame(SIU)
    assert FrameReader(1024).feed(data) == [("frame", ADT), ("frame", ORU), ("frame", SIU)]


@pytest.mark.parametrize("offset", range(1, len(frame(ADT) + frame(ORU))))
def test_two_frames_split_at_any_offset(offset):
    data = frame(ADT) + frame(ORU)
    assert feed_all(FrameReader(1024), split_at(data, offset)) == [("frame", ADT), ("frame", ORU)]


def test_a_read_ending_one_frame_and_starting_the_next():
    reader = FrameReader(1024)
    data = frame(ADT) + frame(ORU)
    cut = len(frame(ADT)) + 10
    assert reader.feed(data[:cut]) == [("frame", ADT)]
    assert reader.feed(data[cut:]) == [("frame", ORU)]


@pytest.mark.parametrize(
    "noise",
    [b"\r\n", b"\x00\x00\x00", b"garbage before the frame", b"\x1c\x0d", b"MSH|^~\\&|not framed\r"],
    ids=["crlf", "nul", "text", "stray-end", "unframed-hl7"],
)
def test_noise_before_the_start_byte_is_skipped(noise):
    assert FrameReader(1024).feed(noise + frame(ADT)) == [("frame", ADT)]


def test_noise_between_frames_is_skipped():
    data = frame(ADT) + b"\r\n\x00keepalive" + frame(ORU)
    assert FrameReader(1024).feed(data) == [("frame", ADT), ("frame", ORU)]


def test_noise_in_a_read_of_its_own_is_dropped():
    reader = FrameReader(1024)
    assert reader.feed(b"noise without a start byte") == []
    assert reader.buffer == b""
    assert reader.feed(frame(ADT)) == [("frame", ADT)]


def test_a_start_byte_inside_a_frame_restarts_it():
    # The sender gave up on a frame half-way and started again: only the new frame counts.
    data = START + ADT[:40] + frame(ORU)
    assert FrameReader(1024).feed(data) == [("frame", ORU)]


def test_a_restart_split_across_reads():
    reader = FrameReader(1024)
    assert reader.feed(START + ADT[:40]) == []
    assert reader.feed(frame(ORU)[:20]) == []
    assert reader.feed(frame(ORU)[20:]) == [("frame", ORU)]


def test_an_empty_frame_is_delivered_as_empty():
    # The HL7 adapter answers it (AR); the framer does not judge content.
    assert FrameReader(1024).feed(frame(b"") + frame(ADT)) == [("frame", b""), ("frame", ADT)]


# --- size limit -----------------------------------------------------------------------------

LIMIT = 64
BIG = b"MSH|^~\\&|NWADT|NORTHWIND|HUB|HUBFAC|20240301101500||ADT^A01|BIG-1|P|2.5.1\r" + b"NTE|1||" + b"x" * 200 + b"\r"
SMALL = b"MSH|^~\\&|NWSCH|NW|HUB|HUB|20240301||SIU^S12|C3|P|2.5\r"  # well under the limit
assert len(SMALL) < LIMIT < len(BIG)


def test_a_frame_at_the_limit_is_delivered():
    payload = b"M" * LIMIT
    assert FrameReader(LIMIT).feed(frame(payload)) == [("frame", payload)]


def test_an_oversize_frame_in_one_read_is_reported_with_its_head_and_the_next_frame_delivered():
    events = FrameReader(LIMIT).feed(frame(BIG) + frame(SMALL))
    assert [kind for kind, _ in events] == ["oversize", "frame"]
    assert BIG.startswith(events[0][1][:LIMIT])
    assert events[0][1].startswith(b"MSH|^~\\&|NWADT|")  # enough to read MSH-10 for the AR
    assert events[1] == ("frame", SMALL)


def test_an_oversize_frame_in_many_small_reads_is_reported_once_and_the_next_frame_delivered():
    reader = FrameReader(LIMIT)
    data = frame(BIG) + frame(SMALL)
    events = feed_all(reader, [data[i : i + 7] for i in range(0, len(data), 7)])
    assert [kind for kind, _ in events] == ["oversize", "frame"]
    assert events[0][1].startswith(b"MSH|^~\\&|NWADT|")
    assert events[1] == ("frame", SMALL)


def test_an_oversize_frame_byte_by_byte_is_reported_once_and_the_next_frame_delivered():
    events = feed_all(FrameReader(LIMIT), byte_by_byte(frame(BIG) + frame(SMALL)))
    assert [kind for kind, _ in events] == ["oversize", "frame"]
    assert events[1] == ("frame", SMALL)


def test_the_oversize_head_is_capped_at_64_kib():
    huge = b"MSH|" + b"y" * 200_000
    events = FrameReader(100_000).feed(frame(huge))
    assert events[0][0] == "oversize"
    assert len(events[0][1]) == 65536
    assert huge.startswith(events[0][1])


def test_the_oversize_frame_is_not_kept_in_memory():
    reader = FrameReader(LIMIT)
    reader.feed(START + b"z" * 10_000)
    reader.feed(b"z" * 10_000)
    assert len(reader.buffer) <= 1


@pytest.mark.parametrize("offset", range(1, len(frame(BIG) + frame(SMALL))))
def test_oversize_then_a_frame_split_into_two_reads_at_any_offset(offset):
    # Regression, at the offset just after the oversize frame's 0x1C: the 0x0D arrives in the next
    # read, the reader misses the END and swallows the following frame.
    data = frame(BIG) + frame(SMALL)
    events = feed_all(FrameReader(LIMIT), split_at(data, offset))
    assert [kind for kind, _ in events] == ["oversize", "frame"]
    assert events[1] == ("frame", SMALL)


def test_a_frame_at_the_limit_with_the_end_split_between_reads_is_delivered():
    # Regression: 0x1C used to be counted as payload: the frame was reported oversize and the next one lost.
    payload = b"M" * LIMIT
    reader = FrameReader(LIMIT)
    first = reader.feed(frame(payload)[:-1])
    rest = reader.feed(b"\x0d" + frame(SMALL))
    assert first + rest == [("frame", payload), ("frame", SMALL)]


# --- END split between reads ----------------------------------------------------------------


def test_end_split_between_two_reads():
    reader = FrameReader(1024)
    assert reader.feed(START + ADT + b"\x1c") == []
    assert reader.feed(b"\x0d" + frame(ORU)) == [("frame", ADT), ("frame", ORU)]


def test_a_lone_0x1c_inside_the_payload_does_not_end_the_frame():
    payload = ADT + b"\x1c" + b"x"  # 0x1C not followed by 0x0D
    assert FrameReader(1024).feed(frame(payload)) == [("frame", payload)]
