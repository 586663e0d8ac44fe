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
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, Row, select

from adapters.transport.mllp import send_all
from hub.store.engine import make_engine
from hub.store.outbox import outbox
from tests.conftest import adt, unique
from tests.integration.delivery_fakes import FakeMllpReceiver, assert_per_patient_order
from tests.integration.test_delivery_crash import ROUTES, _hub_env, _last_id, _outbox_states, _serve


def _processor_pid(server: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """The server's processing child (the one multiprocessing spawned to run `spawn_main`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        for pid in children:
            try:
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return int(pid)
            except OSError:
                continue
        time.sleep(0.1)
    raise AssertionError("no processing process")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(
    database_url: str, tmp_path: Path, port: int, processing_process: str | None = "true",
) -> tuple[dict[str, str], subprocess.Popen[bytes]]:
    """`hub serve` routing ADT to an MLLP receiver on `port`; HUB_PROCESSING_PROCESS as given (None: the
    default, on with PostgreSQL, off with SQLite)."""
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.format(port=port))
    env = _hub_env(database_url, routes, tmp_path)
    env.pop("HUB_PROCESSING_PROCESS", None)
    if processing_process is not None:
        env["HUB_PROCESSING_PROCESS"] = processing_process
    return env, _serve(env, tmp_path / "hub.log")


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


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def test_a_burst_is_processed_in_the_processing_process_and_delivered_in_order(database_url: str, tmp_path: Path) -> None:
    receiver = FakeMllpReceiver().start()
    env, server = _start(database_url, tmp_path, receiver.port)  # migrates the database
    engine = make_engine(database_url)
    since = _last_id(engine)
    try:
        child = _processor_pid(server)
        ready = httpx.get(f"http://127.0.0.1:{env['HUB_HTTP_PORT']}/health/ready").json()
        assert ready["checks"]["processing"] == "ok"
        patients = [unique("M") for _ in range(20)]
        acks = _send(env, [adt(mrn=patients[n % 20], trigger="A08") for n in range(200)])
        assert all(b"MSA|AA" in a for a in acks)
        assert _outbox_states(engine, since, delivered=200, timeout=60) == {"delivered": 200}
        rows = _outbox_rows(engine, since)
        assert_per_patient_order(rows, receiver.ids())
        assert _alive(child) and _processor_pid(server) == child, "the same processing process did the work"
    finally:
        _stop(server)
        engine.dispose()
        receiver.stop()
    assert not _alive(child), "the processing process stops with the server"


def test_fhir_writes_during_a_burst_are_answered_from_their_own_processing(database_url: str, tmp_path: Path) -> None:
    receiver = FakeMllpReceiver().start()
    env, server = _start(database_url, tmp_path, receiver.port)
    base = f"http://127.0.0.1:{env['HUB_HTTP_PORT']}"
    system = f"urn:oid:2.999.7.{unique('S')}"
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
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
    finally:
        _stop(server)
        receiver.stop()


def test_a_killed_processing_process_is_replaced_and_nothing_is_lost(database_url: str, tmp_path: Path) -> None:
    receiver = FakeMllpReceiver().start()
    env, server = _start(database_url, tmp_path, receiver.port)  # migrates the database
    engine = make_engine(database_url)
    since = _last_id(engine)
    try:
        first = _processor_pid(server)
        patients = [unique("M") for _ in range(10)]
        frames = [adt(mrn=patients[n % 10], trigger="A08") for n in range(300)]
        acks = _send(env, frames[:150])
        os.kill(first, signal.SIGKILL)  # most likely mid-slice: that transaction rolls back
        acks += _send(env, frames[150:])
        assert all(b"MSA|AA" in a for a in acks)
        assert _outbox_states(engine, since, delivered=300, timeout=60) == {"delivered": 300}
        second = _processor_pid(server)
        assert second != first
        assert len(set(receiver.ids())) == 300
        rows = _outbox_rows(engine, since)
        assert len(rows) == 300, "each message routed once: the killed slice left nothing behind"
        assert_per_patient_order(rows, receiver.ids())
    finally:
        _stop(server)
        engine.dispose()
        receiver.stop()


def test_the_processing_process_never_outlives_a_killed_server(database_url: str, tmp_path: Path) -> None:
    receiver = FakeMllpReceiver().start()
    _, server = _start(database_url, tmp_path, receiver.port)
    try:
        child = _processor_pid(server)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        deadline = time.monotonic() + 15
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the processing process exits when its server is gone"
    finally:
        _stop(server)
        receiver.stop()


def test_a_route_reload_reaches_the_processing_process(database_url: str, tmp_path: Path) -> None:
    old, new = FakeMllpReceiver().start(), FakeMllpReceiver().start()
    env, server = _start(database_url, tmp_path, old.port)
    base = f"http://127.0.0.1:{env['HUB_HTTP_PORT']}"
    try:
        _send(env, [adt(trigger="A08")], connections=1)
        assert old.wait_for(1)
        Path(env["HUB_ROUTES"]).write_text(ROUTES.format(port=new.port))
        assert httpx.post(f"{base}/api/routes/reload").status_code == 200
        _send(env, [adt(trigger="A08")], connections=1)
        assert new.wait_for(1), "routed by the reloaded routes"
        assert len(old.ids()) == 1
    finally:
        _stop(server)
        old.stop()
        new.stop()


def test_by_default_postgresql_gets_a_processing_process_and_sqlite_does_not(database_url: str, tmp_path: Path) -> None:
    receiver = FakeMllpReceiver().start()
    env, server = _start(database_url, tmp_path, receiver.port, processing_process=None)
    try:
        if database_url.startswith("postgresql"):
            assert _processor_pid(server)
        else:
            time.sleep(1)
            children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
            assert not [pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        _send(env, [adt(trigger="A08")], connections=1)
        assert receiver.wait_for(1), "processed and delivered either way"
    finally:
        _stop(server)
        receiver.stop()
