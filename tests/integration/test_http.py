"""HL7 v2 over HTTP, health, and the FHIR read side, over real HTTP against SQLite and PostgreSQL."""

from __future__ import annotations

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient as FhirPatient

from tests.conftest import RunningHub, ack_fields, adt, unique

HL7 = {"Content-Type": "application/hl7-v2"}


def post(hub: RunningHub, body: bytes, headers: dict[str, str] = HL7):  # type: ignore[no-untyped-def]
    with hub.client() as client:
        return client.post("/hl7v2", content=body, headers=headers)


def test_health(running_hub: RunningHub) -> None:
    with running_hub.client() as client:
        assert client.get("/health/live").status_code == 200
        ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "migrations": "ok", "mllp": "ok", "processing": "ok"}


def test_post_hl7v2_status_follows_ack_code(running_hub: RunningHub) -> None:
    good, bad, rejected = unique(), unique(), unique()
    response = post(running_hub, adt(good))
    assert response.status_code == 200
    assert ack_fields(response.content)["MSA"][1:3] == ["AA", good]
    assert response.headers["content-type"].startswith("application/hl7-v2")

    response = post(running_hub, adt(bad, birth_date="20231301"), {"Content-Type": "text/plain"})
    assert response.status_code == 422
    assert ack_fields(response.content)["MSA"][1] == "AE"

    response = post(running_hub, adt(rejected, version="3.0"))
    assert response.status_code == 400
    assert ack_fields(response.content)["ERR"][3].startswith("203^")


def test_post_hl7v2_rejects_other_media_types(running_hub: RunningHub) -> None:
    response = post(running_hub, adt(), {"Content-Type": "application/json"})
    assert response.status_code == 415


def test_batch_file_each_message_processed_alone(running_hub: RunningHub) -> None:
    ids = [unique(), unique(), unique()]
    messages = [adt(ids[0]), adt(ids[1], sex="Z"), adt(ids[2])]
    batch = b"FHS|^~\\&|TESTADT\rBHS|^~\\&|TESTADT\r" + b"".join(messages) + b"BTS|3\rFTS|1\r"
    response = post(running_hub, batch)
    assert response.status_code == 422  # one AE inside
    acks = [line for line in response.content.decode().split("\r") if line.startswith("MSA")]
    assert acks == [f"MSA|AA|{ids[0]}", f"MSA|AE|{ids[1]}", f"MSA|AA|{ids[2]}"]


def test_capability_statement_is_r4(running_hub: RunningHub) -> None:
    with running_hub.client() as client:
        response = client.get("/fhir/metadata")
    assert response.headers["content-type"].startswith("application/fhir+json")
    statement = CapabilityStatement.model_validate(response.json())
    assert statement.fhirVersion == "4.0.1"


def test_patient_admitted_over_hl7_is_readable_and_searchable_over_fhir(running_hub: RunningHub) -> None:
    mrn = unique("0")
    assert post(running_hub, adt(mrn=mrn, family="Quillfeather", given="Odalys", birth_date="197302151230", sex="F")).status_code == 200
    with running_hub.client() as client:
        bundle = client.get("/fhir/Patient", params={"identifier": f"urn:hub:aa:NORTHWIND|{mrn}"}).json()
        Bundle.model_validate(bundle)
        assert bundle["type"] == "searchset"
        [entry] = bundle["entry"]
        patient = client.get(f"/fhir/Patient/{entry['resource']['id']}")
    assert patient.status_code == 200
    assert patient.headers["etag"] == 'W/"1"'
    resource = FhirPatient.model_validate(patient.json())
    assert resource.identifier[0].value == mrn
    assert resource.identifier[0].type.coding[0].code == "MR"
    assert resource.name[0].family == "Quillfeather"
    assert resource.name[0].given == ["Odalys"]
    assert resource.name[0].use == "official"
    assert str(resource.birthDate) == "1973-02-15"
    assert resource.gender == "female"
    assert resource.telecom[0].value == "(555)555-0123"
    assert resource.address[0].postalCode == "62701"


def test_search_by_each_parameter(running_hub: RunningHub) -> None:
    mrn = unique("S")
    post(running_hub, adt(mrn=mrn, family="Zephyrine-Tallow", given="Brisa", birth_date="1961", sex="M"))
    queries = [
        {"identifier": mrn},
        {"family": "zephyrine"},  # prefix, case-insensitive
        {"family": "Zephyrine-Tallow", "given": "bri"},
        {"family": "Zephyrine-Tallow", "birthdate": "1961"},
        {"family": "Zephyrine-Tallow", "gender": "male"},
    ]
    with running_hub.client() as client:
        for query in queries:
            entries = client.get("/fhir/Patient", params=query).json().get("entry", [])
            assert [e["resource"]["identifier"][0]["value"] for e in entries] == [mrn], query
        none = client.get("/fhir/Patient", params={"family": "Zephyrine-Tallow", "gender": "female"}).json()
    assert "entry" not in none


def test_update_replaces_sent_fields_and_clears_explicit_nulls(running_hub: RunningHub) -> None:
    mrn = unique("U")
    post(running_hub, adt(mrn=mrn, family="Ravensworth", given="Idris"))
    update = adt(mrn=mrn, trigger="A08", family="Ravensworth-Pike", given="Idris").replace(b"|(555)555-0123", b'|""')
    assert post(running_hub, update).status_code == 200
    with running_hub.client() as client:
        [entry] = client.get("/fhir/Patient", params={"identifier": mrn}).json()["entry"]
    patient = entry["resource"]
    assert patient["meta"]["versionId"] == "2"
    assert patient["name"][0]["family"] == "Ravensworth-Pike"
    assert "telecom" not in patient  # "" deleted it
    assert patient["birthDate"] == "1980-04-02"  # not sent as null: kept


def test_search_paging(running_hub: RunningHub) -> None:
    family = unique("Fam").lower()
    for _ in range(5):
        post(running_hub, adt(family=family))
    with running_hub.client() as client:
        first = client.get("/fhir/Patient", params={"family": family, "_count": 2}).json()
        assert len(first["entry"]) == 2
        seen = [e["resource"]["id"] for e in first["entry"]]
        url = next(link["url"] for link in first["link"] if link["relation"] == "next")
        while url:
            page = client.get(url).json()
            seen += [e["resource"]["id"] for e in page.get("entry", [])]
            url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert len(seen) == len(set(seen)) == 5


def test_fhir_errors_are_operation_outcomes(running_hub: RunningHub) -> None:
    with running_hub.client() as client:
        missing = client.get("/fhir/Patient/does-not-exist")
        bad_count = client.get("/fhir/Patient", params={"_count": "many"})
        bad_date = client.get("/fhir/Patient", params={"birthdate": "xx"})
    assert missing.status_code == 404
    assert OperationOutcome.model_validate(missing.json()).issue[0].code == "not-found"
    assert bad_count.status_code == 400
    assert bad_date.status_code == 400
    assert OperationOutcome.model_validate(bad_date.json()).issue[0].code == "invalid"


def test_unknown_search_parameter_is_reported_not_fatal(running_hub: RunningHub) -> None:
    with running_hub.client() as client:
        bundle = client.get("/fhir/Patient", params={"identifier": "nobody-has-this", "shoe-size": "44"}).json()
    [outcome] = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert "shoe-size" in outcome["resource"]["issue"][0]["diagnostics"]
