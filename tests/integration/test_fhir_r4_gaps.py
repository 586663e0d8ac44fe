"""FHIR R4 REST, the rest of issue 3: content negotiation (406), type and system history, search with
OR values, modifiers, `_revinclude` and chaining, and business identifiers as record keys. Over real
HTTP against a running hub, on SQLite and PostgreSQL. All data fictional."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome

from tests.conftest import RunningHub, adt, unique

JSON = {"Content-Type": "application/fhir+json"}
SYSTEM = "urn:oid:2.999.3.1"


def client(hub: RunningHub) -> httpx.Client:
    return httpx.Client(base_url=hub.http + "/fhir", timeout=30)


def patient(mrn: str | None = None, **overrides: object) -> dict:
    resource = {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": mrn or unique("G")}],
        "name": [{"family": "Quillfeather", "given": ["Odalys"]}],
        "gender": "female",
        "birthDate": "1969-03-21",
    }
    resource.update(overrides)
    return resource


def create(c: httpx.Client, resource: dict, headers: dict | None = None) -> httpx.Response:
    response = c.post(f"/{resource['resourceType']}", json=resource, headers=JSON | (headers or {}))
    assert response.status_code in (200, 201), response.text
    return response


def ids(response: httpx.Response, mode: str = "match") -> set[str]:
    assert response.status_code == 200, response.text
    return {
        e["resource"]["id"] for e in response.json().get("entry", [])
        if e.get("search", {}).get("mode", "match") == mode and "id" in e.get("resource", {})
    }


def outcome(response: httpx.Response) -> OperationOutcome:
    return OperationOutcome.model_validate(response.json())


# ---------------------------------------------------------------- 1. content negotiation

@pytest.mark.parametrize("accept", ["text/html", "application/pdf", "image/png, text/plain", "application/fhir+json;q=0"])
def test_unacceptable_accept_is_406_operation_outcome(running_hub: RunningHub, accept: str) -> None:
    with client(running_hub) as c:
        for path in ("/metadata", "/Patient", "/Patient/nope", "/_history"):
            response = c.get(path, headers={"Accept": accept})
            assert response.status_code == 406, (path, response.text)
            assert response.headers["content-type"].startswith("application/fhir+json")
            assert outcome(response).issue[0].code == "not-supported"
        posted = c.post("/Patient", json=patient(), headers=JSON | {"Accept": accept})
        assert posted.status_code == 406  # refused before anything is stored
        assert c.get("/Patient", params={"identifier": "nothing"}).status_code == 200


@pytest.mark.parametrize(("accept", "fmt", "xml"), [
    ("*/*", None, False), ("application/json", None, False), ("application/fhir+json", None, False),
    ("application/xml", None, True), ("application/fhir+xml", None, True), (None, None, False),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", None, True),  # a browser
    ("application/fhir+xml;q=0.5, application/fhir+json", None, False),
    ("application/fhir+json; fhirVersion=4.0", None, False),
    ("text/html", "json", False), ("text/html", "xml", True), (None, "application/fhir+json", False),
    (None, "application/fhir+xml", True),
])
def test_acceptable_formats(running_hub: RunningHub, accept: str | None, fmt: str | None, xml: bool) -> None:
    headers = {"Accept": accept} if accept else {}
    params = {"_format": fmt} if fmt else {}
    with client(running_hub) as c:
        response = c.get("/metadata", headers=headers, params=params)
    assert response.status_code == 200
    expected = "application/fhir+xml" if xml else "application/fhir+json"
    assert response.headers["content-type"].startswith(expected)


def test_unknown_format_parameter_is_406(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        response = c.get("/metadata", params={"_format": "text/html"})
    assert response.status_code == 406
    assert outcome(response).issue[0].code == "not-supported"


# ---------------------------------------------------------------- 2. type and system history

def _entries(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "history"
    Bundle.model_validate(bundle)
    return bundle.get("entry", [])


def test_type_history_newest_first_with_since_and_paging(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        since = (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
        time.sleep(1.1)
        first = create(c, patient()).json()
        second = create(c, patient()).json()
        changed = c.put(f"/Patient/{first['id']}", json=first | {"gender": "other"}, headers=JSON)
        assert changed.status_code == 200
        assert c.delete(f"/Patient/{second['id']}").status_code == 204
        obs = create(c, {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
                         "subject": {"reference": f"Patient/{first['id']}"}}).json()

        entries = _entries(c.get("/Patient/_history", params={"_since": since}))
        seen = [(e["fullUrl"].rsplit("/", 1)[-1], e["response"]["etag"], e["request"]["method"]) for e in entries]
        assert seen[:4] == [
            (second["id"], 'W/"2"', "DELETE"), (first["id"], 'W/"2"', "PUT"),
            (second["id"], 'W/"1"', "POST"), (first["id"], 'W/"1"', "POST"),
        ]
        assert all(e["fullUrl"].split("/fhir/")[1].startswith("Patient/") for e in entries)
        assert "resource" not in entries[0] and entries[1]["resource"]["gender"] == "other"
        assert entries[3]["resource"]["gender"] == "female"  # the old version, as it was
        stamps = [e["response"]["lastModified"] for e in entries]
        assert stamps == sorted(stamps, reverse=True)

        system = _entries(c.get("/_history", params={"_since": since}))
        assert system[0]["fullUrl"].endswith(f"/Observation/{obs['id']}")
        assert [e["fullUrl"] for e in system[1:5]] == [e["fullUrl"] for e in entries[:4]]

        page = c.get("/Patient/_history", params={"_since": since, "_count": 3})
        paged = _entries(page)
        assert len(paged) == 3
        following = [l["url"] for l in page.json()["link"] if l["relation"] == "next"]
        assert following and "_count=3" in following[0]
        rest = _entries(httpx.get(following[0], timeout=30))
        assert [e["response"]["etag"] for e in rest][:1] == ['W/"1"']
        assert {e["fullUrl"] for e in paged} | {e["fullUrl"] for e in rest} == {e["fullUrl"] for e in entries}

        future = _entries(c.get("/Patient/_history", params={"_since": "2999-01-01T00:00:00Z"}))
        assert future == []


def test_history_errors_and_capability(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        bad = c.get("/Patient/_history", params={"_since": "last tuesday"})
        assert bad.status_code == 400 and outcome(bad).issue[0].expression == ["_since"]
        assert c.get("/Basic/_history").status_code == 404
        statement = c.get("/metadata").json()
    CapabilityStatement.model_validate(statement)
    rest = statement["rest"][0]
    assert {"code": "history-system"} in rest["interaction"]
    patient_entry = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert {"code": "history-type"} in patient_entry["interaction"]


# ---------------------------------------------------------------- 3. search: OR, modifiers, _revinclude, chaining

def _observation(pid: str, code: str, status: str = "final", identifier: str | None = None) -> dict:
    resource = {
        "resourceType": "Observation", "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": "2024-05-06T07:00:00Z",
    }
    if identifier:
        resource["identifier"] = [{"system": "urn:oid:2.999.3.2", "value": identifier}]
    return resource


def test_comma_is_or_within_a_parameter(running_hub: RunningHub) -> None:
    family = unique("Orr").lower()
    with client(running_hub) as c:
        one = create(c, patient(name=[{"family": family, "given": ["Ysolde"]}], gender="male")).json()
        two = create(c, patient(name=[{"family": family, "given": ["Marit"]}], gender="female")).json()
        three = create(c, patient(name=[{"family": family, "given": ["Tove"]}], gender="other")).json()
        mrn_one, mrn_two = one["identifier"][0]["value"], two["identifier"][0]["value"]
        assert ids(c.get("/Patient", params={"family": family, "gender": "male,female"})) == {one["id"], two["id"]}
        assert ids(c.get("/Patient", params={"identifier": f"{SYSTEM}|{mrn_one},{SYSTEM}|{mrn_two}"})) == {one["id"], two["id"]}
        assert ids(c.get("/Patient", params={"_id": f"{one['id']},{three['id']}"})) == {one["id"], three["id"]}
        assert ids(c.get("/Patient", params={"family": family, "given": "ysol,tov"})) == {one["id"], three["id"]}
        # repeated parameters still mean AND
        assert ids(c.get("/Patient", params=[("family", family), ("gender", "male,female"), ("gender", "female,other")])) == {two["id"]}
        for code in ("1111-1", "2222-2", "3333-3"):
            create(c, _observation(one["id"], code))
        found = c.get("/Observation", params={"patient": one["id"], "code": "http://loinc.org|1111-1,3333-3"}).json()
        assert sorted(e["resource"]["code"]["coding"][0]["code"] for e in found["entry"]) == ["1111-1", "3333-3"]
        assert found["total"] == 2


def test_string_modifiers_exact_contains_missing(running_hub: RunningHub) -> None:
    stem = unique("Ëxa")
    with client(running_hub) as c:
        accented = create(c, patient(name=[{"family": stem, "given": ["Ånna"]}])).json()
        plain = create(c, patient(name=[{"family": stem.replace("Ë", "E").lower(), "given": ["Anna"]}])).json()
        anonymous = patient(name=[{"text": "unknown"}])
        del anonymous["birthDate"]
        unnamed = create(c, anonymous).json()
        assert ids(c.get("/Patient", params={"family": stem})) == {accented["id"], plain["id"]}  # default: normalised
        assert ids(c.get("/Patient", params={"family:exact": stem})) == {accented["id"]}
        assert ids(c.get("/Patient", params={"family:exact": stem[:-1]})) == set()  # exact is not a prefix
        assert ids(c.get("/Patient", params={"name:exact": "Ånna", "family": stem})) == {accented["id"]}
        assert ids(c.get("/Patient", params={"family:contains": stem[3:].lower()})) == {accented["id"], plain["id"]}
        assert ids(c.get("/Patient", params={"family:contains": stem[3:].lower(), "given:contains": "nn"})) == {accented["id"], plain["id"]}
        missing = ids(c.get("/Patient", params={"_id": f"{accented['id']},{unnamed['id']}", "family:missing": "true"}))
        assert missing == {unnamed["id"]}
        present = ids(c.get("/Patient", params={"_id": f"{accented['id']},{unnamed['id']}", "family:missing": "false"}))
        assert present == {accented["id"]}
        nobirth = ids(c.get("/Patient", params={"_id": f"{accented['id']},{unnamed['id']}", "birthdate:missing": "true"}))
        assert nobirth == {unnamed["id"]}


def test_token_not_and_missing(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        pid = create(c, patient()).json()["id"]
        final = create(c, _observation(pid, "4444-4", "final")).json()
        prelim = create(c, _observation(pid, "5555-5", "preliminary")).json()
        amended = create(c, _observation(pid, "6666-6", "amended", identifier=unique("O"))).json()
        assert ids(c.get("/Observation", params={"patient": pid, "status:not": "final"})) == {prelim["id"], amended["id"]}
        assert ids(c.get("/Observation", params={"patient": pid, "status:not": "final,amended"})) == {prelim["id"]}
        assert ids(c.get("/Observation", params={"patient": pid, "code:not": "http://loinc.org|4444-4"})) == {prelim["id"], amended["id"]}
        assert ids(c.get("/Observation", params={"patient": pid, "identifier:missing": "true"})) == {final["id"], prelim["id"]}
        assert ids(c.get("/Observation", params={"patient": pid, "identifier:missing": "false"})) == {amended["id"]}
        orphan = create(c, {"resourceType": "Observation", "status": "final", "code": {"text": "orphan"},
                            "identifier": [{"system": "urn:oid:2.999.3.2", "value": unique("O")}]}).json()
        assert orphan["id"] in ids(c.get("/Observation", params={"subject:missing": "true", "_count": 1000}))
        assert ids(c.get("/Observation", params={"_id": orphan["id"], "subject:missing": "false"})) == set()


def test_unsupported_modifiers_lenient_and_strict(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        pid = create(c, patient()).json()["id"]
        for name in ("family:below", "gender:text", "identifier:of-type", "birthdate:exact", "subject:Group",
                     "subject.name.given", "patient.shoe-size"):
            resource_type = "Patient" if not name.startswith(("subject", "patient")) else "Observation"
            lenient = c.get(f"/{resource_type}", params={name: "x", "_id": pid})
            assert lenient.status_code == 200, name
            issues = [e for e in lenient.json()["entry"] if e["search"]["mode"] == "outcome"]
            assert issues and issues[0]["resource"]["issue"][0]["severity"] == "warning", name
            strict = c.get(f"/{resource_type}", params={name: "x"}, headers={"Prefer": "handling=strict"})
            assert strict.status_code == 400, name
            assert outcome(strict).issue[0].code == "not-supported"
        bad = c.get("/Patient", params={"family:missing": "maybe"})
        assert bad.status_code == 400 and outcome(bad).issue[0].code == "invalid"
        revinclude = c.get("/Observation", params={"_revinclude": "DiagnosticReport:result"}, headers={"Prefer": "handling=strict"})
        assert revinclude.status_code == 400


def test_revinclude(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        pid = create(c, patient()).json()["id"]
        other = create(c, patient()).json()["id"]
        obs = create(c, _observation(pid, "7777-7")).json()
        create(c, _observation(other, "7777-7"))
        encounter = create(c, {"resourceType": "Encounter", "status": "finished",
                               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                               "subject": {"reference": f"Patient/{pid}"}}).json()
        found = c.get("/Patient", params=[("_id", pid), ("_revinclude", "Observation:subject"),
                                          ("_revinclude", "Encounter:patient")])
        Bundle.model_validate(found.json())
        assert ids(found) == {pid}
        assert ids(found, "include") == {obs["id"], encounter["id"]}
        only_enc = c.get("/Patient", params={"_id": pid, "_revinclude": "Encounter:subject"})
        assert ids(only_enc, "include") == {encounter["id"]}
        statement = c.get("/metadata").json()
    patient_entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert {"Observation:subject", "Encounter:patient"} <= set(patient_entry["searchRevInclude"])
    family = next(p for p in patient_entry["searchParam"] if p["name"] == "family")
    assert ":exact" in family["documentation"] and ":contains" in family["documentation"]


def test_chained_search_on_the_patient(running_hub: RunningHub) -> None:
    mrn = unique("K")
    family = unique("Chn").lower()
    with client(running_hub) as c:
        pid = create(c, patient(mrn, name=[{"family": family, "given": ["Runa"]}])).json()["id"]
        other = create(c, patient()).json()["id"]
        obs = create(c, _observation(pid, "8888-8")).json()
        create(c, _observation(other, "8888-8"))
        encounter = create(c, {"resourceType": "Encounter", "status": "finished",
                               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                               "subject": {"reference": f"Patient/{pid}"}}).json()
        report = create(c, {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "panel"},
                            "subject": {"reference": f"Patient/{pid}"}}).json()
        assert ids(c.get("/Observation", params={"subject:Patient.identifier": f"{SYSTEM}|{mrn}"})) == {obs["id"]}
        assert ids(c.get("/Observation", params={"subject.identifier": mrn, "code": "8888-8"})) == {obs["id"]}
        assert ids(c.get("/Encounter", params={"patient.identifier": f"{SYSTEM}|{mrn}"})) == {encounter["id"]}
        assert ids(c.get("/DiagnosticReport", params={"patient.family": family})) == {report["id"]}
        assert ids(c.get("/DiagnosticReport", params={"patient.family:exact": family.upper()})) == set()
        assert ids(c.get("/Observation", params={"patient.identifier": f"{SYSTEM}|{mrn},{SYSTEM}|nobody"})) == {obs["id"]}
        # the chain ignores deleted patients
        assert c.delete(f"/Patient/{pid}").status_code == 204
        assert ids(c.get("/Observation", params={"subject.identifier": mrn})) == set()


def test_conditional_create_with_or_and_modifier(running_hub: RunningHub) -> None:
    mrn = unique("W")
    with client(running_hub) as c:
        first = create(c, patient(mrn))
        again = c.post("/Patient", json=patient(mrn), headers=JSON | {"If-None-Exist": f"identifier=nobody,{SYSTEM}|{mrn}"})
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        refused = c.post("/Patient", json=patient(), headers=JSON | {"If-None-Exist": "family:below=x"})
        assert refused.status_code == 400


# ---------------------------------------------------------------- 4. business identifiers key records written over FHIR

BUSINESS = "urn:oid:2.999.3.7"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def _with_identifier(resource_type: str, pid: str, value: str) -> dict:
    subject = {"reference": f"Patient/{pid}"}
    identifier = [{"system": BUSINESS, "value": value}]
    bodies = {
        "ServiceRequest": {"status": "active", "intent": "order", "code": {"text": "cbc"}, "subject": subject},
        "Observation": {"status": "final", "code": {"text": "weight"}, "subject": subject},
        "ChargeItem": {"status": "billable", "code": {"text": "visit"}, "subject": subject},
        "Appointment": {"status": "booked", "participant": [{"actor": subject, "status": "accepted"}]},
        "DiagnosticReport": {"status": "final", "code": {"text": "panel"}, "subject": subject},
        "Encounter": {"status": "finished", "class": {"system": ACT_CODE, "code": "AMB"}, "subject": subject},
        "Account": {"status": "active", "subject": [subject]},
    }
    return {"resourceType": resource_type, "identifier": identifier, **bodies[resource_type]}


@pytest.mark.parametrize("resource_type", [
    "ServiceRequest", "Observation", "ChargeItem", "Appointment", "DiagnosticReport", "Encounter", "Account",
])
def test_resubmitted_resource_with_identifier_is_not_duplicated(running_hub: RunningHub, resource_type: str) -> None:
    value = unique("B")
    with client(running_hub) as c:
        pid = create(c, patient()).json()["id"]
        body = _with_identifier(resource_type, pid, value)
        first = c.post(f"/{resource_type}", json=body, headers=JSON | {"If-None-Exist": f"identifier={BUSINESS}|{value}"})
        assert first.status_code == 201, first.text
        again = c.post(f"/{resource_type}", json=body, headers=JSON | {"If-None-Exist": f"identifier={BUSINESS}|{value}"})
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        plain = c.post(f"/{resource_type}", json=body, headers=JSON)  # no If-None-Exist: the same record, unchanged
        assert plain.status_code == 200 and plain.json()["id"] == first.json()["id"]
        assert plain.json()["meta"]["versionId"] == "1"
        found = c.get(f"/{resource_type}", params={"identifier": f"{BUSINESS}|{value}"}).json()
        assert found["total"] == 1
        other = create(c, patient()).json()["id"]  # the same identifier for another patient: another record
        elsewhere = c.post(f"/{resource_type}", json=_with_identifier(resource_type, other, value), headers=JSON)
        if resource_type in ("Encounter",):  # visit numbers with a system are unique on their own (as in HL7 v2)
            assert elsewhere.status_code == 200 and elsewhere.json()["id"] == first.json()["id"]
        elif resource_type in ("ServiceRequest", "ChargeItem", "Appointment"):  # scoped by patient, as in HL7 v2
            assert elsewhere.status_code == 201 and elsewhere.json()["id"] != first.json()["id"]


def test_parallel_resubmissions_make_one_service_request(running_hub: RunningHub) -> None:
    from concurrent.futures import ThreadPoolExecutor

    value = unique("P")
    with client(running_hub) as c:
        pid = create(c, patient()).json()["id"]
    body = _with_identifier("ServiceRequest", pid, value)

    def post(_: int) -> httpx.Response:
        with client(running_hub) as c:
            return c.post("/ServiceRequest", json=body, headers=JSON)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.json()["id"] for r in responses}) == 1


def _orm(mrn: str, placer: str, control: str = "NW", code: str = "85025^CBC WITH DIFF^CPT4") -> bytes:
    segments = [
        f"MSH|^~\\&|TESTORD|NORTHWIND|HUB|HUB|20240411080500||ORM^O01|{unique('C')}|P|2.5.1",
        f"PID|1||{mrn}^^^NORTHWIND^MR||Testperson^Alma||19800402|F",
        f"ORC|{control}|{placer}^TESTORD||||||||",
        f"OBR|1|{placer}^TESTORD||{code}|R||20240411080000",
    ]
    return "\r".join(segments).encode() + b"\r"


def _send(hub: RunningHub, message: bytes) -> None:
    response = httpx.post(hub.http + "/hl7v2", content=message, headers={"Content-Type": "application/hl7-v2"}, timeout=30)
    assert response.status_code == 200, response.text


def test_service_request_and_hl7v2_order_are_one_record(running_hub: RunningHub) -> None:
    mrn, placer = unique("R"), unique("ORD")
    _send(running_hub, adt(mrn=mrn))
    with client(running_hub) as c:
        [entry] = c.get("/Patient", params={"identifier": mrn}).json()["entry"]
        pid = entry["resource"]["id"]
        created = c.post("/ServiceRequest", json=_with_identifier("ServiceRequest", pid, placer), headers=JSON)
        assert created.status_code == 201, created.text
        _send(running_hub, _orm(mrn, placer))  # the order system confirms the same order over HL7 v2
        found = c.get("/ServiceRequest", params={"identifier": placer}).json()
        assert found["total"] == 1
        [order] = found["entry"]
        assert order["resource"]["id"] == created.json()["id"]
        assert order["resource"]["meta"]["versionId"] == "2"
        assert order["resource"]["code"]["coding"][0]["code"] == "85025"

        # the other way round: HL7 v2 first, then the same order posted over FHIR updates it
        second = unique("ORD")
        _send(running_hub, _orm(mrn, second))
        [hl7_order] = c.get("/ServiceRequest", params={"identifier": second}).json()["entry"]
        posted = c.post("/ServiceRequest", json=_with_identifier("ServiceRequest", pid, second), headers=JSON)
        assert posted.status_code == 200 and posted.json()["id"] == hl7_order["resource"]["id"]
        assert c.get("/ServiceRequest", params={"identifier": second}).json()["total"] == 1
