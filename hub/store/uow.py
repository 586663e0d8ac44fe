"""Unit of work and repositories: one transaction around each piece of processing.

The pipeline asks repositories for what it needs in domain terms; only this module
writes SQL. Everything a unit of work did is committed together or not at all.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, false, func, select, text, update

from hub.messages import InboundMessage, Problem, Status
from hub.store.driver import datetime_value, fetch_in, insert_many, insert_returning_ids, json_value, update_many
from hub.store.outbox import OutboxRepository
from hub.store.search import conditions as search_conditions
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
    resource: dict[str, Any] | None = None
    """The FHIR resource as submitted (records written over FHIR); None: render from `data`."""
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class RecordVersion:
    record_id: str
    version: int
    data: dict[str, Any]
    resource: dict[str, Any] | None
    deleted: bool
    feed: str | None
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class NewMessage:
    inbound: InboundMessage
    state: str
    """Processing state: processed, pending, failed, or none (not processable: rejected, duplicate)."""
    duplicate_of: int | None = None
    error: str | None = None


_PROCESSED_UPTO = select(
    select(func.min(messages.c.id)).where(messages.c.state == "pending").scalar_subquery(),
    select(func.max(messages.c.id)).scalar_subquery(),
)
# Built once: processing runs these for every slice (building a statement costs about as much as running it).
_PENDING = (
    select(messages.c.id, messages.c.format, messages.c.feed, messages.c.raw, messages.c.context)
    .where(messages.c.state == "pending").order_by(messages.c.id).limit(bindparam("limit"))
)
_MARK = (
    update(messages).where(messages.c.id.in_(bindparam("ids", expanding=True)))
    .values(state=bindparam("state"), processing_error=bindparam("error"))
)


def _message_row(new: NewMessage, received_at: datetime) -> dict[str, Any]:
    inbound = new.inbound
    return {
        "received_at": received_at,
        "feed": inbound.feed,
        "format": inbound.format,
        "sender": inbound.sender,
        "control_id": inbound.control_id,
        "message_type": inbound.message_type,
        "dedupe_key": inbound.dedupe_key if new.duplicate_of is None else None,
        "status": inbound.status.value,
        "problems": [p.as_dict() for p in inbound.problems] or None,
        "duplicate_of": new.duplicate_of,
        "state": new.state,
        "processing_error": new.error,
        "raw": inbound.raw,
        "context": inbound.context,
    }


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

    def add(self, news: Sequence[NewMessage], received_at: datetime) -> list[int | None]:
        """Insert messages in order; each one's id, or None when its dedupe key is already stored (a re-send).

        This is the ACK path's only write, so it skips SQLAlchemy's statement compilation, lets the
        unique index find re-sends (no look-up before the insert) and sends a group commit's messages
        in one round trip."""
        return insert_returning_ids(self.conn, messages, [_message_row(new, received_at) for new in news], "dedupe_key")

    def pending(self, limit: int) -> list[PendingMessage]:
        """Accepted messages not yet processed, in the order they were accepted."""
        return [PendingMessage(*r) for r in self.conn.execute(_PENDING, {"limit": limit})]

    def mark(self, ids: Sequence[int], state: str, error: str | None = None) -> None:
        if ids:
            self.conn.execute(_MARK, {"ids": list(ids), "state": state, "error": error})

    def set_results(self, results: dict[int, Any]) -> None:
        """What processing made of messages whose door answers with it (FHIR)."""
        if results:
            update_many(self.conn, messages, "id", [{"id": i, "result": r} for i, r in results.items()])

    def processed_upto(self) -> int:
        """Every message up to this id is processed (or needs no processing): the one below the oldest
        pending, or the newest when none is pending. One statement: one snapshot."""
        oldest, newest = self.conn.execute(_PROCESSED_UPTO).one()
        return oldest - 1 if oldest is not None else newest or 0

    def processing_state(self, message_id: int) -> tuple[str | None, Any]:
        """(state, result) of one message: whether processing has passed it, in whichever process."""
        row = self.conn.execute(
            select(messages.c.state, messages.c.result).where(messages.c.id == message_id)
        ).one_or_none()
        return (row.state, row.result) if row is not None else (None, None)


@dataclass(frozen=True, slots=True)
class PendingMessage:
    id: int
    format: str
    feed: str
    raw: bytes
    context: dict[str, Any] | None = None


SourceKey = tuple[str, str, str]
"""(kind, source system, source value): what names a record in the feed it came from."""


@dataclass(slots=True)
class RecordChanges:
    """What one batch did to canonical records, ready to be written in bulk."""

    inserted: list[RecordRow] = field(default_factory=list)
    updated: list[RecordRow] = field(default_factory=list)
    superseded: list[dict[str, Any]] = field(default_factory=list)
    """Versions replaced by this batch (record_id, version, data, message_id, recorded_at)."""
    reindexed: set[str] = field(default_factory=set)
    index: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(record_id, param, value, kind): plain strings, already clipped; handed to the driver as they are."""


