"""The FHIR API driven by a client nobody here wrote (fhirpy 2.3, sync and async), against the
running hub on SQLite and PostgreSQL. All data fictional."""

from __future__ import annotations

import asyncio

import pytest
from fhirpy import AsyncFHIRClient, SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

from tests.conftest import RunningHub, unique

SYSTEM = "urn:hub:test:fhirpy"


def _client(hub: RunningHub) -> SyncFHIRClient:
    return SyncFHIRClient(f"{hub.http}/fhir", extra_headers={"Accept": "application/fhir+json"})


def test_fhirpy_create_read_update_search_delete(running_hub: RunningHub) -> None:
    client = _client(running_hub)
    mrn = unique("Y")
    patient = client.resource(
        "Patient",
        identifier=[{"system": SYSTEM, "value": mrn}],
        name=[{"family": "Marchbank", "given": ["Tove"]}],
        gender="female",
        birthDate="1988-09-30",
    )
    patient.save()
    assert patient.id
    assert patient["meta"]["versionId"] == "1"

    fetched = client.reference("Patient", patient.id).to_resource()
    assert fetched["name"][0]["family"] == "Marchbank"

    fetched["gender"] = "other"
    fetched.save()
    assert fetched["meta"]["versionId"] == "2"

    found = client.resources("Patient").search(identifier=f"{SYSTEM}|{mrn}").fetch_all()
    assert [p.id for p in found] == [patient.id]
    assert client.resources("Patient").search(family="marchb", birthdate__ge="1988-01-01").search(identifier=mrn).count() == 1

    observation = client.resource(
        "Observation", status="final", code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        subject=patient.to_reference(), effectiveDateTime="2024-04-01T10:00:00Z",
        valueQuantity={"value": 72, "unit": "/min"},
    )
    observation.save()
    results = client.resources("Observation").search(patient=patient.id).include("Observation", "subject").fetch_raw()
    assert {e["search"]["mode"] for e in results["entry"]} == {"match", "include"}

    fetched.delete()
    with pytest.raises((ResourceNotFound, OperationOutcome)):
        client.reference("Patient", patient.id).to_resource()


def test_fhirpy_conditional_create_and_errors(running_hub: RunningHub) -> None:
    client = _client(running_hub)
    mrn = unique("Y")
    first = client.resource("Patient", identifier=[{"system": SYSTEM, "value": mrn}], name=[{"family": "Ashgrove"}])
    first.create(identifier=f"{SYSTEM}|{mrn}")
    second = client.resource("Patient", identifier=[{"system": SYSTEM, "value": mrn}], name=[{"family": "Other"}])
    second.create(identifier=f"{SYSTEM}|{mrn}")
    assert second.id == first.id
    assert client.resources("Patient").search(identifier=mrn).count() == 1

    bad = client.resource("Patient", birthDate="1988-02-31")
    with pytest.raises(OperationOutcome) as raised:
        bad.save()
    assert "Patient.birthDate" in str(raised.value)


def test_fhirpy_async_client_paging(running_hub: RunningHub) -> None:
    family = unique("Pg").lower()

    async def run() -> list[str]:
        client = AsyncFHIRClient(f"{running_hub.http}/fhir")
        for n in range(5):
            await client.resource("Patient", name=[{"family": family, "given": [f"G{n}"]}]).save()
        return [p.id async for p in client.resources("Patient").search(family=family).limit(2)]

    ids = asyncio.run(run())
    assert len(ids) == len(set(ids)) == 5


def test_fhirpy_or_modifiers_chain_revinclude_history(running_hub: RunningHub) -> None:
    client = _client(running_hub)
    family, mrn = unique("Fp"), unique("Y")
    ines = client.resource("Patient", identifier=[{"system": SYSTEM, "value": mrn}],
                           name=[{"family": family, "given": ["Ines"]}], gender="female")
    ines.save()
    odd = client.resource("Patient", name=[{"family": family.lower(), "given": ["Odd"]}], gender="male")
    odd.save()
    patients = client.resources("Patient")
    assert {p.id for p in patients.search(family=family, gender="male,female").fetch_all()} == {ines.id, odd.id}
    assert [p.id for p in patients.search(family__exact=family).fetch_all()] == [ines.id]
    assert {p.id for p in patients.search(family__contains=family[2:].lower()).fetch_all()} == {ines.id, odd.id}
    assert [p.id for p in patients.search(family=family, gender__not="female").fetch_all()] == [odd.id]

    observation = client.resource("Observation", status="final", code={"text": "pulse"}, subject=ines.to_reference())
    observation.save()
    chained = client.resources("Observation").search(subject__Patient__identifier=f"{SYSTEM}|{mrn}").fetch_all()
    assert [o.id for o in chained] == [observation.id]
    raw = patients.search(_id=ines.id).revinclude("Observation", "subject").fetch_raw()
    assert {(e["resource"]["resourceType"], e["search"]["mode"]) for e in raw["entry"]} == {
        ("Patient", "match"), ("Observation", "include"),
    }
    history = client.execute("Patient/_history", method="get", params={"_count": 2})
    assert history["type"] == "history" and len(history["entry"]) == 2
