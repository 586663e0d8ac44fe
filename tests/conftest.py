"""Shared fixtures: databases (SQLite and the real PostgreSQL) and a running hub on real sockets.

PostgreSQL is not optional: a test that needs it fails when it is unreachable rather than
being skipped. Point `HUB_TEST_POSTGRES_URL` at another server if needed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from sqlalchemy import Engine

from hub.bootstrap import Hub, build, serve
from hub.settings import Settings
from hub.store.engine import make_engine
from hub.store.migrate import upgrade

POSTGRES_URL = os.environ.get("HUB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _ports_below_ephemeral_range() -> Iterator[int]:
    """Ports a test server can bind later without racing outbound connections.

    A port the kernel hands out for `bind(0)` comes from the ephemeral range, the same range it
    draws source ports from for every outbound connection (to PostgreSQL, Redis, the hub itself);
    between choosing such a port and the hub binding it, a client's connection can take it (CI saw
    "address already in use" this way). Ports below the range are never given to clients.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    floor = max(1024, low - 12000)
    span = max(low - floor, 1000)  # an ephemeral range that starts below 2024 leaves no safe ports: walk some anyway
    start = os.getpid() * 7919 % span  # two test runs on one machine walk different ports
    for offset in range(span):
        yield floor + (start + offset) % span


_candidate_ports = _ports_below_ephemeral_range()


def free_port() -> int:
    """A port nothing listens on, never handed out twice in one test run."""
    for port in _candidate_ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _admin_dsn() -> str:
    return POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")


def create_postgres_database() -> str:
    """A fresh, empty database on the real server; returns its SQLAlchemy URL."""
    name = f"hub_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_postgres_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_database(backend: str, folder: Path) -> Iterator[str]:
    """The URL of an empty database on `backend`: a file in `folder`, or a PostgreSQL database dropped after."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'hub.db'}"
        return
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture(scope="module", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fresh_database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


@dataclass
class RunningHub:
    hub: Hub
    http: str
    mllp_port: int
    data_dir: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.http, timeout=30)


@pytest.fixture(scope="module")
def db(database_url: str) -> Iterator[Engine]:
    """An engine on the module's database, migrated (for tests that drive the pipeline directly)."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def start_hub(settings: Settings, timeout: float = 30) -> tuple[RunningHub, threading.Thread]:
    """Run `serve` on a thread of its own, exactly as `hub serve` would, and wait until it is ready."""
    return run_hub(build(settings), timeout)


def run_hub(hub: Hub, timeout: float = 30) -> tuple[RunningHub, threading.Thread]:
    """`start_hub` for a hub built with test stand-ins (routes, transports)."""
    settings = hub.settings
    thread = threading.Thread(target=lambda: asyncio.run(serve(hub)), daemon=True, name="hub-under-test")
    thread.start()
    running = RunningHub(hub, f"http://127.0.0.1:{settings.http_port}", settings.mllp_port, settings.data_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{running.http}/health/ready", timeout=1).status_code == 200:
                return running, thread
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError("hub did not become ready")


def stop_hub(running: RunningHub, thread: threading.Thread) -> None:
    if running.hub.http_server is not None:
        running.hub.http_server.should_exit = True
    thread.join(timeout=30)


def hub_settings(database_url: str, data_dir: Path, **overrides: object) -> Settings:
    """Settings for a hub under test: free ports and no routes unless a test names a routes file
    (the default `mappings/routes.yaml` sends to fixed local ports nobody listens on in most tests).
    Processing on the writer thread unless a test asks for the processing process (tests that run
    `hub serve` as a program use it, as do tests/integration/test_processor.py)."""
    overrides.setdefault("routes", data_dir / "no-routes.yaml")
    overrides.setdefault("processing_process", False)
    return Settings(
        data_dir=data_dir, database_url=database_url, http_port=free_port(), mllp_port=free_port(), **overrides
    )


@pytest.fixture(scope="module")
def running_hub(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    running, thread = start_hub(hub_settings(database_url, tmp_path_factory.mktemp("data")))
    try:
        yield running
    finally:
        stop_hub(running, thread)


def unique(prefix: str = "T") -> str:
    """A unique, non-identifying token for control ids and record numbers."""
    return f"{prefix}{uuid.uuid4().hex[:12].upper()}"


def adt(
    control_id: str | None = None,
    mrn: str | None = None,
    *,
    trigger: str = "A01",
    version: str = "2.5.1",
    family: str = "Testperson",
    given: str = "Alma",
    birth_date: str = "19800402",
    sex: str = "F",
    extra: str = "",
) -> bytes:
    """A fictional ADT message; fields can be bent for each test."""
    control_id = control_id or unique("C")
    mrn = mrn or unique("M")
    segments = [
        f"MSH|^~\\&|TESTADT|NORTHWIND|HUB|HUB|20240101120000||ADT^{trigger}^ADT_A01|{control_id}|P|{version}",
        f"EVN|{trigger}|20240101120000",
        f"PID|1||{mrn}^^^NORTHWIND^MR||{family}^{given}^^^^^L||{birth_date}|{sex}|||12 Elm St^^Springfield^IL^62701||(555)555-0123",
        "PV1|1|I|W1^101^A",
    ]
    if extra:
        segments.append(extra)
    return "\r".join(segments).encode() + b"\r"


def ack_fields(ack: bytes) -> dict[str, list[str]]:
    """Segments of an ACK by name → their fields (MSH counted so that index n is MSH-n)."""
    out: dict[str, list[str]] = {}
    text = ack.decode("utf-8", errors="replace")
    separator = text[3] if text.startswith("MSH") else "|"  # the ACK reuses the sender's delimiters
    for line in text.replace("\n", "\r").split("\r"):
        if not line:
            continue
        fields = line.split(separator)
        if fields[0] == "MSH":
            fields.insert(1, separator)
        out.setdefault(fields[0], fields)
    return out
