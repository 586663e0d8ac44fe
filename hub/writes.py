"""REST writes (FHIR create, update, delete; transactions and batches) applied to canonical records.

A message from a REST door carries one event per interaction, each with a `RecordRequest`. They are
applied here, on the processing writer, so that they are serialised with every other write: two
conditional creates for the same identifier can never both create (the second one sees the first).
The result (per entry: status, record id, version, or the problem) is stored with the message and
is what the door answers with.

A transaction is all or nothing: its entries are applied to one in-memory `RecordSet`, in the order
DELETE → POST → PUT → GET, and written only when every entry succeeded. A batch applies each entry
on its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hub.messages import InboundMessage
from hub.model import Canonical, Patient, PatientEvent, RecordRequest, source_identifier
from hub.mpi.service import link_batch
from hub.records import merge_patient, new_record_id
from hub.recordset import RecordSet
from hub.store.uow import RecordRow, SourceKey, UnitOfWork, utcnow

FHIR_SOURCE = "urn:hub:fhir"
"""Source system of records written over FHIR without an identifier: the value is the record id."""

ORDER = {"delete": 0, "create": 1, "update": 2, "read": 3}


class RequestFailed(Exception):
    def __init__(self, status: int, code: str, text: str, location: str | None = None) -> None:
        super().__init__(text)
        self.status, self.code, self.text, self.location = status, code, text, location

    def as_result(self) -> dict[str, Any]:
        return {"status": self.status, "outcome": {"code": self.code, "text": self.text, "location": self.location}}


class SharedWrites:
    """The records that the REST messages of one processing batch touch, written together.

    Interactions that are not transactions share one `RecordSet` (one look-up of every identifier
    they name, one write per table at the end) and flush it before anything searches the
    database (conditional interactions), so a search sees every earlier write of the batch.
    A transaction uses a record set of its own and is written only if every entry succeeded."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow
        self.record_set: RecordSet | None = None

    def preload(self, inbounds: list[InboundMessage]) -> None:
        keys = []
        for inbound in inbounds:
            for event in inbound.events:
                request = event.request
                if request is not None and request.method in ("create", "update"):
                    key = _source_key(request, event_record(event), "", None)  # scoped keys: looked up later
                    if key[1] != FHIR_SOURCE:
                        keys.append(key)
        self.current().ensure(keys)

    def current(self) -> RecordSet:
        if self.record_set is None:
            self.record_set = RecordSet(self.uow.records, [])
            self.record_set.flush = self.flush  # type: ignore[attr-defined]
        return self.record_set

    def flush(self) -> None:
        if self.record_set is not None:
            changes = self.record_set.changes()
            self.uow.records.write(changes)
            link_batch(self.uow, changes, (), utcnow())  # match: written patients get their person
            self.record_set.clear_changes()

    def close(self) -> None:
        """Write what is pending and forget the cache (another writer is about to change records)."""
        self.flush()
        self.record_set = None


def _flush(record_set: RecordSet) -> None:
    flush = getattr(record_set, "flush", None)
    if flush is not None:
        flush()


def apply_requests(
    uow: UnitOfWork, message_id: int, inbound: InboundMessage, shared: SharedWrites | None = None
) -> dict[str, Any]:
    at = utcnow()
    events = inbound.events
    if inbound.context and inbound.context.get("bundle") == "transaction":
        if shared is not None:
            shared.close()
        record_set = RecordSet(uow.records, [])
        refs: dict[str, str] = {}
        for event in events:  # new ids first, so that any entry may reference any other
            request = event.request
            if request is not None and request.method == "create" and request.full_url and not request.record_id:
                request.record_id = new_record_id()
                refs[request.full_url] = f"{_type(request)}/{request.record_id}"
        results: list[dict[str, Any] | None] = [None] * len(events)
        def order(n: int) -> tuple[int, bool]:  # DELETE → POST → PUT → GET; patients first within each
            request = events[n].request
            assert request is not None
            return ORDER[request.method], request.kind != "patient"

        for i in sorted(range(len(events)), key=order):
            try:
                results[i] = _apply(uow, record_set, events[i], refs, inbound.feed, message_id, at)
            except RequestFailed as failed:
                return failed.as_result() | {"entry": i}
        changes = record_set.changes()
        uow.records.write(changes)
        link_batch(uow, changes, (), at)  # match: written patients get their person
        return {"status": 200, "entries": results}
    own = shared is None
    shared = shared or SharedWrites(uow)
    results_list = []
    for event in events:
        try:
            result = _apply(uow, shared.current(), event, {}, inbound.feed, message_id, at)
        except RequestFailed as failed:
            result = failed.as_result()
        results_list.append(result)
    if own:
        shared.close()
    if inbound.context and inbound.context.get("bundle") == "batch":
        return {"status": 200, "entries": results_list}
    return results_list[0] if results_list else {"status": 400}


