"""The master patient index over FHIR on a running hub: golden records, Patient.link, `$match` and
`$ihe-pix` — on SQLite and PostgreSQL. Every resource the hub answers with is validated with the R4B
models. All patients are fictional."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.patient import Patient as FhirPatient

from tests.conftest import RunningHub
from tests.integration.test_mpi_api import person_of, record_id, send_over_two_connections
from tests.integration.test_mpi_linking import adt_message, moved, someone

ENTERPRISE = "urn:hub:enterprise-id"
GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"


def get(hub: RunningHub, path: str, **params: Any) -> tuple[int, dict[str, Any]]:
    with hub.client() as client:
        response = client.get(f"/fhir/{path}", params=params)
    return response.status_code, response.json()


def match(hub: RunningHub, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    with hub.client() as client:
        response = client.post("/fhir/Patient/$match", json=body, headers={"Content-Type": "application/fhir+json"})
    return response.status_code, response.json()


def fhir_patient(p: dict[str, str]) -> dict[str, Any]:
    dob = p["dob"]
    return {
        "resourceType": "Patient", "name": [{"family": p["family"], "given": [p.get("given", "Alma")]}],
        "birthDate": f"{dob[:4]}-{dob[4:6]}-{dob[6:]}", "gender": "female",
        "address": [{"line": [p["street"]], "city": "Springfield", "postalCode": p.get("postal", "62701")}],
        "telecom": [{"system": "phone", "value": p["phone"]}],
    }


def parameters(resource: dict[str, Any], **extra: Any) -> dict[str, Any]:
    params = [{"name": "resource", "resource": resource}]
    if "only_certain" in extra:
        params.append({"name": "onlyCertainMatches", "valueBoolean": extra["only_certain"]})
    if "count" in extra:
        params.append({"name": "count", "valueInteger": extra["count"]})
    return {"resourceType": "Parameters", "parameter": params}


def test_golden_record_source_links_and_search_by_source_identifier(running_hub: RunningHub) -> None:
    p = someone()
    send_over_two_connections(running_hub.mllp_port, [adt_message("F1", authority="EHRX", **p)],
                              [adt_message("F2", authority="LABX", **p)])
    person = person_of(running_hub, "F1", "EHRX")
    f1, f2 = record_id(running_hub, "F1", "EHRX"), record_id(running_hub, "F2", "LABX")

    status, golden = get(running_hub, f"Patient/{person}")
    assert status == 200
    FhirPatient.model_validate(golden)
    assert golden["identifier"][0] == {"use": "official", "system": ENTERPRISE, "value": person}
    assert sorted(k["other"]["reference"] for k in golden["link"] if k["type"] == "seealso") == sorted(
        [f"Patient/{f1}", f"Patient/{f2}"])
    assert golden["name"][0]["family"] == p["family"]

    status, source = get(running_hub, f"Patient/{f1}")
    assert status == 200 and source["id"] == f1
    FhirPatient.model_validate(source)
    assert source["link"] == [{"other": {"reference": f"Patient/{person}"}, "type": "refer"}]

    status, found = get(running_hub, "Patient", identifier="urn:hub:aa:EHRX|F1")
    Bundle.model_validate(found)
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [f1]  # the source record only, no golden copy
    assert found["entry"][0]["resource"]["link"] == source["link"]  # a search gives the link a read gives

    status, found = get(running_hub, "Patient", family=p["family"])  # a page of several: each has its link
    assert status == 200 and sorted(e["resource"]["id"] for e in found["entry"]) == sorted([f1, f2])
    assert {e["resource"]["link"][0]["other"]["reference"] for e in found["entry"]} == {f"Patient/{person}"}

    status, found = get(running_hub, "Patient", identifier=f"{ENTERPRISE}|{person}")
    assert status == 200 and [e["resource"]["id"] for e in found["entry"]] == [person]
    assert get(running_hub, "Patient/no-such-id")[0] == 404


def test_merged_away_record_is_inactive_and_replaced_by_the_survivor(running_hub: RunningHub) -> None:
    p, q = someone(), someone()
    send_over_two_connections(running_hub.mllp_port, [adt_message("G1", **p)], [adt_message("G2", **q)])
    person_of(running_hub, "G1", "NORTHWIND")
    send_over_two_connections(running_hub.mllp_port, [adt_message("G1", trigger="A40", **p, merged="G2")], [])
    person = person_of(running_hub, "G2", "NORTHWIND")
    g1, g2 = record_id(running_hub, "G1", "NORTHWIND"), record_id(running_hub, "G2", "NORTHWIND")
    status, merged = get(running_hub, f"Patient/{g2}")
    assert status == 200 and merged["active"] is False
    assert merged["link"] == [{"other": {"reference": f"Patient/{g1}"}, "type": "replaced-by"}]
    status, found = get(running_hub, "Patient", identifier="urn:hub:aa:NORTHWIND|G2")
    assert [e["resource"]["id"] for e in found["entry"]] == [g2]  # still searchable by its own identifier
    status, golden = get(running_hub, f"Patient/{person}")
    assert {k["other"]["reference"] for k in golden["link"]} == {f"Patient/{g1}", f"Patient/{g2}"}


def test_match_operation_grades_and_scores(running_hub: RunningHub) -> None:
    p = someone()
    send_over_two_connections(running_hub.mllp_port, [adt_message("J1", authority="EHRX", **p)], [])
    person = person_of(running_hub, "J1", "EHRX")

    status, bundle = match(running_hub, parameters(fhir_patient(p)))
    assert status == 200
    Bundle.model_validate(bundle)
    [entry] = [e for e in bundle["entry"] if e["resource"]["id"] == person]
    assert entry["search"]["mode"] == "match" and 0.99 <= entry["search"]["score"] <= 1
    assert entry["search"]["extension"] == [{"url": GRADE, "valueCode": "certain"}]

    near = fhir_patient(moved(p))  # day and month swapped, moved: a possible match, not a certain one
    status, bundle = match(running_hub, parameters(near))
    [entry] = [e for e in bundle["entry"] if e["resource"]["id"] == person]
    assert entry["search"]["extension"][0]["valueCode"] in ("probable", "possible")
    status, bundle = match(running_hub, parameters(near, only_certain=True))
    assert person not in [e["resource"]["id"] for e in bundle.get("entry", [])]

    status, bundle = match(running_hub, parameters(fhir_patient(someone())))
    assert status == 200 and bundle["total"] == 0

    assert match(running_hub, fhir_patient(p))[0] == 400  # not a Parameters
    assert match(running_hub, {"resourceType": "Parameters", "parameter": [{"name": "count", "valueInteger": 2}]})[0] == 400
    assert match(running_hub, parameters(fhir_patient(p), count=0))[0] == 400


def test_ihe_pix_cross_references(running_hub: RunningHub) -> None:
    p = someone()
    send_over_two_connections(running_hub.mllp_port, [adt_message("X1", authority="EHRX", **p)],
                              [adt_message("X2", authority="LABX", **p)])
    person = person_of(running_hub, "X1", "EHRX")
    x2 = record_id(running_hub, "X2", "LABX")
    status, answer = get(running_hub, "Patient/$ihe-pix", sourceIdentifier="urn:hub:aa:EHRX|X1")
    assert status == 200
    Parameters.model_validate(answer)
    identifiers = [(a["valueIdentifier"]["system"], a["valueIdentifier"]["value"])
                   for a in answer["parameter"] if a["name"] == "targetIdentifier"]
    assert sorted(identifiers) == sorted([(ENTERPRISE, person), ("urn:hub:aa:LABX", "X2")])
    assert {"name": "targetId", "valueReference": {"reference": f"Patient/{x2}"}} in answer["parameter"]

    status, answer = get(running_hub, "Patient/$ihe-pix", sourceIdentifier="urn:hub:aa:EHRX|X1",
                         targetSystem="urn:hub:aa:LABX")
    assert [a["valueIdentifier"]["value"] for a in answer["parameter"] if a["name"] == "targetIdentifier"] == ["X2"]
    assert get(running_hub, "Patient/$ihe-pix", sourceIdentifier="urn:hub:aa:EHRX|nobody")[0] == 404
    assert get(running_hub, "Patient/$ihe-pix", sourceIdentifier="X1")[0] == 400
    assert get(running_hub, "Patient/$ihe-pix")[0] == 400


def test_ihe_pix_unknown_domains_answer_as_pixm_says(running_hub: RunningHub) -> None:
    """ITI-83: an unknown targetSystem is 403 "targetSystem not found"; an unknown source domain 400;
    a known domain with an unknown identifier 404; a known target domain without an identifier of
    this patient is an empty answer, not an error."""
    p = someone()
    send_over_two_connections(running_hub.mllp_port, [adt_message("U1", authority="EHRX", **p)],
                              [adt_message("U2", authority="LABX", **p)])
    person_of(running_hub, "U1", "EHRX")
    status, outcome = get(running_hub, "Patient/$ihe-pix", sourceIdentifier="urn:hub:aa:EHRX|U1",
                          targetSystem="urn:oid:2.999.1.404")
    assert status == 403
    assert outcome["issue"][0]["code"] == "code-invalid" and outcome["issue"][0]["diagnostics"] == "targetSystem not found"
    status, outcome = get(running_hub, "Patient/$ihe-pix", sourceIdentifier="urn:oid:2.999.1.405|U1")
    assert status == 400 and outcome["issue"][0]["diagnostics"] == "sourceIdentifier Assigning Authority not found"
    assert get(running_hub, "Patient/$ihe-pix", sourceIdentifier="urn:hub:aa:EHRX|U404")[0] == 404
    status, answer = get(running_hub, "Patient/$ihe-pix", sourceIdentifier="urn:hub:aa:EHRX|U1",
                         targetSystem=ENTERPRISE)
    assert status == 200 and [a["name"] for a in answer["parameter"]] == ["targetIdentifier"]


def test_a_patient_written_over_fhir_is_matched_like_any_other(running_hub: RunningHub) -> None:
    p = someone()
    send_over_two_connections(running_hub.mllp_port, [adt_message("W1", authority="EHRX", **p)], [])
    person = person_of(running_hub, "W1", "EHRX")
    resource = fhir_patient(p) | {"identifier": [{"system": "urn:hub:aa:PORTALX", "value": "W9"}]}
    with running_hub.client() as client:
        created = client.post("/fhir/Patient", json=resource, headers={"Content-Type": "application/fhir+json"})
        assert created.status_code == 201
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{
            "fullUrl": "urn:uuid:8c1f0f4e-0000-4000-8000-000000000001",
            "resource": fhir_patient(p) | {"identifier": [{"system": "urn:hub:aa:PORTALX", "value": "W8"}]},
            "request": {"method": "POST", "url": "Patient"}}]}
        assert client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"}).status_code == 200
    assert person_of(running_hub, "W9", "PORTALX") == person
    assert person_of(running_hub, "W8", "PORTALX") == person
    status, source = get(running_hub, f"Patient/{created.json()['id']}")
    assert source["link"] == [{"other": {"reference": f"Patient/{person}"}, "type": "refer"}]


def test_patient_link_is_the_index_s_own_a_read_put_back_changes_nothing(running_hub: RunningHub) -> None:
    p = someone()
    resource = fhir_patient(p) | {"identifier": [{"system": "urn:hub:aa:PORTALX", "value": "RT1"}]}
    with running_hub.client() as client:
        created = client.post("/fhir/Patient", json=resource, headers={"Content-Type": "application/fhir+json"}).json()
        read = client.get(f"/fhir/Patient/{created['id']}").json()
        assert read["link"][0]["type"] == "refer"
        put = client.put(f"/fhir/Patient/{created['id']}", json=read, headers={"Content-Type": "application/fhir+json"})
        assert put.status_code == 200 and put.json()["meta"]["versionId"] == read["meta"]["versionId"]
        assert client.get(f"/fhir/Patient/{created['id']}").json()["link"] == read["link"]


def test_capability_statement_lists_match_and_ihe_pix(running_hub: RunningHub) -> None:
    status, capability = get(running_hub, "metadata")
    assert status == 200
    [patient] = [r for r in capability["rest"][0]["resource"] if r["type"] == "Patient"]
    assert {"match", "ihe-pix", "validate"} <= {op["name"] for op in patient["operation"]}
    [observation] = [r for r in capability["rest"][0]["resource"] if r["type"] == "Observation"]
    assert {op["name"] for op in observation["operation"]} == {"validate"}
