"""The driver-level look-ups (the match step's; records by source, which processing and routing use) give
what the SQLAlchemy ones give, on SQLite and PostgreSQL.

The match step reads candidates, pending A40 merges, persons and their records through the DB-API
cursor (and, on PostgreSQL, several at once or inside a pipeline of writes); the steward actions and
the API read the same tables through SQLAlchemy. Both must see the same rows with the same types,
or golden records and decisions would differ with the caller. Fictional data only.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy import Engine

from hub.store.mpi import LinkRow, PersonRow
from hub.store.uow import RecordChanges, RecordRow, UnitOfWork
from tests.conftest import unique

AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _record(record_id: str, value: str, *, active: bool = True) -> RecordRow:
    data = {"names": [{"family": "Testperson", "given": ["Alma"]}], "birth_date": "1980-04-02"}
    return RecordRow(record_id, "patient", "urn:oid:2.999.1", value, None, 1, active, data, "adt", None, AT, AT)


def test_persons_and_members_equal_persons_and_members_read_apart(db: Engine) -> None:
    person, emptied = unique("P"), unique("P")
    first, second = unique("R"), unique("R")
    with UnitOfWork(db) as uow:
        uow.records.write(RecordChanges(inserted=[_record(first, unique("V")), _record(second, unique("V"), active=False)]))
        uow.mpi.write_links([LinkRow(r, person, "auto", 14.5, "v1", None, AT) for r in (first, second)], [])
        uow.mpi.write_persons([PersonRow(person, {"gender": "female"}, {"gender": first}, True, None, 3, AT, AT),
                               PersonRow(emptied, {}, {}, False, person, 2, AT, AT)], [])
        uow.commit()
    with UnitOfWork(db) as uow:
        wanted = [person, emptied, unique("P")]  # one with records, one without, one unknown
        found, members = uow.mpi.persons_and_members(wanted)
        assert (found, members) == (uow.mpi.persons(wanted), uow.mpi.members(wanted))
        assert {m.record_id: m.active for m in members[person]} == {first: True, second: False}
        assert isinstance(found[person].active, bool) and found[person].created_at.replace(tzinfo=UTC) == AT


def test_records_by_source_equal_records_read_by_id(db: Engine) -> None:
    """Same values and types (aware timestamps, booleans, parsed JSON): survivorship sorts members by
    `updated_at`, and an aware and a naive timestamp cannot be compared."""
    record, value = unique("R"), unique("V")
    with UnitOfWork(db) as uow:
        uow.records.write(RecordChanges(inserted=[_record(record, value, active=False)]))
        uow.commit()
    with UnitOfWork(db) as uow:
        key = ("patient", "urn:oid:2.999.1", value)
        found = uow.records.by_sources([key, ("patient", "urn:oid:2.999.1", unique("V"))])
        assert found == {key: uow.records.get(record)}
        assert found[key].updated_at == AT and found[key].updated_at.tzinfo is not None and found[key].active is False
        assert uow.records.ids_by_sources([key]) == {key: record}


def test_candidates_and_pending_merges_in_one_read(db: Engine) -> None:
    record, person, key, value = unique("R"), unique("P"), unique("fam_ny:TEST|"), unique("V")
    with UnitOfWork(db) as uow:
        uow.records.write(RecordChanges(inserted=[_record(record, unique("V"))]))
        uow.mpi.write_links([LinkRow(record, person, "auto", None, None, None, AT)], [])
        uow.mpi.replace_keys(set(), [(key, record)])
        uow.mpi.add_pending_merge("urn:oid:2.999.1", value, record, None, AT)
        uow.mpi.add_pending_merge("urn:oid:2.999.2", value, record, None, AT)  # same value, another system
        uow.commit()
    with UnitOfWork(db) as uow:
        candidates, waiting, sizes, population = uow.mpi.candidates_and_pending_merges(
            [key, unique("nid:")], [("urn:oid:2.999.1", value)], [key, unique("nid:")]
        )
        assert candidates == uow.mpi.candidates([key])
        assert sizes == {key: 1}  # a key naming no record is left out
        assert population == uow.mpi.population() >= 1  # read in the same round trip
        assert [c.record_id for c in candidates[key]] == [record]
        assert list(waiting) == [("urn:oid:2.999.1", value)]
        assert uow.mpi.take_pending_merges(waiting) == {("urn:oid:2.999.1", value): record}
        again = uow.mpi.candidates_and_pending_merges([], [("urn:oid:2.999.1", value), ("urn:oid:2.999.2", value)])
        assert list(again[1]) == [("urn:oid:2.999.2", value)]  # the taken one is gone, the other system's stays


def test_writes_in_a_pipeline_are_seen_by_the_reads_after_them(db: Engine) -> None:
    record, person, key = unique("R"), unique("P"), unique("phone:555")
    with UnitOfWork(db) as uow:
        uow.records.write(RecordChanges(inserted=[_record(record, unique("V"))]))
        with uow.mpi.pipelined():
            uow.mpi.write_links([LinkRow(record, person, "new", None, None, None, AT)], [])
            uow.mpi.replace_keys(set(), [(key, record)])
            assert [m.record_id for m in uow.mpi.persons_and_members([person])[1][person]] == [record]
            uow.mpi.write_persons([PersonRow(person, {}, {}, True, None, 1, AT, AT)], [])
        assert uow.mpi.candidates_and_pending_merges([key], [])[0][key][0].person_id == person
        assert uow.mpi.persons([person])[person].version == 1


def test_identifiers_are_the_members_not_deleted_in_record_order(db: Engine) -> None:
    """Routing puts a person's identifiers in every outbound PID-3 from `identifiers`, without reading the
    records' data: the same identifiers, in the same order, as the members the steward and API read."""
    person = unique("P")
    ids = sorted(unique("R") for _ in range(3))
    rows = [_record(ids[0], unique("V")), replace(_record(ids[1], unique("V")), deleted=True), _record(ids[2], unique("V"))]
    with UnitOfWork(db) as uow:
        uow.records.write(RecordChanges(inserted=rows))
        uow.mpi.write_links([LinkRow(r, person, "auto", 14.5, "v1", None, AT) for r in ids], [])
        uow.commit()
    with UnitOfWork(db) as uow:
        members = uow.mpi.members([person])[person]
        expected = [(m.source_system, m.source_value) for m in members if not m.deleted]
        unknown = unique("P")
        found = uow.mpi.identifiers([person, unknown])
        assert found == {person: expected, unknown: []}
        assert [v for _, v in found[person]] == [rows[0].source_value, rows[2].source_value]


