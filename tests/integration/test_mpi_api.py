"""The master patient index through a running hub: MLLP arrivals on real sockets, the steward's HTTP
API, and the `hub mpi` commands as real processes — on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from adapters.transport.mllp import MllpClient
from hub.store.mpi import link_events, links, persons
from hub.store.uow import UnitOfWork
from tests.conftest import RunningHub, ack_fields
from tests.integration.test_cli import hub_env
from tests.integration.test_mpi_linking import adt_message, moved, someone

HUB = [sys.executable, "-m", "hub"]


def send_over_two_connections(port: int, first: list[bytes], second: list[bytes]) -> list[str]:
    """Both connections open first, then both send at once; returns every ACK code."""

    async def one(client: MllpClient, frames: list[bytes]) -> list[str]:
        return [ack_fields(await client.send(f))["MSA"][1] for f in frames]

    async def both() -> list[str]:
        async with MllpClient("127.0.0.1", port, 10) as a, MllpClient("127.0.0.1", port, 10) as b:
            codes = await asyncio.gather(one(a, first), one(b, second))
        return [c for cs in codes for c in cs]

    return asyncio.run(both())


def person_of(hub: RunningHub, mrn: str, authority: str) -> str:
    assert hub.hub.intake.wait_processed(10)
    key = ("patient", f"urn:hub:aa:{authority}", mrn)
    with UnitOfWork(hub.hub.engine) as uow:
        rid = uow.records.by_sources([key])[key].id
        return uow.mpi.links([rid])[rid].person_id


def record_id(hub: RunningHub, mrn: str, authority: str) -> str:
    key = ("patient", f"urn:hub:aa:{authority}", mrn)
    with UnitOfWork(hub.hub.engine) as uow:
        return uow.records.by_sources([key])[key].id


def test_same_new_person_over_two_connections_at_once_is_one_person(running_hub: RunningHub) -> None:
    people = [someone() for _ in range(4)]
    codes = send_over_two_connections(
        running_hub.mllp_port,
        [adt_message(f"C{n}", authority="EHRX", **p) for n, p in enumerate(people)],
        [adt_message(f"C{n}", authority="LABX", **p) for n, p in enumerate(people)],
    )
    assert codes == ["AA"] * 8
    for n in range(len(people)):
        assert person_of(running_hub, f"C{n}", "EHRX") == person_of(running_hub, f"C{n}", "LABX")
    with running_hub.hub.engine.connect() as conn:
        enterprise = {person_of(running_hub, f"C{n}", "EHRX") for n in range(len(people))}
        assert len(enterprise) == 4
        stored = conn.execute(select(persons.c.id).where(persons.c.id.in_(enterprise), persons.c.active)).all()
        assert len(stored) == 4


def test_review_list_and_steward_actions_over_http(running_hub: RunningHub) -> None:
    p = someone()
    send_over_two_connections(running_hub.mllp_port, [adt_message("H1", authority="EHRX", **p)], [])
    send_over_two_connections(running_hub.mllp_port, [adt_message("H2", authority="BILLX", **moved(p))], [])
    first, second = person_of(running_hub, "H1", "EHRX"), person_of(running_hub, "H2", "BILLX")
    h2 = record_id(running_hub, "H2", "BILLX")
    with running_hub.client() as client:
        listed = client.get("/api/mpi/reviews", params={"limit": 500}).json()["reviews"]
        [task] = [r for r in listed if r["record"] == h2]
        assert task["person"] == second and task["candidates"][0]["person_id"] == first
        assert "Alma" not in str(listed) and p["family"] not in str(listed)  # ids and scores only

        why = client.get("/api/mpi/explain", params={"a": "urn:hub:aa:EHRX|H1", "b": h2}).json()
        assert why["band"] == "review" and {f["field"] for f in why["fields"]} >= {"given", "family", "birth_date"}

        answer = client.post("/api/mpi/link", json={"record": h2, "person": first}, headers={"X-Hub-Actor": "sam"})
        assert answer.status_code == 200 and answer.json()["person"] == first
        assert person_of(running_hub, "H2", "BILLX") == first
        assert [r for r in client.get("/api/mpi/reviews").json()["reviews"] if r["record"] == h2] == []

        answer = client.post("/api/mpi/unlink", json={"record": "urn:hub:aa:BILLX|H2"})
        assert answer.status_code == 200 and answer.json()["person"] != first

        answer = client.post("/api/mpi/merge", json={"source": answer.json()["person"], "target": first})
        assert answer.status_code == 200 and person_of(running_hub, "H2", "BILLX") == first

        answer = client.post("/api/mpi/not-a-match", json={"record": h2, "other": "urn:hub:aa:EHRX|H1"})
        assert answer.status_code == 200 and answer.json()["person"] != answer.json()["other_person"]

        seen = client.get(f"/api/mpi/persons/{first}").json()
        assert {r["record"] for r in seen["records"]} >= {record_id(running_hub, "H1", "EHRX")}
        assert seen["active"] and seen["provenance"]["names"]
        history = client.get(f"/api/mpi/records/{h2}/events").json()["events"]
        assert [e["action"] for e in history] == ["link", "manual_link", "unlink", "relink", "person_merge", "not_match", "relink"]
        assert all(e["at"] and e["actor"] for e in history)
        why = history[0]["detail"]["explanation"]  # stored compact, shown field by field
        assert {"field": "family", "level": "exact"}.items() <= next(f for f in why["fields"] if f["field"] == "family").items()
        assert all(set(f) == {"field", "level", "weight", "tf_adjusted"} for f in why["fields"])
        assert client.get("/api/mpi/persons/nope").status_code == 404

        # specific errors, never a 500
        assert client.post("/api/mpi/link", json={"record": "nope", "person": first}).status_code == 404
        assert client.post("/api/mpi/link", json={"record": h2, "person": "nope"}).status_code == 404
        assert client.post("/api/mpi/merge", json={"source": first, "target": first}).status_code == 409
        assert client.post("/api/mpi/unlink", json={"recrod": h2}).status_code == 400
        assert client.get("/api/mpi/reviews", params={"status": "bogus"}).status_code == 400
    with running_hub.hub.engine.connect() as conn:
        actors = {r.actor for r in conn.execute(select(link_events.c.actor).where(link_events.c.record_id == h2))}
        assert "api:sam" in actors


def test_mpi_commands_explain_export_rematch(running_hub: RunningHub, database_url: str, tmp_path: Path) -> None:
    p = someone()
    send_over_two_connections(
        running_hub.mllp_port, [adt_message("X1", authority="EHRX", **p)], [adt_message("X2", authority="LABX", **p)]
    )
    person = person_of(running_hub, "X1", "EHRX")
    env = hub_env(tmp_path, database_url)
    run = lambda *args: subprocess.run([*HUB, "mpi", *args], env=env, capture_output=True, text=True, timeout=120)

    explained = run("explain", "urn:hub:aa:EHRX|X1", "urn:hub:aa:LABX|X2")
    assert explained.returncode == 0, explained.stderr
    assert "band link" in explained.stdout and "birth_date" in explained.stdout
    assert p["family"].upper() not in explained.stdout.upper() and "ALMA" not in explained.stdout.upper()
    assert run("explain", "urn:hub:aa:EHRX|X1", "no|such").returncode == 1

    out = tmp_path / "xref.csv"
    exported = run("export", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "enterprise_id,system,value"
    rows = list(csv.reader(io.StringIO(text)))[1:]
    assert [person, "urn:hub:aa:EHRX", "X1"] in rows and [person, "urn:hub:aa:LABX", "X2"] in rows
    with running_hub.hub.engine.connect() as conn:
        assert len(rows) == len(conn.execute(select(links.c.record_id)).all())

    state = tmp_path / "rematch.state"
    rematched = run("rematch", "--batch", "3", "--state", str(state))
    assert rematched.returncode == 0, rematched.stderr
    assert "records re-matched" in rematched.stderr and not state.exists()
    assert person_of(running_hub, "X1", "EHRX") == person_of(running_hub, "X2", "LABX") == person
