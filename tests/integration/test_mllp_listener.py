"""The MLLP listener on a real socket, against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from adapters.transport.mllp import MllpClient, frame, send_all
from hub.store.tables import messages, records
from tests.conftest import (
    RunningHub,
    ack_fields,
    adt,
    hub_settings,
    start_hub,
    stop_hub,
    unique,
)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def stored_count(hub: RunningHub, control_id: str) -> int:
    with hub.hub.engine.connect() as conn:
        return conn.execute(select(func.count()).where(messages.c.control_id == control_id)).scalar_one()


def test_message_is_stored_before_its_ack_arrives(running_hub: RunningHub) -> None:
    control_id = unique()
    [ack] = run(send_all("127.0.0.1", running_hub.mllp_port, [adt(control_id)]))
    # The ACK is in our hands: the row must already be committed (read on another connection).
    assert stored_count(running_hub, control_id) == 1
    fields = ack_fields(ack)
    assert fields["MSA"][1:3] == ["AA", control_id]
    assert fields["MSH"][9] == "ACK^A01^ACK"
    assert fields["MSH"][3:7] == ["HUB", "HUB", "TESTADT", "NORTHWIND"]  # sender and receiver swapped
    assert fields["MSH"][12] == "2.5.1"


def test_many_connections_many_messages_each(running_hub: RunningHub) -> None:
    async def one_connection(n: int) -> list[str]:
        ids = [unique() for _ in range(n)]
        acks = await send_all("127.0.0.1", running_hub.mllp_port, [adt(i) for i in ids])
        return [ack_fields(a)["MSA"][2] for a in acks] == ids and ids or []

    async def all_connections() -> list[list[str]]:
        return await asyncio.gather(*(one_connection(25) for _ in range(8)))

    results = run(all_connections())
    assert all(len(r) == 25 for r in results)
    for ids in results:
        for control_id in ids[:3]:
            assert stored_count(running_hub, control_id) == 1


def test_frames_split_across_reads_and_noise_before_start_byte(running_hub: RunningHub) -> None:
    first, second = unique(), unique()
    stream = b"noise\r\n" + frame(adt(first)) + b"\x00\x00" + frame(adt(second))
    with socket.create_connection(("127.0.0.1", running_hub.mllp_port), timeout=10) as sock:
        for i in range(0, len(stream), 7):  # dribble 7 bytes at a time
            sock.sendall(stream[i : i + 7])
        replies = _read_frames(sock, 2)
    assert [ack_fields(r)["MSA"][2] for r in replies] == [first, second]


def _read_frames(sock: socket.socket, count: int) -> list[bytes]:
    buffer = b""
    while buffer.count(b"\x1c\x0d") < count:
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        buffer += chunk
    return [part.lstrip(b"\x0b") for part in buffer.split(b"\x1c\x0d")[:count]]


def test_resent_message_gets_original_outcome_and_is_not_processed_twice(running_hub: RunningHub) -> None:
    control_id, mrn = unique(), unique("M")
    first, again = run(send_all("127.0.0.1", running_hub.mllp_port, [adt(control_id, mrn), adt(control_id, mrn)]))
    assert ack_fields(first)["MSA"][1] == ack_fields(again)["MSA"][1] == "AA"
    assert running_hub.hub.intake.wait_processed(timeout=10)
    with running_hub.hub.engine.connect() as conn:
        rows = conn.execute(select(messages.c.state, messages.c.duplicate_of).where(messages.c.control_id == control_id)).all()
        version = conn.execute(select(records.c.version).where(records.c.source_value == mrn)).scalar_one()
    assert sorted(r.state for r in rows) == ["none", "processed"]  # both stored, one processed
    assert version == 1


def test_resent_rejected_message_is_rejected_again(running_hub: RunningHub) -> None:
    control_id = unique()
    bad = adt(control_id, birth_date="19800231")
    first, again = run(send_all("127.0.0.1", running_hub.mllp_port, [bad, bad]))
    assert ack_fields(first)["MSA"][1] == ack_fields(again)["MSA"][1] == "AE"
    assert ack_fields(again)["ERR"][3].startswith("102^")


@pytest.fixture(scope="module")
def small_frame_hub(database_url: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    settings = hub_settings(
        database_url, tmp_path_factory.mktemp("small"), mllp_max_frame_bytes=4096, mllp_idle_timeout=1.0
    )
    running, thread = start_hub(settings)
    yield running
    stop_hub(running, thread)


def test_oversize_frame_is_rejected_and_connection_stays_usable(small_frame_hub: RunningHub) -> None:
    big_id, next_id = unique(), unique()
    big = adt(big_id, extra="NTE|1||" + "x" * 10_000)

    async def scenario() -> tuple[bytes, bytes]:
        async with MllpClient("127.0.0.1", small_frame_hub.mllp_port, timeout=10) as client:
            return await client.send(big), await client.send(adt(next_id))

    oversize_ack, next_ack = run(scenario())
    assert ack_fields(oversize_ack)["MSA"][1:3] == ["AR", big_id]
    assert "maximum frame size" in ack_fields(oversize_ack)["ERR"][8]
    assert ack_fields(next_ack)["MSA"][1:3] == ["AA", next_id]
    assert stored_count(small_frame_hub, big_id) == 1  # its first bytes are kept, as rejected


def test_idle_connection_is_closed(small_frame_hub: RunningHub) -> None:
    with socket.create_connection(("127.0.0.1", small_frame_hub.mllp_port), timeout=10) as sock:
        sock.settimeout(5)
        assert sock.recv(10) == b""  # the server closed it after the 1 s idle timeout


def test_garbage_frame_gets_ar_and_is_stored(running_hub: RunningHub) -> None:
    [ack] = run(send_all("127.0.0.1", running_hub.mllp_port, [b"\xff\xfe not hl7 at all"]))
    fields = ack_fields(ack)
    assert fields["MSA"][1] == "AR"
    assert fields["ERR"][3].split("^")[0] == "100"
    with running_hub.hub.engine.connect() as conn:
        raw = conn.execute(select(messages.c.raw).where(messages.c.status == "rejected").order_by(messages.c.id.desc())).first()
    assert raw is not None


@pytest.fixture(scope="module")
def enhanced_hub(database_url: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    running, thread = start_hub(hub_settings(database_url, tmp_path_factory.mktemp("enh"), mllp_ack_mode="enhanced"))
    yield running
    stop_hub(running, thread)


def _with_ack_types(message: bytes, accept: str, application: str) -> bytes:
    msh, rest = message.split(b"\r", 1)
    return msh + f"|||{accept}|{application}".encode() + b"\r" + rest


def test_enhanced_mode_sends_commit_then_application_ack(enhanced_hub: RunningHub) -> None:
    control_id = unique()

    async def scenario() -> tuple[bytes, bytes]:
        async with MllpClient("127.0.0.1", enhanced_hub.mllp_port, timeout=10) as client:
            commit = await client.send(_with_ack_types(adt(control_id), "AL", "AL"))
            return commit, await client.receive()

    commit, application = run(scenario())
    assert ack_fields(commit)["MSA"][1:3] == ["CA", control_id]
    assert ack_fields(application)["MSA"][1:3] == ["AA", control_id]


def test_enhanced_mode_error_only_application_ack(enhanced_hub: RunningHub) -> None:
    good, bad = unique(), unique()

    async def scenario() -> bytes:
        async with MllpClient("127.0.0.1", enhanced_hub.mllp_port, timeout=10) as client:
            client._writer.write(frame(_with_ack_types(adt(good), "NE", "ER")))  # nothing comes back for this one…
            client._writer.write(frame(_with_ack_types(adt(bad, sex="Q"), "NE", "ER")))  # …only this one's AE
            return await client.receive()

    ack = run(scenario())
    assert ack_fields(ack)["MSA"][1:3] == ["AE", bad]
    assert stored_count(enhanced_hub, good) == 1


def test_enhanced_listener_without_msh15_16_uses_original_mode(enhanced_hub: RunningHub) -> None:
    control_id = unique()
    [ack] = run(send_all("127.0.0.1", enhanced_hub.mllp_port, [adt(control_id)]))
    assert ack_fields(ack)["MSA"][1:3] == ["AA", control_id]


def test_messages_stored_but_not_processed_before_a_crash_are_processed_on_start(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Nothing stored is lost: a message acknowledged just before the process died is processed at the next start."""
    from functools import partial

    from adapters.inbound.hl7v2.reader import read_frame
    from hub.pipeline import store_batch
    from hub.store.engine import make_engine
    from hub.store.migrate import upgrade
    from hub.store.uow import UnitOfWork

    mrn = unique("K")
    engine = make_engine(database_url)
    upgrade(engine)
    [outcome] = store_batch(partial(UnitOfWork, engine), [read_frame(adt(mrn=mrn), "mllp", with_content=False).inbound])
    assert outcome.stored  # stored and (in a real run) acknowledged; then the process "dies"
    running, thread = start_hub(hub_settings(database_url, tmp_path_factory.mktemp("restart")))
    try:
        with running.client() as client:
            bundle = client.get("/fhir/Patient", params={"identifier": mrn}).json()
        assert [e["resource"]["identifier"][0]["value"] for e in bundle.get("entry", [])] == [mrn]
    finally:
        stop_hub(running, thread)


