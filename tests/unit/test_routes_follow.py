"""Dramatiq workers follow the routes file: a changed, valid file gives them the new destinations;
a broken one keeps the destinations in use (the log has a count, no value)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from hub.routing.reload import FollowedDestinations

FILE = "destinations:\n  {name}: {{transport: mllp, host: 127.0.0.1, port: {port}, profile: ehr}}\nroutes: []\n"


def write(path: Path, text: str, stamp: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(stamp, stamp))  # a distinct modification time, however fast the test runs


def test_workers_follow_a_changed_file_and_keep_the_last_good_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "routes.yaml"
    write(path, FILE.format(name="ehr", port=6661), 1_000_000_000)
    followed = FollowedDestinations(path, every=0)
    assert list(followed()) == ["ehr"] and followed()["ehr"].port == 6661

    write(path, FILE.format(name="ehr2", port=6662), 2_000_000_000)
    assert list(followed()) == ["ehr2"]

    write(path, FILE.format(name="ehr3", port="SECRETVALUE42"), 3_000_000_000)
    with caplog.at_level(logging.ERROR, logger="hub.routing"):
        assert list(followed()) == ["ehr2"]
    assert "1 problem" in caplog.text and "SECRETVALUE42" not in caplog.text

    path.unlink()
    assert list(followed()) == ["ehr2"], "a missing file keeps the destinations in use"


def test_the_file_is_looked_at_only_every_so_often(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    write(path, FILE.format(name="ehr", port=6661), 1_000_000_000)
    followed = FollowedDestinations(path, every=3600)
    followed()
    write(path, FILE.format(name="ehr2", port=6662), 2_000_000_000)
    assert list(followed()) == ["ehr"]