_COLUMNS = ("id", "kind", "source_system", "source_value", "patient_id", "version", "active", "data", "feed",
            "message_id", "updated_at", "resource", "deleted")


_BY_VALUES = f"SELECT {', '.join(f.name for f in fields(RecordRow))} FROM records WHERE source_value {{ids}}"
_IDS_BY_VALUES = "SELECT id, kind, source_system, source_value FROM records WHERE source_value {ids}"


def _record_row(r: tuple[Any, ...]) -> RecordRow:
    """A driver row of `_BY_VALUES` (RecordRow's fields, in order) as SQLAlchemy would have typed it."""
    (id_, kind, system, value, patient_id, version, active, data, feed, message_id, updated_at, created_at,
     resource, deleted) = r
    return RecordRow(
        id_, kind, system, value, patient_id, version, bool(active), json_value(data), feed, message_id,
        datetime_value(updated_at), datetime_value(created_at), json_value(resource), bool(deleted),
    )


class RecordRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def by_sources(self, keys: Collection[SourceKey]) -> dict[SourceKey, RecordRow]:
        """Current rows for many (kind, system, value) keys: looked up by value (the unique index leads
        with it; a row-value IN makes SQLite scan the table), then matched on all three."""
        return {key: _record_row(r) for key, r in self._by_sources(_BY_VALUES, keys)}

    def ids_by_sources(self, keys: Collection[SourceKey]) -> dict[SourceKey, str]:
        """Like `by_sources`, the record ids only (nothing to decode: routing needs no data)."""
        return {key: r[0] for key, r in self._by_sources(_IDS_BY_VALUES, keys)}

    def _by_sources(self, query: str, keys: Collection[SourceKey]) -> Iterator[tuple[SourceKey, tuple[Any, ...]]]:
        wanted = set(keys)
        values = list({value for _, _, value in wanted})
        for start in range(0, len(values), 500):
            for r in fetch_in(self.conn, query, values[start : start + 500]):
                key = (r[1], r[2], r[3])  # kind, source_system, source_value
                if key in wanted:
                    yield key, r

    def get(self, record_id: str, kind: str | None = None) -> RecordRow | None:
        query = select(records).where(records.c.id == record_id)
        if kind:
            query = query.where(records.c.kind == kind)
        row = self.conn.execute(query).one_or_none()
        return RecordRow(**row._mapping) if row else None

    def write(self, changes: RecordChanges) -> None:
        """Apply a batch's changes with one executemany per table."""
        insert_many(self.conn, records, [_columns(r) | {"created_at": r.updated_at} for r in changes.inserted])
        update_many(self.conn, records, "id", [_columns(r) for r in changes.updated])
        insert_many(self.conn, record_versions, changes.superseded)
        ids = list(changes.reindexed)
        for start in range(0, len(ids), 500):
            self.conn.execute(delete(record_index).where(record_index.c.record_id.in_(ids[start : start + 500])))
        insert_many(self.conn, record_index, changes.index, columns=("record_id", "param", "value", "kind"))

    def get_many(self, ids: Collection[str]) -> dict[str, RecordRow]:
        found: dict[str, RecordRow] = {}
        ids = list(ids)
        for start in range(0, len(ids), 500):
            for r in self.conn.execute(select(records).where(records.c.id.in_(ids[start : start + 500]))):
                found[r.id] = RecordRow(**r._mapping)
        return found

    def versions(self, record_id: str) -> list[RecordVersion]:
        """Superseded versions of a record, newest first (the current one is the record itself)."""
        query = (
            select(record_versions).where(record_versions.c.record_id == record_id)
            .order_by(record_versions.c.version.desc())
        )
        return [
            RecordVersion(r.record_id, r.version, r.data, r.resource, bool(r.deleted), r.feed, r.recorded_at)
            for r in self.conn.execute(query)
        ]

    def count(self, kind: str | Sequence[str], criteria: Sequence[Criterion]) -> int:
        """How many records match (search `_total`)."""
        query = self._matching(kind, criteria, False).with_only_columns(func.count()).order_by(None)
        return int(self.conn.execute(query).scalar_one())

    def search(
        self, kind: str | Sequence[str], criteria: Sequence[Criterion], limit: int, offset: int = 0,
        sort: str | None = None, include_deleted: bool = False,
    ) -> list[RecordRow]:
        """Records matching every criterion, oldest first (or by `sort`: an index param, `-` for descending)."""
        query = self._matching(kind, criteria, include_deleted)
        if sort:
            param = sort.lstrip("-")
            key = (
                select(func.min(record_index.c.value))
                .where(record_index.c.record_id == records.c.id, record_index.c.param == param)
                .scalar_subquery()
            )
            query = query.order_by(key.desc() if sort.startswith("-") else key, records.c.created_at, records.c.id)
        else:
            query = query.order_by(records.c.created_at, records.c.id)
        query = query.limit(limit).offset(offset)
        return [RecordRow(**r._mapping) for r in self.conn.execute(query)]

    def _matching(self, kind: str | Sequence[str], criteria: Sequence[Criterion], include_deleted: bool) -> Any:
        kinds = [kind] if isinstance(kind, str) else list(kind)
        # With a selective criterion, `kind` must not drive the plan: SQLite would walk every record of the
        # kind through ix_records_kind_updated and test each against the criterion. `kind || ''` keeps the
        # condition but not the index.
        selective = any(param != "_lastUpdated" for param, _, _ in criteria)
        kind_column = records.c.kind.concat("") if selective else records.c.kind
        query = select(records).where(kind_column.in_(kinds) if len(kinds) > 1 else kind_column == kinds[0])
        if not include_deleted:
            query = query.where(records.c.deleted == false())
        return query.where(*search_conditions(records, kinds, criteria))  # OR, modifiers, chains: hub/store/search.py


