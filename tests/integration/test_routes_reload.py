"""Reloading the routes in a running `hub serve` (a real subprocess): `hub routes reload` (SIGHUP via
the pid file) and `POST /api/routes/reload`. Messages keep flowing while the routes change: every
accepted message gets exactly one delivery, those processed before the swap by the old routes and
those after by the new ones (one switch point in acceptance order), and a broken file changes
nothing and logs only a problem count."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from adapters.transport.mllp import send_all
from hub.cli import main
from hub.store.engine import make_engine
from hub.store.outbox import outbox
from hub.store.tables import messages
from tests.conftest import adt, free_port, unique
from tests.integration.delivery_fakes import FakeMllpReceiver
from tests.integration.test_delivery_crash import _hub_env, _serve

DESTINATION = "  {name}: {{transport: mllp, host: 127.0.0.1, port: {port}, profile: ehr, timeout: 2, connect_timeout: 1}}\n"


def routes_file(to: str, **destinations: int) -> str:
    return ("destinations:\n" + "".join(DESTINATION.format(name=n, port=p) for n, p in destinations.items())
            + f"routes:\n  - {{name: adt-to-{to}, when: {{message_type: ADT}}, to: [{to}]}}\n")


def wait_for(check: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_reload_mid_burst_switches_routes_without_losing_a_message(database_url: str, tmp_path: Path) -> None:
    old, new = FakeMllpReceiver(delay=0.002).start(), FakeMllpReceiver().start()
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_file("old", old=old.port))
    env = _hub_env(database_url, routes, tmp_path, HUB_LOG_LEVEL="INFO")
    log = tmp_path / "hub.log"
    hub = _serve(env, log)
    engine = make_engine(database_url)
    port = int(env["HUB_MLLP_PORT"])
    try:
        assert (tmp_path / "hub.pid").read_text().strip() == str(hub.pid)
        patients = [unique("M") for _ in range(6)]
        burst = [adt(mrn=patients[n % 6], trigger="A08") for n in range(240)]
        acks: list[bytes] = []
        sender = threading.Thread(target=lambda: acks.extend(asyncio.run(send_all("127.0.0.1", port, burst))))
        sender.start()
        wait_for(lambda: len(old.ids()) >= 30)

        routes.write_text(routes_file("new", old=old.port, new=new.port))  # `old` stays: its backlog drains
        runner = CliRunner()
        result = runner.invoke(main, ["routes", "reload", "--data-dir", str(tmp_path)], env={"HUB_ROUTES": str(routes)})
        assert result.exit_code == 0, result.output
        assert f"process {hub.pid}" in result.output
        wait_for(lambda: "routes reloaded" in log.read_text())
        after = [adt(mrn=patients[n % 6], trigger="A08") for n in range(30)]
        acks += asyncio.run(send_all("127.0.0.1", port, after))
        sender.join(60)
        assert len(acks) == 270 and all(b"MSA|AA" in a for a in acks)

        def rows() -> list:
            with engine.connect() as conn:
                return conn.execute(
                    select(messages.c.id, outbox.c.destination, outbox.c.state, outbox.c.idempotency_key)
                    .join(outbox, outbox.c.message_id == messages.c.id, isouter=True)
                    .where(messages.c.control_id.in_([f.split(b"|")[9].decode() for f in burst + after]))
                    .order_by(messages.c.id)
                ).all()

        wait_for(lambda: all(r.state == "delivered" for r in rows()), 60)
        found = rows()
        assert len(found) == 270 and len({r.id for r in found}) == 270, "one delivery per message, none lost"
        destinations = [r.destination for r in found]
        switch = destinations.index("new")
        assert 30 <= switch < 240 and destinations == ["old"] * switch + ["new"] * (270 - switch), "one switch point"
        assert sorted(old.ids()) == sorted(r.idempotency_key for r in found if r.destination == "old")
        assert sorted(new.ids()) == sorted(r.idempotency_key for r in found if r.destination == "new")

        # A broken file: nothing changes, the log has a count and no value from the file.
        routes.write_text(routes_file("new", old=old.port, new=new.port).replace(
            f"port: {new.port}", "port: SECRETVALUE42"))
        os.kill(hub.pid, signal.SIGHUP)
        wait_for(lambda: "routes not reloaded" in log.read_text())
        text = log.read_text()
        assert "1 problem" in text and "SECRETVALUE42" not in text
        import httpx

        answer = httpx.post(f"http://127.0.0.1:{env['HUB_HTTP_PORT']}/api/routes/reload", timeout=10)
        assert answer.status_code == 422 and answer.json()["reloaded"] is False
        assert "SECRETVALUE42" not in answer.text and "`port`" in answer.json()["problems"][0]
        [ack] = asyncio.run(send_all("127.0.0.1", port, [adt(mrn=patients[0], trigger="A08")]))
        assert b"MSA|AA" in ack
        assert new.wait_for(len(set(new.ids())) + 1), "the routes in use are still the last good ones"

        # Fixed again, over the API this time.
        routes.write_text(routes_file("old", old=old.port, new=new.port))
        answer = httpx.post(f"http://127.0.0.1:{env['HUB_HTTP_PORT']}/api/routes/reload", timeout=10)
        assert answer.status_code == 200 and answer.json() == {"reloaded": True, "summary": "2 destinations, 1 routes"}
        before = len(set(old.ids()))
        asyncio.run(send_all("127.0.0.1", port, [adt(mrn=patients[1], trigger="A08")]))
        assert old.wait_for(before + 1)
    finally:
        hub.send_signal(signal.SIGTERM)
        hub.wait(30)
        engine.dispose()
        old.stop()
        new.stop()
    assert not (tmp_path / "hub.pid").exists(), "the pid file goes with the server"


def test_reload_without_a_server_says_so(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_file("a", a=free_port()))
    result = CliRunner().invoke(main, ["routes", "reload", "--data-dir", str(tmp_path)], env={"HUB_ROUTES": str(routes)})
    assert result.exit_code == 1 and "no pid file" in result.output


def test_reload_refuses_a_broken_file_before_signalling(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("destinations: {}\n")
    (tmp_path / "hub.pid").write_text(f"{os.getpid()}\n")  # would be us: must not be signalled
    result = CliRunner().invoke(main, ["routes", "reload", "--data-dir", str(tmp_path)], env={"HUB_ROUTES": str(routes)})
    assert result.exit_code == 2 and "not reloaded" in result.output
