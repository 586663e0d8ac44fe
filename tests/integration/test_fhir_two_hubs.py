"""Two hub processes on one PostgreSQL database: a FHIR write accepted by the hub that does not hold the
processing lock is answered from the stored result once someone processed it, or 503 + Retry-After when
that takes longer than the hub's bound (`fhir_write_timeout`), never 500. The lock is the advisory lock
`process_pending` takes; here a third connection holds it to play "the other process is processing".
PostgreSQL only: SQLite has no advisory lock (one process, one writer). All data fictional."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from hub.pipeline import PROCESSING_LOCK
from tests.conftest import (
    RunningHub, adt, create_postgres_database, drop_postgres_database, hub_settings, start_hub, stop_hub, unique,
)

pytestmark = pytest.mark.postgres

JSON = {"Content-Type": "application/fhir+json"}
SYSTEM = "urn:oid:2.999.3.5"
WAIT = 3.0


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


@pytest.fixture(scope="module")
def hubs(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningHub, RunningHub]]:
    first = start_hub(hub_settings(database, tmp_path_factory.mktemp("a"), fhir_write_timeout=WAIT))
    second = start_hub(hub_settings(database, tmp_path_factory.mktemp("b"), fhir_write_timeout=WAIT))
    try:
        yield first[0], second[0]
    finally:
        stop_hub(*second)
        stop_hub(*first)


class LockHolder:
    """Another process in the middle of processing: holds the processing lock until released."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (PROCESSING_LOCK,))

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def patient(mrn: str) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": mrn}],
            "name": [{"family": "Lockwood", "given": ["Perpetua"]}], "gender": "female", "birthDate": "1981-09-30"}


def post(hub: RunningHub, mrn: str, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{hub.http}/fhir/Patient", json=patient(mrn), headers=JSON | (headers or {}), timeout=60)


def found(hub: RunningHub, mrn: str) -> list[dict]:
    response = httpx.get(f"{hub.http}/fhir/Patient", params={"identifier": f"{SYSTEM}|{mrn}"}, timeout=30)
    assert response.status_code == 200
    return response.json().get("entry", [])


def test_write_waits_while_another_process_holds_the_lock(hubs: tuple[RunningHub, RunningHub], database: str) -> None:
    first, second = hubs
    mrn = unique("L")
    holder = LockHolder(database)
    answers: list[httpx.Response] = []
    writer = threading.Thread(target=lambda: answers.append(post(first, mrn)))
    try:
        writer.start()
        time.sleep(1.0)
        assert writer.is_alive()  # not answered while nobody can process it
    finally:
        holder.release()
    writer.join(30)
    [answer] = answers
    assert answer.status_code == 201, answer.text
    assert answer.headers["location"].endswith("/_history/1")
    [entry] = found(second, mrn)
    assert entry["resource"]["id"] == answer.json()["id"]


def test_write_not_processed_in_time_is_503_with_retry_after(hubs: tuple[RunningHub, RunningHub], database: str) -> None:
    first, second = hubs
    mrn = unique("L")
    holder = LockHolder(database)
    try:
        started = time.monotonic()
        answer = post(first, mrn)
        waited = time.monotonic() - started
    finally:
        holder.release()
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) >= 1
    issue = answer.json()["issue"][0]
    assert answer.json()["resourceType"] == "OperationOutcome" and issue["code"] == "transient"
    assert WAIT <= waited < WAIT + 5
    deadline = time.monotonic() + 15  # stored, so applied once the lock is free: by either hub
    while not found(second, mrn) and time.monotonic() < deadline:
        time.sleep(0.2)
    [entry] = found(second, mrn)
    retried = post(first, mrn, {"If-None-Exist": f"identifier={SYSTEM}|{mrn}"})  # a conditional retry is safe
    assert retried.status_code == 200 and retried.json()["id"] == entry["resource"]["id"]


def test_writes_through_both_hubs_at_once_never_fail(hubs: tuple[RunningHub, RunningHub]) -> None:
    mrns = [unique("D") for _ in range(40)]

    def write(n: int) -> int:
        return post(hubs[n % 2], mrns[n]).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(write, range(len(mrns))))
    assert statuses == [201] * len(mrns)
    for mrn in mrns[:5]:
        assert len(found(hubs[1], mrn)) == 1


def test_message_stored_by_one_hub_is_processed_by_the_other(hubs: tuple[RunningHub, RunningHub], database: str) -> None:
    """An HL7 v2 message left pending (its hub could not take the lock) is not stranded: idle hubs poll."""
    first, second = hubs
    mrn = unique("M")
    holder = LockHolder(database)
    try:
        ack = httpx.post(f"{first.http}/hl7v2", content=adt(mrn=mrn), headers={"Content-Type": "application/hl7-v2"}, timeout=30)
        assert ack.status_code == 200
        time.sleep(0.5)
    finally:
        holder.release()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = httpx.get(f"{second.http}/fhir/Patient", params={"identifier": mrn}, timeout=30)
        if response.json().get("entry"):
            break
        time.sleep(0.2)
    assert len(response.json()["entry"]) == 1

