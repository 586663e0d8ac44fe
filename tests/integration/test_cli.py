"""The command line as an interface engineer uses it: serve, db upgrade, ingest, send (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from hub.store.tables import messages
from tests.conftest import adt, free_port, unique

HUB = [sys.executable, "-m", "hub"]


def hub_env(tmp_path: Path, database_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env["HUB_DATA_DIR"] = str(tmp_path / "var")
    if database_url:
        env["HUB_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def test_db_upgrade(tmp_path: Path, database_url: str) -> None:
    result = subprocess.run([*HUB, "db", "upgrade"], env=hub_env(tmp_path, database_url), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    with create_engine(database_url).connect() as conn:
        assert conn.execute(select(func.count()).select_from(messages)).scalar_one() == 0


def test_ingest_files_and_batches(tmp_path: Path) -> None:
    one, batch = tmp_path / "one.hl7", tmp_path / "batch.hl7"
    one.write_bytes(adt().replace(b"\r", b"\n"))  # a file saved with Unix line ends
    batch.write_bytes(b"BHS|^~\\&|TESTADT\r" + adt() + adt(sex="Q") + b"BTS|2\r")
    result = subprocess.run([*HUB, "ingest", str(one), str(batch)], env=hub_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines() == ["one.hl7: AA", "batch.hl7: AA", "batch.hl7: AE"]
    assert result.returncode == 1  # not everything was accepted
    with create_engine(f"sqlite:///{tmp_path / 'var' / 'hub.db'}").connect() as conn:
        assert conn.execute(select(func.count()).select_from(messages).where(messages.c.feed == "file")).scalar_one() == 3


@pytest.fixture
def served_hub(tmp_path: Path) -> Iterator[tuple[str, int]]:
    http_port, mllp_port = free_port(), free_port()
    env = hub_env(tmp_path, HUB_HTTP_PORT=str(http_port), HUB_MLLP_PORT=str(mllp_port))
    process = subprocess.Popen([*HUB, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("hub serve did not become ready")
        yield f"http://127.0.0.1:{http_port}", mllp_port
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output.decode(errors="replace")[-2000:]


def test_serve_then_send_over_mllp(served_hub: tuple[str, int], tmp_path: Path) -> None:
    http, mllp_port = served_hub
    files = []
    for name, message in [("good.hl7", adt()), ("bad.hl7", adt(birth_date="19800231")), ("old.hl7", adt(version="2.1"))]:
        path = tmp_path / name
        path.write_bytes(message)
        files.append(str(path))
    result = subprocess.run([*HUB, "send", *files, "--port", str(mllp_port)], capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines() == ["good.hl7: AA", "bad.hl7: AE", "old.hl7: AR"]
    assert result.returncode == 1


def test_send_finds_the_hub_by_the_port_serve_reads(served_hub: tuple[str, int], tmp_path: Path) -> None:
    """`HUB_MLLP_PORT` set for `hub serve` is where `hub send` sends, without `--port`."""
    _, mllp_port = served_hub
    path = tmp_path / "good.hl7"
    path.write_bytes(adt())
    env = dict(os.environ, HUB_MLLP_PORT=str(mllp_port))
    result = subprocess.run([*HUB, "send", str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines() == ["good.hl7: AA"] and result.returncode == 0


def test_serve_is_also_hub_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("hub")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert all(command in result.stdout for command in ("serve", "db", "ingest", "send"))


def test_hub_output_carries_no_patient_data(tmp_path: Path) -> None:
    """Invariant 6: names, identifiers and birth dates never reach a log line, good input or bad."""
    family, mrn = unique("Nomen"), unique("MRN")
    http_port, mllp_port = free_port(), free_port()
    env = hub_env(tmp_path, HUB_HTTP_PORT=str(http_port), HUB_MLLP_PORT=str(mllp_port), HUB_LOG_LEVEL="DEBUG")
    process = subprocess.Popen([*HUB, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        http = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{http}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        for message in (adt(mrn=mrn, family=family), adt(mrn=mrn, family=family, birth_date="19800231"),
                        adt(mrn=mrn, family=family, version="9.9"), f"PID|1||{mrn}||{family}^Ann".encode()):
            ack = httpx.post(f"{http}/hl7v2", content=message, headers={"Content-Type": "text/plain"})
            assert family.encode() not in ack.content and mrn.encode() not in ack.content
        httpx.get(f"{http}/fhir/Patient", params={"family": family, "identifier": mrn})
        httpx.get(f"{http}/fhir/Patient", params={"birthdate": f"xx{family}"})
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert b"Uvicorn running" in output  # the log was captured
    assert family.encode() not in output
    assert mrn.encode() not in output
