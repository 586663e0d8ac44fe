"""MPI link changes told to EHRs: a data steward's merge or unlink changes which identifiers belong
to one patient, and the EHR destinations must hear of it, or they keep two charts for one person
(or one chart for two).

- merge (person S folded into T): ADT^A40, PID-3 the surviving person's identifiers (its source
  identifiers and enterprise id T), MRG-1 the merged-away enterprise id S (`S^^^HUB^PI`).
- unlink (record R taken out of person P, matched again into Q): ADT^A31 (update person information)
  for R under Q and for P's remaining records, so PID-3 shows each person's identifiers as they are now.

Sent to every destination whose profile is `ehr` and format HL7 v2 (built by that profile, as
routed messages are). FHIR EHR destinations get nothing yet: their bundle is a conditional update
of the Patient, and a notice carries no full demographics to update it with. Rows are written in
the steward action's transaction (a rolled-back action sends nothing) and ordered with the
patient's other messages (the ordering key of the record the notice is about). Idempotency keys
start with `L` and come from the action's link event id, so they never collide with `H…` keys of
routed messages.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from hub.model import Identifier, Patient, PatientEvent
from hub.outbound import Outbound, RoutedEvent
from hub.routing.table import control_id
from hub.store.uow import RecordRow, UnitOfWork, utcnow

log = logging.getLogger("hub.delivery")

ROUTE = "mpi-link-change"
"""The `route` of notice rows (there is no route in the file for them)."""
ENTERPRISE_AUTHORITY = "HUB"


def notify_link_change(uow: UnitOfWork, action: str, result: dict[str, Any]) -> dict[str, Any]:
    """Write the notices for a steward action (`merge` or `unlink`, with the action's result) to the
    outbox in the caller's transaction; returns the result unchanged (the steward returns it). No
    routes (a unit of work without `routing.table`) or no EHR destination: nothing is written."""
    routing = getattr(uow, "routing", None)
    table = getattr(routing, "table", None)
    if table is None or not hasattr(table, "build_notice"):
        return result
    targets = [d.name for d in table.destinations.values() if d.profile == "ehr" and d.format == "hl7v2"]
    if not targets:
        return result
    at = utcnow()
    events = _events(uow, action, result, at)
    if not events:
        return result
    about = (result.get("records") or [None])[0] if action == "merge" else result.get("record")
    link_event = _last_link_event(uow, about)
    rows: list[tuple[int | None, int, Outbound]] = []
    for n, event in enumerate(events):
        for name in targets:
            key = "L" + control_id(link_event, n, name)[1:]
            outbound = table.build_notice(event, name, ROUTE, key)
            if outbound is not None:
                rows.append((None, n, outbound))
    uow.outbox.add(rows, at)
    log.info("MPI %s: %d notice(s) queued for EHR destinations", action, len(rows))
    return result


def _events(uow: UnitOfWork, action: str, result: dict[str, Any], at: datetime) -> list[RoutedEvent]:
    if action == "merge":
        merged = Identifier(value=result["merged"], assigner=ENTERPRISE_AUTHORITY, type="PI")
        event = _person_event(uow, result["person"], "ADT^A40", at, avoid=result.get("records", ()), merged=merged)
        return [event] if event else []
    if action == "unlink":
        moved = _person_event(uow, result["person"], "ADT^A31", at, prefer=result["record"])
        left = _person_event(uow, result["previous_person"], "ADT^A31", at)
        return [e for e in (moved, left) if e is not None]
    raise ValueError(f"no notices for MPI action {action!r}")


def _person_event(
    uow: UnitOfWork, person_id: str, trigger: str, at: datetime, *, prefer: str | None = None,
    avoid: Collection[str] = (), merged: Identifier | None = None,
) -> RoutedEvent | None:
    """The person as one event: the demographics of one of its records (`prefer`, else the most
    recently updated one not in `avoid`), PID-3 every source identifier of the person."""
    rows = [r for r in uow.records.get_many(uow.mpi.record_ids_of(person_id)).values() if not r.deleted]
    if not rows:
        return None
    chosen = _choose(rows, prefer, avoid)
    return RoutedEvent(
        message_id=0, event_index=0, feed="mpi", format="mpi",
        event=PatientEvent(event=trigger, patient=Patient.model_validate(chosen.data), merged_identifier=merged),
        patient_key=f"{chosen.source_system}|{chosen.source_value}", patient_record_id=chosen.id,
        enterprise_id=person_id, identifiers=tuple((r.source_system, r.source_value) for r in rows), accepted_at=at,
    )


def _choose(rows: Sequence[RecordRow], prefer: str | None, avoid: Collection[str]) -> RecordRow:
    for row in rows:
        if row.id == prefer:
            return row
    kept = [r for r in rows if r.id not in avoid] or list(rows)
    return max(kept, key=lambda r: (r.updated_at, r.id))


def _last_link_event(uow: UnitOfWork, record_id: str | None) -> int:
    """The id of the action's link event (the latest of a record it moved): a stable, unique number
    for the notices' idempotency keys."""
    events = uow.mpi.events_for(record_id) if record_id else []
    return int(events[-1]["id"]) if events else 0
