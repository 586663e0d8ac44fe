"""The outbox: one row per outbound message per destination, written with the processing that made it.

Delivery state lives here, not in a queue: a row is `pending` until a worker claims it (`sending`,
with a lease that expires so a killed worker's rows are taken again), then `delivered`, `dead`
(dead-letter, after the last attempt or a permanent refusal) or `skipped` (a person skipped it).
Every attempt and the receiver's answer is kept in `outbox_attempts`.

Ordering: rows of one (destination, ordering_key) leave in id order. A row holds back the rows
after it while it is *open* (pending or sending) or *blocking* (dead under the destination's poison
policy `block`). The partial indexes `ix_outbox_open` and `ix_outbox_blocking` hold only those rows,
so "the head of each key" is an index probe, and finished rows cost nothing however many there are.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    and_,
    bindparam,
    delete,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)

from hub.outbound import Outbound
from hub.store.driver import insert_many, update_many
from hub.store.tables import Id, messages, metadata, record_versions, records

OPEN_STATES = ("pending", "sending")
FINISHED_ORDER_STATUSES = frozenset({"revoked", "completed", "entered-in-error"})
SCAN_PAGE = 1000
SCAN_LIMIT = 20_000
"""A claim reads at most this many open rows of a destination looking for claimable heads."""
STATES = ("pending", "sending", "delivered", "dead", "skipped")
BUILD_ERROR = "build-error"
"""`last_code` of a row whose message a profile failed to build (written dead, payload empty)."""

outbox = Table(
    "outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("message_id", Id),
    Column("event_index", Integer, nullable=False, server_default="0"),
    Column("destination", String(100), nullable=False),
    Column("route", String(100), nullable=False),
    Column("ordering_key", String(700), nullable=False),
    Column("idempotency_key", String(200), nullable=False),
    Column("content_type", String(100), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("summary", String(200), nullable=False),
    Column("state", String(16), nullable=False),
    Column("blocking", Boolean, nullable=False, server_default=false()),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("lease_until", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True)),
    Column("last_code", String(32)),
    Column("last_detail", String(500)),
    Column("resent_from", Id),
    Index("ix_outbox_message", "message_id", "event_index"),
    Index("ix_outbox_state", "state", "id"),
)
# Partial indexes, and the queries that must use them, spell the condition with literals: SQLite
# (and PostgreSQL's generic plans) only use a partial index when the query's condition visibly implies
# the index's, which a bound parameter never does.
OPEN_SQL = "state IN ('pending', 'sending')"
Index("ix_outbox_open", outbox.c.destination, outbox.c.ordering_key, outbox.c.id,
      postgresql_where=text(OPEN_SQL), sqlite_where=text(OPEN_SQL))
Index("ix_outbox_queue", outbox.c.destination, outbox.c.id,
      postgresql_where=text(OPEN_SQL), sqlite_where=text(OPEN_SQL))
Index("ix_outbox_due", outbox.c.destination, outbox.c.next_attempt_at,
      postgresql_where=text(OPEN_SQL), sqlite_where=text(OPEN_SQL))
Index("ix_outbox_blocking", outbox.c.destination, outbox.c.ordering_key, outbox.c.id,
      postgresql_where=text("blocking"), sqlite_where=text("blocking"))

outbox_attempts = Table(
    "outbox_attempts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("outbox_id", Id, ForeignKey("outbox.id", ondelete="CASCADE"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("code", String(32), nullable=False),
    Column("detail", String(500)),
    Column("duration", Float, nullable=False),
    Column("worker", String(100)),
    Index("ix_outbox_attempts_row", "outbox_id", "attempt"),
)
"""Every attempt and the receiver's answer: the dead-letter queue's history, and the log a duplicate
(a retry after a timeout) can be traced to."""


@dataclass(slots=True)
class OutboxRow:
    id: int
    message_id: int | None
    event_index: int
    destination: str
    route: str
    ordering_key: str
    idempotency_key: str
    content_type: str
    payload: bytes
    summary: str
    state: str
    blocking: bool
    attempts: int
    next_attempt_at: datetime
    lease_until: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    last_code: str | None
    last_detail: str | None
    resent_from: int | None = None

    def listing(self) -> dict[str, Any]:
        """What an operator sees in a listing: everything but the payload (patient data)."""
        return {
            "id": self.id, "message_id": self.message_id, "event_index": self.event_index,
            "destination": self.destination, "route": self.route, "idempotency_key": self.idempotency_key,
            "summary": self.summary, "state": self.state, "blocking": self.blocking, "attempts": self.attempts,
            "next_attempt_at": _iso(self.next_attempt_at), "created_at": _iso(self.created_at),
            "delivered_at": _iso(self.delivered_at), "last_code": self.last_code, "last_detail": self.last_detail,
            "resent_from": self.resent_from,
        }


@dataclass(frozen=True, slots=True)
class Attempt:
    outbox_id: int
    attempt: int
    at: datetime
    ok: bool
    code: str
    detail: str
    duration: float
    worker: str | None = None


@dataclass(frozen=True, slots=True)
class Settled:
    """What a delivery round decided for one claimed row: its new state, whole."""

    id: int
    state: str
    """pending (retry later, or released unsent), delivered, dead."""
    attempts: int
    next_attempt_at: datetime
    blocking: bool = False
    code: str | None = None
    detail: str | None = None
    delivered_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StoredInbound:
    id: int
    format: str
    feed: str
    raw: bytes
    context: dict[str, Any] | None
    status: str
    duplicate_of: int | None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _open(table: Any = outbox) -> Any:
    """Pending or sending: the rows `ix_outbox_open` holds."""
    return text(f"{table.name}.{OPEN_SQL}")


def _blocking(table: Any) -> Any:
    return text(f"{table.name}.blocking")


def _claimable(now: datetime) -> Any:
    return or_(
        and_(outbox.c.state == "pending", outbox.c.next_attempt_at <= now),
        and_(outbox.c.state == "sending", outbox.c.lease_until < now),
    )


_ACCEPTED_AT = select(messages.c.id, messages.c.received_at).where(messages.c.id.in_(bindparam("ids", expanding=True)))

# The claim's statements, built once: a claim runs several times a second per destination, and building
# a select costs about as much as running it.
_IDS = bindparam("ids", expanding=True)
_OPEN_PAGE = (
    select(outbox.c.id, outbox.c.ordering_key, outbox.c.state, outbox.c.next_attempt_at, outbox.c.lease_until)
    .where(outbox.c.destination == bindparam("destination"), _open(), outbox.c.id > bindparam("after"))
    .order_by(outbox.c.id).limit(bindparam("page"))
)
_BLOCKED = (
    select(outbox.c.ordering_key, func.min(outbox.c.id))
    .where(outbox.c.destination == bindparam("destination"), _blocking(outbox))
    .group_by(outbox.c.ordering_key)
)
_ROWS = select(outbox).where(outbox.c.id.in_(_IDS)).order_by(outbox.c.id)
_LOCK_CLAIMABLE = (
    select(outbox.c.id).where(outbox.c.id.in_(_IDS), _claimable(bindparam("now"))).with_for_update(skip_locked=True)
)
_MARK_SENDING = (
    update(outbox).where(outbox.c.id.in_(_IDS))
    .values(state="sending", lease_until=bindparam("lease_until"), attempts=outbox.c.attempts + 1)
)


class OutboxRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.touched: set[str] = set()
        """Destinations this unit of work wrote rows for: who to nudge once it commits."""

    def add(self, rows: Sequence[tuple[int | None, int, Outbound]], now: datetime) -> None:
        """Write outbound messages (message id, event index, outbound) in one statement. One that could
        not be built (`error`) is written dead with last_code `build-error`: the dead-letter queue
        shows it, and a resend after a fix rebuilds it in its place."""
        if not rows:
            return
        insert_many(self.conn, outbox, [
            {
                "message_id": message_id, "event_index": index, "destination": o.destination, "route": o.route,
                "ordering_key": o.ordering_key, "idempotency_key": o.idempotency_key,
                "content_type": o.content_type, "payload": o.payload, "summary": o.summary,
                "state": "dead" if o.error else "pending", "blocking": bool(o.error) and o.blocking, "attempts": 0,
                "next_attempt_at": now, "created_at": now,
                "last_code": BUILD_ERROR if o.error else None, "last_detail": o.error[:500] if o.error else None,
            }
            for message_id, index, o in rows
        ])
        self.touched.update(o.destination for _, _, o in rows if not o.error)

    def rebuilt(self, outbox_id: int, o: Outbound, now: datetime) -> bool:
        """A dead or skipped row that was never built, now built (after a fix): pending, in its place."""
        result = self.conn.execute(
            update(outbox).where(outbox.c.id == outbox_id, outbox.c.state.in_(("dead", "skipped")))
            .values(state="pending", blocking=False, attempts=0, next_attempt_at=now, lease_until=None,
                    content_type=o.content_type, payload=o.payload, summary=o.summary)
        )
        if result.rowcount:
            self.touched.add(o.destination)
        return bool(result.rowcount)

    def add_one(self, message_id: int | None, event_index: int, o: Outbound, now: datetime,
                resent_from: int | None = None) -> int:
        """Write one outbound message (resend, replay); its id. One not built (`error`) is written dead."""
        values = {
            "message_id": message_id, "event_index": event_index, "destination": o.destination, "route": o.route,
            "ordering_key": o.ordering_key, "idempotency_key": o.idempotency_key, "content_type": o.content_type,
            "payload": o.payload, "summary": o.summary, "state": "dead" if o.error else "pending",
            "blocking": bool(o.error) and o.blocking, "attempts": 0, "next_attempt_at": now, "created_at": now,
            "resent_from": resent_from, "last_code": BUILD_ERROR if o.error else None,
            "last_detail": o.error[:500] if o.error else None,
        }
        new_id = self.conn.execute(insert(outbox).values(values).returning(outbox.c.id)).scalar_one()
        if not o.error:
            self.touched.add(o.destination)
        return int(new_id)

    def accepted_at(self, message_ids: Collection[int]) -> dict[int, datetime]:
        """When these messages were accepted (outbound MSH-7 comes from it: a rebuild gives the same bytes)."""
        ids = list(message_ids)
        found: dict[int, datetime] = {}
        for start in range(0, len(ids), 500):
            found.update({r.id: _aware(r.received_at) for r in self.conn.execute(_ACCEPTED_AT, {"ids": ids[start:start + 500]})})
        return found

    def with_open_orders(self, patient_record_ids: Collection[str]) -> set[str]:
        """Which of these patients have an order that is not finished (for routes that send lab
        demographic updates only to patients with open orders): one indexed query per batch."""
        ids = list(patient_record_ids)
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            query = select(records.c.patient_id, records.c.data).where(
                records.c.patient_id.in_(ids[start:start + 500]), records.c.kind == "order",
                records.c.deleted == false(),
            )
            for patient_id, data in self.conn.execute(query):
                if (data or {}).get("status", "unknown") not in FINISHED_ORDER_STATUSES:
                    found.add(patient_id)
        return found

    def inbound(self, message_id: int) -> StoredInbound | None:
        """A stored inbound message, to run it through the routes again (replay)."""
        query = select(messages.c.id, messages.c.format, messages.c.feed, messages.c.raw, messages.c.context,
                       messages.c.status, messages.c.duplicate_of).where(messages.c.id == message_id)
        row = self.conn.execute(query).one_or_none()
        return StoredInbound(**row._mapping) if row else None

    # --- claiming -------------------------------------------------------------------------------

    def claim(
        self, destination: str, now: datetime, lease: timedelta, *, strict: bool, heads: int, run: int
    ) -> list[OutboxRow]:
        """Take due rows of one destination for delivery, marking them `sending` until `now + lease`
        and counting the attempt (a release gives it back).

        Returns runs in id order: for each ordering key (one key for a strict destination), its
        earliest open row if claimable, then the open rows right after it (up to `run`). A key whose
        earliest open row is not claimable (backing off, being sent elsewhere, blocked) gives nothing.
        On PostgreSQL the rows are locked with SKIP LOCKED before they are marked, so several
        workers never take the same row; a row another worker holds truncates the run there."""
        if self.conn.dialect.name == "sqlite":
            # Take SQLite's write lock before reading, so two claimers cannot read the same rows
            # (the driver would otherwise read outside the transaction). An UPDATE of no rows takes it.
            self.conn.exec_driver_sql("UPDATE outbox SET id = id WHERE 0")
        candidates = self._candidates(destination, now, strict=strict, heads=heads, run=run)
        if not candidates:
            return []
        locked = {r.id for r in candidates if _is_claimable(r, now)}
        if self.conn.dialect.name == "postgresql" and locked:
            locked &= set(self.conn.execute(_LOCK_CLAIMABLE, {"ids": list(locked), "now": now}).scalars())
        taken = _contiguous(candidates, locked, strict)
        if not taken:
            return []
        self.conn.execute(_MARK_SENDING, {"ids": [r.id for r in taken], "lease_until": now + lease})
        for row in taken:
            # Counted when claimed, not when answered: a worker killed mid-send leaves a count that
            # shows the attempt, so a duplicate at the receiver is always explained by the log.
            row.state, row.attempts = "sending", row.attempts + 1
        return taken

    def _candidates(self, destination: str, now: datetime, *, strict: bool, heads: int, run: int) -> list[OutboxRow]:
        """Claimable heads and the rows right behind them, read without locks (checked again when locked).

        The destination's open rows are read in id order (`ix_outbox_queue`, pages of SCAN_PAGE): the
        first row seen of a key *is* its earliest open row, so heads and runs fall out of one ordered
        scan, with no per-row subquery for the planner to get wrong on a young table. A key whose
        first row is not claimable, or that sits behind a blocking row, is passed over."""
        blocked = self._blocked(destination, strict)
        runs: dict[str, list[int]] = {}
        closed: set[str] = set()
        after, scanned = 0, 0
        wanted = 1 if strict else heads
        page_size = min(SCAN_PAGE, max(100, 2 * wanted, run))
        while scanned < SCAN_LIMIT:
            page = self.conn.execute(_OPEN_PAGE, {"destination": destination, "after": after, "page": page_size}).all()
            for r in page:
                key = "" if strict else r.ordering_key
                if key in closed:
                    continue
                bucket = runs.get(key)
                room = len(runs) < wanted if bucket is None else len(bucket) < run
                if room and _is_claimable(r, now) and not (key in blocked and blocked[key] < r.id):
                    if bucket is None:
                        runs[key] = [r.id]
                    else:
                        bucket.append(r.id)
                else:
                    closed.add(key)
            scanned += len(page)
            if len(page) < page_size or len(runs) >= wanted:
                break
            after = page[-1].id
        return self._rows(sorted(i for bucket in runs.values() for i in bucket))

    def _blocked(self, destination: str, strict: bool) -> dict[str, int]:
        """Per key (one key for a strict destination), its earliest blocking row (rare: one indexed query)."""
        found: dict[str, int] = {}
        for key, first in self.conn.execute(_BLOCKED, {"destination": destination}).all():
            key = "" if strict else key
            found[key] = min(found.get(key, first), first)
        return found

    def _rows(self, ids: Collection[int]) -> list[OutboxRow]:
        ids = list(ids)
        rows: list[OutboxRow] = []
        for start in range(0, len(ids), 500):
            rows += [OutboxRow(*r) for r in self.conn.execute(_ROWS, {"ids": ids[start:start + 500]})]
        return rows

    # --- settling -------------------------------------------------------------------------------

    def settle(self, settled: Sequence[Settled], attempts: Sequence[Attempt]) -> None:
        """Record a round's outcomes: one executemany for the rows, one insert for the attempts."""
        update_many(self.conn, outbox, "id", [
            {"id": x.id, "state": x.state, "attempts": x.attempts, "next_attempt_at": x.next_attempt_at,
             "blocking": x.blocking, "lease_until": None, "last_code": x.code,
             "last_detail": x.detail[:500] if x.detail else None, "delivered_at": x.delivered_at}
            for x in settled
        ])
        insert_many(self.conn, outbox_attempts, [
            {"outbox_id": a.outbox_id, "attempt": a.attempt, "at": a.at, "ok": a.ok, "code": a.code[:32],
             "detail": a.detail[:500] or None, "duration": a.duration, "worker": a.worker}
            for a in attempts
        ])

    # --- looking ---------------------------------------------------------------------------------

    def due_destinations(self, now: datetime, names: Collection[str]) -> list[str]:
        """Which of these destinations have a row that could be sent now (the sweep's look: one
        probe of `ix_outbox_due` each, however long the backlog)."""
        return [name for name in names if self._claimable_exists(name, now)]

    def _claimable_exists(self, name: str, now: datetime) -> bool:
        query = select(literal(1)).where(outbox.c.destination == name, _open(), _claimable(now)).limit(1)
        return self.conn.execute(query).first() is not None

    def next_due(self, destination: str) -> datetime | None:
        """When the destination's earliest pending row becomes due (a loop sleeps until then)."""
        query = select(func.min(outbox.c.next_attempt_at)).where(
            outbox.c.destination == destination, outbox.c.state == "pending"
        )
        return self.conn.execute(query).scalar()

    def get(self, outbox_id: int) -> OutboxRow | None:
        found = self._rows([outbox_id])
        return found[0] if found else None

    def for_message(self, message_id: int) -> list[OutboxRow]:
        query = select(outbox).where(outbox.c.message_id == message_id).order_by(outbox.c.id)
        return [OutboxRow(*r) for r in self.conn.execute(query)]

    def listing(self, state: str | None = None, destination: str | None = None, limit: int = 100,
                after: int = 0) -> list[OutboxRow]:
        query = select(outbox).where(outbox.c.id > after)
        if state:
            query = query.where(outbox.c.state == state)
        if destination:
            query = query.where(outbox.c.destination == destination)
        return [OutboxRow(*r) for r in self.conn.execute(query.order_by(outbox.c.id).limit(limit))]

    def attempts(self, outbox_id: int) -> list[Attempt]:
        query = select(outbox_attempts).where(outbox_attempts.c.outbox_id == outbox_id).order_by(outbox_attempts.c.id)
        return [
            Attempt(r.outbox_id, r.attempt, r.at, r.ok, r.code, r.detail or "", r.duration, r.worker)
            for r in self.conn.execute(query)
        ]

    def counts(self) -> dict[str, int]:
        query = select(outbox.c.state, func.count()).group_by(outbox.c.state)
        found = dict(self.conn.execute(query).all())
        return {state: int(found.get(state, 0)) for state in STATES}

    # --- operator actions ----------------------------------------------------------------------

    def reopen(self, outbox_id: int, now: datetime) -> bool:
        """Send a dead or skipped row again in its place (it goes before the key's later rows).
        The attempt count restarts; the history stays."""
        result = self.conn.execute(
            update(outbox).where(outbox.c.id == outbox_id, outbox.c.state.in_(("dead", "skipped")))
            .values(state="pending", blocking=False, attempts=0, next_attempt_at=now, lease_until=None)
        )
        if result.rowcount:
            self.touched.add(self.conn.execute(select(outbox.c.destination).where(outbox.c.id == outbox_id)).scalar_one())
        return bool(result.rowcount)

    def skip(self, outbox_id: int) -> bool:
        """A person gives up on a row (a blocked poison message): the rows behind it may go."""
        result = self.conn.execute(
            update(outbox).where(outbox.c.id == outbox_id, outbox.c.state.in_(("pending", "dead")))
            .values(state="skipped", blocking=False, lease_until=None)
        )
        return bool(result.rowcount)


