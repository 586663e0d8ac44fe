"""The transactional outbox: rows are written by processing, in its transaction, and nothing is
written when it rolls back; `hub serve` (embedded mode) then delivers them over real MLLP."""

from __future__ import annotations

import asyncio
import textwrap
import threading
import time
from collections.abc import Collection
from dataclasses import replace
from functools import partial
from types import SimpleNamespace

import pytest
from sqlalchemy import Engine, create_engine, func, select

from adapters.inbound.hl7v2.reader import read_frame, read_message
from adapters.transport.mllp import send_all
from hub.bootstrap import build
from hub.delivery.outbox import Routing, RoutingUnitOfWork
from hub.outbound import Destination, Outbound, RetryPolicy, RoutedEvent
from hub.pipeline import process_pending, store_batch
from hub.routing import parse_routes
from hub.store.outbox import outbox
from hub.store.uow import UnitOfWork
from tests.conftest import RunningHub, adt, hub_settings, run_hub, unique
from tests.integration.delivery_fakes import FakeMllpReceiver, echo_planner


def _store(db: Engine, frames: list[bytes]) -> list[int]:
    outcomes = store_batch(partial(UnitOfWork, db), [read_frame(f, "mllp", with_content=False).inbound for f in frames])
    return [o.message_id for o in outcomes]  # type: ignore[misc]


def _outbox_rows(db: Engine, message_ids: Collection[int]) -> list[dict[str, object]]:
    with db.connect() as conn:
        query = select(outbox).where(outbox.c.message_id.in_(list(message_ids))).order_by(outbox.c.id)
        return [dict(r._mapping) for r in conn.execute(query)]


def test_outbox_rows_are_written_with_the_processing_and_nudged_after_commit(db: Engine) -> None:
    name = unique("ehr")
    seen: list[RoutedEvent] = []
    visible_at_nudge: list[int] = []
    plan = echo_planner(name)

    def planner(event: RoutedEvent) -> list[Outbound]:
        seen.append(event)
        return plan(event)

    def notify(destinations: Collection[str]) -> None:
        # Called after the commit: another connection already sees the rows.
        assert set(destinations) == {name}
        with create_engine(db.url).connect() as other:
            visible_at_nudge.append(other.execute(
                select(func.count()).select_from(outbox).where(outbox.c.destination == name)).scalar_one())

    mrn_a, mrn_b = unique("M"), unique("M")
    ids = _store(db, [adt(mrn=mrn_a), adt(mrn=mrn_b, trigger="A08"), adt(mrn=mrn_a, trigger="A08")])
    uow = partial(RoutingUnitOfWork, db, Routing(planner, notify))
    assert process_pending(uow, {"hl7v2": read_message}, limit=50) == ids[-1]
    rows = _outbox_rows(db, ids)
    assert [r["message_id"] for r in rows] == ids
    assert [r["state"] for r in rows] == ["pending"] * 3
    assert rows[0]["ordering_key"] == rows[2]["ordering_key"] != rows[1]["ordering_key"]
    assert str(rows[0]["ordering_key"]).endswith(f"|{mrn_a}")
    assert visible_at_nudge == [3]
    assert all(e.patient_record_id for e in seen) and all(e.accepted_at for e in seen)
    assert seen[0].patient_record_id == seen[2].patient_record_id != seen[1].patient_record_id
    assert [e.message_type + "^" + e.trigger for e in seen] == ["ADT^A01", "ADT^A08", "ADT^A08"]


def test_nothing_is_written_for_a_message_whose_processing_rolls_back(db: Engine) -> None:
    name = unique("ehr")
    poison = unique("POISON")
    plan = echo_planner(name)
    nudged: list[set[str]] = []

    def planner(event: RoutedEvent) -> list[Outbound]:
        rows = plan(event)
        if event.patient_key.endswith(poison):  # a row the database refuses (NOT NULL): the batch fails
            return [*rows, replace(rows[0], idempotency_key=None)]  # type: ignore[arg-type]
        return rows

    ids = _store(db, [adt(), adt(mrn=poison), adt()])
    uow = partial(RoutingUnitOfWork, db, Routing(planner, lambda d: nudged.append(set(d))))
    process_pending(uow, {"hl7v2": read_message}, limit=50)
    rows = _outbox_rows(db, ids)
    assert [r["message_id"] for r in rows] == [ids[0], ids[2]], "the failed message left no row"
    with db.connect() as conn:
        from hub.store.tables import messages

        states = dict(conn.execute(select(messages.c.id, messages.c.state).where(messages.c.id.in_(ids))).all())
    assert [states[i] for i in ids] == ["processed", "failed", "processed"]
    assert nudged and all(d == {name} for d in nudged)


def test_routed_events_know_whether_the_patient_has_open_orders(db: Engine) -> None:
    seen: list[RoutedEvent] = []
    with_order, without = unique("M"), unique("M")
    order = (
        f"MSH|^~\\&|TESTORD|NORTHWIND|LAB|LAB|20240101120000||ORM^O01|{unique('C')}|P|2.5.1\r"
        f"PID|1||{with_order}^^^NORTHWIND^MR||Testperson^Alma||19800402|F\r"
        f"ORC|NW|{unique('ORD')}^TESTORD\r"
        f"OBR|1|{unique('ORD')}^TESTORD||80061^LIPID PANEL^CPT4\r"
    ).encode()
    ids = _store(db, [order, adt(mrn=with_order, trigger="A08"), adt(mrn=without, trigger="A08")])
    uow = partial(RoutingUnitOfWork, db, Routing(lambda e: seen.append(e) or []))
    process_pending(uow, {"hl7v2": read_message}, limit=50)
    assert [e.message_id for e in seen] == ids
    assert [e.has_open_orders for e in seen] == [True, True, False]


