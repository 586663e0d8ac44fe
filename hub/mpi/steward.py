"""Data steward actions: link, unlink, merge two persons, "not a match"; reviews; explain; export.

Each action runs in the caller's unit of work, takes the processing lock first (PostgreSQL advisory
lock; SQLite's write lock) so that it never interleaves with a processing batch, writes a link event
for every link it changes, and leaves a sticky decision that automatic matching respects.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from hub.delivery.link_changes import notify_link_change
from hub.model import Patient
from hub.mpi.model import Explanation
from hub.mpi.service import MpiError, _Batch, current_model, event_detail, link_patients, model_for_index
from hub.store.uow import RecordRow, UnitOfWork, utcnow

PROCESSING_LOCK = "hub.pipeline.process"  # the same lock as hub.pipeline's writer


def _claim(uow: UnitOfWork, timeout: float = 30.0) -> None:
    """Wait for the processing writer to finish its batch (actions are rare; batches are short)."""
    uow.mpi.claim_writer()
    deadline = time.monotonic() + timeout
    while not uow.try_lock(PROCESSING_LOCK):
        if time.monotonic() > deadline:
            raise MpiError(503, "the index is busy; try again")
        time.sleep(0.02)


def _patient(uow: UnitOfWork, ref: str) -> RecordRow:
    """A patient source record by id or by `system|value` (its source identifier)."""
    row = uow.records.get(ref, "patient")
    if row is None and "|" in ref:
        system, value = ref.split("|", 1)
        row = uow.records.by_sources([("patient", system, value)]).get(("patient", system, value))
    if row is None or row.deleted:
        raise MpiError(404, "no such patient record")
    return row


def _link_of(uow: UnitOfWork, record_id: str) -> str:
    link = uow.mpi.links([record_id]).get(record_id)
    if link is None:
        raise MpiError(409, "the record is not linked to a person yet")
    return link.person_id


def _active_person(uow: UnitOfWork, person_id: str) -> str:
    person_id = uow.mpi.resolve(person_id)
    person = uow.mpi.persons([person_id]).get(person_id)
    if person is None or not person.active:
        raise MpiError(404, "no such person")
    return person_id


def link(uow: UnitOfWork, record: str, person_id: str, actor: str, at: datetime | None = None) -> dict[str, Any]:
    """Put the record with this person, for good: automatic matching will not move it again."""
    at = at or utcnow()
    _claim(uow)
    row = _patient(uow, record)
    target = _active_person(uow, person_id)
    current = _link_of(uow, row.id)
    batch = _batch(uow, at, actor, [current, target], [row.id])
    batch.move(row.id, current, target, "manual", None, action="manual_link")  # already there: now sticky
    uow.mpi.drop_pins([row.id])
    uow.mpi.add_decision("pin", row.id, actor, at, person_id=target)
    uow.mpi.resolve_reviews([row.id], actor, at)
    _finish(batch)
    return notify_link_change(uow, "link", {"record": row.id, "person": target, "previous_person": current})


def unlink(uow: UnitOfWork, record: str, actor: str, at: datetime | None = None) -> dict[str, Any]:
    """Take the record out of its person and match it again, remembering that it is none of the
    person's other records (so neither re-matching nor a later update puts it back)."""
    at = at or utcnow()
    _claim(uow)
    row = _patient(uow, record)
    current = _link_of(uow, row.id)
    others = [r for r in uow.mpi.record_ids_of(current) if r != row.id]
    if not others:
        raise MpiError(409, "the record is alone in its person; there is nothing to unlink it from")
    for other in others:
        uow.mpi.add_decision("not_match", row.id, actor, at, other_record_id=other)
    uow.mpi.drop_pins([row.id])
    uow.mpi.add_events([{"at": at, "actor": actor[:100], "action": "unlink", "record_id": row.id,
                         "from_person": current, "model_version": current_model().version}])
    uow.mpi.resolve_reviews([row.id], actor, at)
    link_patients(uow, [row], at, actor=actor, force=True)
    return notify_link_change(uow, "unlink", {"record": row.id, "person": _link_of(uow, row.id), "previous_person": current})


def merge(uow: UnitOfWork, source: str, target: str, actor: str, at: datetime | None = None) -> dict[str, Any]:
    """Fold person `source` into `target`: its records move (pinned), it stays as an inactive pointer."""
    at = at or utcnow()
    _claim(uow)
    source, target = _active_person(uow, source), _active_person(uow, target)
    if source == target:
        raise MpiError(409, "a person cannot be merged into itself")
    moved = uow.mpi.record_ids_of(source)
    batch = _batch(uow, at, actor, [source, target], moved)
    batch.merge_persons(source, target, pin=True, action="person_merge")
    uow.mpi.resolve_reviews(moved, actor, at)
    _finish(batch)
    return notify_link_change(uow, "merge", {"person": target, "merged": source, "records": moved})


