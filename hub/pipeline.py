"""The one pipeline every feed goes through: accept (store) → map → match → route.

Handlers are small functions over a unit of work. `accept_batch` is the group commit:
the frames that arrived together are stored, and processed, in one transaction, and
only after that commit does any of them get its answer.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from hub.messages import InboundMessage, Outcome, Status
from hub.model import Canonical, Patient, PatientEvent, source_identifier
from hub.records import merge_patient, patient_index
from hub.store.uow import RecordRow, StoredOutcome, UnitOfWork, utcnow

log = logging.getLogger("hub.pipeline")

UowFactory = Callable[[], UnitOfWork]


def accept_batch(uow_factory: UowFactory, batch: Sequence[InboundMessage]) -> list[Outcome]:
    """Store (and process) a batch; never raises. A message that could not be stored says so."""
    try:
        return _accept(uow_factory, batch, process=True)
    except Exception as exc:  # noqa: BLE001 — isolate the message that fails, below
        if len(batch) > 1:
            log.warning("batch of %d failed (%s); retrying one by one", len(batch), type(exc).__name__)
    outcomes = []
    for inbound in batch:
        outcomes.append(_accept_alone(uow_factory, inbound))
    return outcomes


def _accept_alone(uow_factory: UowFactory, inbound: InboundMessage) -> Outcome:
    try:
        return _accept(uow_factory, [inbound], process=True)[0]
    except Exception as exc:  # noqa: BLE001
        # Processing failed: keep the bytes (state "failed"), say nothing of the content in the log.
        log.error("processing failed (%s); storing the message for reprocessing", type(exc).__name__)
        error = type(exc).__name__
    try:
        return _accept(uow_factory, [inbound], process=False, failure=error)[0]
    except Exception as exc:  # noqa: BLE001
        log.error("message could not be stored (%s)", type(exc).__name__)
        return Outcome(None, inbound.status, tuple(inbound.problems), stored=False)


def _accept(
    uow_factory: UowFactory, batch: Sequence[InboundMessage], *, process: bool, failure: str | None = None
) -> list[Outcome]:
    received_at = utcnow()
    outcomes: list[Outcome] = []
    with uow_factory() as uow:
        known = uow.messages.outcomes_for([k for m in batch if (k := m.dedupe_key)])
        for inbound in batch:
            key = inbound.dedupe_key
            original = known.get(key) if key else None
            if original is not None:
                message_id = uow.messages.add(inbound, dedupe=False, duplicate_of=original.message_id, received_at=received_at)
                outcomes.append(Outcome(message_id, original.status, original.problems, duplicate_of=original.message_id))
                continue
            message_id = uow.messages.add(inbound, dedupe=True, duplicate_of=None, received_at=received_at)
            if key:
                known[key] = StoredOutcome(message_id, inbound.status, tuple(inbound.problems))
            if inbound.status is Status.ACCEPTED and inbound.event is not None:
                if process:
                    process_event(uow, message_id, inbound.feed, inbound.event, received_at)
                    uow.messages.mark(message_id, "processed")
                elif failure:
                    uow.messages.mark(message_id, "failed", failure)
            outcomes.append(Outcome(message_id, inbound.status, tuple(inbound.problems)))
        uow.commit()
    return outcomes


def process_event(uow: UnitOfWork, message_id: int, feed: str, event: PatientEvent, at: datetime) -> str | None:
    """Map: write the event's canonical records. Returns the patient record id."""
    if event.patient is None:
        return None
    patient_id = upsert_patient(uow, event.patient, event.cleared, feed, message_id, at)
    context = _Context(uow, patient_id, feed, message_id, at)
    if event.encounter is not None:
        visit = event.encounter.visit_number
        key = (visit.system or "", visit.value) if visit else (patient_id, f"encounter|message:{message_id}")
        context.save("encounter", key, event.encounter)
    for n, order in enumerate(event.orders):
        number = order.placer_number or order.filler_number
        context.save("order", (patient_id, f"order|{number}" if number else f"order|message:{message_id}:{n}"), order)
    for n, obs in enumerate(event.observations):
        group = obs.order_filler_number or obs.order_placer_number or f"message:{message_id}"
        context.save("observation", (patient_id, f"obs|{group}|{obs.code.code}|{n}"), obs)
    for n, charge in enumerate(event.charges):
        ident = charge.transaction_id or f"message:{message_id}:{n}"
        context.save("charge", (patient_id, f"charge|{ident}"), charge)
    if event.appointment is not None:
        ident = event.appointment.filler_id or event.appointment.placer_id or f"message:{message_id}"
        context.save("appointment", (patient_id, f"appointment|{ident}"), event.appointment)
    return patient_id


def upsert_patient(
    uow: UnitOfWork, patient: Patient, cleared: list[str], feed: str, message_id: int, at: datetime
) -> str:
    source = source_identifier(patient)
    if source is None:
        raise ValueError("patient without identifier")  # adapters reject these first
    system, value = source.system or "", source.value
    existing = uow.records.by_source("patient", system, value)
    if existing is None:
        row = RecordRow(
            id=str(uuid.uuid4()), kind="patient", source_system=system, source_value=value, patient_id=None,
            version=1, active=patient.active, data=_json(patient), feed=feed, message_id=message_id, updated_at=at,
        )
        uow.records.insert(row, patient_index(patient))
        return row.id
    merged = merge_patient(Patient.model_validate(existing.data), patient, cleared)
    existing.data, existing.version = _json(merged), existing.version + 1
    existing.feed, existing.message_id, existing.updated_at, existing.active = feed, message_id, at, merged.active
    uow.records.update(existing, patient_index(merged))
    return existing.id


class _Context:
    """Saves the records one event carries, all attached to its patient."""

    def __init__(self, uow: UnitOfWork, patient_id: str, feed: str, message_id: int, at: datetime) -> None:
        self.uow, self.patient_id, self.feed, self.message_id, self.at = uow, patient_id, feed, message_id, at

    def save(self, kind: str, key: tuple[str, str], record: Canonical) -> str:
        existing = self.uow.records.by_source(kind, *key)
        data = _json(record)
        if existing is None:
            row = RecordRow(
                id=str(uuid.uuid4()), kind=kind, source_system=key[0], source_value=key[1], patient_id=self.patient_id,
                version=1, active=True, data=data, feed=self.feed, message_id=self.message_id, updated_at=self.at,
            )
            self.uow.records.insert(row, [("patient", self.patient_id)])
            return row.id
        existing.data, existing.version, existing.patient_id = data, existing.version + 1, self.patient_id
        existing.feed, existing.message_id, existing.updated_at = self.feed, self.message_id, self.at
        self.uow.records.update(existing, [("patient", self.patient_id)])
        return existing.id


def _json(record: Canonical) -> dict[str, Any]:
    return record.model_dump(mode="json", exclude_none=True, exclude_defaults=False)
