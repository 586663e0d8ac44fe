"""Engines for the two supported databases, set up for durability before speed."""

from __future__ import annotations

from psycopg.types.json import set_json_dumps, set_json_loads
from sqlalchemy import Engine, create_engine, event

from hub import jsoncodec

set_json_dumps(jsoncodec.dumps)  # psycopg's JSON/JSONB adaptation, for SQLAlchemy and driver-level statements alike
set_json_loads(jsoncodec.loads)


def make_engine(url: str) -> Engine:
    codec = {"json_serializer": jsoncodec.dumps_text, "json_deserializer": jsoncodec.loads}
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **codec)
        event.listen(engine, "connect", _sqlite_pragmas)
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
