"""The pipeline's processing stage on its own, on SQLite and PostgreSQL."""

from __future__ import annotations

from functools import partial

from sqlalchemy import select

from adapters.inbound.hl7v2.reader import read_frame, read_message
from hub.messages import InboundMessage
from hub.pipeline import process_pending, store_batch
from hub.store.engine import make_engine
from hub.store.migrate import upgrade
from hub.store.tables import records
from hub.store.uow import UnitOfWork
from tests.conftest import adt, unique


def test_processing_slices_are_sized_by_events_and_keep_acceptance_order(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    uow = partial(UnitOfWork, engine)  # a fresh database per module: nothing else is pending
    outcomes = store_batch(uow, [read_frame(adt(), "mllp", with_content=False).inbound for _ in range(5)])
    ids = [o.message_id for o in outcomes]
    readers = {"hl7v2": read_message}
    assert process_pending(uow, readers, limit=10, max_events=2) == ids[1]  # two events: two ADTs, oldest first
    assert process_pending(uow, readers, limit=10, max_events=2) == ids[3]
    assert process_pending(uow, readers, limit=10) == ids[4]
    assert process_pending(uow, readers, limit=10) is None


def test_processing_maps_what_the_door_decoded_without_reading_the_bytes_again(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    uow = partial(UnitOfWork, engine)
    mrn = unique("M")
    door = read_frame(adt(mrn=mrn), "mllp", with_content=False).inbound
    assert door.events == [] and door.content is not None  # judged on the ACK path, not mapped
    (outcome,) = store_batch(uow, [door])

    def must_not_read(raw: bytes, feed: str) -> InboundMessage:
        raise AssertionError("the stored bytes were decoded again")

    assert process_pending(uow, {"hl7v2": must_not_read}, read={outcome.message_id: door}) == outcome.message_id
    with engine.connect() as conn:  # mapped from the door's decoding
        assert conn.execute(select(records.c.kind).where(records.c.source_value == mrn)).scalars().all() == ["patient"]

    again = read_frame(adt(), "mllp", with_content=False).inbound  # not handed over: read from the bytes
    (second,) = store_batch(uow, [again])
    assert process_pending(uow, {"hl7v2": read_message}) == second.message_id


def test_a_group_commit_gives_each_message_its_own_id_and_answers_resends_with_the_original(database_url: str) -> None:
    """One group commit holding a message without a control id (no dedupe key), a re-send of an earlier
    commit's message and a re-send of a message earlier in the same commit: every message is stored under
    its own id, in arrival order, and each re-send is answered with its original's outcome."""
    engine = make_engine(database_url)
    upgrade(engine)
    uow = partial(UnitOfWork, engine)
    first_control, control, blank = unique("C"), unique("C"), unique("C")
    (earlier,) = store_batch(uow, [read_frame(adt(first_control), "mllp", with_content=False).inbound])
    frames = [
        adt(control),
        adt(blank).replace(f"|{blank}|".encode(), b"||", 1),  # MSH-10 left empty: rejected, still stored
        adt(control),  # re-sent within the commit
        adt(first_control),  # re-sent from the earlier commit
        adt(),
    ]
    inbound = [read_frame(f, "mllp", with_content=False).inbound for f in frames]
    assert inbound[1].dedupe_key is None
    outcomes = store_batch(uow, inbound)
    ids = [o.message_id for o in outcomes]
    assert None not in ids and len(set(ids)) == 5 and ids[0] < ids[1] and ids[4] > ids[1]
    assert [o.duplicate_of for o in outcomes] == [None, None, ids[0], earlier.message_id, None]
    assert outcomes[2].status == outcomes[0].status and outcomes[3].status == earlier.status
    with engine.connect() as conn:
        from hub.store.tables import messages

        stored = dict(conn.execute(select(messages.c.id, messages.c.raw).where(messages.c.id.in_(ids))).all())
    assert [bytes(stored[i]) for i in ids] == [m.raw for m in inbound]  # each id names its own message