Criterion = tuple[str, str, str]
"""(search param, operator: eq | prefix | lt | le | gt | ge, normalised value)."""



def _columns(row: RecordRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in _COLUMNS}


class UnitOfWork:
    """`with UnitOfWork(engine) as uow: …; uow.commit()` — anything not committed is rolled back.

    `durable=False` is for bookkeeping that can be redone: delivery's claims and answers. Its commits
    do not wait for the disk (SQLite WAL `synchronous=NORMAL`, PostgreSQL `synchronous_commit=off`):
    a process killed at any point loses none of them; only an operating-system crash or power loss
    can undo the last few, and then their rows are sent again under the same idempotency keys (at
    least once, as after any crash). Stored messages, records, links and outbox rows are always
    written durably: the next durable commit flushes these too, in order."""

    def __init__(self, engine: Engine, durable: bool = True) -> None:
        self.engine = engine
        self.durable = durable

    def __enter__(self) -> UnitOfWork:
        self.conn = self.engine.connect()
        self.tx = self.conn.begin()
        if not self.durable and self.conn.dialect.name == "sqlite":  # the driver's BEGIN comes with the first write
            self.conn.connection.driver_connection.execute("PRAGMA synchronous=NORMAL")
        if not self.durable and self.conn.dialect.name == "postgresql":
            self.conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        self.messages = MessageRepository(self.conn)
        self.records = RecordRepository(self.conn)
        self.outbox = OutboxRepository(self.conn)
        from hub.store.mpi import MpiRepository  # master patient index tables (hub/store/mpi.py)

        self.mpi = MpiRepository(self.conn)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.tx.is_active:
                self.tx.rollback()
        finally:
            try:
                if not self.durable and self.conn.dialect.name == "sqlite":
                    self._restore_durability()
            finally:
                self.conn.close()

    def _restore_durability(self) -> None:
        """The pooled connection goes back as it came (`synchronous=FULL`: storing's ACK promise), or not at all."""
        try:
            self.conn.connection.driver_connection.execute("PRAGMA synchronous=FULL")
        except Exception:
            self.conn.invalidate()  # discarded by the pool, never handed to storing with NORMAL
            raise

    def commit(self) -> None:
        self.tx.commit()

    def prefer_index_scans(self) -> None:
        """Processing only looks records up by key. During a bulk load PostgreSQL's statistics lag
        behind the table (autovacuum analyses once a minute), and with a table it believes tiny it
        scans all of `records` for every look-up (measured: 1–5 s per batch at 200,000 records)."""
        if self.conn.dialect.name == "postgresql":
            self.conn.exec_driver_sql("SET LOCAL enable_seqscan = off")

    def try_lock(self, name: str) -> bool:
        """A transaction-scoped lock that only one process holds (PostgreSQL advisory lock).

        SQLite has one for all: its write lock, taken here (BEGIN IMMEDIATE, waiting for it as any writer
        does) unless this transaction already writes. Processing reads then writes: with the write lock
        taken first, no other process (`hub.processor`, a second `hub serve`) can change what it read."""
        if self.conn.dialect.name != "postgresql":
            driver = self.conn.connection.driver_connection
            if not driver.in_transaction:
                driver.execute("BEGIN IMMEDIATE")
            return True
        return bool(self.conn.execute(text("SELECT pg_try_advisory_xact_lock(hashtext(:name))"), {"name": name}).scalar())
