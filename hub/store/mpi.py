"""Master patient index storage: persons (golden records), links, blocking keys, the audit trail of
link changes, review tasks, sticky steward decisions and merges waiting for their record.

Only SQL lives here; what to link where is decided in `hub.mpi.service`. Every look-up takes a
whole batch (many keys, many record ids) so that processing costs a handful of queries per batch,
never one per record. Blocking keys are a (key, record_id) primary key: finding the candidates of
a record is an index range scan per key, whatever the number of persons.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    delete,
    false,
    func,
    or_,
    select,
    update,
)

from hub.store.driver import datetime_value, fetch, fetch_in, in_sql, insert_many, json_value, update_many
from hub.store.tables import Id, Json, metadata, records

At = DateTime(timezone=True)

persons = Table(
    "mpi_persons",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("data", Json, nullable=False),
    Column("provenance", Json, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("merged_into", String(64)),
    Column("version", Integer, nullable=False),
    Column("created_at", At, nullable=False),
    Column("updated_at", At, nullable=False),
)
"""One row per person (enterprise id): the golden record (`data`, a canonical Patient) and, per
field, the source record it came from (`provenance`). A person merged into another stays, inactive,
with `merged_into` naming the survivor, so an enterprise id once handed out always resolves."""

links = Table(
    "mpi_links",
    metadata,
    Column("record_id", String(64), primary_key=True),
    Column("person_id", String(64), nullable=False),
    Column("how", String(16), nullable=False),
    Column("score", Float),
    Column("model_version", String(64)),
    Column("replaced_by", String(64)),
    Column("updated_at", At, nullable=False),
    Index("ix_mpi_links_person", "person_id"),
    sqlite_with_rowid=False,
)
"""Source patient record → person; the primary key makes "exactly one person per record" a database
fact. `how`: auto | review | new | manual | merge. `replaced_by`: the surviving record of an A40 merge."""

keys = Table(
    "mpi_keys",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("record_id", String(64), primary_key=True),
    Index("ix_mpi_keys_record", "record_id"),
    sqlite_with_rowid=False,
)
"""Blocking keys (`kind:value`, see `hub.mpi.blocking`) of every linked source record."""

link_events = Table(
    "mpi_link_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", At, nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(32), nullable=False),
    Column("record_id", String(64)),
    Column("from_person", String(64)),
    Column("to_person", String(64)),
    Column("score", Float),
    Column("model_version", String(64)),
    Column("detail", Json),
    Index("ix_mpi_link_events_record", "record_id"),
    Index("ix_mpi_link_events_at", "at"),
)
"""Every link change: who (`system` or a steward), what, when, and the levels and weights behind it."""

reviews = Table(
    "mpi_reviews",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("record_id", String(64), nullable=False),
    Column("candidates", Json, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", At, nullable=False),
    Column("resolved_at", At),
    Column("resolved_by", String(100)),
    Index("ix_mpi_reviews_status", "status", "id"),
    Index("ix_mpi_reviews_record", "record_id"),
)
"""Possible matches for a steward: the record (given its own person) beside its candidate persons."""

decisions = Table(
    "mpi_decisions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("record_id", String(64), nullable=False),
    Column("other_record_id", String(64)),
    Column("person_id", String(64)),
    Column("actor", String(100), nullable=False),
    Column("at", At, nullable=False),
    Index("ix_mpi_decisions_record", "record_id", "kind"),
    Index("ix_mpi_decisions_other", "other_record_id"),
)
"""Sticky manual decisions: `pin` (record_id stays with person_id) and `not_match` (record_id and
other_record_id are two people). Automatic matching never undoes them."""

pending_merges = Table(
    "mpi_pending_merges",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("source_system", String(300), nullable=False),
    Column("source_value", String(300), nullable=False),
    Column("survivor_record_id", String(64), nullable=False),
    Column("message_id", Id),
    Column("at", At, nullable=False),
    Index("ix_mpi_pending_merges_source", "source_value", "source_system"),
)
"""A40 merges that named a record the hub had not seen: applied when that record arrives."""

counters = Table(
    "mpi_counters",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),
)
"""Counts the match step keeps in its own transaction. `records`: source records linked, the size of the
index that the model's prior follows (`Model.at_population`) — read for every batch, so not a count(*)
over a million links, and exact, so that the same arrivals always get the same decisions."""


@dataclass(slots=True)
class PersonRow:
    id: str
    data: dict[str, Any]
    provenance: dict[str, Any]
    active: bool
    merged_into: str | None
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class LinkRow:
    record_id: str
    person_id: str
    how: str
    score: float | None
    model_version: str | None
    replaced_by: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Candidate:
    """A stored record sharing a blocking key with an incoming one."""

    record_id: str
    person_id: str
    version: int


@dataclass(frozen=True, slots=True)
class Member:
    """A source record of a person, as survivorship reads it."""

    record_id: str
    person_id: str
    source_system: str
    source_value: str
    feed: str
    active: bool
    data: dict[str, Any]
    updated_at: datetime
    deleted: bool


_CHUNK = 500

# The hot look-ups, built once: building a select with IN (…) anew costs more than running it (measured
# ~0.2 ms a statement in SQLAlchemy's coercions), and processing runs them for every batch, online one
# record per batch.
_IDS = bindparam("ids", expanding=True)
_LINKS = select(links).where(links.c.record_id.in_(_IDS))
_MEMBERS = (
    select(
        links.c.record_id, links.c.person_id, records.c.source_system, records.c.source_value, records.c.feed,
        records.c.active, records.c.data, records.c.updated_at, records.c.deleted,
    )
    .join(records, records.c.id == links.c.record_id)
    .where(links.c.person_id.in_(_IDS))
    .order_by(links.c.record_id)
)
_MEMBER_COUNTS = select(links.c.person_id, func.count()).where(links.c.person_id.in_(_IDS)).group_by(links.c.person_id)
_PERSONS = select(persons).where(persons.c.id.in_(_IDS))
_DELETE_KEYS = delete(keys).where(keys.c.record_id.in_(_IDS))


# The per-record look-ups of the match step, as SQL for the DB-API cursor: a Core execute costs ~80 µs of
# CPU even prebuilt (~200 µs on PostgreSQL), the cursor ~10 µs (~85 µs); online matching runs a few of
# these for every record. `{ids}` becomes `IN (?, …)` (SQLite) or `= ANY(%s::text[])` (PostgreSQL: one
# parameter, the list, whatever the number of ids).
_CANDIDATES_SQL = (
    "SELECT k.key, k.record_id, l.person_id, r.version FROM mpi_keys k"
    " JOIN mpi_links l ON l.record_id = k.record_id JOIN records r ON r.id = k.record_id WHERE k.key {ids}"
    " ORDER BY k.key, k.record_id"
)
"""A block's records in record id order (SQLite reads them so from the primary key, at no cost; PostgreSQL
sorts the few rows): the order candidates are ranked in, whether a block is read whole or in part."""
_CANDIDATES_PG_SQL = (
    "SELECT k.key, k.record_id, (SELECT l.person_id FROM mpi_links l WHERE l.record_id = k.record_id),"
    " (SELECT r.version FROM records r WHERE r.id = k.record_id) FROM mpi_keys k WHERE k.key {ids}"
    " ORDER BY k.key, k.record_id"
)
"""PostgreSQL: the same rows (a key without link or record is dropped after), written so that only index
look-ups can answer it: with statistics that lag a bulk load the join above became hash joins over every
link and record, for every batch (130 ms a batch at 100,000 records, growing with them)."""
_POPULATION_SQL = "SELECT value FROM mpi_counters WHERE name {ids}"  # with ["records"]
_ADD_TO_POPULATION_SQL = (
    "INSERT INTO mpi_counters (name, value) VALUES ('records', {p}) ON CONFLICT (name)"
    " DO UPDATE SET value = mpi_counters.value + excluded.value"
)
_KEY_SIZES_SQL = "SELECT key, count(*) FROM mpi_keys WHERE key {ids} GROUP BY key"
_IN_KEYS_SQL = {  # SQLite: `+key` keeps the planner on the record_id index (a few rows per record)
    "sqlite": "SELECT key, record_id FROM mpi_keys WHERE record_id IN ({ids}) AND +key IN ({keys})",
    "postgresql": "SELECT key, record_id FROM mpi_keys WHERE record_id = ANY(%s::text[]) AND key = ANY(%s::text[])",
}
_IN_BOTH_SQL = (
    "SELECT k1.record_id, l.person_id, r.version FROM mpi_keys k1 JOIN mpi_keys k2 ON k2.key = {p} AND k2.record_id = k1.record_id"
    " JOIN mpi_links l ON l.record_id = k1.record_id JOIN records r ON r.id = k1.record_id WHERE k1.key = {p}"
)
_RECORD_DATA_SQL = "SELECT id, version, data FROM records WHERE id {ids}"
_PERSONS_SQL = (
    "SELECT id, data, provenance, active, merged_into, version, created_at, updated_at FROM mpi_persons WHERE id {ids}"
)
_MEMBERS_SQL = (  # in record id order (sorted here: an ORDER BY made PostgreSQL walk every link in that order)
    "SELECT l.record_id, l.person_id, r.source_system, r.source_value, r.feed, r.active, r.data, r.updated_at,"
    " r.deleted FROM mpi_links l JOIN records r ON r.id = l.record_id WHERE l.person_id {ids}"
)
_IDENTIFIERS_SQL = (  # in record id order, sorted here (as above)
    "SELECT l.record_id, l.person_id, r.source_system, r.source_value FROM mpi_links l JOIN records r"
    " ON r.id = l.record_id WHERE l.person_id {ids} AND NOT r.deleted"
)
_PENDING_SQL = (
    "SELECT id, source_system, source_value, survivor_record_id FROM mpi_pending_merges"
    " WHERE source_value {ids} ORDER BY id"
)


def _fetch_together(conn: Connection, queries: Sequence[tuple[str, list[str]]]) -> list[list[tuple[Any, ...]]]:
    """Rows of several independent `{ids}` look-ups. PostgreSQL gets them in one round trip (psycopg's
    pipeline mode: all sent, then all read); SQLite runs them one after the other (no round trips)."""
    if conn.dialect.name != "postgresql" or len(queries) < 2:
        return [fetch_in(conn, template, values) for template, values in queries]
    dbapi = conn.connection.dbapi_connection
    cursors = [dbapi.cursor() for _ in queries]  # type: ignore[union-attr]
    try:
        with dbapi.pipeline():  # type: ignore[union-attr]
            for cursor, (template, values) in zip(cursors, queries):
                cursor.execute(in_sql(template, "postgresql", len(values)), (values,), prepare=False)
        return [cursor.fetchall() for cursor in cursors]
    finally:
        for cursor in cursors:
            cursor.close()


def _population(rows: Sequence[tuple[Any, ...]]) -> int:
    return int(rows[0][0]) if rows else 0


def _chunks(values: Collection[str]) -> Iterator[list[str]]:
    values = list(values)
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


class MpiRepository:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @contextmanager
    def pipelined(self, enabled: bool = True) -> Iterator[None]:
        """PostgreSQL: the writes run inside are sent without waiting for each one's answer (psycopg's
        pipeline mode); a read through `fetch_in` waits for all before it, the block's end for the rest.
        Only for INSERT/UPDATE/DELETE and `fetch_in` reads: a SQLAlchemy SELECT would see no rows, and a
        COPY (`insert_many` of COPY_FROM rows or more) is refused. SQLite: no round trips, no change."""
        if not enabled or self.conn.dialect.name != "postgresql":
            yield
            return
        with self.conn.connection.dbapi_connection.pipeline():  # type: ignore[union-attr]
            yield

    # --- matching ------------------------------------------------------------------------------

    def candidates(self, wanted: Collection[str]) -> dict[str, list[Candidate]]:
        """Key → stored (linked) records under it, with their person and version: one query per 500 keys.
        No data: a record under several keys is read once, by `record_data`, and only when the caller
        has not already normalised that version."""
        return self.candidates_and_pending_merges(wanted, ())[0]

    def candidates_and_pending_merges(
        self, wanted: Collection[str], sources: Collection[tuple[str, str]], sizes_of: Collection[str] = (),
    ) -> tuple[dict[str, list[Candidate]], dict[tuple[str, str], tuple[int, str]], dict[str, int], int]:
        """`candidates(wanted)`, the merges waiting for these source records ((system, value) → (pending
        merge id, survivor record id), for `take_pending_merges`), how many records the `sizes_of` keys
        name (large blocks, not read: an index-only count) and the index's size (`population`) — on
        PostgreSQL in one round trip: the match step needs all four for every batch, online for every record."""
        key_chunks, value_chunks = list(_chunks(wanted)), list(_chunks({value for _, value in sources}))
        size_chunks = list(_chunks(sizes_of))
        candidates_sql = _CANDIDATES_PG_SQL if self.conn.dialect.name == "postgresql" else _CANDIDATES_SQL
        results = _fetch_together(
            self.conn,
            [(candidates_sql, c) for c in key_chunks] + [(_PENDING_SQL, c) for c in value_chunks]
            + [(_KEY_SIZES_SQL, c) for c in size_chunks] + [(_POPULATION_SQL, ["records"])],
        )
        found: dict[str, list[Candidate]] = {}
        for rows in results[: len(key_chunks)]:
            for key, record_id, person_id, version in rows:
                if person_id is not None and version is not None:  # as the join: linked records only
                    found.setdefault(key, []).append(Candidate(record_id, person_id, version))
        waiting = _waiting(results[len(key_chunks) : len(key_chunks) + len(value_chunks)], sources)
        sizes = {key: int(n) for rows in results[len(key_chunks) + len(value_chunks) : -1] for key, n in rows}
        return found, waiting, sizes, _population(results[-1])

    def plain_plans(self) -> None:
        """PostgreSQL, for this transaction: no JIT compilation, no parallel workers. A large batch's
        look-ups are estimated costly enough for both (~10 ms of compiling, a few ms of starting workers
        per statement) though each is index look-ups (measured: candidates of a 1,000-row batch 130 → 40 ms)."""
        if self.conn.dialect.name == "postgresql":
            self.conn.exec_driver_sql("SET LOCAL jit = off; SET LOCAL max_parallel_workers_per_gather = 0")

    def in_keys(self, wanted: Collection[str], record_ids: Collection[str]) -> list[tuple[str, str]]:
        """(key, record id) of these records under these keys: which records of other, smaller blocks are
        also in a large block (found by the record id index: a few rows per record, not the block)."""
        if not wanted or not record_ids:
            return []
        found: list[tuple[str, str]] = []
        for keys_chunk in _chunks(wanted):
            for ids_chunk in _chunks(record_ids):
                if self.conn.dialect.name == "postgresql":
                    found += fetch(self.conn, _IN_KEYS_SQL["postgresql"], (ids_chunk, keys_chunk))
                else:
                    sql = _IN_KEYS_SQL["sqlite"].format(ids=", ".join("?" * len(ids_chunk)),
                                                        keys=", ".join("?" * len(keys_chunk)))
                    found += fetch(self.conn, sql, ids_chunk + keys_chunk)
        return found

    def in_both(self, a: str, b: str) -> list[Candidate]:
        """The records under both keys (two large blocks of one incoming record: scanned in the index, not read)."""
        marker = "%s" if self.conn.dialect.name == "postgresql" else "?"
        return [Candidate(*row) for row in fetch(self.conn, _IN_BOTH_SQL.format(p=marker), (b, a))]

    def key_counts(self, wanted: Collection[str]) -> dict[str, int]:
        """How many records each key names (index-only counts), to leave out keys too common to block on."""
        found: dict[str, int] = {}
        for chunk in _chunks(wanted):
            found.update((key, int(n)) for key, n in fetch_in(self.conn, _KEY_SIZES_SQL, chunk))
        return found

    def record_data(self, record_ids: Collection[str]) -> dict[str, tuple[int, dict[str, Any]]]:
        """Record id → (version, data)."""
        found: dict[str, tuple[int, dict[str, Any]]] = {}
        for chunk in _chunks(record_ids):
            for record_id, version, data in fetch_in(self.conn, _RECORD_DATA_SQL, chunk):
                found[record_id] = (version, json_value(data))
        return found

    def replace_keys(self, record_ids: Collection[str], entries: Sequence[tuple[str, str]]) -> None:
        """The records' blocking keys become `entries` (key, record_id)."""
        for chunk in _chunks(record_ids):
            self.conn.execute(_DELETE_KEYS, {"ids": chunk})
        rows = [(k[:200], r) for k, r in dict.fromkeys(entries)]  # plain strings: handed to the driver as they are
        insert_many(self.conn, keys, rows, ("key", "record_id"))

    # --- links ---------------------------------------------------------------------------------

    def links(self, record_ids: Collection[str]) -> dict[str, LinkRow]:
        found: dict[str, LinkRow] = {}
        for chunk in _chunks(record_ids):
            for r in self.conn.execute(_LINKS, {"ids": chunk}):
                found[r.record_id] = LinkRow(*r)  # the table's column order is the dataclass's
        return found

    def write_links(self, inserted: Sequence[LinkRow], updated: Sequence[LinkRow]) -> None:
        insert_many(self.conn, links, [_link_values(link) for link in inserted])
        update_many(self.conn, links, "record_id", [_link_values(link) for link in updated])
        if inserted:  # each record is inserted into the links once: they count the index's records
            placeholder = "%s" if self.conn.dialect.name == "postgresql" else "?"
            self.conn.exec_driver_sql(_ADD_TO_POPULATION_SQL.format(p=placeholder), (len(inserted),))

    def population(self) -> int:
        """Source records linked (kept by `write_links`)."""
        return _population(fetch_in(self.conn, _POPULATION_SQL, ["records"]))

    def members(self, person_ids: Collection[str]) -> dict[str, list[Member]]:
        """Person → its source records (current data), for survivorship and the API."""
        found: dict[str, list[Member]] = {p: [] for p in person_ids}
        for chunk in _chunks(person_ids):
            for r in self.conn.execute(_MEMBERS, {"ids": chunk}):
                found[r.person_id].append(Member(*r))
        return found

    def persons_and_members(self, person_ids: Collection[str]) -> tuple[dict[str, PersonRow], dict[str, list[Member]]]:
        """`persons` and `members` at once, through the DB-API cursor: the match step rebuilds the golden
        record of every person it touched, online for every record."""
        found: dict[str, PersonRow] = {}
        members: dict[str, list[Member]] = {p: [] for p in person_ids}
        for chunk in _chunks(person_ids):
            person_rows, member_rows = _fetch_together(self.conn, [(_PERSONS_SQL, chunk), (_MEMBERS_SQL, chunk)])
            for pid, data, provenance, active, merged_into, version, created, updated in person_rows:
                found[pid] = PersonRow(pid, json_value(data), json_value(provenance), bool(active), merged_into, version,
                                       datetime_value(created), datetime_value(updated))
            for rid, pid, system, value, feed, active, data, updated, deleted in sorted(member_rows, key=lambda r: r[0]):
                members[pid].append(Member(rid, pid, system, value, feed, bool(active), json_value(data), datetime_value(updated),
                                           bool(deleted)))
        return found, members

    def identifiers(self, person_ids: Collection[str]) -> dict[str, list[tuple[str, str]]]:
        """Person → the (system, value) of its source records that are not deleted, in record order:
        what outbound messages carry in PID-3 (routing needs these for every batch, not the records' data)."""
        found: dict[str, list[tuple[str, str]]] = {p: [] for p in person_ids}
        for chunk in _chunks(person_ids):
            for _, person_id, system, value in sorted(fetch_in(self.conn, _IDENTIFIERS_SQL, chunk), key=lambda r: r[0]):
                found[person_id].append((system, value))
        return found

    def member_counts(self, person_ids: Collection[str]) -> dict[str, int]:
        found = dict.fromkeys(person_ids, 0)
        for chunk in _chunks(person_ids):
            found.update(dict(self.conn.execute(_MEMBER_COUNTS, {"ids": chunk}).all()))
        return found

    def record_ids_of(self, person_id: str) -> list[str]:
        query = select(links.c.record_id).where(links.c.person_id == person_id).order_by(links.c.record_id)
        return list(self.conn.execute(query).scalars())

    def claim_writer(self) -> None:
        """SQLite: take the write lock now, so that what this transaction reads stays true until it
        commits (a deferred transaction would read, then fail or overwrite on its first write)."""
        if self.conn.dialect.name == "sqlite":
            self.conn.execute(update(persons).where(persons.c.id.is_(None)).values(version=persons.c.version))

    def source_identifiers(self, record_ids: Collection[str]) -> dict[str, tuple[str, str]]:
        """Record id → its source (system, value)."""
        found: dict[str, tuple[str, str]] = {}
        query = select(records.c.id, records.c.source_system, records.c.source_value)
        for chunk in _chunks(record_ids):
            for r in self.conn.execute(query.where(records.c.id.in_(chunk))):
                found[r.id] = (r.source_system, r.source_value)
        return found

    def export_rows(self, batch: int = 5000) -> Iterator[tuple[str, str, str]]:
        """(enterprise id, system, value) of every linked source record, by person: keyset-paged so
        that memory stays flat over millions of rows."""
        after = ("", "")
        query = (
            select(links.c.person_id, links.c.record_id, records.c.source_system, records.c.source_value)
            .join(records, records.c.id == links.c.record_id)
            .order_by(links.c.person_id, links.c.record_id)
            .limit(batch)
        )
        while True:
            condition = or_(
                links.c.person_id > after[0], and_(links.c.person_id == after[0], links.c.record_id > after[1])
            )
            rows = self.conn.execute(query.where(condition)).all()
            for r in rows:
                yield r.person_id, r.source_system, r.source_value
            if len(rows) < batch:
                return
            after = (rows[-1].person_id, rows[-1].record_id)

    def patient_records_after(self, after: str, limit: int) -> list[str]:
        """Ids of patient records after `after` in id order (resumable re-matching)."""
        query = (
            select(records.c.id).where(records.c.kind == "patient", records.c.id > after, records.c.deleted == false())
            .order_by(records.c.id).limit(limit)
        )
        return list(self.conn.execute(query).scalars())

    def known_patient_systems(self, systems: Collection[str]) -> set[str]:
        """The identifier systems among `systems` that name at least one stored patient record (the
        identity domains the index knows, for IHE PIXm's "not recognized" answers). One probe each;
        a known system stops at its first record."""
        found = set()
        for system in set(systems):
            probe = select(records.c.id).where(records.c.kind == "patient", records.c.source_system == system).limit(1)
            if self.conn.execute(probe).first() is not None:
                found.add(system)
        return found

    def count_patient_records(self) -> int:
        return int(self.conn.execute(select(func.count()).where(records.c.kind == "patient")).scalar_one())

    def set_record_active(self, record_id: str, active: bool) -> None:
        """The merged-away record of an A40 is kept, inactive (its version history is the records table's)."""
        self.conn.execute(update(records).where(records.c.id == record_id).values(active=active))

    # --- persons -------------------------------------------------------------------------------

    def persons(self, person_ids: Collection[str]) -> dict[str, PersonRow]:
        found: dict[str, PersonRow] = {}
        for chunk in _chunks(person_ids):
            for r in self.conn.execute(_PERSONS, {"ids": chunk}):
                found[r.id] = PersonRow(*r)
        return found

    def write_persons(self, inserted: Sequence[PersonRow], updated: Sequence[PersonRow]) -> None:
        insert_many(self.conn, persons, [_person_values(p) for p in inserted])
        update_many(self.conn, persons, "id", [_person_values(p) for p in updated])

    def resolve(self, person_id: str) -> str:
        """Follow `merged_into` to the person that holds the records now."""
        seen = {person_id}
        while True:
            nxt = self.conn.execute(select(persons.c.merged_into).where(persons.c.id == person_id)).scalar()
            if not nxt or nxt in seen:
                return person_id
            seen.add(nxt)
            person_id = nxt

    # --- audit, reviews, decisions, pending merges ------------------------------------------------

    def add_events(self, events: Sequence[dict[str, Any]]) -> None:
        insert_many(self.conn, link_events, _uniform(events, link_events))

    def events_for(self, record_id: str) -> list[dict[str, Any]]:
        query = select(link_events).where(link_events.c.record_id == record_id).order_by(link_events.c.id)
        return [dict(r._mapping) for r in self.conn.execute(query)]

    def add_reviews(self, rows: Sequence[dict[str, Any]]) -> None:
        insert_many(self.conn, reviews, _uniform(rows, reviews))

    def reviews(self, status: str | None, limit: int, after: int = 0) -> list[dict[str, Any]]:
        query = select(reviews).where(reviews.c.id > after).order_by(reviews.c.id).limit(limit)
        if status:
            query = query.where(reviews.c.status == status)
        return [dict(r._mapping) for r in self.conn.execute(query)]

    def open_review_records(self, record_ids: Collection[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(record_ids):
            query = select(reviews.c.record_id).where(reviews.c.record_id.in_(chunk), reviews.c.status == "open")
            found.update(self.conn.execute(query).scalars())
        return found

    def resolve_reviews(self, record_ids: Collection[str], actor: str, at: datetime, status: str = "resolved") -> None:
        for chunk in _chunks(record_ids):
            self.conn.execute(
                update(reviews).where(reviews.c.record_id.in_(chunk), reviews.c.status == "open")
                .values(status=status, resolved_at=at, resolved_by=actor[:100])
            )

    def add_decision(self, kind: str, record_id: str, actor: str, at: datetime, *, other_record_id: str | None = None,
                     person_id: str | None = None) -> None:
        self.conn.execute(
            decisions.insert().values(kind=kind, record_id=record_id, other_record_id=other_record_id,
                                      person_id=person_id, actor=actor[:100], at=at)
        )

    def drop_pins(self, record_ids: Collection[str]) -> None:
        for chunk in _chunks(record_ids):
            self.conn.execute(delete(decisions).where(decisions.c.kind == "pin", decisions.c.record_id.in_(chunk)))

    def pins(self, record_ids: Collection[str]) -> dict[str, str]:
        """Record → the person a steward pinned it to."""
        found: dict[str, str] = {}
        for chunk in _chunks(record_ids):
            query = select(decisions.c.record_id, decisions.c.person_id).where(
                decisions.c.kind == "pin", decisions.c.record_id.in_(chunk)
            ).order_by(decisions.c.id)
            found.update({r.record_id: r.person_id for r in self.conn.execute(query)})
        return found

    def not_matches(self, record_ids: Collection[str]) -> dict[str, set[str]]:
        """Record → the records a steward declared to be someone else (both directions)."""
        found: dict[str, set[str]] = {}
        pair = select(decisions.c.record_id, decisions.c.other_record_id).where(decisions.c.kind == "not_match")
        for chunk in _chunks(record_ids):
            # two queries, not one with OR: each column's index serves its own (an OR makes SQLite scan)
            for column in (decisions.c.record_id, decisions.c.other_record_id):
                for a, b in self.conn.execute(pair.where(column.in_(chunk))):
                    found.setdefault(a, set()).add(b)
                    found.setdefault(b, set()).add(a)
        return found

    def add_pending_merge(self, system: str, value: str, survivor: str, message_id: int | None, at: datetime) -> None:
        self.conn.execute(pending_merges.insert().values(
            source_system=system[:300], source_value=value[:300], survivor_record_id=survivor,
            message_id=message_id, at=at,
        ))

    def take_pending_merges(self, found: dict[tuple[str, str], tuple[int, str]]) -> dict[tuple[str, str], str]:
        """(system, value) → survivor record id, of the merges `candidates_and_pending_merges` found waiting
        for these records; removed once taken."""
        ids = [i for i, _ in found.values()]
        if ids:
            self.conn.execute(delete(pending_merges).where(pending_merges.c.id.in_(ids)))
        return {k: survivor for k, (_, survivor) in found.items()}


def _waiting(
    results: Sequence[Sequence[tuple[Any, ...]]], sources: Collection[tuple[str, str]],
) -> dict[tuple[str, str], tuple[int, str]]:
    """Pending-merge rows (by value, oldest first) → (system, value) → (id, survivor): the latest one wins."""
    wanted = set(sources)
    found: dict[tuple[str, str], tuple[int, str]] = {}
    for rows in results:
        for merge_id, system, value, survivor in rows:
            if (system, value) in wanted:
                found[(system, value)] = (merge_id, survivor)
    return found


def _link_values(link: LinkRow) -> dict[str, Any]:
    return {
        "record_id": link.record_id, "person_id": link.person_id, "how": link.how, "score": link.score,
        "model_version": link.model_version, "replaced_by": link.replaced_by, "updated_at": link.updated_at,
    }


def _person_values(person: PersonRow) -> dict[str, Any]:
    return {
        "id": person.id, "data": person.data, "provenance": person.provenance, "active": person.active,
        "merged_into": person.merged_into, "version": person.version, "created_at": person.created_at,
        "updated_at": person.updated_at,
    }


def _uniform(rows: Sequence[dict[str, Any]], table: Table) -> list[dict[str, Any]]:
    """executemany needs every row to name the same columns."""
    columns = [c.name for c in table.columns if not c.primary_key or c.name != "id"]
    return [{c: row.get(c) for c in columns} for row in rows]
