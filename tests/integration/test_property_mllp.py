"""Bad input never crashes the listener and never loses a frame: random and mutated frames,
each must get exactly one ACK and leave exactly one stored row."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from adapters.transport.mllp import MllpClient
from hub.store.tables import messages
from tests.conftest import RunningHub, ack_fields, adt

FRAMING = {0x0B, 0x1C}
frame_bytes = st.binary(max_size=600).map(lambda b: bytes(x for x in b if x not in FRAMING))


@st.composite
def mutated_message(draw: st.DrawFn) -> bytes:
    message = bytearray(adt(f"P{draw(st.integers(0, 10**9))}", extra="ZXT|1|custom^data"))
    for _ in range(draw(st.integers(1, 6))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "drop-segment"]))
        position = draw(st.integers(0, max(len(message) - 1, 0)))
        if action == "flip" and message:
            message[position] = draw(st.integers(0, 255).filter(lambda x: x not in FRAMING))
        elif action == "cut":
            del message[position : position + draw(st.integers(1, 40))]
        elif action == "insert":
            message[position:position] = draw(st.sampled_from([b"|", b"^", b"~", b"\\", b"&", b"\r", b'""', b"\\X0\\", b"\xc3"]))
        elif action == "drop-segment":
            segments = bytes(message).split(b"\r")
            if len(segments) > 1:
                segments.pop(draw(st.integers(0, len(segments) - 1)))
            message = bytearray(b"\r".join(segments))
    return bytes(message)


def stored_rows(hub: RunningHub) -> int:
    with hub.hub.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(messages)).scalar_one()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.one_of(frame_bytes, mutated_message()), min_size=1, max_size=8))
def test_every_frame_gets_one_ack_and_one_row(running_hub: RunningHub, frames: list[bytes]) -> None:
    before = stored_rows(running_hub)

    async def send() -> list[bytes]:
        async with MllpClient("127.0.0.1", running_hub.mllp_port, timeout=20) as client:
            return [await client.send(f) for f in frames]

    acks = asyncio.run(send())
    assert len(acks) == len(frames)
    for ack in acks:
        assert ack_fields(ack)["MSA"][1] in ("AA", "AE", "AR")
    assert stored_rows(running_hub) - before == len(frames)
    assert ack_fields(adt_ack(running_hub))["MSA"][1] == "AA"  # the listener is still healthy


def adt_ack(hub: RunningHub) -> bytes:
    async def send() -> bytes:
        async with MllpClient("127.0.0.1", hub.mllp_port, timeout=20) as client:
            return await client.send(adt())

    return asyncio.run(send())
