"""`hub serve` processes in a child process of its own (HUB_PROCESSING_PROCESS; by default with PostgreSQL): what is
stored is processed and delivered in order there, a FHIR write still gets its answer from its own
processing, route reloads reach the child, a killed child is replaced without losing anything, and the
child never outlives the server (kill -9 of `hub serve` included)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, Row, select

from adapters.transport.mllp import send_all
from hub.store.outbox import outbox
from tests.conftest import adt, unique
from tests.integration.delivery_fakes import FakeMllpReceiver, assert_per_patient_order
from tests.integration.test_delivery_crash import ROUTES, _hub_env, _last_id, _outbox_states, _serve

Server = tuple[dict[str, str], subprocess.Popen[bytes]]


@pytest.fixture
def receiver() -> Iterator[FakeMllpReceiver]:
    started = FakeMllpReceiver().start()
    yield started
    started.stop()


@pytest.fixture
def serve(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """`serve(port, processing_process="true")`: `hub serve` routing ADT to an MLLP receiver on `port`, with
    HUB_PROCESSING_PROCESS as given (None: the default, on with PostgreSQL, off with SQLite); stopped after."""
    servers: list[subprocess.Popen[bytes]] = []

    def start(port: int, processing_process: str | None = "true") -> Server:
        routes = tmp_path / "routes.yaml"
        routes.write_text(ROUTES.format(port=port))
        env = _hub_env(database_url, routes, tmp_path)
        env.pop("HUB_PROCESSING_PROCESS", None)
        if processing_process is not None:
            env["HUB_PROCESSING_PROCESS"] = processing_process
        servers.append(_serve(env, tmp_path / "hub.log"))
        return env, servers[-1]

    yield start
    for server in servers:
        _stop(server)


def _processor_pids(server: subprocess.Popen[bytes]) -> list[int]:
    """The server's processing children (the ones multiprocessing spawned to run `spawn_main`)."""
    found = []
    for pid in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split():
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