def test_only_events_a_route_takes_are_planned_and_each_carries_its_person(db: Engine) -> None:
    """The person (enterprise id, cross-referenced identifiers) is looked up for the events some route
    takes; the others are left alone. A condition that fails still ends as one dead row for the event."""
    table = parse_routes(textwrap.dedent("""\
        destinations:
          ehr: {transport: mllp, host: 127.0.0.1, port: 6661, profile: ehr, version: "2.5.1"}
        routes:
          - {name: updates-to-ehr, when: {message_type: ADT, trigger: [A08]}, to: [ehr]}
        """))
    planned: list[RoutedEvent] = []

    def planner(event: RoutedEvent) -> list[Outbound]:
        planned.append(event)
        return table.plan(event)

    mrn = unique("M")
    ids = _store(db, [adt(mrn=mrn), adt(mrn=mrn, trigger="A08")])
    process_pending(partial(RoutingUnitOfWork, db, Routing(planner, table=table)), {"hl7v2": read_message}, limit=50)
    [event] = planned
    assert event.message_id == ids[1] and event.enterprise_id is not None
    assert mrn in {value for _, value in event.identifiers}
    [row] = _outbox_rows(db, ids)
    assert row["message_id"] == ids[1] and event.enterprise_id.encode() in row["payload"]

    def broken(event: RoutedEvent) -> bool:
        raise TypeError("a condition that fails")

    failing = replace(table, routes=[replace(table.routes[0], conditions=(broken,))])
    later = _store(db, [adt(mrn=mrn, trigger="A08")])
    process_pending(partial(RoutingUnitOfWork, db, Routing(failing.plan, table=failing)), {"hl7v2": read_message}, limit=50)
    [dead] = _outbox_rows(db, later)
    assert (dead["destination"], dead["state"], dead["last_detail"]) == ("(routes)", "dead", "TypeError in the routes")


def test_no_routes_no_rows(db: Engine) -> None:
    ids = _store(db, [adt(), adt()])
    process_pending(partial(RoutingUnitOfWork, db, Routing(None)), {"hl7v2": read_message}, limit=1)
    process_pending(partial(UnitOfWork, db), {"hl7v2": read_message}, limit=50)
    assert _outbox_rows(db, ids) == []


# --- hub serve, embedded delivery ---------------------------------------------------------------


def start_routed_hub(database_url: str, data_dir: object, destinations: dict[str, Destination], planner: object,
                     **settings: object) -> tuple[RunningHub, threading.Thread]:
    """`hub serve` on a thread, with a stand-in for the routes file (destinations + planner)."""
    routes = SimpleNamespace(destinations=destinations, plan=planner, reads_open_orders=lambda: True, wants=lambda event: True)
    return run_hub(build(hub_settings(database_url, data_dir, **settings), routes=routes, sweep_every=0.1))  # type: ignore[arg-type]


def test_hub_serve_delivers_in_per_patient_order(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    receiver = FakeMllpReceiver(delay=lambda key: (hash(key) % 4) / 1000).start()
    name = unique("ehr")
    dest = Destination(name, "mllp", "ehr", host="127.0.0.1", port=receiver.port, timeout=2, connect_timeout=1,
                       retry=RetryPolicy(initial_delay=0.05, max_delay=0.2))
    running, thread = start_routed_hub(database_url, tmp_path_factory.mktemp("data"), {name: dest}, echo_planner(name))
    try:
        mrns = [unique("M") for _ in range(5)]
        frames = [adt(mrn=mrns[n % 5], trigger="A08") for n in range(40)]
        acks = asyncio.run(send_all("127.0.0.1", running.mllp_port, frames))
        assert all(b"MSA|AA" in a for a in acks)
        assert receiver.wait_for(40), f"delivered {len(receiver.ids())} of 40"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the receiver ACKed; the round records it just after
            with running.hub.engine.connect() as conn:
                rows = conn.execute(select(outbox.c.message_id, outbox.c.ordering_key, outbox.c.idempotency_key,
                                           outbox.c.state).where(outbox.c.destination == name).order_by(outbox.c.id)).all()
            if {r.state for r in rows} == {"delivered"}:
                break
            time.sleep(0.05)
        assert {r.state for r in rows} == {"delivered"}
        assert len(receiver.ids()) == 40
        expected: dict[str, list[str]] = {}
        for r in rows:
            expected.setdefault(r.ordering_key, []).append(r.idempotency_key)
        arrived: dict[str, list[str]] = {}
        keys = {r.idempotency_key: r.ordering_key for r in rows}
        for key in receiver.ids():
            arrived.setdefault(keys[key], []).append(key)
        assert arrived == expected
    finally:
        running.hub.http_server.should_exit = True  # type: ignore[union-attr]
        thread.join(30)
        receiver.stop()
