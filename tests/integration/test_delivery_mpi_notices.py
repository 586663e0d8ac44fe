"""MPI link changes told to the EHRs that know the records involved, over the steward's HTTP API of a
running hub with a real routes file, fake MLLP receivers and a fake FHIR server (real sockets).

Who knows what is set up by routes on the sending facility (MSH-4): `ehr_a` hears of facility AAA's
patients, `ehr_b` of BBB's, `ehr_both` and the strict-FIFO `ehr_strict` of both, `ehr_fhir` (FHIR) of
AAA's, `ehr_none` of neither; the lab hears of both but is no EHR. Then: a merge sends ADT^A40 to the
EHRs that know the merged-away person (with or without the survivor), nothing to those that know only
the survivor; a record moving between persons (unlink, link, not-a-match) sends ADT^A31 of each
person whose identifiers an EHR was shown; pruning delivered rows forgets none of it."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select, update

from hub.access import Permission
from hub.api import outbox as outbox_api
from hub.cli import main
from hub.delivery.link_changes import ROUTE
from hub.store.outbox import (
    STATES,
    Attempt,
    OutboxRow,
    outbox,
    outbox_attempts,
    outbox_known,
)
from hub.store.uow import UnitOfWork, utcnow
from tests.conftest import (
    RunningHub,
    free_port,
    hub_settings,
    start_hub,
    stop_hub,
    unique,
)
from tests.e2e.test_minimal_routes import FhirReceiver
from tests.integration.delivery_fakes import FakeMllpReceiver, outbound
from tests.integration.test_mpi_api import (
    person_of,
    record_id,
    send_over_two_connections,
)
from tests.integration.test_mpi_linking import adt_message, someone, stranger

MLLP_EHRS = ("ehr_a", "ehr_b", "ehr_both", "ehr_strict", "ehr_none")


def segments(payload: bytes) -> dict[str, list[str]]:
    """Segment name → fields (MSH counted so that index n is MSH-n)."""
    out: dict[str, list[str]] = {}
    for line in payload.decode().split("\r"):
        if line:
            fields = line.split("|")
            if fields[0] == "MSH":
                fields.insert(1, "|")
            out[fields[0]] = fields
    return out


@dataclass
class Fakes:
    mllp: dict[str, FakeMllpReceiver]
    fhir: FhirReceiver


@pytest.fixture(scope="module")
def fakes(database_url: str) -> Iterator[Fakes]:
    """Per database (message ids, hence control ids, start again in each)."""
    mllp = {name: FakeMllpReceiver().start() for name in (*MLLP_EHRS, "lab")}
    fhir = FhirReceiver(free_port())
    yield Fakes(mllp, fhir)
    for receiver in mllp.values():
        receiver.stop()
    fhir.shutdown()
    fhir.server_close()


@pytest.fixture(scope="module")
def routed_hub(database_url: str, tmp_path_factory: pytest.TempPathFactory, fakes: Fakes) -> Iterator[RunningHub]:
    data = tmp_path_factory.mktemp("data")
    port = {name: r.port for name, r in fakes.mllp.items()}
    routes = Path(data) / "routes.yaml"
    routes.write_text(textwrap.dedent(f"""\
        destinations:
          ehr_a: {{transport: mllp, host: 127.0.0.1, port: {port['ehr_a']}, profile: ehr, timeout: 2}}
          ehr_b: {{transport: mllp, host: 127.0.0.1, port: {port['ehr_b']}, profile: ehr, timeout: 2}}
          ehr_both: {{transport: mllp, host: 127.0.0.1, port: {port['ehr_both']}, profile: ehr, timeout: 2}}
          ehr_strict: {{transport: mllp, host: 127.0.0.1, port: {port['ehr_strict']}, profile: ehr, timeout: 2,
                        ordering: strict}}
          ehr_none: {{transport: mllp, host: 127.0.0.1, port: {port['ehr_none']}, profile: ehr, timeout: 2}}
          ehr_fhir: {{transport: http, url: "http://127.0.0.1:{fakes.fhir.server_port}/fhir", profile: ehr,
                      format: fhir, timeout: 2}}
          lab: {{transport: mllp, host: 127.0.0.1, port: {port['lab']}, profile: lab, timeout: 2}}
        routes:
          - {{name: from-a, when: {{message_type: ADT, facility: AAA}}, to: [ehr_a, ehr_fhir]}}
          - {{name: from-b, when: {{message_type: ADT, facility: BBB}}, to: [ehr_b]}}
          - {{name: from-both, when: {{message_type: ADT, facility: [AAA, BBB]}}, to: [ehr_both, ehr_strict, lab]}}
          - {{name: from-z, when: {{message_type: ADT, facility: ZZZ}}, to: [ehr_none]}}
        """))
    running, thread = start_hub(hub_settings(database_url, data, routes=routes))
    yield running
    stop_hub(running, thread)


# --- helpers ----------------------------------------------------------------------------------------


def admit(hub: RunningHub, *frames: bytes) -> None:
    send_over_two_connections(hub.mllp_port, list(frames), [])
    assert hub.hub.intake.wait_processed(10)


def last_row_id(hub: RunningHub) -> int:
    with hub.hub.engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(outbox.c.id), 0))).scalar_one())


def notices_after(hub: RunningHub, after: int) -> list[OutboxRow]:
    with UnitOfWork(hub.hub.engine) as uow:
        return [r for r in uow.outbox.listing(limit=1000, after=after) if r.route == ROUTE]


def by_destination(rows: list[OutboxRow]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for row in rows:
        out.setdefault(row.destination, []).append(row.summary)
    return {name: sorted(summaries) for name, summaries in out.items()}


def delivered(fakes: Fakes, row: OutboxRow, timeout: float = 20.0) -> bytes:
    """The payload the row's destination received (waits for it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if row.destination == "ehr_fhir":
            for _path, headers, body in list(fakes.fhir.requests):
                if body.get("identifier", {}).get("value") == row.idempotency_key:
                    return json.dumps(body).encode()
        else:
            for received in list(fakes.mllp[row.destination].received):
                if received.control_id == row.idempotency_key:
                    return received.payload
        time.sleep(0.02)
    raise AssertionError(f"{row.destination} never received {row.summary} {row.idempotency_key}")


