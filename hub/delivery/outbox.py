"""Routing inside processing: each processed event's outbound messages join its transaction.

`process_events` calls `route_events(uow, items)` after the records are written. The routes (a
`Planner`) come with the unit of work (`RoutingUnitOfWork`, wired in `hub.bootstrap`), so the
pipeline's signatures do not change and a hub without routes pays one attribute look-up per batch.
A batch that rolls back takes its outbox rows with it; a batch that commits nudges the delivery
side (embedded loop or dramatiq) for the destinations it wrote to — after the commit, so the
nudged worker finds the rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from hub.messages import InboundMessage
from hub.mpi.service import enterprise_ids as linked
from hub.outbound import Outbound, RoutedEvent
from hub.recordset import patient_key
from hub.routing.table import control_id
from hub.store.uow import SourceKey, UnitOfWork, utcnow

log = logging.getLogger("hub.delivery")

Planner = Callable[[RoutedEvent], list[Outbound]]
"""The routes: one processed event → the outbound messages it causes (built now, from its data)."""
Notify = Callable[[Collection[str]], None]
"""Called after a commit with the destinations that got new rows."""


@dataclass
class Routing:
    """What processing needs to route: the current routes (swapped on reload) and who to nudge."""

    planner: Planner | None = None
    notify: Notify | None = None
    table: Any = None
    """The route table behind `planner` when it is one (`hub.routing.RouteTable`): MPI link-change
    notices read its destinations. Swapped with the planner on reload."""
    reloaded: Callable[[Path], None] | None = None
    """Told the file after each reload: another process that routes too (`hub.processor`) loads it again."""


class RoutingUnitOfWork(UnitOfWork):
    """A unit of work that routes what it processes and, once committed, nudges delivery."""

    def __init__(self, engine: Engine, routing: Routing) -> None:
        super().__init__(engine)
        self.routing = routing

    def commit(self) -> None:
        super().commit()
        touched = self.outbox.touched
        if touched and self.routing.notify is not None:
            try:
                self.routing.notify(set(touched))
            except Exception as exc:  # noqa: BLE001 — the rows are committed; the sweep finds them
                log.warning("nudging delivery failed (%s); the periodic sweep will deliver", type(exc).__name__)
        touched.clear()


def route_events(
    uow: UnitOfWork, items: Sequence[tuple[int, InboundMessage]], written: Mapping[SourceKey, str] | None = None
) -> int:
    """Write the outbound rows for every event of these processed messages; returns how many.
    `written`: record ids processing already knows by source key (the rest are looked up)."""
    routing: Routing | None = getattr(uow, "routing", None)
    planner = routing.planner if routing is not None else None
    if planner is None or not items:
        return 0
    events = routed_events(uow, items, written)
    rows = [(e.message_id, e.event_index, o) for e in events for o in plan_event(planner, e)]
    uow.outbox.add(rows, utcnow())
    return len(rows)


UNROUTED = "(routes)"
"""Destination and route of the dead row written when the planner itself fails on an event."""


def plan_event(planner: Planner, event: RoutedEvent) -> list[Outbound]:
    """The planner's messages for one event. The route table turns a failing profile into a dead
    row itself; any other failure of the planner becomes one dead row for the event (replay its
    message after the fix) — never a rolled-back batch, which would leave the records unwritten."""
    try:
        return planner(event)
    except Exception as exc:  # noqa: BLE001 — only the class is kept: the text may quote data
        log.error("routing message %d event %d failed (%s)", event.message_id, event.event_index, type(exc).__name__)
        return [Outbound(
            destination=UNROUTED, route=UNROUTED, ordering_key=event.patient_key,
            idempotency_key=control_id(event.message_id, event.event_index, UNROUTED), content_type="",
            payload=b"", summary="(not built)", error=f"{type(exc).__name__} in the routes",
        )]


def routed_events(
    uow: UnitOfWork, items: Sequence[tuple[int, InboundMessage]], written: Mapping[SourceKey, str] | None = None
) -> list[RoutedEvent]:
    """The events as routes see them, with the patient's record id, whether the patient has open
    orders (only when a route asks: `has_open_orders` stays None otherwise), and when the message was
    accepted (one look-up each for the whole batch)."""
    keyed = list(_patient_keys(items))
    written = written or {}
    record_ids = {key: written[key] for *_, key in keyed if key in written}
    missing = {key for *_, key in keyed if key not in written}
    if missing:
        record_ids |= uow.records.ids_by_sources(missing)
    table = getattr(getattr(uow, "routing", None), "table", None)
    asks = table is None or table.reads_open_orders()  # a bare planner (tests): always
    ordering = uow.outbox.with_open_orders(list(record_ids.values())) if asks else None
    accepted = uow.outbox.accepted_at([message_id for message_id, _ in items])
    events = []
    for message_id, n, inbound, key in keyed:
        record_id = record_ids.get(key)
        event = RoutedEvent(
            message_id=message_id, event_index=n, feed=inbound.feed, format=inbound.format,
            event=inbound.events[n], patient_key=f"{key[1]}|{key[2]}", patient_record_id=record_id,
            facility=_facility(inbound), accepted_at=accepted.get(message_id),
            has_open_orders=record_id in ordering if record_id and ordering is not None else None,
        )
        if table is None or table.wants(event):  # the others' persons are not looked up (a CSV load no route names)
            events.append(event)
    persons = enterprise_ids(uow, [e.patient_record_id for e in events if e.patient_record_id])
    return [
        replace(e, enterprise_id=person[0], identifiers=person[1])
        if e.patient_record_id and (person := persons.get(e.patient_record_id)) else e
        for e in events
    ]


def enterprise_ids(uow: UnitOfWork, record_ids: Sequence[str]) -> Mapping[str, tuple[str, tuple[tuple[str, str], ...]]]:
    """Patient record id → (enterprise id, every (system, value) of the person's source records):
    the links processing just wrote in this transaction (one query for the batch)."""
    return {rid: (person, tuple(identifiers)) for rid, (person, identifiers) in linked(uow, record_ids).items()}


def _patient_keys(items: Sequence[tuple[int, InboundMessage]]) -> Iterator[tuple[int, int, InboundMessage, SourceKey]]:
    for message_id, inbound in items:
        for n, event in enumerate(inbound.events):
            if event.patient is None:
                continue  # nothing to order it by, nobody to address it to
            try:
                yield message_id, n, inbound, patient_key(event.patient)
            except ValueError:
                continue


def _facility(inbound: InboundMessage) -> str | None:
    """MSH-4: the HL7 v2 reader stores the sender as `MSH-3|MSH-4`."""
    if inbound.format != "hl7v2" or not inbound.sender or "|" not in inbound.sender:
        return None
    return inbound.sender.split("|", 1)[1] or None
