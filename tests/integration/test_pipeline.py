"""The pipeline's processing stage on its own, on SQLite and PostgreSQL."""

from __future__ import annotations

from functools import partial

from adapters.inbound.hl7v2.reader import read_frame, read_message
from hub.pipeline import process_pending, store_batch
from hub.store.engine import make_engine
from hub.store.migrate import upgrade
from hub.store.uow import UnitOfWork
from tests.conftest import adt


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