def enterprise(person: str) -> str:
    return f"{person}^^^HUB^PI"


def pid3(payload: bytes) -> list[str]:
    return segments(payload)["PID"][3].split("~")


def person_in(payload: bytes) -> str:
    [cx] = [c for c in pid3(payload) if c.endswith("^HUB^PI")]
    return cx.split("^", 1)[0]


def post(hub: RunningHub, path: str, body: dict[str, str]) -> dict[str, str]:
    with hub.client() as client:
        answer = client.post(path, json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


# --- merge --------------------------------------------------------------------------------------------


def test_merge_sends_a40_to_the_ehrs_that_know_the_merged_away_person(routed_hub: RunningHub, fakes: Fakes) -> None:
    s, t = unique("S"), unique("T")
    admit(routed_hub, adt_message(s, authority="AAA", **someone()), adt_message(t, authority="BBB", **stranger()))
    retired, survivor = person_of(routed_hub, s, "AAA"), person_of(routed_hub, t, "BBB")
    assert retired != survivor
    before = last_row_id(routed_hub)

    assert post(routed_hub, "/api/mpi/merge", {"source": retired, "target": survivor})["person"] == survivor

    rows = notices_after(routed_hub, before)
    # ehr_a and ehr_fhir know only the merged-away person, ehr_both and ehr_strict both; ehr_b only the
    # survivor (nothing it holds is wrong), ehr_none neither, and the lab is no EHR.
    assert by_destination(rows) == {"ehr_a": ["ADT^A40"], "ehr_both": ["ADT^A40"], "ehr_strict": ["ADT^A40"],
                                    "ehr_fhir": ["Bundle(transaction)"]}
    for row in rows:
        assert row.message_id is None and row.idempotency_key.startswith("L")
        if row.destination == "ehr_fhir":
            continue
        msg = segments(delivered(fakes, row))
        assert msg["MSH"][9] == "ADT^A40^ADT_A39" and msg["EVN"][1] == "A40"
        ids = msg["PID"][3].split("~")
        assert f"{t}^^^BBB^MR" in ids and enterprise(survivor) in ids
        assert any(c.startswith(f"{s}^") for c in ids), "the merged-away record's identifier is the survivor's now"
        assert msg["MRG"][1] == enterprise(retired)
    [fhir_row] = [r for r in rows if r.destination == "ehr_fhir"]
    bundle = json.loads(delivered(fakes, fhir_row))
    survivor_entry, retired_entry = bundle["entry"]
    assert survivor_entry["request"] == {"method": "PUT", "url": f"Patient?identifier=urn:hub:enterprise-id|{survivor}"}
    values = {(i.get("system"), i["value"]) for i in survivor_entry["resource"]["identifier"]}
    assert {("urn:hub:enterprise-id", survivor), ("urn:hub:aa:AAA", s), ("urn:hub:aa:BBB", t)} <= values
    assert retired_entry["request"]["url"] == f"Patient?identifier=urn:hub:enterprise-id|{retired}"
    assert retired_entry["resource"]["active"] is False
    assert retired_entry["resource"]["link"] == [{"other": {"reference": survivor_entry["fullUrl"]}, "type": "replaced-by"}]

    # A refused action writes nothing.
    before = last_row_id(routed_hub)
    with routed_hub.client() as client:
        assert client.post("/api/mpi/merge", json={"source": survivor, "target": survivor}).status_code == 409
    assert last_row_id(routed_hub) == before


def test_a_merge_reaches_only_the_ehr_that_knows_the_merged_away_person(routed_hub: RunningHub) -> None:
    s, t = unique("S"), unique("T")
    admit(routed_hub, adt_message(s, authority="ZZZ", **someone()), adt_message(t, authority="BBB", **stranger()))
    retired, survivor = person_of(routed_hub, s, "ZZZ"), person_of(routed_hub, t, "BBB")
    before = last_row_id(routed_hub)
    post(routed_hub, "/api/mpi/merge", {"source": retired, "target": survivor})
    # ehr_none knows the merged-away person: it alone hears; ehr_b knows only the survivor.
    assert by_destination(notices_after(routed_hub, before)) == {"ehr_none": ["ADT^A40"]}


# --- a record moving between persons -----------------------------------------------------------------


def test_unlink_sends_a31_of_each_person_to_the_ehrs_shown_its_identifiers(routed_hub: RunningHub, fakes: Fakes) -> None:
    a, b = unique("U"), unique("U")
    p = someone()
    admit(routed_hub, adt_message(a, authority="AAA", **p), adt_message(b, authority="BBB", **p))
    shared = person_of(routed_hub, a, "AAA")
    assert person_of(routed_hub, b, "BBB") == shared, "the same person from two facilities"
    before = last_row_id(routed_hub)

    answer = post(routed_hub, "/api/mpi/unlink", {"record": record_id(routed_hub, a, "AAA")})
    moved_to = answer["person"]
    assert answer["previous_person"] == shared and moved_to != shared

    rows = notices_after(routed_hub, before)
    # ehr_a knows the moved record (it hears of both persons), ehr_b only the one left behind.
    assert by_destination(rows) == {
        "ehr_a": ["ADT^A31", "ADT^A31"], "ehr_b": ["ADT^A31"], "ehr_both": ["ADT^A31", "ADT^A31"],
        "ehr_strict": ["ADT^A31", "ADT^A31"], "ehr_fhir": ["Bundle(transaction)", "Bundle(transaction)"],
    }
    for row in (r for r in rows if r.destination != "ehr_fhir"):
        payload = delivered(fakes, row)
        assert segments(payload)["MSH"][9] == "ADT^A31^ADT_A05"
        ids = "~".join(pid3(payload))
        if person_in(payload) == moved_to:
            assert a in ids and b not in ids
        else:
            assert person_in(payload) == shared and b in ids and a not in ids
    assert {person_in(delivered(fakes, r)) for r in rows if r.destination == "ehr_b"} == {shared}
    fhir = [json.loads(delivered(fakes, r)) for r in rows if r.destination == "ehr_fhir"]
    assert sorted(b["entry"][0]["request"]["url"] for b in fhir) == sorted(
        f"Patient?identifier=urn:hub:enterprise-id|{p}" for p in (moved_to, shared))


def test_link_moves_a_record_and_tells_who_knew_it_and_a_last_record_retires_its_person(
    routed_hub: RunningHub, fakes: Fakes
) -> None:
    a, b, c = unique("K"), unique("K"), unique("K")
    p = someone()
    admit(routed_hub, adt_message(a, authority="AAA", **p), adt_message(b, authority="BBB", **p),
          adt_message(c, authority="BBB", **stranger()))
    first, other = person_of(routed_hub, a, "AAA"), person_of(routed_hub, c, "BBB")
    assert person_of(routed_hub, b, "BBB") == first and other != first
    before = last_row_id(routed_hub)

    answer = post(routed_hub, "/api/mpi/link", {"record": record_id(routed_hub, a, "AAA"), "person": other})
    assert answer["person"] == other and answer["previous_person"] == first

    rows = notices_after(routed_hub, before)
    # ehr_b knows the person the record joined, but not the record: that person only grew.
    assert by_destination(rows) == {
        "ehr_a": ["ADT^A31", "ADT^A31"], "ehr_b": ["ADT^A31"], "ehr_both": ["ADT^A31", "ADT^A31"],
        "ehr_strict": ["ADT^A31", "ADT^A31"], "ehr_fhir": ["Bundle(transaction)", "Bundle(transaction)"],
    }
    [to_b] = [r for r in rows if r.destination == "ehr_b"]
    payload = delivered(fakes, to_b)
    assert person_in(payload) == first and b in "~".join(pid3(payload)) and a not in "~".join(pid3(payload))
    joined = [delivered(fakes, r) for r in rows if r.destination == "ehr_a"]
    [into_other] = [m for m in joined if person_in(m) == other]
    assert a in "~".join(pid3(into_other)) and c in "~".join(pid3(into_other))

    # Linking a person's last record elsewhere retires the person: an A40 to the EHRs that knew it.
    before = last_row_id(routed_hub)
    post(routed_hub, "/api/mpi/link", {"record": record_id(routed_hub, b, "BBB"), "person": other})
    rows = notices_after(routed_hub, before)
    assert by_destination(rows) == {"ehr_b": ["ADT^A40"], "ehr_both": ["ADT^A40"], "ehr_strict": ["ADT^A40"]}
    msg = segments(delivered(fakes, rows[0]))
    assert msg["MRG"][1] == enterprise(first) and enterprise(other) in msg["PID"][3].split("~")

    # A link that leaves the record where it is changes no identifiers.
    before = last_row_id(routed_hub)
    post(routed_hub, "/api/mpi/link", {"record": record_id(routed_hub, b, "BBB"), "person": other})
    assert notices_after(routed_hub, before) == []


def test_not_a_match_separating_one_person_sends_a31_and_between_two_persons_nothing(
    routed_hub: RunningHub, fakes: Fakes
) -> None:
    a, b = unique("N"), unique("N")
    p = someone()
    admit(routed_hub, adt_message(a, authority="AAA", **p), adt_message(b, authority="BBB", **p))
    shared = person_of(routed_hub, a, "AAA")
    assert person_of(routed_hub, b, "BBB") == shared
    before = last_row_id(routed_hub)

    answer = post(routed_hub, "/api/mpi/not-a-match", {"record": record_id(routed_hub, b, "BBB"),
                                                       "other": record_id(routed_hub, a, "AAA")})
    assert answer["other_person"] == shared and answer["person"] != shared
    rows = notices_after(routed_hub, before)
    # b left: ehr_b (knows b) hears of both persons; ehr_a (knows a) of the one a stays in.
    assert by_destination(rows) == {
        "ehr_a": ["ADT^A31"], "ehr_b": ["ADT^A31", "ADT^A31"], "ehr_both": ["ADT^A31", "ADT^A31"],
        "ehr_strict": ["ADT^A31", "ADT^A31"], "ehr_fhir": ["Bundle(transaction)"],
    }
    [to_a] = [r for r in rows if r.destination == "ehr_a"]
    payload = delivered(fakes, to_a)
    assert person_in(payload) == shared and b not in "~".join(pid3(payload))

    before = last_row_id(routed_hub)
    post(routed_hub, "/api/mpi/not-a-match", {"record": record_id(routed_hub, b, "BBB"),
                                              "other": record_id(routed_hub, a, "AAA")})
    assert notices_after(routed_hub, before) == [], "two persons already: no identifiers changed"


# --- pruning keeps what the EHRs know --------------------------------------------------------------


def test_pruned_delivered_rows_still_count_as_known(routed_hub: RunningHub, fakes: Fakes) -> None:
    s, t = unique("P"), unique("P")
    admit(routed_hub, adt_message(s, authority="AAA", **someone()), adt_message(t, authority="BBB", **stranger()))
    retired, survivor = person_of(routed_hub, s, "AAA"), person_of(routed_hub, t, "BBB")
    for name in ("ehr_a", "ehr_both", "ehr_strict"):  # every routed row delivered, then pruned
        receiver = fakes.mllp[name]
        deadline = time.monotonic() + 20
        while not any(segments(r.payload)["PID"][3].startswith(f"{s}^") for r in list(receiver.received)):
            assert time.monotonic() < deadline, f"{name} never got the admission"
            time.sleep(0.02)
    deadline = time.monotonic() + 20
    while True:
        with UnitOfWork(routed_hub.hub.engine) as uow:
            counts = uow.outbox.counts()
        if counts["pending"] + counts["sending"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)

    with routed_hub.client() as client:
        answer = client.post("/api/outbox/prune", params={"delivered_older_than_days": 0})
    assert answer.status_code == 200 and answer.json()["pruned"]["delivered"] > 0
    with routed_hub.hub.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox).where(outbox.c.state == "delivered")).scalar_one() == 0
        kept = {tuple(r) for r in conn.execute(select(outbox_known.c.ordering_key, outbox_known.c.destination))}
    assert (f"urn:hub:aa:AAA|{s}", "ehr_a") in kept

    before = last_row_id(routed_hub)
    post(routed_hub, "/api/mpi/merge", {"source": retired, "target": survivor})
    assert by_destination(notices_after(routed_hub, before)) == {
        "ehr_a": ["ADT^A40"], "ehr_both": ["ADT^A40"], "ehr_strict": ["ADT^A40"], "ehr_fhir": ["Bundle(transaction)"],
    }


