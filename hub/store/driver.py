"""Driver-level writes for the hot paths (the ACK path, bulk record writes).

SQLAlchemy Core spends tens of microseconds per row on parameter processing; on the paths
that run for every message we hand rows straight to the DB-API driver instead, converting
the two column types that need it exactly as SQLAlchemy would have stored them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from functools import cache, lru_cache
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import JSON, Connection, DateTime, Table
from sqlalchemy.dialects import postgresql

from hub import jsoncodec


def _identity(value: Any) -> Any:
    return value


@lru_cache(maxsize=64)  # a batch's rows share their timestamps (a CSV chunk: one for thousands of rows)
def _sqlite_datetime(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return value.isoformat(" ", "microseconds")  # SQLAlchemy's SQLite format (4-digit year, always µs), 4× faster than strftime


def _clip(length: int) -> Callable[[Any], Any]:
    # Senders do send 5 KB control ids, and PostgreSQL refuses over-long values.
    return lambda value: value[:length] if isinstance(value, str) and len(value) > length else value


@cache
def _converters(dialect: str, table: Table, columns: tuple[str, ...]) -> tuple[Callable[[Any], Any], ...]:
    """Per column, how to hand a Python value to the driver the way SQLAlchemy would store it."""
    out: list[Callable[[Any], Any]] = []
    for name in columns:
        kind = table.c[name].type
        if isinstance(kind, JSON):
            dump = jsoncodec.dumps_text if dialect == "sqlite" else Jsonb
            out.append(lambda v, dump=dump: None if v is None else dump(v))
        elif isinstance(kind, DateTime) and dialect == "sqlite":
            out.append(_sqlite_datetime)
        elif getattr(kind, "length", None):
            out.append(_clip(kind.length))
        else:
            out.append(_identity)
    return tuple(out)


def _params(dialect: str, table: Table, columns: tuple[str, ...], row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(convert(row[c]) for convert, c in zip(_converters(dialect, table, columns), columns))


@cache
def _insert_sql(dialect: str, table: Table, columns: tuple[str, ...], suffix: str, count: int = 1) -> str:
    """INSERT of `count` rows (PostgreSQL takes several in one statement; SQLite one, run as executemany)."""
    mark = "?" if dialect == "sqlite" else "%s"
    row = f"({', '.join([mark] * len(columns))})"
    return f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES {', '.join([row] * count)}{suffix}"


@cache
def _update_sql(dialect: str, table: Table, columns: tuple[str, ...], key: str) -> str:
    mark = "?" if dialect == "sqlite" else "%s"
    return f"UPDATE {table.name} SET {', '.join(f'{c} = {mark}' for c in columns)} WHERE {key} = {mark}"


def insert_returning_ids(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]], on_conflict: str,
) -> list[int | None]:
    """Insert rows in order; each one's id, or None where it hit the named unique column (ON CONFLICT DO
    NOTHING). PostgreSQL gets them as one multi-row INSERT: the ACK path's group commit waits on the
    server once, not once per message (psycopg's pipelined executemany measured 3x the CPU)."""
    if not rows:
        return []
    dialect, columns = conn.dialect.name, tuple(rows[0])
    params = [_params(dialect, table, columns, row) for row in rows]
    if dialect != "postgresql":
        sql = _insert_sql(dialect, table, columns, f" ON CONFLICT ({on_conflict}) DO NOTHING RETURNING id")
        return [conn.exec_driver_sql(sql, p).scalar() for p in params]
    unique_at = columns.index(on_conflict)
    ids: list[int | None] = []
    for start in range(0, len(params), _VALUES_ROWS):
        chunk = params[start : start + _VALUES_ROWS]
        suffix = f" ON CONFLICT ({on_conflict}) DO NOTHING RETURNING id, {on_conflict}"
        sql = _insert_sql(dialect, table, columns, suffix, len(chunk))
        returned = conn.exec_driver_sql(sql, tuple(value for row in chunk for value in row)).all()
        ids += _ids_in_row_order(chunk, unique_at, returned)
    return ids


_VALUES_ROWS = 1000
"""Rows per multi-row INSERT (PostgreSQL takes at most 65,535 parameters a statement)."""


def _ids_in_row_order(
    rows: Sequence[tuple[Any, ...]], unique_at: int, returned: Sequence[Any],
) -> list[int | None]:
    """The ids a multi-row INSERT … ON CONFLICT DO NOTHING RETURNING id, <unique column> gave, per row:
    a row with a unique value gets the id returned for that value (None if it conflicted, or repeated an
    earlier row's value); rows without one never conflict, and take the rest in the order PostgreSQL
    inserted (and returned) them: the VALUES order."""
    by_value = {value: row_id for row_id, value in returned if value is not None}
    unkeyed = iter([row_id for row_id, value in returned if value is None])
    ids: list[int | None] = []
    for row in rows:
        value = row[unique_at]
        ids.append(next(unkeyed) if value is None else by_value.pop(value, None))
    return ids


@cache
def in_sql(template: str, dialect: str, count: int) -> str:
    """`template` with its `{ids}` filled for `count` values: PostgreSQL takes one array parameter."""
    if dialect == "postgresql":
        return template.format(ids="= ANY(%s::text[])")  # str lists: psycopg leaves their type to the server
    return template.format(ids=f"IN ({', '.join('?' * count)})")


def fetch(conn: Connection, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Rows of one statement through the connection's own DB-API cursor (same transaction): SQLAlchemy
    spends ~100 µs a call compiling and processing. Values come back as the driver gives them: on SQLite,
    JSON is text, booleans are 0/1 and timestamps are text (see `json_value`, `datetime_value`).
    PostgreSQL's statements go unprepared: psycopg would prepare one after five runs, and the server may
    keep a generic plan made while the tables were small (measured: the MPI match step 3x slower in
    bench/mpi_link_cost.py --postgres)."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if conn.dialect.name == "postgresql":
            cursor.execute(sql, params, prepare=False)
        else:
            cursor.execute(sql, params)
        return cursor.fetchall()
    finally:
        cursor.close()


def fetch_in(conn: Connection, template: str, values: list[str]) -> list[tuple[Any, ...]]:
    """Rows of a `{ids}` look-up (`WHERE x {ids}`): one statement text for any number of values on
    PostgreSQL (an array), one per count on SQLite; SQLAlchemy would compile an expanding IN every time."""
    dialect = conn.dialect.name
    return fetch(conn, in_sql(template, dialect, len(values)), (values,) if dialect == "postgresql" else values)


def json_value(value: Any) -> Any:
    """A JSON column as SQLAlchemy would give it: PostgreSQL's driver already parsed it, SQLite's did not
    (read with orjson: the MPI match step reads the data of every candidate it has not normalised yet)."""
    return jsoncodec.loads(value) if isinstance(value, str) else value


def datetime_value(value: Any) -> Any:
    """A timestamp as SQLAlchemy would give it: SQLite's text parsed by `fromisoformat` (with the +00:00
    that `_sqlite_datetime` writes: aware, UTC), PostgreSQL's as its driver parsed it."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value


COPY_FROM = 50
"""From this many rows on, PostgreSQL gets them by COPY: a bulk load (a CSV chunk, its search index)
is one stream instead of one INSERT per row (measured 1.6-1.7x the rows/s for the record index)."""


def insert_many(
    conn: Connection, table: Table, rows: Sequence[dict[str, Any]] | Sequence[tuple[Any, ...]],
    columns: tuple[str, ...] | None = None,
) -> None:
    """Rows as dicts (converted per column), or, with `columns`, as tuples the driver takes as they are
    (the search index: hundreds of thousands of plain strings in a bulk load)."""
    if not rows:
        return
    dialect = conn.dialect.name
    if columns is None:
        columns = tuple(rows[0])
        params = [_params(dialect, table, columns, row) for row in rows]  # type: ignore[arg-type]
    else:
        params = rows  # type: ignore[assignment]
    if dialect == "postgresql" and len(params) >= COPY_FROM:
        cursor = conn.connection.driver_connection.cursor()  # the same connection: the same transaction
        with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for values in params:
                copy.write_row(values)
        return
    if dialect == "postgresql":  # one statement: psycopg pipelines an executemany, at ~2x the CPU a row
        conn.exec_driver_sql(_insert_sql(dialect, table, columns, "", len(params)), tuple(v for row in params for v in row))
        return
    conn.exec_driver_sql(_insert_sql(dialect, table, columns, ""), params)


def update_many(conn: Connection, table: Table, key: str, rows: Sequence[dict[str, Any]]) -> None:
    """Rows (each with `key` and the same columns) written over the stored ones; when a key comes twice,
    the last row wins (as one UPDATE after the other would have it)."""
    if not rows:
        return
    dialect = conn.dialect.name
    columns = tuple(c for c in rows[0] if c != key)
    if dialect != "postgresql":
        sql = _update_sql(dialect, table, columns, key)
        conn.exec_driver_sql(sql, [(*_params(dialect, table, columns, row), row[key]) for row in rows])
        return
    latest = list({row[key]: row for row in rows}.values())  # one statement updates a row once
    for start in range(0, len(latest), _VALUES_ROWS):
        chunk = latest[start : start + _VALUES_ROWS]
        sql = _update_values_sql(table, columns, key, len(chunk))
        conn.exec_driver_sql(sql, tuple(v for row in chunk for v in (*_params(dialect, table, columns, row), row[key])))


@cache
def _update_values_sql(table: Table, columns: tuple[str, ...], key: str, count: int) -> str:
    """PostgreSQL: `UPDATE … FROM (VALUES …)`, each value cast to its column's type (a None has none)."""
    types = [table.c[name].type.compile(dialect=postgresql.dialect()) for name in (*columns, key)]
    row = f"({', '.join(f'%s::{kind}' for kind in types)})"
    return (
        f"UPDATE {table.name} SET {', '.join(f'{c} = v.{c}' for c in columns)} FROM (VALUES {', '.join([row] * count)})"
        f" AS v({', '.join((*columns, key))}) WHERE {table.name}.{key} = v.{key}"
    )
