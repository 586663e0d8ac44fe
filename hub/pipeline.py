"""The one pipeline every feed goes through: accept (store) → map → match → route.

Two stages, each a small handler over a unit of work:
- `store_batch` (the hot path): the messages that arrived together are committed in one
  transaction (group commit), and only then does any of them get its answer.
- `process_pending`: accepted messages, in the order they were accepted, are read again from
  their stored bytes and mapped to canonical records (later: matched and routed), many per
  transaction. A crash between the stages loses nothing: pending rows are simply processed later.

Records are gathered in memory (`RecordSet`) and written with one statement per table.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from hub.messages import InboundMessage, Outcome, Status
from hub.model import Canonical, Patient, PatientEvent, source_identifier
from hub.records import merge_patient, patient_index
from hub.store.uow import NewMessage, RecordChanges, RecordRepository, RecordRow, SourceKey, UnitOfWork, utcnow

log = logging.getLogger("hub.pipeline")

UowFactory = Callable[[], UnitOfWork]
Reader = Callable[[bytes, str], InboundMessage]
"""An inbound adapter's full read (bytes, feed) → message with its canonical event."""

PROCESSING_LOCK = "hub.pipeline.process"


def store_batch(uow_factory: UowFactory, batch: Sequence[InboundMessage]) -> list[Outcome]:
    """Store a batch; never raises. A message that could not be stored says so (and gets no AA)."""
    try:
        return _store(uow_factory, batch)
    except Exception as exc:  # noqa: BLE001 — isolate the message that fails, below
        # Only the class: database error messages can quote the values (patient data).
        log.warning("storing a batch of %d failed (%s); retrying one by one", len(batch), type(exc).__name__)
    outcomes = []
    for inbound in batch:
        try:
            outcomes += _store(uow_factory, [inbound])
        except Exception as exc:  # noqa: BLE001
            log.error("message could not be stored (%s)", type(exc).__name__)
            outcomes.append(Outcome(None, inbound.status, tuple(inbound.problems), stored=False))
    return outcomes


def _store(uow_factory: UowFactory, batch: Sequence[InboundMessage]) -> list[Outcome]:
    received_at = utcnow()
    outcomes: list[Outcome | None] = []
    with uow_factory() as uow:
        for inbound in batch:
            state = "pending" if inbound.status is Status.ACCEPTED else "none"
            message_id = uow.messages.add(NewMessage(inbound, state), received_at)
            outcomes.append(None if message_id is None else Outcome(message_id, inbound.status, tuple(inbound.problems)))
        resent = [i for i, outcome in enumerate(outcomes) if outcome is None]
        if resent:  # answered with the original's outcome (also when the original is earlier in this batch)
            originals = uow.messages.outcomes_for([batch[i].dedupe_key for i in resent])  # type: ignore[misc]
            for i in resent:
                original = originals[batch[i].dedupe_key]  # type: ignore[index]
                message_id = uow.messages.add(NewMessage(batch[i], "none", duplicate_of=original.message_id), received_at)
                outcomes[i] = Outcome(message_id, original.status, original.problems, duplicate_of=original.message_id)
        uow.commit()
    return outcomes  # type: ignore[return-value]


def process_pending(uow_factory: UowFactory, readers: Mapping[str, Reader], limit: int = 200) -> int | None:
    """Process up to `limit` pending messages in acceptance order. Returns the highest message id
    processed (None when there was nothing to do or another process holds the processing lock)."""
    try:
        with uow_factory() as uow:
            if not uow.try_lock(PROCESSING_LOCK):
                return None
            pending = uow.messages.pending(limit)
            if not pending:
                return None
            items = [(m.id, readers[m.format](m.raw, m.feed)) for m in pending]
            process_events(uow, items)
            uow.messages.mark([m.id for m in pending], "processed")
            uow.commit()
            return pending[-1].id
    except Exception as exc:  # noqa: BLE001
        log.warning("processing a batch failed (%s); isolating the message that fails", type(exc).__name__)
    return _process_one_by_one(uow_factory, readers, limit)


def _process_one_by_one(uow_factory: UowFactory, readers: Mapping[str, Reader], limit: int) -> int | None:
    """Slow path after a failed batch: each message in its own transaction; a failing one is marked."""
    last = None
    for _ in range(limit):
        with uow_factory() as uow:
            pending = uow.messages.pending(1)
            if not pending:
                break
            message = pending[0]
            try:
                inbound = readers[message.format](message.raw, message.feed)
                process_events(uow, [(message.id, inbound)])
                uow.messages.mark([message.id], "processed")
                uow.commit()
            except Exception as exc:  # noqa: BLE001
                log.error("processing message %d failed (%s); marked failed", message.id, type(exc).__name__)
                uow.tx.rollback()
                with uow_factory() as failed:
                    failed.messages.mark([message.id], "failed", type(exc).__name__)
                    failed.commit()
        last = message.id
    return last


