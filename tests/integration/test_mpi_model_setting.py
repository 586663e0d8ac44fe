"""HUB_MPI_MODEL is a setting: the hub built with it matches with that model file, on SQLite and
PostgreSQL. All patients are fictional."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from hub.bootstrap import build
from hub.mpi.model import MODEL_PATH
from hub.mpi.service import current_model, use_model
from hub.settings import Settings
from tests.conftest import hub_settings
from tests.integration.test_mpi_linking import (  # noqa: F401
    adt_message,
    engine,
    feed,
    link_row,
    record_id,
    someone,
)


@pytest.fixture
def strict_model(tmp_path: Path) -> Iterator[Path]:
    """The shipped model with an auto-link threshold nothing reaches: every match becomes a review."""
    data = json.loads(MODEL_PATH.read_text(encoding="utf-8"))
    data["version"] = "test-never-auto-link"
    data["thresholds"]["link_weight"] = 10_000.0
    path = tmp_path / "model.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    yield path
    use_model(None)


def test_the_environment_names_the_model_file(monkeypatch: pytest.MonkeyPatch, strict_model: Path) -> None:
    monkeypatch.setenv("HUB_MPI_MODEL", str(strict_model))
    assert Settings().mpi_model == strict_model
    monkeypatch.delenv("HUB_MPI_MODEL")
    assert Settings().mpi_model is None


def test_a_hub_built_with_the_setting_matches_with_that_model(
    database_url: str, engine: Engine, tmp_path: Path, strict_model: Path  # noqa: F811
) -> None:
    build(hub_settings(database_url, tmp_path, mpi_model=strict_model))
    assert current_model().version == "test-never-auto-link"
    p = someone()
    feed(engine, adt_message("MS1", authority="EHRX", **p))
    feed(engine, adt_message("MS2", authority="LABX", **p))  # the same person: auto-linked by the shipped model
    assert link_row(engine, record_id(engine, "MS2", "LABX"))["how"] == "review"

    build(hub_settings(database_url, tmp_path))  # unset again: the shipped model
    assert current_model().version == json.loads(MODEL_PATH.read_text(encoding="utf-8"))["version"]
    q = someone()  # (p is now two persons, both plausible: a third record of p would be a review anyway)
    feed(engine, adt_message("MS3", authority="EHRX", **q))
    feed(engine, adt_message("MS4", authority="LABX", **q))
    assert link_row(engine, record_id(engine, "MS4", "LABX"))["how"] == "auto"


def test_a_missing_model_file_stops_the_start(database_url: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        build(hub_settings(database_url, tmp_path, mpi_model=tmp_path / "no-such-model.json"))
    use_model(None)