def not_match(uow: UnitOfWork, record_a: str, record_b: str, actor: str, at: datetime | None = None) -> dict[str, Any]:
    """Two records are two people. If they share a person now, `record_a` leaves it and is matched again."""
    at = at or utcnow()
    _claim(uow)
    a, b = _patient(uow, record_a), _patient(uow, record_b)
    if a.id == b.id:
        raise MpiError(409, "a record is always a match with itself")
    uow.mpi.add_decision("not_match", a.id, actor, at, other_record_id=b.id)
    uow.mpi.add_events([{"at": at, "actor": actor[:100], "action": "not_match", "record_id": a.id,
                         "model_version": current_model().version, "detail": {"other_record": b.id}}])
    uow.mpi.resolve_reviews([a.id, b.id], actor, at)
    shared = _link_of(uow, a.id)
    if shared != _link_of(uow, b.id):
        return {"record": a.id, "other": b.id, "person": shared, "other_person": _link_of(uow, b.id)}
    uow.mpi.drop_pins([a.id])
    link_patients(uow, [a], at, actor=actor, force=True)
    result = {"record": a.id, "other": b.id, "person": _link_of(uow, a.id), "other_person": _link_of(uow, b.id)}
    return notify_link_change(uow, "not_match", result | {"previous_person": shared})


def _batch(uow: UnitOfWork, at: datetime, actor: str, persons: list[str], record_ids: list[str]) -> _Batch:
    batch = _Batch(uow, at, actor, current_model())
    batch._remember_links(uow.mpi.links(record_ids))
    batch.counts = uow.mpi.member_counts(persons)
    return batch


def _finish(batch: _Batch) -> None:
    batch.write_links()
    batch.write_persons()


# --- reads --------------------------------------------------------------------------------------


def reviews(uow: UnitOfWork, status: str | None, limit: int, after: int) -> list[dict[str, Any]]:
    """Review tasks: the record, its own person and its candidate persons with their scores (ids only)."""
    found = uow.mpi.reviews(status, limit, after)
    links = uow.mpi.links([r["record_id"] for r in found])
    return [
        {
            "id": r["id"], "record": r["record_id"], "status": r["status"],
            "person": links[r["record_id"]].person_id if r["record_id"] in links else None,
            "candidates": r["candidates"], "created_at": r["created_at"].isoformat(),
            "resolved_at": r["resolved_at"].isoformat() if r["resolved_at"] else None, "resolved_by": r["resolved_by"],
        }
        for r in found
    ]


def person(uow: UnitOfWork, person_id: str) -> dict[str, Any]:
    """A person's links and provenance (ids, scores; its golden values are read over FHIR)."""
    found = uow.mpi.persons([person_id]).get(person_id)
    if found is None:
        raise MpiError(404, "no such person")
    links = uow.mpi.links(uow.mpi.record_ids_of(person_id))
    sources = uow.mpi.source_identifiers(list(links))
    return {
        "id": found.id, "active": found.active, "merged_into": found.merged_into, "version": found.version,
        "provenance": found.provenance,
        "records": [
            {"record": rid, "system": sources.get(rid, ("", ""))[0], "value": sources.get(rid, ("", ""))[1],
             "how": link.how, "score": link.score, "model_version": link.model_version,
             "replaced_by": link.replaced_by}
            for rid, link in sorted(links.items())
        ],
    }


def history(uow: UnitOfWork, record: str) -> list[dict[str, Any]]:
    """Every link change of a record: who, what, when, from and to which person, and why."""
    row = _patient(uow, record)
    return [
        {k: (v.isoformat() if isinstance(v, datetime) else event_detail(v) if k == "detail" else v) for k, v in event.items()}
        for event in uow.mpi.events_for(row.id)
    ]


def explain(uow: UnitOfWork, a: str, b: str) -> Explanation:
    """Why two records match or not, field by field (levels and weights, no values)."""
    first, second = _patient(uow, a), _patient(uow, b)
    return model_for_index(uow).score(Patient.model_validate(first.data), Patient.model_validate(second.data))


def export_rows(uow: UnitOfWork) -> Iterator[tuple[str, str, str]]:
    """(enterprise id, system, value), one per linked source record."""
    return uow.mpi.export_rows()