# --- pruning ----------------------------------------------------------------------------------------


def _rows_of_every_state(db: Engine, destination: str) -> dict[tuple[str, int], int]:
    """(state, age in days) → row id: one row of each state 30 days old and one 1 day old, and two
    more old delivered ones (three old delivered rows in all, so that batches of 2 take two rounds);
    every row with an attempt."""
    now = utcnow()
    made: dict[tuple[str, int], int] = {}
    with UnitOfWork(db) as uow:
        plan = [(state, age) for state in STATES for age in (30, 1)] + [("delivered", 31), ("delivered", 32)]
        for n, (state, age) in enumerate(plan):
            at = now - timedelta(days=age)
            row_id = uow.outbox.add_one(None, 0, outbound(destination, f"k{n}", f"P{n}", n), at)
            uow.outbox.conn.execute(update(outbox).where(outbox.c.id == row_id).values(
                state=state, created_at=at, delivered_at=at if state == "delivered" else None))
            uow.outbox.settle([], [Attempt(row_id, 1, at, state == "delivered", "AA", "", 0.01)])
            made[(state, age)] = row_id
        uow.commit()
    return made


def _left(db: Engine, ids: Collection[int]) -> tuple[set[int], set[int]]:
    """Which of these rows are left, and which of them still have their attempts."""
    with db.connect() as conn:
        rows = set(conn.execute(select(outbox.c.id).where(outbox.c.id.in_(ids))).scalars())
        tried = set(conn.execute(select(outbox_attempts.c.outbox_id).where(outbox_attempts.c.outbox_id.in_(ids))).scalars())
    return rows, tried