def _is_claimable(row: Any, now: datetime) -> bool:
    if row.state == "pending":
        due = row.next_attempt_at
        return (due if due.tzinfo is not None else due.replace(tzinfo=UTC)) <= now
    return row.state == "sending" and row.lease_until is not None and _aware(row.lease_until) < now


def _aware(value: datetime) -> datetime:
    """SQLite hands datetimes back naive (stored as UTC)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _contiguous(candidates: Sequence[OutboxRow], locked: set[int], strict: bool) -> list[OutboxRow]:
    """Per key, the candidates up to the first one that could not be locked: a gap would let a
    later row leave before an earlier one."""
    stopped: set[str] = set()
    taken = []
    for row in candidates:
        key = "" if strict else row.ordering_key
        if key in stopped:
            continue
        if row.id not in locked:
            stopped.add(key)
            continue
        taken.append(row)
    return taken




# --- who knows which patient (MPI link-change notices) ------------------------------------------

KNOWN_STATES = ("pending", "sending", "delivered")
"""Rows that tell a destination about a patient: delivered, or on their way. Dead and skipped rows
never reached it (a reopened dead row goes out with the identifiers it was built with)."""
KNOWN_BATCH = 500

outbox_known = Table(
    "outbox_known",
    metadata,
    Column("ordering_key", String(700), primary_key=True),
    Column("destination", String(100), primary_key=True),
    Column("last_at", DateTime(timezone=True), nullable=False),
)
"""What pruning keeps of the delivered rows it deletes: that the destination was sent something under
this ordering key (a patient's `system|value`, or `msg:<message id>` for a strict-FIFO destination,
whose ordering key is its own name). Link-change notices must still reach a destination that knows
a patient after that patient's old rows are pruned."""

