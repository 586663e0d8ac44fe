"""The canonical records a batch touches, gathered in memory and written in bulk.

`event_records` names every record an event carries by its source key (kind, system, value);
`RecordSet` loads the batch's records with one query, applies each event in acceptance order (later
events see earlier ones' changes: HL7 v2 update semantics for patients, an unchanged update makes no
new version) and hands the changes to the repository as one statement per table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from hub.model import (
    Canonical,
    Observation,
    Order,
    Patient,
    PatientEvent,
    Report,
    source_identifier,
)
from hub.records import IndexRow, index_rows, merge_patient, new_record_id
from hub.store.uow import RecordChanges, RecordRepository, RecordRow, SourceKey


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
    if event.account is not None and event.account.account_number is not None:
        number = event.account.account_number
        yield ("account", number.system or scope, number.value), event.account
    for group, order in _report_groups(event, event_id).items():
        report = Report(code=order.code if order else None, status=_report_status(event, group, event_id))
        yield ("report", scope, group), report


def _observation_group(obs: Observation, event_id: str) -> str:
    return obs.order_filler_number or obs.order_placer_number or f"event:{event_id}"


def _report_groups(event: PatientEvent, event_id: str) -> dict[str, Order | None]:
    """Results grouped as reports: one per order the observations answer (ORU: OBR and its OBXs)."""
    groups: dict[str, Order | None] = {}
    for obs in event.observations:
        group = _observation_group(obs, event_id)
        groups.setdefault(group, next(
            (o for o in event.orders if group in (o.filler_number, o.placer_number)), None
        ))
    return groups


def _report_status(event: PatientEvent, group: str, event_id: str) -> str:
    statuses = {o.status for o in event.observations if _observation_group(o, event_id) == group}
    for status in ("preliminary", "corrected", "amended", "final", "cancelled", "entered-in-error", "registered"):
        if status in statuses:
            return status
    return "unknown"


class RecordSet:
    """The records a batch touches, in memory: later messages in the batch see earlier ones' changes."""

    def __init__(self, repository: RecordRepository, keys: Sequence[SourceKey]) -> None:
        self.repository = repository
        self.rows = repository.by_sources(set(keys))
        self.by_id: dict[str, RecordRow] = {row.id: row for row in self.rows.values()}
        self._inserted: dict[str, RecordRow] = {}
        self._updated: dict[str, RecordRow] = {}
        self._superseded: list[dict[str, Any]] = []
        self._index: dict[str, list[IndexRow]] = {}

    def ensure(self, keys: Sequence[SourceKey]) -> None:
        """Load rows for keys not yet looked up (REST writes learn their keys one at a time)."""
        missing = {k for k in keys if k not in self.rows}
        if missing:
            for key, row in self.repository.by_sources(missing).items():
                self.rows[key] = row
                self.by_id[row.id] = row

    def row_by_id(self, record_id: str) -> RecordRow | None:
        row = self.by_id.get(record_id)
        if row is None:
            row = self.repository.get(record_id)
            if row is not None:
                key = (row.kind, row.source_system, row.source_value)
                row = self.rows.setdefault(key, row)
                self.by_id[row.id] = row
        return row

    def apply(self, event: PatientEvent, feed: str, message_id: int, event_id: str, at: datetime) -> None:
        patient_id = ""
        ids: dict[str, list[str]] = {}
        for key, record in event_records(event, event_id):
            if isinstance(record, Patient):
                row = self.rows.get(key)
                if row is not None:
                    record = merge_patient(Patient.model_validate(row.data), record, event.cleared)
                row, _ = self.put(key, record, None, feed, message_id, at)
                patient_id = row.id
                continue
            if isinstance(record, Report):
                group = key[2]
                record.order_id = next(iter(ids.get(f"order:{group}", [])), None)
                record.result_ids = ids.get(f"obs:{group}", [])
            row, _ = self.put(key, record, patient_id, feed, message_id, at)
            if isinstance(record, Order):
                for number in (record.placer_number, record.filler_number):
                    if number:
                        ids.setdefault(f"order:{number}", []).append(row.id)
            elif isinstance(record, Observation):
                ids.setdefault(f"obs:{_observation_group(record, event_id)}", []).append(row.id)

    def put(
        self, key: SourceKey, record: Canonical, patient_id: str | None, feed: str, message_id: int, at: datetime,
        *, resource: dict[str, Any] | None = None, record_id: str | None = None,
        extra_index: Sequence[tuple[str, str]] = (),
    ) -> tuple[RecordRow, bool]:
        """Insert or update one record; an update that changes nothing makes no new version
        (so a re-imported file or a re-sent update creates nothing new). `resource` is the FHIR
        resource as written (None for other feeds: reads render the canonical data)."""
        data = record.model_dump(mode="json", exclude_none=True)
        active = getattr(record, "active", True)
        row = self.rows.get(key)
        if row is None:
            row = RecordRow(
                record_id or new_record_id(), key[0], key[1], key[2], patient_id, 1, active, data, feed, message_id,
                at, at, resource, False,
            )
            self.rows[key] = self._inserted[row.id] = self.by_id[row.id] = row
            self._reindex(row, record, extra_index)
            return row, True
        if (
            row.data == data and row.active == active and not row.deleted and row.resource == resource
            and (patient_id is None or row.patient_id == patient_id)
        ):
            return row, False
        self._supersede(row)
        row.data, row.version, row.active, row.patient_id = data, row.version + 1, active, patient_id or row.patient_id
        row.feed, row.message_id, row.updated_at, row.resource, row.deleted = feed, message_id, at, resource, False
        self._touch(row)
        self._reindex(row, record, extra_index)
        return row, True

    def delete(self, row: RecordRow, feed: str, message_id: int, at: datetime) -> None:
        """A new version that marks the record deleted (history keeps what it was)."""
        self._supersede(row)
        row.version, row.deleted, row.feed, row.message_id, row.updated_at = row.version + 1, True, feed, message_id, at
        self._touch(row)

    def rekey(self, row: RecordRow, key: SourceKey) -> None:
        """The record's source identifier changed (a FHIR update replaced it)."""
        self.rows.pop((row.kind, row.source_system, row.source_value), None)
        row.source_system, row.source_value = key[1], key[2]
        self.rows[key] = row
        self._touch(row)

    def _supersede(self, row: RecordRow) -> None:
        self._superseded.append({
            "record_id": row.id, "version": row.version, "data": row.data, "message_id": row.message_id,
            "recorded_at": row.updated_at, "resource": row.resource, "deleted": row.deleted, "feed": row.feed,
        })

    def _touch(self, row: RecordRow) -> None:
        if row.id not in self._inserted:
            self._updated[row.id] = row

    def _reindex(self, row: RecordRow, record: Canonical, extra: Sequence[tuple[str, str]]) -> None:
        self._index[row.id] = index_rows(row.id, row.kind, record, extra)

    def clear_changes(self) -> None:
        """After the changes were written: keep the rows (now stored), forget what was pending."""
        self._inserted, self._updated, self._superseded, self._index = {}, {}, [], {}

    def changes(self) -> RecordChanges:
        return RecordChanges(
            inserted=list(self._inserted.values()),
            updated=list(self._updated.values()),
            superseded=self._superseded,
            reindexed={i for i in self._index if i in self._updated},
            index=[entry for rows in self._index.values() for entry in rows],
        )
