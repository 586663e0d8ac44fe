"""A bulk import builds the search index's lookup B-tree once, after the load (`hub.store.deferred`):
searches find what it loaded, a failed or killed load never leaves the index missing for good, and
only a load that at least doubles the records defers it. SQLite and PostgreSQL."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, inspect, select

from hub.store import deferred
from hub.store.deferred import indexes_built_after, worth_deferring
from hub.store.engine import BULK_CHECKPOINT_PAGES, make_engine
from hub.store.migrate import upgrade
from hub.store.tables import records
from tests.conftest import RunningHub, unique
from tests.integration.test_cli import hub_env
from tests.integration.test_csv_import import HEADER, HUB, fhir_patient, import_csv, row

LOOKUP = "ix_record_index_lookup"


def has_lookup_index(engine: Engine) -> bool:
    with engine.connect() as conn:
        return LOOKUP in {i["name"] for i in inspect(conn).get_indexes("record_index")}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def test_a_deferred_import_is_searchable_and_leaves_the_index_built(
    tmp_path: Path, database_url: str, running_hub: RunningHub, engine: Engine
) -> None:
    ids = [unique("D") for _ in range(300)]
    file = tmp_path / "load.csv"
    file.write_text(HEADER + "\n" + "\n".join(row(rec_id, family="Brackwhistle") for rec_id in ids) + "\n")
    result = import_csv(tmp_path, database_url, file, "--mapping", "registry", "--chunk-rows", "50",
                        "--defer-search-index")
    assert result.returncode == 0, result.stderr
    assert "search index built after the load" in result.stdout
    assert has_lookup_index(engine)
    for rec_id in (ids[0], ids[149], ids[-1]):
        assert fhir_patient(running_hub, rec_id)["name"][0]["family"] == "Brackwhistle"


def test_the_index_is_built_again_when_the_load_fails(engine: Engine) -> None:
    with pytest.raises(RuntimeError), indexes_built_after(engine):
        assert not has_lookup_index(engine)
        raise RuntimeError("the load failed")
    assert has_lookup_index(engine)


def test_a_load_killed_while_deferring_gets_its_index_back_at_the_next_start(
    tmp_path: Path, database_url: str, engine: Engine
) -> None:
    file = tmp_path / "big.csv"
    file.write_text(HEADER + "\n" + "\n".join(row(unique("K")) for _ in range(20_000)) + "\n")
    load = subprocess.Popen([*HUB, "import-csv", str(file), "--mapping", "registry", "--chunk-rows", "200",
                             "--defer-search-index"], env=hub_env(tmp_path, database_url, HUB_LOG_LEVEL="WARNING"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while has_lookup_index(engine) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not has_lookup_index(engine), "the import never dropped the index"
        time.sleep(0.5)  # mid-load
        assert load.poll() is None, "the load ended before it could be killed"
    finally:
        load.send_signal(signal.SIGKILL)
        load.wait(30)
    assert not has_lookup_index(engine)
    result = subprocess.run([*HUB, "db", "upgrade"], env=hub_env(tmp_path, database_url), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert has_lookup_index(engine)


def test_only_a_load_that_at_least_doubles_the_records_defers(
    tmp_path: Path, database_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "few.csv"
    file.write_text(HEADER + "\n" + "\n".join(row(unique("W")) for _ in range(3)) + "\n")
    assert import_csv(tmp_path, database_url, file, "--mapping", "registry").returncode == 0
    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(records)).scalar_one()
    assert stored >= 3
    assert not worth_deferring(engine, max(stored, deferred.WORTH_IT_FROM) - 1), "too few rows to gain"
    monkeypatch.setattr(deferred, "WORTH_IT_FROM", 1)
    assert worth_deferring(engine, stored), "as many rows as records stored: the rebuild pays"
    assert not worth_deferring(engine, stored - 1), "fewer rows than records stored: inserting costs less"


def test_a_bulk_load_checkpoints_sqlites_log_rarely(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}", bulk_load=True)
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == BULK_CHECKPOINT_PAGES
    engine.dispose()
    served = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")  # `hub serve` keeps SQLite's default
    with served.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 1000
    served.dispose()