Index("ix_outbox_known", outbox.c.ordering_key, outbox.c.destination, outbox.c.state)
"""Which destinations were sent rows under a patient's key, in any state (ix_outbox_open holds only
open rows): one index range per patient, the destinations and states read from the index."""


def message_known_key(message_id: int) -> str:
    """The `outbox_known` key of a strict destination's row: patient keys always hold a `|`, this never."""
    return f"msg:{message_id}"


def known_destinations(
    conn: Connection, record_ids: Collection[str], destinations: Collection[str], strict: Collection[str] = ()
) -> dict[str, set[str]]:
    """Patient record id → which of `destinations` have been sent something about it (a row pending,
    sending or delivered, or a delivered row since pruned).

    Per-patient destinations are asked by the record's ordering key (`system|value`, `ix_outbox_known`).
    A `strict` destination orders every row under its own name, so its rows are found by message
    instead: the messages that wrote a version of the record or of a record about it (its encounters,
    results …), then the destination's rows for those messages (`ix_outbox_message`). A message that
    carried several patients (a CSV chunk) counts for each of them."""
    ids = list(record_ids)
    wanted = list(destinations)
    if not ids or not wanted:
        return {}
    found: dict[str, set[str]] = {}
    key_of = patient_ordering_keys(conn, ids)
    by_key: dict[str, list[str]] = {}
    for record_id, key in key_of.items():
        by_key.setdefault(key, []).append(record_id)
    for key, destination in _known_pairs(conn, list(by_key), wanted):
        for record_id in by_key[key]:
            found.setdefault(record_id, set()).add(destination)
    strict_wanted = [d for d in wanted if d in set(strict)]
    if strict_wanted:
        for record_id, destination in _known_by_message(conn, ids, strict_wanted):
            found.setdefault(record_id, set()).add(destination)
    return found


