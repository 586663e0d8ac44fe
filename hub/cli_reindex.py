"""`hub reindex`: rebuild the search index (`record_index`) of every stored record from its stored data.

Why: the index rules (`hub.records.record_index_entries`) grow — `:exact` rows for names, say — and a
record indexed by an older version of them lacks the newer rows until it is written again. This
computes each record's rows exactly as processing does (the canonical data's entries, the extra
ones of a resource written over FHIR, the record's patient) and rewrites the rows of the records
whose stored rows differ. Idempotent: a second run finds nothing to rewrite.

In batches of records (by id), one transaction each, so it may run beside a serving hub: a batch's
records are locked while their rows are rebuilt (PostgreSQL: row locks, skipping records a writer
holds — processing reindexes what it writes — and counted as busy; SQLite: its single write lock,
the writer waits). Output is counts only, never patient values.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import click
from sqlalchemy import Connection, Engine, delete, select

from hub.model import MODELS_BY_KIND
from hub.records import IndexRow, index_rows
from hub.settings import Settings
from hub.store.driver import insert_many
from hub.store.tables import record_index, records
from hub.store.uow import RecordRow
from mappings.fhir.resources import from_fhir


@dataclass
class Counts:
    checked: int = 0
    rewritten: int = 0
    rows: int = 0
    busy: int = 0
    unreadable: int = 0

    def summary(self) -> str:
        return (f"reindex: {self.checked} records checked, {self.rewritten} rewritten ({self.rows} index rows), "
                f"{self.busy} busy, {self.unreadable} unreadable")


def stored_index_rows(row: RecordRow) -> set[IndexRow]:
    """The index rows processing would write for this record as stored. Raises (ValueError,
    pydantic's ValidationError …) for data no model reads."""
    record = MODELS_BY_KIND[row.kind].model_validate(row.data)
    # What the FHIR door adds beside the canonical entries: identifiers, categories.
    extra = from_fhir(row.resource)[1] if row.resource is not None and row.kind != "patient" else []
    return set(index_rows(row.id, row.kind, record, extra))


def reindex(engine: Engine, batch_size: int = 1000) -> Counts:
    counts = Counts()
    for ids in _id_batches(engine, batch_size):
        with engine.connect() as conn, conn.begin():
            _reindex_batch(conn, ids, counts)
    return counts


def _id_batches(engine: Engine, size: int) -> Iterator[list[str]]:
    """Record ids in order, `size` at a time (keyset paging: each batch is an index range scan)."""
    last = ""
    while True:
        with engine.connect() as conn:
            ids = list(conn.execute(
                select(records.c.id).where(records.c.id > last).order_by(records.c.id).limit(size)
            ).scalars())
        if not ids:
            return
        yield ids
        last = ids[-1]


def _reindex_batch(conn: Connection, ids: list[str], counts: Counts) -> None:
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("DELETE FROM record_index WHERE 0")  # takes the write lock before reading
    locked = conn.execute(
        select(records).where(records.c.id.in_(ids)).with_for_update(skip_locked=True)
    ).all()
    counts.checked += len(locked)
    counts.busy += len(ids) - len(locked)
    wanted: dict[str, set[IndexRow]] = {}
    for r in locked:
        try:
            wanted[r.id] = stored_index_rows(RecordRow(**r._mapping))
        except Exception:  # noqa: BLE001 — one unreadable record must not stop the run; its rows stay
            counts.unreadable += 1
    stored: dict[str, set[IndexRow]] = {record_id: set() for record_id in wanted}
    query = select(record_index).where(record_index.c.record_id.in_(list(wanted)))
    for r in conn.execute(query):
        stored[r.record_id].add((r.record_id, r.param, r.value, r.kind))
    changed = [record_id for record_id, rows in wanted.items() if rows != stored[record_id]]
    if not changed:
        return
    conn.execute(delete(record_index).where(record_index.c.record_id.in_(changed)))
    new_rows = sorted(row for record_id in changed for row in wanted[record_id])
    insert_many(conn, record_index, new_rows, columns=("record_id", "param", "value", "kind"))
    counts.rewritten += len(changed)
    counts.rows += len(new_rows)


@click.command("reindex")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 10_000),
              help="records per transaction")
@click.option("--database-url", help="HUB_DATABASE_URL")
def reindex_command(batch_size: int, database_url: str | None) -> None:
    """Rebuild the search index of every stored record from its stored data (idempotent)."""
    from hub.store.engine import make_engine
    from hub.store.migrate import upgrade

    settings = Settings(**({"database_url": database_url} if database_url else {}))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database)
    try:
        upgrade(engine)
        counts = reindex(engine, batch_size)
    finally:
        engine.dispose()
    click.echo(counts.summary())
