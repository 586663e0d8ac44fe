"""Engines for the two supported databases, set up for durability before speed."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from psycopg.types.json import set_json_dumps, set_json_loads
from sqlalchemy import Engine, create_engine, event

from hub import jsoncodec

set_json_dumps(jsoncodec.dumps)  # psycopg's JSON/JSONB adaptation, for SQLAlchemy and driver-level statements alike
set_json_loads(jsoncodec.loads)


def make_engine(url: str, *, bulk_load: bool = False) -> Engine:
    """`bulk_load` (`hub import-csv`): on SQLite, the WAL is checkpointed rarely (see BULK_CHECKPOINT_PAGES)."""
    codec = {"json_serializer": jsoncodec.dumps_text, "json_deserializer": jsoncodec.loads}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **codec)
        event.listen(engine, "connect", _sqlite_pragmas)
        if bulk_load:
            event.listen(engine, "connect", _bulk_pragmas)
        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True, **codec)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets FHIR reads run beside the writer; synchronous=FULL makes a commit survive
    # power loss, which is what "stored before ACK" promises.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    # The search index is written in value order, not insertion order: with SQLite's default 2 MB
    # page cache a bulk load evicts and re-reads index pages for nearly every row it adds.
    cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB, taken as pages are used (it counts in peak RSS)
    cursor.close()


BULK_CHECKPOINT_PAGES = 100_000
"""WAL pages between checkpoints in a bulk load (~400 MB; SQLite's default is 1,000). A load's commits
each write a few thousand pages, mostly random leaves of the blocking-key and source-key B-trees; checkpointed
every ~4 MB, the same pages were copied into the database again and again. Measured with the WITHOUT
ROWID tables of migration 0006, old and new imports side by side (docs/benchmarks.md, seventh session):
1,000,000 rows 763 s → 726 s, 40 GB → 30 GB written."""


def _bulk_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # checkpoint rarely, and shrink the WAL back once a checkpoint has emptied it (a hub serving beside
    # the load keeps the file open)
    dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={BULK_CHECKPOINT_PAGES}")
    dbapi_connection.execute("PRAGMA journal_size_limit=67108864")


class WriterTurns:
    """SQLite written by two processes (`hub serve` and its processing process): one writer at a time,
    taking turns on a file lock beside the database. SQLite serialises writers too, but a writer that
    finds the database locked sleeps in its busy handler (1, 2, 5 … 100 ms between tries) however soon
    the lock is free; a process blocked on a file lock is woken the moment it is released."""

    def __init__(self, engine: Engine) -> None:
        database = engine.url.database
        self._path = Path(f"{database}.writer-lock") if database and database != ":memory:" else None
        self._fd: int | None = None

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        if self._path is None:
            yield
            return
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # releases the GIL while it waits
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


def writer_turns(engine: Engine) -> WriterTurns | None:
    """The turns SQLite's writers take (None: PostgreSQL has row locks and the processing lock)."""
    return WriterTurns(engine) if engine.dialect.name == "sqlite" else None