def patient_ordering_keys(conn: Connection, ids: Sequence[str]) -> dict[str, str]:
    """Patient record id → its ordering key (`system|value`), the key its outbox rows go under."""
    out: dict[str, str] = {}
    for start in range(0, len(ids), KNOWN_BATCH):
        query = select(records.c.id, records.c.source_system, records.c.source_value).where(
            records.c.id.in_(ids[start:start + KNOWN_BATCH]), records.c.kind == "patient"
        )
        out.update({r.id: f"{r.source_system}|{r.source_value}" for r in conn.execute(query)})
    return out


def _known_pairs(conn: Connection, keys: Sequence[str], destinations: Sequence[str]) -> set[tuple[str, str]]:
    """(ordering key, destination) pairs among these, from live rows and from what pruning kept."""
    pairs: set[tuple[str, str]] = set()
    for start in range(0, len(keys), KNOWN_BATCH):
        batch = keys[start:start + KNOWN_BATCH]
        live = select(outbox.c.ordering_key, outbox.c.destination).where(
            outbox.c.ordering_key.in_(batch), outbox.c.destination.in_(destinations),
            outbox.c.state.in_(KNOWN_STATES),
        ).distinct()
        kept = select(outbox_known.c.ordering_key, outbox_known.c.destination).where(
            outbox_known.c.ordering_key.in_(batch), outbox_known.c.destination.in_(destinations)
        )
        pairs.update((r[0], r[1]) for r in conn.execute(live))
        pairs.update((r[0], r[1]) for r in conn.execute(kept))
    return pairs