def _processor_pid(server: subprocess.Popen[bytes], timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pids := _processor_pids(server):
            return pids[0]
        time.sleep(0.1)
    raise AssertionError("no processing process")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _send(env: dict[str, str], frames: list[bytes], connections: int = 4) -> list[bytes]:
    """Frames over several MLLP connections at once (frame n on connection n % connections)."""

    async def all_connections() -> list[list[bytes]]:
        port = int(env["HUB_MLLP_PORT"])
        return await asyncio.gather(*(send_all("127.0.0.1", port, frames[c::connections]) for c in range(connections)))

    return [ack for acks in asyncio.run(all_connections()) for ack in acks]


def _outbox_rows(engine: Engine, since: int) -> list[Row[Any]]:
    """This test's outbox rows (ordering and idempotency keys), oldest first."""
    with engine.connect() as conn:
        return list(conn.execute(select(outbox.c.ordering_key, outbox.c.idempotency_key)
                                 .where(outbox.c.id > since).order_by(outbox.c.id)))


def _arrivals_of(rows: list[Row[Any]], receiver: FakeMllpReceiver) -> list[str]:
    """The receiver's arrivals of these rows, in arrival order (the module's database is shared: a row an
    earlier test's server left undelivered may reach this test's receiver, under the same destination name)."""
    ours = {row.idempotency_key for row in rows}
    return [control_id for control_id in receiver.ids() if control_id in ours]


def _wait_for_patient(receiver: FakeMllpReceiver, mrn: str, timeout: float = 20) -> bool:
    """Whether a message about this patient (its MRN in PID-3) reaches the receiver in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(mrn.encode() in r.payload for r in list(receiver.received)):
            return True
        time.sleep(0.05)
    return False


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def test_a_burst_is_processed_in_the_processing_process_and_delivered_in_order(
    db: Engine, serve: Callable[..., Server], receiver: FakeMllpReceiver,
) -> None:
    since = _last_id(db)
    env, server = serve(receiver.port)
    child = _processor_pid(server)
    ready = httpx.get(f"http://127.0.0.1:{env['HUB_HTTP_PORT']}/health/ready").json()
    assert ready["checks"]["processing"] == "ok"
    patients = [unique("M") for _ in range(20)]
    acks = _send(env, [adt(mrn=patients[n % 20], trigger="A08") for n in range(200)])
    assert all(b"MSA|AA" in a for a in acks)
    assert _outbox_states(db, since, delivered=200, timeout=60) == {"delivered": 200}
    rows = _outbox_rows(db, since)
    assert_per_patient_order(rows, _arrivals_of(rows, receiver))
    assert _alive(child) and _processor_pid(server) == child, "the same processing process did the work"
    _stop(server)
    assert not _alive(child), "the processing process stops with the server"


def test_fhir_writes_during_a_burst_are_answered_from_their_own_processing(
    serve: Callable[..., Server], receiver: FakeMllpReceiver,
) -> None:
    env, _ = serve(receiver.port)
    system = f"urn:oid:2.999.7.{unique('S')}"
    with httpx.Client(base_url=f"http://127.0.0.1:{env['HUB_HTTP_PORT']}", timeout=30) as client:
        async def burst_and_creates() -> tuple[list[bytes], list[httpx.Response]]:
            frames = [adt(trigger="A04") for _ in range(150)]
            burst = asyncio.to_thread(_send, env, frames)
            creates = [asyncio.to_thread(client.post, "/fhir/Patient", json={
                "resourceType": "Patient", "identifier": [{"system": system, "value": f"V{n}"}],
                "name": [{"family": "Quillfeather", "given": ["Wren"]}], "birthDate": "1971-03-04",
            }, headers={"Content-Type": "application/fhir+json"}) for n in range(30)]
            acks, *answers = await asyncio.gather(burst, *creates)
            return acks, answers

        acks, answers = asyncio.run(burst_and_creates())
        assert all(b"MSA|AA" in a for a in acks)
        assert [a.status_code for a in answers] == [201] * 30
        assert all(a.json()["identifier"][0]["system"] == system for a in answers), "each answer is its own resource"
        for n in (0, 29):
            found = client.get("/fhir/Patient", params={"identifier": f"{system}|V{n}"}).json()
            assert [e["resource"]["id"] for e in found["entry"]] == [answers[n].json()["id"]]
        deadline = time.monotonic() + 60
        while (status := client.get("/api/status").json())["messages"]["pending"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status["messages"]["pending"] == 0 and status["messages"]["failed"] == 0, status["messages"]


def test_a_killed_processing_process_is_replaced_and_nothing_is_lost(
    db: Engine, serve: Callable[..., Server], receiver: FakeMllpReceiver,
) -> None:
    since = _last_id(db)
    env, server = serve(receiver.port)
    first = _processor_pid(server)
    patients = [unique("M") for _ in range(10)]
    frames = [adt(mrn=patients[n % 10], trigger="A08") for n in range(300)]
    acks = _send(env, frames[:150])
    os.kill(first, signal.SIGKILL)  # most likely mid-slice: that transaction rolls back
    acks += _send(env, frames[150:])
    assert all(b"MSA|AA" in a for a in acks)
    assert _outbox_states(db, since, delivered=300, timeout=60) == {"delivered": 300}
    assert _processor_pid(server) != first
    rows = _outbox_rows(db, since)
    assert len(rows) == 300, "each message routed once: the killed slice left nothing behind"
    arrivals = _arrivals_of(rows, receiver)
    assert len(set(arrivals)) == 300
    assert_per_patient_order(rows, arrivals)


def test_the_processing_process_never_outlives_a_killed_server(
    serve: Callable[..., Server], receiver: FakeMllpReceiver,
) -> None:
    _, server = serve(receiver.port)
    child = _processor_pid(server)
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    deadline = time.monotonic() + 15
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the processing process exits when its server is gone"


def test_a_route_reload_reaches_the_processing_process(serve: Callable[..., Server], receiver: FakeMllpReceiver) -> None:
    new = FakeMllpReceiver().start()
    try:
        env, _ = serve(receiver.port)
        before, after = unique("M"), unique("M")
        _send(env, [adt(mrn=before, trigger="A08")], connections=1)
        assert _wait_for_patient(receiver, before)
        Path(env["HUB_ROUTES"]).write_text(ROUTES.format(port=new.port))
        assert httpx.post(f"http://127.0.0.1:{env['HUB_HTTP_PORT']}/api/routes/reload").status_code == 200
        _send(env, [adt(mrn=after, trigger="A08")], connections=1)
        assert _wait_for_patient(new, after), "routed by the reloaded routes"
        assert not _wait_for_patient(receiver, after, timeout=1), "not by the old ones"
    finally:
        new.stop()


def test_by_default_postgresql_gets_a_processing_process_and_sqlite_does_not(
    database_url: str, serve: Callable[..., Server], receiver: FakeMllpReceiver,
) -> None:
    env, server = serve(receiver.port, processing_process=None)
    if database_url.startswith("postgresql"):
        assert _processor_pid(server)
    else:
        time.sleep(1)
        assert _processor_pids(server) == []
    _send(env, [adt(trigger="A08")], connections=1)
    assert receiver.wait_for(1), "processed and delivered either way"