def event_record(event: PatientEvent) -> Canonical | None:
    for record in (event.patient, event.encounter, event.appointment, event.account, event.report):
        if record is not None:
            return record
    for records in (event.observations, event.orders, event.charges):
        if records:
            return records[0]
    return None


PATIENT_SCOPED = {"order", "charge", "appointment"}
"""Kinds whose HL7 v2 numbers (ORC-2/3, FT1-2, SCH-1/2) the pipeline keys per patient (`event_records`)."""


def _source_key(request: RecordRequest, record: Canonical | None, record_id: str, scope: str | None) -> SourceKey:
    """The source key of a record written over FHIR: the business identifier when it has one.

    The rule, so that a resubmission and the same record arriving over HL7 v2 name one record
    (`scope` is the patient's own source key, "system|value", as `event_records` scopes by):
    - Patient: its source identifier (MR-typed, else the first), as for every feed;
    - ServiceRequest, ChargeItem, Appointment with a patient: (kind, scope, identifier value) — HL7 v2
      numbers orders, charges and appointments per patient and ignores the numbering system;
    - any other kind, identifier with a system: (kind, system, value) — Encounter like a PV1-19 visit
      number, Account like PID-18 with an assigning authority;
    - identifier without a system: (kind, scope, value) when there is a patient (a bare number is only
      unique per patient), else (kind, "", value); an Encounter keeps (kind, "", value) as HL7 v2 does;
    - no identifier: (kind, "urn:hub:fhir", record id).
    Observations and DiagnosticReports from HL7 v2 are keyed by OBR/OBX position, not by a business
    identifier, so only DiagnosticReports whose identifier is the order number meet their HL7 v2 twin."""
    kind = request.kind
    if isinstance(record, Patient):
        identifier = source_identifier(record)
        if identifier is not None and identifier.value:
            return (kind, identifier.system or "", identifier.value)
        return (kind, FHIR_SOURCE, record_id)
    found = next((i for i in (request.resource or {}).get("identifier", []) if i.get("value")), None)
    if found is None:
        return (kind, FHIR_SOURCE, record_id)
    system, value = found.get("system") or "", found["value"]
    if scope and (kind in PATIENT_SCOPED or (not system and kind != "encounter")):
        return (kind, scope, value)
    return (kind, system, value)


def _scope(record_set: RecordSet, patient_id: str | None) -> str | None:
    """The patient's source key as HL7 v2 events scope their records by ("system|value")."""
    row = record_set.row_by_id(patient_id) if patient_id else None
    return f"{row.source_system}|{row.source_value}" if row is not None else None


def _rewrite(value: Any, refs: dict[str, str]) -> Any:
    """Temporary ids (`urn:uuid:…`) of a transaction replaced by the new records' references."""
    if not refs:
        return value
    if isinstance(value, dict):
        return {k: _rewrite(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, refs) for v in value]
    if isinstance(value, str) and value in refs:
        return refs[value]
    return value


def _find(uow: UnitOfWork, record_set: RecordSet, request: RecordRequest, criteria: list, what: str) -> RecordRow | None:
    _flush(record_set)
    rows = uow.records.search(request.kind, criteria, 2)
    if len(rows) > 1:
        raise RequestFailed(412, "multiple-matches", f"the {what} criteria match more than one resource")
    return record_set.row_by_id(rows[0].id) if rows else None


def _patient_id(uow: UnitOfWork, record_set: RecordSet, request: RecordRequest, refs: dict[str, str]) -> str | None:
    if request.subject is None:
        return None
    reference = refs.get(request.subject, request.subject)
    patient_id = reference.split("/")[-1]
    row = record_set.row_by_id(patient_id)
    if row is None or row.kind != "patient" or row.deleted:
        raise RequestFailed(422, "processing", "the referenced patient is not known", f"{_type(request)}.subject")
    return patient_id


def _type(request: RecordRequest) -> str:
    return str((request.resource or {}).get("resourceType", request.kind))


def _check_version(request: RecordRequest, row: RecordRow) -> None:
    if request.if_match is not None and request.if_match != row.version:
        raise RequestFailed(412, "conflict", "If-Match does not name the current version", "If-Match")