def _known_by_message(conn: Connection, ids: Sequence[str], destinations: Sequence[str]) -> set[tuple[str, str]]:
    """(patient record id, strict destination): rows of the messages that wrote about the patient
    (a record's current version in `records`, the ones it replaced in `record_versions`)."""
    owner = {record_id: record_id for record_id in ids}
    about: dict[int, set[str]] = {}
    for start in range(0, len(ids), KNOWN_BATCH):
        batch = ids[start:start + KNOWN_BATCH]
        query = select(records.c.id, records.c.patient_id, records.c.message_id).where(
            or_(records.c.patient_id.in_(batch), records.c.id.in_(batch))
        )
        for record_id, patient_id, message_id in conn.execute(query):
            mine = owner.setdefault(record_id, patient_id)
            if message_id is not None:
                about.setdefault(int(message_id), set()).add(mine)
    written = list(owner)
    for start in range(0, len(written), KNOWN_BATCH):
        query = select(record_versions.c.record_id, record_versions.c.message_id).where(
            record_versions.c.record_id.in_(written[start:start + KNOWN_BATCH]), record_versions.c.message_id.is_not(None)
        )
        for record_id, message_id in conn.execute(query):
            about.setdefault(int(message_id), set()).add(owner[record_id])
    pairs: set[tuple[str, str]] = set()
    message_ids = list(about)
    for start in range(0, len(message_ids), KNOWN_BATCH):
        batch = message_ids[start:start + KNOWN_BATCH]
        live = select(outbox.c.message_id, outbox.c.destination).where(
            outbox.c.message_id.in_(batch), outbox.c.destination.in_(destinations),
            outbox.c.ordering_key == outbox.c.destination, outbox.c.state.in_(KNOWN_STATES),
        ).distinct()
        kept = select(outbox_known.c.ordering_key, outbox_known.c.destination).where(
            outbox_known.c.ordering_key.in_([message_known_key(m) for m in batch]),
            outbox_known.c.destination.in_(destinations),
        )
        for message_id, destination in conn.execute(live):
            pairs.update((record_id, destination) for record_id in about[int(message_id)])
        for key, destination in conn.execute(kept):
            pairs.update((record_id, destination) for record_id in about[int(key[4:])])
    return pairs


