"""The migrations build the schema the code declares, and keep the data they move."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

import hub.store.mpi  # noqa: F401 — its tables are part of the metadata
import hub.store.outbox  # noqa: F401 — its tables are part of the metadata
from hub.store.engine import make_engine
from hub.store.migrate import upgrade
from hub.store.tables import metadata
from hub.store.uow import UnitOfWork
from tests.conftest import BACKENDS, fresh_database

ROWS = {
    "record_index": ("record_id, param, value, kind", "('0190a0f0-0000-7000-8000-000000000001', 'family', 'quillfeather', 'patient')"),
    "mpi_keys": ("key, record_id", "('fam:KLFT|1961', '0190a0f0-0000-7000-8000-000000000001')"),
    "mpi_links": ("record_id, person_id, how, updated_at",
                  "('0190a0f0-0000-7000-8000-000000000001', 'P-1', 'new', '2026-01-01 00:00:00.000000')"),
}


def test_the_migrated_schema_is_the_declared_one(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    engine.dispose()


def test_sqlite_keeps_the_small_keyed_tables_without_rowid_and_their_rows(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    upgrade(engine, "0005_outbox_known")
    with engine.begin() as conn:
        for table, (columns, values) in ROWS.items():
            conn.execute(text(f"INSERT INTO {table} ({columns}) VALUES {values}"))
    upgrade(engine)
    with engine.connect() as conn:
        for table in ROWS:
            sql = conn.execute(text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"), {"t": table}).scalar_one()
            assert "WITHOUT ROWID" in sql, table
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 1, table
        indexes = {name for (name,) in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'index'"))}
    assert {"ix_record_index_lookup", "ix_mpi_keys_record", "ix_mpi_links_person"} <= indexes
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


def test_the_count_of_linked_records_starts_from_the_links_already_stored(empty_url: str) -> None:
    """An index upgraded with records in it decides at its size (`Model.at_population`), not as if empty."""
    engine = make_engine(empty_url)
    upgrade(engine, "0006_sqlite_without_rowid")
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO mpi_links ({ROWS['mpi_links'][0]}) VALUES {ROWS['mpi_links'][1]}"))
    upgrade(engine)
    with UnitOfWork(engine) as uow:
        assert uow.mpi.population() == 1
    engine.dispose()
