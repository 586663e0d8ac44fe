"""Dead-letter queue, resend and replay through the admin API of a running hub, and `hub replay
--dry-run` with the real routes file (a route change shown as a diff against what was sent)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapters.transport.mllp import send_all
from hub.cli import main
from hub.outbound import Destination, Outbound, RetryPolicy, RoutedEvent
from tests.conftest import adt, unique
from tests.integration.delivery_fakes import FakeMllpReceiver, echo_planner
from tests.integration.test_delivery_outbox import start_routed_hub


def _wait(check: Callable[[], object], timeout: float = 15) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_dead_letter_resend_and_replay_over_the_admin_api(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    refuse = {"on": True}
    first = FakeMllpReceiver(decide=lambda _k, _n: "AR" if refuse["on"] else "AA").start()
    second = FakeMllpReceiver().start()
    retry = RetryPolicy(max_attempts=2, initial_delay=0.05, max_delay=0.1)
    a = Destination("ehr-a", "mllp", "ehr", host="127.0.0.1", port=first.port, timeout=2, retry=retry)
    b = Destination("ehr-b", "mllp", "ehr", host="127.0.0.1", port=second.port, timeout=2, retry=retry)
    running, thread = start_routed_hub(database_url, tmp_path_factory.mktemp("data"), {a.name: a, b.name: b},
                                       echo_planner(a.name))
    try:
        client = running.client()
        [ack] = asyncio.run(send_all("127.0.0.1", running.mllp_port, [adt(mrn=unique("M"))]))
        assert b"MSA|AA" in ack
        dead = _wait(lambda: client.get("/api/outbox", params={"state": "dead"}).json()["items"])
        [row] = dead  # type: ignore[misc]
        assert (row["destination"], row["attempts"], row["last_code"]) == ("ehr-a", 1, "AR")
        assert "payload" not in row
        history = client.get(f"/api/outbox/{row['id']}").json()["history"]
        assert [(h["attempt"], h["code"], h["ok"]) for h in history] == [(1, "AR", False)]

        refuse["on"] = False  # the receiver is fixed: resend in place
        resent = client.post(f"/api/outbox/{row['id']}/resend")
        assert resent.status_code == 200 and resent.json()["id"] == row["id"]
        _wait(lambda: client.get(f"/api/outbox/{row['id']}").json()["state"] == "delivered")
        history = client.get(f"/api/outbox/{row['id']}").json()["history"]
        assert [h["code"] for h in history] == ["AR", "AA"]
        assert first.ids() == [row["idempotency_key"]]

        copy = client.post(f"/api/outbox/{row['id']}/resend", json={"destination": "ehr-b"}).json()
        assert copy["id"] != row["id"] and copy["resent_from"] == row["id"] and copy["destination"] == "ehr-b"
        assert second.wait_for(1) and second.ids() == [row["idempotency_key"]]
        _wait(lambda: client.get(f"/api/outbox/{copy['id']}").json()["state"] == "delivered")

        # A route change, tried first: the dry run queues nothing and shows the difference.
        plan = echo_planner(a.name)

        def changed(event: RoutedEvent) -> list[Outbound]:
            return [_with_payload(o, o.payload.replace(b"ZSQ|0", b"ZSQ|changed")) for o in plan(event)]

        running.hub.routing.planner = changed
        before = client.get("/api/outbox").json()["counts"]
        dry = client.post(f"/api/messages/{row['message_id']}/replay", json={"dry_run": True}).json()
        [planned] = dry["planned"]
        assert planned["previous_id"] == row["id"] and planned["changed"] is True and planned["queued_as"] is None
        assert "-ZSQ|0\n" in planned["diff"] and "+ZSQ|changed\n" in planned["diff"]
        assert client.get("/api/outbox").json()["counts"] == before
        done = client.post(f"/api/messages/{row['message_id']}/replay", json={}).json()
        queued = done["planned"][0]["queued_as"]
        _wait(lambda: client.get(f"/api/outbox/{queued}").json()["state"] == "delivered")
        assert first.ids() == [row["idempotency_key"]] * 2

        # Specific errors, never a 500.
        assert client.post("/api/outbox/999999/resend").status_code == 404
        assert client.post(f"/api/outbox/{row['id']}/resend", json={"destination": "nowhere"}).status_code == 400
        assert client.post("/api/messages/999999/replay", json={}).status_code == 404
        assert client.post(f"/api/outbox/{row['id']}/skip").status_code == 409
        assert client.get("/api/outbox", params={"state": "lost"}).status_code == 400
    finally:
        running.hub.http_server.should_exit = True  # type: ignore[union-attr]
        thread.join(30)
        first.stop()
        second.stop()


def _with_payload(o: Outbound, payload: bytes) -> Outbound:
    return Outbound(o.destination, o.route, o.ordering_key, o.idempotency_key, o.content_type, payload, o.summary)


ROUTES = """\
destinations:
  ehr: {{transport: mllp, host: 127.0.0.1, port: 9, profile: ehr, version: "{version}"}}
routes:
  - {{name: adt-to-ehr, when: {{message_type: ADT}}, to: [ehr]}}
"""


def test_hub_replay_dry_run_diffs_a_route_change_against_what_was_sent(database_url: str, tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.format(version="2.5.1"))
    message = tmp_path / "adt.hl7"
    message.write_bytes(adt(mrn=unique("M"), trigger="A08"))
    env = {"HUB_DATABASE_URL": database_url, "HUB_ROUTES": str(routes), "HUB_DATA_DIR": str(tmp_path)}
    runner = CliRunner()
    ingested = runner.invoke(main, ["ingest", str(message)], env=env)
    assert ingested.exit_code == 0, ingested.output
    outbox_id, message_id = _latest_row(database_url)
    shown = runner.invoke(main, ["replay", "--outbox", str(outbox_id), "--dry-run"], env=env)
    assert shown.exit_code == 0, shown.output
    assert f"would send outbox/{outbox_id}" in shown.output and "\nMSH|" in shown.output

    same = runner.invoke(main, ["replay", "--message", str(message_id), "--dry-run"], env=env)
    assert same.exit_code == 0, same.output
    assert "would send to ehr via adt-to-ehr" in same.output and "identical to outbox/" in same.output

    routes.write_text(ROUTES.format(version="2.4"))
    changed = runner.invoke(main, ["replay", "--message", str(message_id), "--dry-run"], env=env)
    assert changed.exit_code == 0, changed.output
    assert "--- outbox/" in changed.output and "+++ replay/ehr" in changed.output
    assert any(line.startswith("-MSH|") and "|2.5.1" in line for line in changed.output.splitlines())
    assert any(line.startswith("+MSH|") and "|2.4" in line for line in changed.output.splitlines())

    missing = runner.invoke(main, ["replay", "--message", "999999", "--dry-run"], env=env)
    assert missing.exit_code == 1 and "no such message" in missing.output


def _latest_row(database_url: str) -> tuple[int, int]:
    from sqlalchemy import select

    from hub.store.engine import make_engine
    from hub.store.outbox import outbox

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(outbox.c.id, outbox.c.message_id).order_by(outbox.c.id.desc()).limit(1)).one()
            return int(row.id), int(row.message_id)
    finally:
        engine.dispose()