# --- pruning ---------------------------------------------------------------------------------------

PRUNE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Pruned:
    delivered: int = 0
    dead: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"delivered": self.delivered, "dead": self.dead}


def prune_outbox(
    engine: Engine, now: datetime, delivered_older_than: timedelta, dead_older_than: timedelta | None = None,
    batch: int = PRUNE_BATCH,
) -> Pruned:
    """Delete delivered rows delivered before `now - delivered_older_than` and, only when asked, dead
    rows written before `now - dead_older_than`, with their attempts; pending, sending and skipped
    rows are never touched. One transaction per batch of `batch` rows, so delivery (which writes the
    same table) never waits long. What a deleted delivered row told (destination × patient) is kept
    in `outbox_known` for link-change notices."""
    delivered = _prune_state(engine, "delivered", outbox.c.delivered_at, now - delivered_older_than, batch)
    dead = 0
    if dead_older_than is not None:
        dead = _prune_state(engine, "dead", outbox.c.created_at, now - dead_older_than, batch)
    return Pruned(delivered, dead)


def _prune_state(engine: Engine, state: str, age: Any, cutoff: datetime, batch: int) -> int:
    """Walk the state's rows in id order (`ix_outbox_state`) a batch at a time, deleting the old ones."""
    total, after = 0, 0
    while True:
        with engine.begin() as conn:
            scanned = conn.execute(
                select(outbox.c.id, outbox.c.destination, outbox.c.ordering_key, outbox.c.message_id, age)
                .where(outbox.c.state == state, outbox.c.id > after).order_by(outbox.c.id).limit(batch)
            ).all()
            if not scanned:
                return total
            after = scanned[-1].id
            old = [r for r in scanned if r[4] is not None and _aware(r[4]) < cutoff]
            if old:
                if state == "delivered":
                    _remember_known(conn, old)
                ids = [r.id for r in old]
                conn.execute(delete(outbox_attempts).where(outbox_attempts.c.outbox_id.in_(ids)))
                # The state again: a row reopened since it was read stays.
                total += conn.execute(delete(outbox).where(outbox.c.id.in_(ids), outbox.c.state == state)).rowcount
        if len(scanned) < batch:
            return total


def _remember_known(conn: Connection, rows: Sequence[Any]) -> None:
    latest: dict[tuple[str, str], datetime] = {}
    for r in rows:
        strict = r.ordering_key == r.destination
        if strict and r.message_id is None:
            continue  # a strict destination's notice: no patient to remember it by
        key = message_known_key(r.message_id) if strict else r.ordering_key
        when, pair = _aware(r[4]), (key, r.destination)
        if pair not in latest or when > latest[pair]:
            latest[pair] = when
    if not latest:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert  # type: ignore[assignment]
    values = [{"ordering_key": k, "destination": d, "last_at": at} for (k, d), at in sorted(latest.items())]
    statement = upsert(outbox_known).values(values)
    conn.execute(statement.on_conflict_do_update(
        index_elements=[outbox_known.c.ordering_key, outbox_known.c.destination],
        set_={"last_at": func.greatest(outbox_known.c.last_at, statement.excluded.last_at)
              if conn.dialect.name == "postgresql" else func.max(outbox_known.c.last_at, statement.excluded.last_at)},
    ))
