"""MPI link changes told to EHRs, over the steward's HTTP API of a running hub with a real routes
file and fake MLLP receivers: a merge sends ADT^A40 (PID-3 the survivor's identifiers, MRG-1 the
merged-away enterprise id) to the `ehr` destinations only; an unlink sends ADT^A31 for both persons."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.store.uow import UnitOfWork
from tests.conftest import RunningHub, hub_settings, start_hub, stop_hub, unique
from tests.integration.delivery_fakes import FakeMllpReceiver
from tests.integration.test_mpi_api import (
    person_of,
    record_id,
    send_over_two_connections,
)
from tests.integration.test_mpi_linking import adt_message, someone, stranger


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


@pytest.fixture(scope="module")
def receivers(database_url: str) -> Iterator[tuple[FakeMllpReceiver, FakeMllpReceiver]]:
    """Per database (message ids, hence control ids, start again in each)."""
    ehr, lab = FakeMllpReceiver().start(), FakeMllpReceiver().start()
    yield ehr, lab
    ehr.stop()
    lab.stop()


@pytest.fixture(scope="module")
def routed_hub(database_url: str, tmp_path_factory: pytest.TempPathFactory,
               receivers: tuple[FakeMllpReceiver, FakeMllpReceiver]) -> Iterator[RunningHub]:
    ehr, lab = receivers
    data = tmp_path_factory.mktemp("data")
    routes = Path(data) / "routes.yaml"
    routes.write_text(textwrap.dedent(f"""\
        destinations:
          ehr: {{transport: mllp, host: 127.0.0.1, port: {ehr.port}, profile: ehr, timeout: 2}}
          lab: {{transport: mllp, host: 127.0.0.1, port: {lab.port}, profile: lab, timeout: 2}}
        routes:
          - {{name: adt-to-ehr, when: {{message_type: ADT}}, to: [ehr]}}
        """))
    running, thread = start_hub(hub_settings(database_url, data, routes=routes))
    yield running
    stop_hub(running, thread)


def received_since(receiver: FakeMllpReceiver, before: int, count: int) -> list[bytes]:
    assert receiver.wait_for(before + count), f"expected {count} more"
    return [r.payload for r in receiver.received[before:]]


def test_merge_sends_a40_and_unlink_sends_a31_to_ehr_only(
    routed_hub: RunningHub, receivers: tuple[FakeMllpReceiver, FakeMllpReceiver]
) -> None:
    ehr, lab = receivers
    first, second = unique("N"), unique("N")
    before = len(ehr.received)
    send_over_two_connections(routed_hub.mllp_port, [adt_message(first, authority="EHRX", **someone())],
                              [adt_message(second, authority="LABX", **stranger())])
    received_since(ehr, before, 2)
    survivor, merged = person_of(routed_hub, first, "EHRX"), person_of(routed_hub, second, "LABX")
    assert survivor != merged
    client = routed_hub.client()

    before = len(ehr.received)
    answer = client.post("/api/mpi/merge", json={"source": merged, "target": survivor})
    assert answer.status_code == 200 and answer.json()["person"] == survivor
    [a40] = received_since(ehr, before, 1)
    msg = segments(a40)
    assert msg["MSH"][9] == "ADT^A40^ADT_A39" and msg["EVN"][1] == "A40"
    pid3 = msg["PID"][3].split("~")
    assert f"{first}^^^EHRX^MR" in pid3 and f"{survivor}^^^HUB^PI" in pid3
    assert any(c.startswith(f"{second}^") for c in pid3), "the merged-away record's identifier is the survivor's now"
    assert msg["MRG"][1] == f"{merged}^^^HUB^PI"
    assert msg["MSH"][10].startswith("L")
    with UnitOfWork(routed_hub.hub.engine) as uow:
        [row] = [r for r in uow.outbox.listing(destination="ehr", limit=1000) if r.idempotency_key == msg["MSH"][10]]
    assert (row.route, row.message_id, row.summary, row.state) == ("mpi-link-change", None, "ADT^A40", "delivered")

    before = len(ehr.received)
    moved = record_id(routed_hub, second, "LABX")
    answer = client.post("/api/mpi/unlink", json={"record": moved})
    assert answer.status_code == 200
    new_person = answer.json()["person"]
    assert new_person != survivor and answer.json()["previous_person"] == survivor
    notices = [segments(p) for p in received_since(ehr, before, 2)]
    assert [n["MSH"][9] for n in notices] == ["ADT^A31^ADT_A05"] * 2
    by_person = {next(c for c in n["PID"][3].split("~") if c.endswith("^HUB^PI")): n["PID"][3] for n in notices}
    assert set(by_person) == {f"{new_person}^^^HUB^PI", f"{survivor}^^^HUB^PI"}
    assert second in by_person[f"{new_person}^^^HUB^PI"] and first not in by_person[f"{new_person}^^^HUB^PI"]
    assert first in by_person[f"{survivor}^^^HUB^PI"] and second not in by_person[f"{survivor}^^^HUB^PI"]
    assert lab.received == [], "only ehr destinations hear of link changes"

    # A refused action writes nothing.
    with UnitOfWork(routed_hub.hub.engine) as uow:
        count = sum(uow.outbox.counts().values())
    assert client.post("/api/mpi/merge", json={"source": survivor, "target": survivor}).status_code == 409
    with UnitOfWork(routed_hub.hub.engine) as uow:
        assert sum(uow.outbox.counts().values()) == count
