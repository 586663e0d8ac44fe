"""A profile that fails on an event no longer fails the message: the records are written, the other
routes deliver, and the failing route's delivery is a dead row (`build-error`, no patient data)
in the dead-letter queue that a resend rebuilds in its place once the profile is fixed."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Callable

import pytest

from adapters.outbound.profiles import PROFILES, ehr_hl7v2
from adapters.transport.mllp import send_all
from hub.bootstrap import build
from hub.outbound import Destination, RoutedEvent
from hub.routing import Built, Profile, parse_routes
from tests.conftest import adt, hub_settings, run_hub, stop_hub, unique
from tests.integration.delivery_fakes import FakeMllpReceiver


def wait(check: Callable[[], object], timeout: float = 15) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.05)
    raise AssertionError("timed out")


class FlakyProfile:
    """The ehr profile with a bug on one patient's events, until `fixed`."""

    def __init__(self, poison: str) -> None:
        self.poison = poison
        self.fixed = False

    def __call__(self, event: RoutedEvent, destination: Destination, control_id: str) -> Built | None:
        if not self.fixed and event.patient_key.endswith(self.poison):
            raise KeyError(f"no mapping for {self.poison}")  # the text quotes data: must never be shown
        return ehr_hl7v2(event, destination, control_id)


def test_build_error_is_a_dead_row_and_resend_rebuilds_it(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    poison = unique("M")
    flaky = FlakyProfile(poison)
    ehr, audit = FakeMllpReceiver().start(), FakeMllpReceiver().start()
    routes = textwrap.dedent(f"""\
        destinations:
          ehr: {{transport: mllp, host: 127.0.0.1, port: {ehr.port}, profile: flaky, timeout: 2}}
          audit: {{transport: mllp, host: 127.0.0.1, port: {audit.port}, profile: ehr, timeout: 2}}
        routes:
          - {{name: adt-to-ehr, when: {{message_type: ADT}}, to: [ehr, audit]}}
        """)
    table = parse_routes(routes, "routes.yaml", {**PROFILES, "flaky": Profile("flaky", {"hl7v2": flaky})})
    hub = build(hub_settings(database_url, tmp_path_factory.mktemp("data")), routes=table, sweep_every=0.1)
    running, thread = run_hub(hub)
    try:
        client = running.client()
        good, other = unique("M"), unique("M")
        acks = asyncio.run(send_all("127.0.0.1", running.mllp_port, [adt(mrn=good), adt(mrn=poison), adt(mrn=other)]))
        assert all(b"MSA|AA" in a for a in acks)
        assert ehr.wait_for(2) and audit.wait_for(3), "the other messages and the other route still go"

        dead = wait(lambda: client.get("/api/outbox", params={"state": "dead"}).json()["items"])
        [row] = dead  # type: ignore[misc]
        assert (row["destination"], row["route"], row["last_code"], row["attempts"]) == ("ehr", "adt-to-ehr", "build-error", 0)
        assert row["last_detail"] == "KeyError in profile flaky, route adt-to-ehr → ehr"
        assert poison not in str(client.get(f"/api/outbox/{row['id']}").json())
        found = client.get("/fhir/Patient", params={"identifier": poison}).json()
        assert found["total"] == 1 if "total" in found else len(found.get("entry", [])) == 1, "records written"
        statuses = client.get("/api/status").json()["messages"]
        assert statuses["failed"] == 0

        still = client.post(f"/api/outbox/{row['id']}/resend")
        assert still.status_code == 409 and "KeyError" in still.json()["detail"] and poison not in still.text

        flaky.fixed = True  # the profile is fixed: the same row is built and sent in its place
        resent = client.post(f"/api/outbox/{row['id']}/resend")
        assert resent.status_code == 200 and resent.json()["id"] == row["id"]
        wait(lambda: client.get(f"/api/outbox/{row['id']}").json()["state"] == "delivered")
        assert ehr.wait_for(3)
        [sent] = [r.payload for r in ehr.received if r.control_id == row["idempotency_key"]]
        assert poison.encode() in sent and sent.startswith(b"MSH|") and b"ADT^A01" in sent
    finally:
        stop_hub(running, thread)
        ehr.stop()
        audit.stop()


def test_a_failing_planner_writes_the_records_and_one_dead_row(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    def planner(event: RoutedEvent) -> list:
        raise RuntimeError("a planner bug")

    hub = build(hub_settings(database_url, tmp_path_factory.mktemp("data")), planner=planner, sweep_every=0.1)
    running, thread = run_hub(hub)
    try:
        client = running.client()
        mrn = unique("M")
        [ack] = asyncio.run(send_all("127.0.0.1", running.mllp_port, [adt(mrn=mrn)]))
        assert b"MSA|AA" in ack
        [row] = wait(lambda: client.get("/api/outbox", params={"state": "dead"}).json()["items"])  # type: ignore[misc]
        assert (row["destination"], row["last_code"], row["last_detail"]) == ("(routes)", "build-error", "RuntimeError in the routes")
        assert client.get("/api/status").json()["messages"]["failed"] == 0
        assert client.post(f"/api/outbox/{row['id']}/resend").status_code == 409
    finally:
        stop_hub(running, thread)


