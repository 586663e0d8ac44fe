"""History across records (FHIR instance, type and system history): every version of every record of some
kinds (or of one record), newest first. A record's current version lives in `records`, the ones it replaced
in `record_versions`; a page is one UNION ALL over both, ordered by when each version was written."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, literal, select, union_all

from hub.store.tables import record_versions, records
from hub.store.uow import RecordRepository, RecordRow, RecordVersion


@dataclass(frozen=True, slots=True)
class HistoryItem:
    row: RecordRow
    """The record as it is now (kind, id, patient): what every version is rendered against."""
    version: RecordVersion | None
    """The superseded version this item is; None when it is the current one (`row`)."""


def history_page(
    conn: Connection, kinds: Sequence[str], since: datetime | None, limit: int, offset: int,
    record_id: str | None = None,
) -> list[HistoryItem]:
    """Up to `limit` versions of records of these kinds (only of `record_id` when given: instance history)
    written at or after `since`, newest first (ties: by record id, then version, so that pages do not overlap)."""
    current = select(
        records.c.id.label("record_id"), records.c.version, records.c.updated_at.label("at"),
        literal(True).label("current"),
    ).where(records.c.kind.in_(kinds))
    superseded = (
        select(
            record_versions.c.record_id, record_versions.c.version, record_versions.c.recorded_at.label("at"),
            literal(False).label("current"),
        )
        .join(records, records.c.id == record_versions.c.record_id)
        .where(records.c.kind.in_(kinds))
    )
    if record_id is not None:
        current = current.where(records.c.id == record_id)
        superseded = superseded.where(records.c.id == record_id)
    if since is not None:
        current = current.where(records.c.updated_at >= since)
        superseded = superseded.where(record_versions.c.recorded_at >= since)
    both = union_all(current, superseded).subquery()
    page = conn.execute(
        select(both)
        .order_by(both.c.at.desc(), both.c.record_id, both.c.version.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    rows = RecordRepository(conn).get_many({p.record_id for p in page})
    old = _versions(conn, [(p.record_id, p.version) for p in page if not p.current])
    return [
        HistoryItem(rows[p.record_id], None if p.current else old[(p.record_id, p.version)])
        for p in page
        if p.record_id in rows and (p.current or (p.record_id, p.version) in old)
    ]


def _versions(conn: Connection, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], RecordVersion]:
    found: dict[tuple[str, int], RecordVersion] = {}
    ids = list({record_id for record_id, _ in wanted})
    keys = set(wanted)
    for start in range(0, len(ids), 500):
        query = select(record_versions).where(record_versions.c.record_id.in_(ids[start : start + 500]))
        for r in conn.execute(query):
            if (r.record_id, r.version) in keys:
                found[(r.record_id, r.version)] = RecordVersion(
                    r.record_id, r.version, r.data, r.resource, bool(r.deleted), r.feed, r.recorded_at
                )
    return found