def _apply(
    uow: UnitOfWork, record_set: RecordSet, event: PatientEvent, refs: dict[str, str], feed: str, message_id: int,
    at: datetime,
) -> dict[str, Any]:
    request = event.request
    assert request is not None
    if request.method == "read":
        return {"status": 200, "read": True}
    if request.method == "delete":
        row = record_set.row_by_id(request.record_id) if request.record_id else None
        if request.conditions is not None:
            row = _find(uow, record_set, request, request.conditions, "delete")
        if row is None or row.kind != request.kind:
            if request.conditions is not None:
                return {"status": 204}
            raise RequestFailed(404, "not-found", f"{_type(request)} is not known")
        _check_version(request, row)
        if not row.deleted:
            record_set.delete(row, feed, message_id, at)
        return {"status": 204, "id": row.id, "version": row.version, "kind": row.kind}

    record = event_record(event)
    resource = _rewrite(request.resource, refs)
    patient_id = _patient_id(uow, record_set, request, refs)
    if request.method == "create":
        if request.if_none_exist is not None:
            _flush(record_set)
            existing = uow.records.search(request.kind, request.if_none_exist, 2)
            if len(existing) > 1:
                raise RequestFailed(412, "multiple-matches", "the If-None-Exist criteria match more than one resource", "If-None-Exist")
            if existing:
                row = existing[0]
                _remember(refs, request, row)
                return {"status": 200, "id": row.id, "version": row.version, "kind": row.kind, "existing": True}
        new_id = request.record_id or new_record_id()
        key = _source_key(request, record, new_id, _scope(record_set, patient_id))
        record_set.ensure([key])
        row = record_set.rows.get(key)
        if row is not None and not row.deleted:  # the same source record: an update, as from any feed
            row, _ = _put(record_set, key, record, patient_id, feed, message_id, at, resource, request, row)
            _remember(refs, request, row)
            return _written(200, row)
        row, _ = _put(record_set, key, record, patient_id, feed, message_id, at, resource, request, None, new_id)
        _remember(refs, request, row)
        return _written(201, row)

    # update
    row = None
    if request.conditions is not None:
        row = _find(uow, record_set, request, request.conditions, "update")
    elif request.record_id:
        row = record_set.row_by_id(request.record_id)
        if row is not None and row.kind != request.kind:
            raise RequestFailed(409, "conflict", "the id belongs to a resource of another type", f"{_type(request)}.id")
    if row is None:  # update as create (the client chose the id, or nothing matched the conditions)
        if request.if_match is not None:
            raise RequestFailed(412, "conflict", "If-Match given for a resource that does not exist", "If-Match")
        new_id = request.record_id or new_record_id()
        key = _source_key(request, record, new_id, _scope(record_set, patient_id))
        record_set.ensure([key])
        if key in record_set.rows and not record_set.rows[key].deleted:
            raise RequestFailed(409, "duplicate", "another resource has this identifier", f"{_type(request)}.identifier")
        record_set.rows.pop(key, None)
        row, _ = _put(record_set, key, record, patient_id, feed, message_id, at, resource, request, None, new_id)
        _remember(refs, request, row)
        return _written(201, row)
    _check_version(request, row)
    key = _source_key(request, record, row.id, _scope(record_set, patient_id or row.patient_id))
    current = (row.kind, row.source_system, row.source_value)
    if key != current:
        record_set.ensure([key])
        other = record_set.rows.get(key)
        if other is not None and other.id != row.id:
            raise RequestFailed(409, "duplicate", "another resource has this identifier", f"{_type(request)}.identifier")
        record_set.rekey(row, key)
    was_deleted = row.deleted
    row, _ = _put(record_set, key, record, patient_id, feed, message_id, at, resource, request, row, replace=True)
    _remember(refs, request, row)
    return _written(201 if was_deleted else 200, row)


def _put(
    record_set: RecordSet, key: SourceKey, record: Canonical | None, patient_id: str | None, feed: str,
    message_id: int, at: datetime, resource: dict[str, Any] | None, request: RecordRequest, row: RecordRow | None,
    record_id: str | None = None, replace: bool = False,
) -> tuple[RecordRow, bool]:
    if record is None:
        raise RequestFailed(422, "processing", "the resource carries no usable content", _type(request))
    if isinstance(record, Patient) and row is not None and not replace and row.resource is None:
        # A create that names a record another feed keeps: merge like that feed's update would.
        record = merge_patient(Patient.model_validate(row.data), record, [])
    return record_set.put(
        key, record, patient_id, feed, message_id, at, resource=resource, record_id=record_id,
        extra_index=request.index,
    )


def _written(status: int, row: RecordRow, **extra: Any) -> dict[str, Any]:
    """An entry's result: enough for the door to answer without reading the record again."""
    result = {"status": status, "id": row.id, "version": row.version, "kind": row.kind,
              "updated_at": row.updated_at.isoformat(), "feed": row.feed, "patient_id": row.patient_id}
    if row.resource is not None:
        result["resource"] = row.resource
    return result | extra


def _remember(refs: dict[str, str], request: RecordRequest, row: RecordRow) -> None:
    if request.full_url:
        refs[request.full_url] = f"{_type(request)}/{row.id}"
