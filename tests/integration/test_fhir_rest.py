"""FHIR R4 REST over real HTTP against a running hub, on SQLite and PostgreSQL: every interaction,
every error path, XML round-trips, and HL7 v2 records read as FHIR resources. All data fictional."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient as FhirPatient

from tests.conftest import RunningHub, adt, unique

JSON = {"Content-Type": "application/fhir+json"}
XML = {"Content-Type": "application/fhir+xml", "Accept": "application/fhir+xml"}
CORPUS = Path(__file__).parent.parent / "corpus" / "hl7v2"
SYSTEM = "urn:hub:test:mrn"


def client(hub: RunningHub) -> httpx.Client:
    return httpx.Client(base_url=hub.http + "/fhir", timeout=30)


def patient(mrn: str | None = None, **overrides: object) -> dict:
    resource = {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": mrn or unique("F")}],
        "name": [{"family": "Testwright", "given": ["Ilse"]}],
        "gender": "female",
        "birthDate": "1975-06-14",
        "telecom": [{"system": "phone", "value": "555-0142"}],
        "address": [{"line": ["3 Pine Row"], "city": "Springfield", "postalCode": "62704"}],
    }
    resource.update(overrides)
    return resource


def outcome(response: httpx.Response) -> OperationOutcome:
    return OperationOutcome.model_validate(response.json())


def create(c: httpx.Client, resource: dict, headers: dict | None = None) -> httpx.Response:
    return c.post(f"/{resource['resourceType']}", json=resource, headers=JSON | (headers or {}))


# ---------------------------------------------------------------- create, read, vread, update, delete, history

def test_create_returns_201_location_etag_and_read_returns_what_was_written(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        created = create(c, patient())
        assert created.status_code == 201
        body = created.json()
        assert created.headers["location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
        assert created.headers["etag"] == 'W/"1"'
        assert created.headers["content-type"].startswith("application/fhir+json")
        read = c.get(f"/Patient/{body['id']}")
    assert read.status_code == 200
    resource = FhirPatient.model_validate(read.json())
    assert resource.meta.versionId == "1"
    assert resource.telecom[0].value == "555-0142"
    assert read.json()["name"] == [{"family": "Testwright", "given": ["Ilse"]}]


def test_update_versions_vread_history_and_if_match(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        pid = create(c, patient()).json()["id"]
        changed = patient(id=pid, gender="other")
        changed["identifier"] = c.get(f"/Patient/{pid}").json()["identifier"]
        updated = c.put(f"/Patient/{pid}", json=changed, headers=JSON | {"If-Match": 'W/"1"'})
        assert updated.status_code == 200
        assert updated.json()["meta"]["versionId"] == "2"
        assert updated.headers["etag"] == 'W/"2"'
        stale = c.put(f"/Patient/{pid}", json=changed | {"gender": "male"}, headers=JSON | {"If-Match": 'W/"1"'})
        assert stale.status_code == 412
        assert outcome(stale).issue[0].code == "conflict"
        same = c.put(f"/Patient/{pid}", json=changed, headers=JSON)
        assert same.json()["meta"]["versionId"] == "2"  # unchanged: no new version
        assert c.get(f"/Patient/{pid}/_history/1").json()["gender"] == "female"
        assert c.get(f"/Patient/{pid}/_history/2").json()["gender"] == "other"
        assert c.get(f"/Patient/{pid}/_history/9").status_code == 404
        history = c.get(f"/Patient/{pid}/_history").json()
    Bundle.model_validate(history)
    assert history["type"] == "history"
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"', 'W/"1"']


def test_update_as_create_with_client_id(running_hub: RunningHub) -> None:
    pid = f"client-{uuid.uuid4().hex[:10]}"
    with client(running_hub) as c:
        response = c.put(f"/Patient/{pid}", json=patient(id=pid), headers=JSON)
        assert response.status_code == 201
        assert c.get(f"/Patient/{pid}").status_code == 200


def test_delete_then_read_is_gone_search_excludes_history_keeps(running_hub: RunningHub) -> None:
    mrn = unique("D")
    with client(running_hub) as c:
        pid = create(c, patient(mrn)).json()["id"]
        assert c.delete(f"/Patient/{pid}").status_code == 204
        gone = c.get(f"/Patient/{pid}")
        assert gone.status_code == 410
        assert outcome(gone).issue[0].code == "deleted"
        assert "entry" not in c.get("/Patient", params={"identifier": f"{SYSTEM}|{mrn}"}).json()
        history = c.get(f"/Patient/{pid}/_history").json()
        assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
        assert c.get(f"/Patient/{pid}/_history/2").status_code == 410
        assert c.delete("/Patient/not-a-known-id").status_code == 404


def test_conditional_create(running_hub: RunningHub) -> None:
    mrn = unique("C")
    condition = {"If-None-Exist": f"identifier={SYSTEM}|{mrn}"}
    with client(running_hub) as c:
        first = create(c, patient(mrn), condition)
        second = create(c, patient(mrn, gender="male"), condition)
        assert (first.status_code, second.status_code) == (201, 200)
        assert second.json()["id"] == first.json()["id"]
        assert second.json()["gender"] == "female"  # nothing changed
        family = unique("Dup").lower()
        create(c, patient(name=[{"family": family}]))
        create(c, patient(name=[{"family": family}]))
        several = create(c, patient(), {"If-None-Exist": f"family={family}"})
    assert several.status_code == 412
    assert outcome(several).issue[0].code == "multiple-matches"


def test_conditional_update(running_hub: RunningHub) -> None:
    mrn = unique("Q")
    with client(running_hub) as c:
        created = c.put("/Patient", params={"identifier": f"{SYSTEM}|{mrn}"}, json=patient(mrn), headers=JSON)
        assert created.status_code == 201
        updated = c.put("/Patient", params={"identifier": f"{SYSTEM}|{mrn}"}, json=patient(mrn, gender="male"), headers=JSON)
    assert updated.status_code == 200
    assert updated.json()["id"] == created.json()["id"]
    assert updated.json()["meta"]["versionId"] == "2"


# ---------------------------------------------------------------- search

def test_patient_search_parameters(running_hub: RunningHub) -> None:
    mrn = unique("P")
    family = unique("Srch").lower()
    with client(running_hub) as c:
        pid = create(c, patient(mrn, name=[{"family": family, "given": ["Oriel"]}], birthDate="1961-03")).json()["id"]
        queries = [
            {"_id": pid}, {"identifier": mrn}, {"identifier": f"{SYSTEM}|{mrn}"}, {"family": family},
            {"given": "ori", "family": family}, {"name": family}, {"name": "oriel", "family": family},
            {"family": family, "birthdate": "1961"},
            {"family": family, "birthdate": "ge1961-03-10"}, {"family": family, "birthdate": "le1961-03-01"},
            {"family": family, "birthdate": "lt1962"}, {"family": family, "birthdate": "gt1960"},
            {"family": family, "gender": "female"}, {"family": family, "address-postalcode": "62704"},
            {"family": family, "telecom": "555-0142"}, {"family": family, "_lastUpdated": "ge2020-01-01"},
        ]
        for query in queries:
            entries = c.get("/Patient", params=query).json().get("entry", [])
            assert [e["resource"]["id"] for e in entries if e["search"]["mode"] == "match"] == [pid], query
        for query in [{"family": family, "birthdate": "eq1961-04"}, {"family": family, "birthdate": "gt1961-12"},
                      {"family": family, "gender": "male"}, {"family": family, "_lastUpdated": "lt2020-01-01"}]:
            assert "entry" not in c.get("/Patient", params=query).json(), query


def test_unknown_parameters_lenient_and_strict(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        lenient = c.get("/Patient", params={"shoe-size": "44", "identifier": "nobody"})
        strict = c.get("/Patient", params={"shoe-size": "44"}, headers={"Prefer": "handling=strict"})
        bad_value = c.get("/Encounter", params={"date": "tomorrow"})
    assert lenient.status_code == 200
    assert strict.status_code == 400
    assert outcome(strict).issue[0].code == "not-supported"
    assert bad_value.status_code == 400
    assert outcome(bad_value).issue[0].expression == ["date"]


def _clinical(c: httpx.Client, pid: str, day: str, code: str = "718-7") -> dict:
    observation = {
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": f"{day}T08:30:00Z",
        "valueQuantity": {"value": 13.1, "unit": "g/dL"},
    }
    response = create(c, observation)
    assert response.status_code == 201, response.text
    return response.json()


def test_observation_search_sort_include_and_paging(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        pid = create(c, patient()).json()["id"]
        for day in ("2024-03-02", "2024-03-01", "2024-03-03"):
            _clinical(c, pid, day)
        _clinical(c, pid, "2024-03-04", code="2345-7")
        page = c.get("/Observation", params={"patient": pid, "code": "http://loinc.org|718-7", "_sort": "-date", "_count": 2,
                                             "_include": "Observation:subject"}).json()
        Bundle.model_validate(page)
        matches = [e["resource"]["effectiveDateTime"][:10] for e in page["entry"] if e["search"]["mode"] == "match"]
        assert matches == ["2024-03-03", "2024-03-02"]
        assert [e["resource"]["id"] for e in page["entry"] if e["search"]["mode"] == "include"] == [pid]
        following = c.get(next(link["url"] for link in page["link"] if link["relation"] == "next")).json()
        assert [e["resource"]["effectiveDateTime"][:10] for e in following["entry"] if e["search"]["mode"] == "match"] == ["2024-03-01"]
        for query in [{"subject": f"Patient/{pid}", "date": "2024-03-04"}, {"patient": pid, "code": "2345-7"},
                      {"patient": pid, "category": "laboratory", "date": "gt2024-03-03"}, {"patient": pid, "status": "final", "code": "2345-7"}]:
            assert len(c.get("/Observation", params=query).json()["entry"]) == 1, query


def test_every_resource_type_create_read_search(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        pid = create(c, patient()).json()["id"]
        subject = {"reference": f"Patient/{pid}"}
        ident = [{"system": "urn:hub:test:id", "value": unique("R")}]
        resources = [
            {"resourceType": "Encounter", "identifier": ident, "status": "finished",
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
             "subject": subject, "period": {"start": "2024-02-01T09:00:00Z", "end": "2024-02-01T10:00:00Z"}},
            {"resourceType": "ServiceRequest", "identifier": ident, "status": "active", "intent": "order",
             "code": {"coding": [{"system": "http://loinc.org", "code": "24323-8"}]}, "subject": subject},
            {"resourceType": "DiagnosticReport", "identifier": ident, "status": "final",
             "code": {"coding": [{"system": "http://loinc.org", "code": "24323-8"}]}, "subject": subject},
            {"resourceType": "Appointment", "identifier": ident, "status": "booked", "start": "2024-05-01T09:00:00Z",
             "end": "2024-05-01T09:30:00Z", "participant": [{"actor": subject, "status": "accepted"}]},
            {"resourceType": "Account", "identifier": ident, "status": "active", "subject": [subject]},
            {"resourceType": "ChargeItem", "identifier": ident, "status": "billable",
             "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "93000"}]}, "subject": subject},
        ]
        for resource in resources:
            kind = resource["resourceType"]
            created = create(c, resource)
            assert created.status_code == 201, (kind, created.text)
            rid = created.json()["id"]
            assert c.get(f"/{kind}/{rid}").json()["status"] == resource["status"]
            found = c.get(f"/{kind}", params={"patient": pid}).json()
            assert [e["resource"]["id"] for e in found["entry"]] == [rid], kind
            by_identifier = c.get(f"/{kind}", params={"identifier": f"urn:hub:test:id|{ident[0]['value']}"}).json()
            assert [e["resource"]["id"] for e in by_identifier["entry"]] == [rid], kind
        encounter = c.get("/Encounter", params={"subject": f"Patient/{pid}", "date": "2024-02-01", "status": "finished"}).json()
        assert len(encounter["entry"]) == 1


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize(
    ("body", "status", "code", "where"),
    [
        (b"{not json", 400, "structure", "body"),
        (b'{"resourceType": "Patient", "birthDate": 86400}', 400, "structure", "Patient.birthDate"),
        (b'{"resourceType": "Patient", "active": "true"}', 400, "structure", "Patient.active"),
        (b'{"resourceType": "Patient", "gender": "xyz"}', 400, "code-invalid", "Patient.gender"),
        (b'{"resourceType": "Patient", "shoeSize": 44}', 400, "structure", "Patient.shoeSize"),
        (b'{"resourceType": "Patient", "name": [{"family": ["a"]}]}', 400, "structure", "Patient.name[0].family"),
        (b'{"resourceType": "Patient", "birthDate": "1980-13-45"}', 400, "value", "Patient.birthDate"),
        (b'{"resourceType": "Observation", "status": "final", "code": {"text": "x"}}', 400, "invalid", "Patient.resourceType"),
        (b'[]', 400, "structure", "resourceType"),
    ],
)
def test_invalid_bodies_are_operation_outcomes(running_hub: RunningHub, body: bytes, status: int, code: str, where: str) -> None:
    with client(running_hub) as c:
        response = c.post("/Patient", content=body, headers=JSON)
    assert response.status_code == status
    issue = outcome(response).issue[0]
    assert (issue.code, issue.expression) == (code, [where])
    assert "86400" not in response.text and "xyz" not in response.text  # the value is never echoed


def test_http_errors(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        pid = create(c, patient()).json()["id"]
        cases = [
            (c.get("/Patient/nobody-has-this-id"), 404, "not-found"),
            (c.get("/Medication/1"), 404, "not-supported"),
            (c.patch(f"/Patient/{pid}", json={}), 405, "not-supported"),
            (c.post("/Patient", content=b"{}", headers={"Content-Type": "text/csv"}), 415, "not-supported"),
            (c.put(f"/Patient/{pid}", json=patient(id="other-id"), headers=JSON), 400, "invalid"),
            (c.put(f"/Encounter/{pid}", json={"resourceType": "Encounter", "id": pid, "status": "planned",
                                             "class": {"code": "AMB"}}, headers=JSON), 409, "conflict"),
            (create(c, {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                        "subject": {"reference": "Patient/not-known"}}), 422, "processing"),
            (c.post("/Patient", json=patient(), headers=JSON | {"If-None-Exist": "shoe=1"}), 400, "not-supported"),
        ]
    for response, status, code in cases:
        assert response.status_code == status, response.text
        assert outcome(response).issue[0].code == code
        assert "Traceback" not in response.text


def test_identifier_taken_by_another_record_is_a_conflict(running_hub: RunningHub) -> None:
    mrn = unique("K")
    with client(running_hub) as c:
        create(c, patient(mrn))
        other = create(c, patient()).json()
        other["identifier"] = [{"system": SYSTEM, "value": mrn}]
        other.pop("meta")
        response = c.put(f"/Patient/{other['id']}", json=other, headers=JSON)
    assert response.status_code == 409
    assert outcome(response).issue[0].code == "duplicate"


# ---------------------------------------------------------------- XML

def test_xml_round_trip(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        xml = FhirPatient.model_validate(patient()).model_dump_xml()
        created = c.post("/Patient", content=xml, headers=XML)
        assert created.status_code == 201, created.text
        assert created.headers["content-type"].startswith("application/fhir+xml")
        back = FhirPatient.model_validate_xml(created.content)
        assert back.name[0].family == "Testwright"
        pid = back.id
        as_json = c.get(f"/Patient/{pid}").json()
        as_xml = c.get(f"/Patient/{pid}", params={"_format": "xml"})
        assert FhirPatient.model_validate_xml(as_xml.content).model_dump(mode="json", exclude_none=True) == as_json
        put_back = c.put(f"/Patient/{pid}", content=as_xml.content, headers=XML)
        assert put_back.status_code == 200
        assert FhirPatient.model_validate_xml(put_back.content).meta.versionId == "1"  # same content: same version
        search = c.get("/Patient", params={"_id": pid}, headers={"Accept": "application/fhir+xml"})
        assert Bundle.model_validate_xml(search.content).entry[0].resource.id == pid
        bad = c.post("/Patient", content=b"<Patient xmlns='http://hl7.org/fhir'><foo/>", headers=XML)
        assert bad.status_code == 400
        assert b"OperationOutcome" in bad.content


# ---------------------------------------------------------------- transaction and batch

def test_transaction_atomic_ordered_with_urn_uuid_references(running_hub: RunningHub) -> None:
    temp = f"urn:uuid:{uuid.uuid4()}"
    mrn = unique("T")
    with client(running_hub) as c:
        doomed = create(c, patient()).json()["id"]
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "GET", "url": f"Patient?identifier={SYSTEM}|{mrn}"}},
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": {
                "resourceType": "Observation", "status": "final", "code": {"text": "weight"},
                "subject": {"reference": temp}}, "request": {"method": "POST", "url": "Observation"}},
            {"fullUrl": temp, "resource": patient(mrn), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "DELETE", "url": f"Patient/{doomed}"}},
        ]}
        response = httpx.post(running_hub.http + "/fhir", json=bundle, headers=JSON, timeout=30)
        assert response.status_code == 200, response.text
        result = response.json()
        Bundle.model_validate(result)
        assert result["type"] == "transaction-response"
        statuses = [e["response"]["status"] for e in result["entry"]]
        assert statuses == ["200 OK", "201 Created", "201 Created", "204 No Content"]
        new_patient = result["entry"][2]["resource"]["id"]
        assert result["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{new_patient}"
        assert len(result["entry"][0]["resource"]["entry"]) == 1  # GET runs after the writes
        assert c.get(f"/Patient/{doomed}").status_code == 410

        mrn2 = unique("T")
        failing = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": patient(mrn2), "request": {"method": "POST", "url": "Patient"}},
            {"resource": patient(id="nobody", gender="male"), "request": {"method": "PUT", "url": "Patient/nobody"},
             },
            {"request": {"method": "DELETE", "url": "Patient/no-such-patient"}},
        ]}
        response = httpx.post(running_hub.http + "/fhir", json=failing, headers=JSON, timeout=30)
        assert response.status_code == 404
        assert outcome(response).issue[0].code == "not-found"
        assert "entry" not in c.get("/Patient", params={"identifier": mrn2}).json()  # nothing written


def test_batch_entries_succeed_or_fail_alone(running_hub: RunningHub) -> None:
    mrn = unique("B")
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient(mrn), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "DELETE", "url": "Patient/no-such-patient"}},
        {"request": {"method": "GET", "url": "Patient/no-such-patient"}},
    ]}
    response = httpx.post(running_hub.http + "/fhir", json=bundle, headers=JSON, timeout=30)
    assert response.status_code == 200
    result = response.json()
    assert result["type"] == "batch-response"
    assert [e["response"]["status"] for e in result["entry"]] == ["201 Created", "404 Not Found", "404 Not Found"]
    with client(running_hub) as c:
        assert len(c.get("/Patient", params={"identifier": mrn}).json()["entry"]) == 1


def test_bundle_errors(running_hub: RunningHub) -> None:
    cases = [
        ({"resourceType": "Bundle", "type": "collection"}, 400, "Bundle.type"),
        ({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Nonsense"}, "request": {"method": "POST", "url": "Patient"}}]},
         400, "Bundle.entry[0].resource.resourceType"),
        ({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": patient(birthDate=12), "request": {"method": "POST", "url": "Patient"}}]},
         400, "Bundle.entry[0].resource.birthDate"),
        ({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": patient()}]}, 400, "Bundle.entry[0].request"),
    ]
    for bundle, status, where in cases:
        response = httpx.post(running_hub.http + "/fhir", json=bundle, headers=JSON, timeout=30)
        assert response.status_code == status, response.text
        assert outcome(response).issue[0].expression == [where]


# ---------------------------------------------------------------- HL7 v2 records as FHIR resources

def _hl7(hub: RunningHub, name: str, mrn: str) -> None:
    raw = (CORPUS / name).read_bytes().replace(b"000123^", mrn.encode() + b"^").replace(b"000987^", mrn.encode() + b"^")
    raw = raw.replace(b"|MSG0", f"|{unique('M')}".encode() + b"0").replace(b"LAB-20240314-000123", unique("L").encode())
    response = httpx.post(hub.http + "/hl7v2", content=raw, headers={"Content-Type": "application/hl7-v2"}, timeout=30)
    assert response.status_code == 200, response.text


def test_hl7v2_records_are_fhir_resources(running_hub: RunningHub) -> None:
    mrn = unique("7")
    _hl7(running_hub, "oru_r01_lab_251.hl7", mrn)
    _hl7(running_hub, "dft_p03_epic_24.hl7", mrn)
    with client(running_hub) as c:
        [entry] = c.get("/Patient", params={"identifier": mrn}).json()["entry"]
        pid = entry["resource"]["id"]
        observations = c.get("/Observation", params={"patient": pid}).json()
        Bundle.model_validate(observations)
        assert len(observations["entry"]) >= 3
        reports = c.get("/DiagnosticReport", params={"patient": pid}).json()
        Bundle.model_validate(reports)
        [report] = reports["entry"]
        results = {r["reference"] for r in report["resource"]["result"]}
        assert results == {f"Observation/{e['resource']['id']}" for e in observations["entry"]}
        orders = c.get("/ServiceRequest", params={"patient": pid, "code": "24323-8"}).json()
        Bundle.model_validate(orders)
        assert len(orders["entry"]) == 1
        charges = c.get("/ChargeItem", params={"patient": pid}).json()
        Bundle.model_validate(charges)
        assert len(charges["entry"]) == 2
        encounters = c.get("/Encounter", params={"patient": pid}).json()
        Bundle.model_validate(encounters)
        assert encounters["entry"][0]["resource"]["class"]["code"] == "AMB"
        assert c.get(f"/Observation/{observations['entry'][0]['resource']['id']}", params={"_format": "xml"}).status_code == 200


def test_fhir_created_patient_is_the_same_record_as_hl7(running_hub: RunningHub) -> None:
    mrn = unique("H")
    with client(running_hub) as c:
        created = create(c, patient(identifier=[{"system": "urn:hub:aa:NORTHWIND", "value": mrn}]))
        assert created.status_code == 201
        response = httpx.post(running_hub.http + "/hl7v2", content=adt(mrn=mrn, trigger="A08", family="Quintrell"),
                              headers={"Content-Type": "application/hl7-v2"}, timeout=30)
        assert response.status_code == 200
        [entry] = c.get("/Patient", params={"identifier": mrn}).json()["entry"]
    assert entry["resource"]["id"] == created.json()["id"]
    assert entry["resource"]["name"][0]["family"] == "Quintrell"
    assert entry["resource"]["meta"]["versionId"] == "2"


# ---------------------------------------------------------------- concurrency

def test_parallel_conditional_creates_make_one_patient(running_hub: RunningHub) -> None:
    """The known failure of popular FHIR servers: N simultaneous conditional creates, N patients.
    Here every write is applied on the one processing writer (and, across processes, under the
    PostgreSQL advisory lock), so the second create sees the first."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    mrn = unique("RACE")
    barrier = Barrier(10)

    def fire(n: int) -> httpx.Response:
        with client(running_hub) as c:
            barrier.wait()
            return create(c, patient(mrn, name=[{"family": f"Racer{n}"}]), {"If-None-Exist": f"identifier={SYSTEM}|{mrn}"})

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(fire, range(10)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 9 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    with client(running_hub) as c:
        found = c.get("/Patient", params={"identifier": f"{SYSTEM}|{mrn}"}).json()
    assert len(found["entry"]) == 1
    assert found["entry"][0]["resource"]["meta"]["versionId"] == "1"


def test_parallel_plain_creates_same_identifier_make_one_record(running_hub: RunningHub) -> None:
    """Without If-None-Exist, creates naming the same source identifier are one source record
    (upsert by source key, as for every feed): one 201, the others 200 on the same id."""
    from concurrent.futures import ThreadPoolExecutor

    mrn = unique("RACE")
    def fire(_: int) -> httpx.Response:
        with client(running_hub) as c:
            return create(c, patient(mrn))

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(fire, range(10)))
    assert sorted(r.status_code for r in responses) == [200] * 9 + [201]
    assert len({r.json()["id"] for r in responses}) == 1


