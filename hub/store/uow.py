"""Unit of work and repositories: one transaction around each piece of processing.

The pipeline asks repositories for what it needs in domain terms; only this module
writes SQL. Everything a unit of work did is committed together or not at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, Table, and_, delete, insert, select, update

from hub.messages import InboundMessage, Problem, Status
from hub.store.tables import messages, record_index, record_versions, records


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True, slots=True)
class StoredOutcome:
    message_id: int
    status: Status
    problems: tuple[Problem, ...]


@dataclass(slots=True)
class RecordRow:
    id: str
    kind: str
    source_system: str
    source_value: str
    patient_id: str | None
    version: int
    active: bool
    data: dict[str, Any]
    feed: str
    message_id: int | None
    updated_at: datetime
    created_at: datetime | None = None


class MessageRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def outcomes_for(self, keys: Sequence[str]) -> dict[str, StoredOutcome]:
        """Original outcomes of messages already stored under these dedupe keys."""
        if not keys:
            return {}
        rows = self.conn.execute(
            select(messages.c.id, messages.c.dedupe_key, messages.c.status, messages.c.problems).where(
                messages.c.dedupe_key.in_(keys)
            )
        )
        return {
            row.dedupe_key: StoredOutcome(row.id, Status(row.status), tuple(Problem(**p) for p in row.problems or []))
            for row in rows
        }

    def add(self, inbound: InboundMessage, *, dedupe: bool, duplicate_of: int | None, received_at: datetime) -> int:
        state = "pending" if inbound.status is Status.ACCEPTED and duplicate_of is None else "none"
        return self.conn.execute(
            insert(messages).returning(messages.c.id),
            _fit(messages, {
                "received_at": received_at,
                "feed": inbound.feed,
                "format": inbound.format,
                "sender": inbound.sender,
                "control_id": inbound.control_id,
                "message_type": inbound.message_type,
                "dedupe_key": inbound.dedupe_key if dedupe else None,
                "status": inbound.status.value,
                "problems": [p.as_dict() for p in inbound.problems] or None,
                "duplicate_of": duplicate_of,
                "state": state,
                "raw": inbound.raw,
            }),
        ).scalar_one()

    def mark(self, message_id: int, state: str, error: str | None = None) -> None:
        self.conn.execute(
            update(messages).where(messages.c.id == message_id).values(state=state, processing_error=error)
        )

    def pending_ids(self, limit: int = 500) -> list[int]:
        rows = self.conn.execute(
            select(messages.c.id).where(messages.c.state == "pending").order_by(messages.c.id).limit(limit)
        )
        return [r.id for r in rows]

    def get(self, message_id: int) -> Any:
        return self.conn.execute(select(messages).where(messages.c.id == message_id)).one_or_none()


class RecordRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def by_source(self, kind: str, system: str, value: str) -> RecordRow | None:
        row = self.conn.execute(
            select(records).where(
                and_(records.c.kind == kind, records.c.source_system == system, records.c.source_value == value)
            )
        ).one_or_none()
        return RecordRow(**row._mapping) if row else None

    def get(self, record_id: str, kind: str | None = None) -> RecordRow | None:
        query = select(records).where(records.c.id == record_id)
        if kind:
            query = query.where(records.c.kind == kind)
        row = self.conn.execute(query).one_or_none()
        return RecordRow(**row._mapping) if row else None

    def insert(self, row: RecordRow, index: Iterable[tuple[str, str]]) -> None:
        self.conn.execute(insert(records), {**_columns(row), "created_at": row.created_at or row.updated_at})
        self._write_version(row)
        self._write_index(row, index)

    def update(self, row: RecordRow, index: Iterable[tuple[str, str]]) -> None:
        self.conn.execute(update(records).where(records.c.id == row.id).values(**_columns(row)))
        self._write_version(row)
        self.conn.execute(delete(record_index).where(record_index.c.record_id == row.id))
        self._write_index(row, index)

    def _write_version(self, row: RecordRow) -> None:
        self.conn.execute(
            insert(record_versions),
            {"record_id": row.id, "version": row.version, "data": row.data, "message_id": row.message_id,
             "recorded_at": row.updated_at},
        )

    def _write_index(self, row: RecordRow, index: Iterable[tuple[str, str]]) -> None:
        values = [
            {"record_id": row.id, "kind": row.kind, "param": param, "value": value[:300]}
            for param, value in sorted(set(index))
            if value
        ]
        if values:
            self.conn.execute(insert(record_index), values)

    def search(self, kind: str, criteria: Sequence[Criterion], limit: int, offset: int = 0) -> list[RecordRow]:
        """Records matching every criterion, oldest first."""
        query = select(records).where(records.c.kind == kind)
        for param, op, value in criteria:
            if param == "_id":
                query = query.where(records.c.id == value)
                continue
            column = record_index.c.value
            match = column.startswith(value, autoescape=True) if op == "prefix" else _COMPARE[op](column, value)
            query = query.where(
                records.c.id.in_(
                    select(record_index.c.record_id).where(
                        record_index.c.kind == kind, record_index.c.param == param, match
                    )
                )
            )
        query = query.order_by(records.c.created_at, records.c.id).limit(limit).offset(offset)
        return [RecordRow(**r._mapping) for r in self.conn.execute(query)]


Criterion = tuple[str, str, str]
"""(search param, operator: eq | prefix | lt | le | gt | ge, normalised value)."""

_COMPARE = {
    "eq": lambda c, v: c == v, "lt": lambda c, v: c < v, "le": lambda c, v: c <= v,
    "gt": lambda c, v: c > v, "ge": lambda c, v: c >= v,
}


def _fit(table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """Clip strings to their column's width: senders do send 5 KB control ids, and PostgreSQL refuses them."""
    for name, value in values.items():
        length = getattr(table.c[name].type, "length", None)
        if length and isinstance(value, str) and len(value) > length:
            values[name] = value[:length]
    return values


def _columns(row: RecordRow) -> dict[str, Any]:
    return {
        "id": row.id, "kind": row.kind, "source_system": row.source_system, "source_value": row.source_value,
        "patient_id": row.patient_id, "version": row.version, "active": row.active, "data": row.data,
        "feed": row.feed, "message_id": row.message_id, "updated_at": row.updated_at,
    }


class UnitOfWork:
    """`with UnitOfWork(engine) as uow: …; uow.commit()` — anything not committed is rolled back."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __enter__(self) -> UnitOfWork:
        self.conn = self.engine.connect()
        self.tx = self.conn.begin()
        self.messages = MessageRepository(self.conn)
        self.records = RecordRepository(self.conn)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.tx.is_active:
                self.tx.rollback()
        finally:
            self.conn.close()

    def commit(self) -> None:
        self.tx.commit()

    def savepoint(self):  # type: ignore[no-untyped-def]
        return self.conn.begin_nested()