def process_events(uow: UnitOfWork, items: Sequence[tuple[int, InboundMessage]]) -> None:
    """Map: the canonical records of every event in the batch, written in bulk."""
    events = [(message_id, n, inbound.feed, event) for message_id, inbound in items for n, event in enumerate(inbound.events)]
    keys = [key for message_id, n, _, event in events for key, _ in event_records(event, f"{message_id}.{n}")]
    record_set = RecordSet(uow.records, keys)
    at = utcnow()
    for message_id, n, feed, event in events:
        record_set.apply(event, feed, message_id, f"{message_id}.{n}", at)
    uow.records.write(record_set.changes())


def patient_key(patient: Patient) -> SourceKey:
    source = source_identifier(patient)
    if source is None:
        raise ValueError("patient without identifier")  # adapters reject these first
    return ("patient", source.system or "", source.value)


def event_records(event: PatientEvent, event_id: str) -> Iterator[tuple[SourceKey, Canonical]]:
    """Every record an event carries, with the source key that names it.

    Records other than the patient are scoped by the patient's own source key, so all keys
    are known before anything is looked up (one query for the whole batch).
    """
    if event.patient is None:
        return
    key = patient_key(event.patient)
    yield key, event.patient
    scope = f"{key[1]}|{key[2]}"
    if event.encounter is not None:
        visit = event.encounter.visit_number
        yield ("encounter", visit.system or "", visit.value) if visit else ("encounter", scope, f"event:{event_id}"), event.encounter
    for n, order in enumerate(event.orders):
        number = order.placer_number or order.filler_number or f"event:{event_id}:{n}"
        yield ("order", scope, number), order
    for n, obs in enumerate(event.observations):
        group = obs.order_filler_number or obs.order_placer_number or f"event:{event_id}"
        yield ("observation", scope, f"{group}|{obs.code.code or obs.code.display}|{n}"), obs
    for n, charge in enumerate(event.charges):
        yield ("charge", scope, charge.transaction_id or f"event:{event_id}:{n}"), charge
    if event.appointment is not None:
        appointment = event.appointment
        yield ("appointment", scope, appointment.filler_id or appointment.placer_id or f"event:{event_id}"), appointment


class RecordSet:
    """The records a batch touches, in memory: later messages in the batch see earlier ones' changes."""

    def __init__(self, repository: RecordRepository, keys: Sequence[SourceKey]) -> None:
        self.rows = repository.by_sources(set(keys))
        self._inserted: dict[str, RecordRow] = {}
        self._updated: dict[str, RecordRow] = {}
        self._superseded: list[dict[str, Any]] = []
        self._index: dict[str, list[tuple[str, str]]] = {}

    def apply(self, event: PatientEvent, feed: str, message_id: int, event_id: str, at: datetime) -> None:
        patient_id = ""
        for key, record in event_records(event, event_id):
            if isinstance(record, Patient):
                row = self.rows.get(key)
                if row is not None:
                    record = merge_patient(Patient.model_validate(row.data), record, event.cleared)
                row, changed = self.put(key, record, None, feed, message_id, at)
                patient_id = row.id
                if changed:
                    self._index[patient_id] = list(patient_index(record))
            else:
                self.put(key, record, patient_id, feed, message_id, at)

    def put(
        self, key: SourceKey, record: Canonical, patient_id: str | None, feed: str, message_id: int, at: datetime
    ) -> tuple[RecordRow, bool]:
        """Insert or update one record; an update that changes nothing makes no new version
        (so a re-imported file or a re-sent update creates nothing new)."""
        data = record.model_dump(mode="json", exclude_none=True)
        active = getattr(record, "active", True)
        row = self.rows.get(key)
        if row is None:
            row = RecordRow(str(uuid.uuid4()), key[0], key[1], key[2], patient_id, 1, active, data, feed, message_id, at)
            self.rows[key] = self._inserted[row.id] = row
            return row, True
        if row.data == data and row.active == active and (patient_id is None or row.patient_id == patient_id):
            return row, False
        self._superseded.append({
            "record_id": row.id, "version": row.version, "data": row.data,
            "message_id": row.message_id, "recorded_at": row.updated_at,
        })
        row.data, row.version, row.active, row.patient_id = data, row.version + 1, active, patient_id or row.patient_id
        row.feed, row.message_id, row.updated_at = feed, message_id, at
        if row.id not in self._inserted:
            self._updated[row.id] = row
        return row, True

    def changes(self) -> RecordChanges:
        return RecordChanges(
            inserted=list(self._inserted.values()),
            updated=list(self._updated.values()),
            superseded=self._superseded,
            reindexed={i for i in self._index if i in self._updated},
            index=[
                {"record_id": record_id, "kind": "patient", "param": param, "value": value[:300]}
                for record_id, entries in self._index.items()
                for param, value in sorted(set(entries))
                if value
            ],
        )