def test_outbox_prune_deletes_old_delivered_rows_in_batches_and_dead_ones_only_when_asked(db: Engine) -> None:
    made = _rows_of_every_state(db, unique("prune-"))
    url = db.url.render_as_string(hide_password=False)
    runner = CliRunner()

    result = runner.invoke(main, ["outbox", "prune", "--delivered-older-than", "7", "--batch", "2", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert "pruned 3 delivered row(s), 0 dead row(s)" in result.output
    old_delivered = {made[("delivered", age)] for age in (30, 31, 32)}
    rows, tried = _left(db, made.values())
    assert rows == tried == set(made.values()) - old_delivered, "pending, sending, skipped, dead and young rows stay"

    result = runner.invoke(main, ["outbox", "prune", "--delivered-older-than", "7", "--dead-older-than", "10",
                                  "--database-url", url])
    assert result.exit_code == 0, result.output
    assert "pruned 0 delivered row(s), 1 dead row(s)" in result.output
    rows, tried = _left(db, made.values())
    assert rows == tried == set(made.values()) - old_delivered - {made[("dead", 30)]}
    assert {made[(state, 30)] for state in ("pending", "sending", "skipped")} <= rows

    result = runner.invoke(main, ["outbox", "prune", "--dead-older-than", "1", "--database-url", url])
    assert result.exit_code == 2, "the delivered age is required"


def test_outbox_prune_over_http_is_an_admin_action_that_checks_its_input_and_counts(
    routed_hub: RunningHub, db: Engine
) -> None:
    [route] = [r for r in outbox_api.router.routes if getattr(r, "path", "") == "/api/outbox/prune"]
    assert Permission.ADMIN in {getattr(d.call, "permission", None) for d in route.dependant.dependencies}
    made = _rows_of_every_state(db, unique("prune-"))
    with routed_hub.client() as client:
        assert client.post("/api/outbox/prune").status_code == 400, "the delivered age is required"
        assert client.post("/api/outbox/prune", params={"delivered_older_than_days": -1}).status_code == 400
        answer = client.post("/api/outbox/prune", params={"delivered_older_than_days": 7, "dead_older_than_days": 7})
    assert answer.status_code == 200
    assert answer.json() == {"pruned": {"delivered": 3, "dead": 1}}
    rows, _ = _left(db, made.values())
    assert rows == {made[(state, age)] for state in ("pending", "sending", "skipped") for age in (30, 1)} | {
        made[("delivered", 1)], made[("dead", 1)]}