def test_bulk_written_strings_read_back_as_written(db: Engine) -> None:
    """Blocking keys and search-index values are bulk-written (on PostgreSQL by COPY):
    backslashes, tabs, line breaks and non-ASCII letters come back unchanged."""
    from sqlalchemy import select

    from hub.store.driver import COPY_FROM, insert_many
    from hub.store.tables import record_index

    record = unique("R")
    values = ["C:\\temp\\x", "tab\there", "two\nlines", "cr\rlf\r\n", "Zoë Ångström", "\\N", "plain", ""]
    rows = [(record, f"p{i}", values[i % len(values)], "patient") for i in range(COPY_FROM + 5)]
    with UnitOfWork(db) as uow:
        insert_many(uow.conn, record_index, rows, columns=("record_id", "param", "value", "kind"))
        uow.commit()
    with UnitOfWork(db) as uow:
        query = select(record_index.c.record_id, record_index.c.param, record_index.c.value, record_index.c.kind)
        found = {tuple(r) for r in uow.conn.execute(query.where(record_index.c.record_id == record))}
    assert found == set(rows)


def test_rows_written_over_in_bulk_keep_their_types_and_the_last_write_wins(db: Engine) -> None:
    """Links and persons are updated in bulk (on PostgreSQL one statement): floats, timestamps, JSON and
    NULLs come back as written, and a row named twice holds the later of its two writes."""
    later = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    person, first, second = unique("P"), unique("R"), unique("R")
    with UnitOfWork(db) as uow:
        uow.mpi.write_links([LinkRow(r, person, "auto", 14.5, "v1", None, AT) for r in (first, second)], [])
        uow.mpi.write_persons([PersonRow(person, {"gender": "female"}, {"gender": first}, True, None, 1, AT, AT)], [])
        uow.commit()
    moved = [
        LinkRow(first, unique("P"), "review", 3.25, "v2", second, later),
        LinkRow(second, person, "manual", None, None, None, later),
        LinkRow(first, person, "merge", -1.5, "v3", second, later),  # the same record again: this one stays
    ]
    with UnitOfWork(db) as uow:
        uow.mpi.write_links([], moved)
        uow.mpi.write_persons([], [PersonRow(person, {"gender": "female", "birth_date": "1980-04-02"},
                                             {"gender": second, "birth_date": first}, False, None, 2, AT, later)])
        uow.commit()
    with UnitOfWork(db) as uow:
        assert uow.mpi.links([first, second]) == {first: moved[2], second: moved[1]}
        (stored,) = uow.mpi.persons([person]).values()
    assert (stored.data, stored.provenance, stored.active, stored.version, stored.updated_at) == (
        {"gender": "female", "birth_date": "1980-04-02"}, {"gender": second, "birth_date": first}, False, 2, later
    )