def test_validate_operation_takes_a_resource_or_parameters(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        ok = c.post("/Patient/$validate", json=patient(), headers=JSON)
        wrapped = c.post("/Patient/$validate", json={"resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": patient(birthDate="1975-02-30")}]}, headers=JSON)
        before = c.get("/Patient", params={"family": "Testwright", "_total": "accurate", "_count": 0}).json()["total"]
    assert ok.status_code == 200
    assert outcome(ok).issue[0].severity == "information"
    assert wrapped.status_code == 400
    assert outcome(wrapped).issue[0].expression == ["Parameters.parameter[0].resource.birthDate"]
    with client(running_hub) as c:
        assert c.get("/Patient", params={"family": "Testwright", "_total": "accurate", "_count": 0}).json()["total"] == before


def test_xml_transaction_and_external_entities_refused(running_hub: RunningHub) -> None:
    bundle = Bundle.model_validate({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}}]})
    response = httpx.post(running_hub.http + "/fhir", content=bundle.model_dump_xml(), headers=XML, timeout=30)
    assert response.status_code == 200, response.text
    result = Bundle.model_validate_xml(response.content)
    assert result.type == "transaction-response"
    assert result.entry[0].response.status == "201 Created"
    xxe = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/hostname">]>'
           b'<Patient xmlns="http://hl7.org/fhir"><name><family value="&e;"/></name></Patient>')
    with client(running_hub) as c:
        refused = c.post("/Patient", content=xxe, headers=XML)
    assert refused.status_code == 400


def test_hl7v2_appointment_and_order_are_fhir_resources(running_hub: RunningHub) -> None:
    mrn = unique("8")
    _hl7(running_hub, "siu_s12_epic_251.hl7", mrn)
    with client(running_hub) as c:
        [entry] = c.get("/Patient", params={"identifier": mrn}).json()["entry"]
        pid = entry["resource"]["id"]
        appointments = c.get("/Appointment", params={"patient": pid}).json()
        Bundle.model_validate(appointments)
        [appointment] = appointments["entry"]
        assert appointment["resource"]["participant"][0]["actor"]["reference"] == f"Patient/{pid}"
        assert appointment["resource"]["start"].startswith("2024-07-15")
        assert len(c.get("/Appointment", params={"patient": pid, "date": "2024-07-15"}).json()["entry"]) == 1