@pytest.fixture(scope="module")
def lag_bounded_hub(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    running, thread = start_hub(hub_settings(database_url, tmp_path_factory.mktemp("data"), processing_max_lag=0.1))
    yield running
    stop_hub(running, thread)


def test_a_steady_stream_is_processed_while_it_lasts(running_hub: RunningHub) -> None:
    """A stream processing can follow is processed while it lasts (routing must not wait for the
    sender to stop): earlier messages get processed although arrivals come closer together than the
    intake's idle pause."""
    assert processed_while_streaming(running_hub, 150) > 150 // 3


def test_a_steady_stream_is_processed_while_it_lasts_with_max_lag(lag_bounded_hub: RunningHub) -> None:
    """The same with HUB_PROCESSING_MAX_LAG (turns under saturation too)."""
    assert processed_while_streaming(lag_bounded_hub, 150) > 150 // 3


def processed_while_streaming(running_hub: RunningHub, count: int) -> int:
    """Stream `count` ADTs, 5 ms apart; how many were processed when the last one was acknowledged."""
    ids = [unique("S") for _ in range(count)]

    async def stream() -> int:
        processed_during = 0
        async with MllpClient("127.0.0.1", running_hub.mllp_port, 10) as client:
            for n, control_id in enumerate(ids):
                assert b"MSA|AA" in await client.send(adt(control_id))
                await asyncio.sleep(0.005)  # well under the 25 ms pause that processing would wait for
                if n == len(ids) - 1:  # still streaming: nothing has paused yet
                    with running_hub.hub.engine.connect() as conn:
                        processed_during = conn.execute(select(func.count()).where(
                            messages.c.control_id.in_(ids), messages.c.state == "processed")).scalar_one()
        return processed_during

    return run(stream())
