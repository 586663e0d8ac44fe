"""The FHIR reader (bytes + request context → InboundMessage) and FHIR search criteria, without I/O.
All data fictional."""

from __future__ import annotations

import json

import pytest
from fhir.resources.R4B.patient import Patient as FhirPatient

from adapters.inbound.fhir.reader import read_request
from hub.messages import Status
from hub.records import date_bounds, date_criteria
from mappings.fhir import search

CREATE = {"interaction": "create", "type": "Patient"}


def read(body: object, context: dict | None = None) -> object:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return read_request(raw, "fhir", context or CREATE)


def test_valid_patient_becomes_a_canonical_event_with_its_request() -> None:
    message = read({
        "resourceType": "Patient", "id": "ignored-on-create", "meta": {"versionId": "7"},
        "identifier": [{"system": "urn:hub:test", "value": "X1", "type": {"coding": [{"code": "MR"}]}}],
        "name": [{"use": "official", "family": "Fenwhistle", "given": ["Ada"]}],
        "birthDate": "1990-05", "gender": "female", "telecom": [{"system": "phone", "value": "555-0111"}],
    }, CREATE | {"if_none_exist": "identifier=urn:hub:test|X1"})
    assert message.status is Status.ACCEPTED and message.format == "fhir"
    [event] = message.events
    assert event.patient.identifiers[0].type == "MR"
    assert event.patient.birth_date == "1990-05"
    assert event.request.method == "create"
    assert event.request.if_none_exist == [("identifier", "eq", "urn:hub:test|X1")]
    assert "meta" not in event.request.resource and "id" not in event.request.resource


@pytest.mark.parametrize(
    ("body", "code", "location"),
    [
        (b"", "required", "body"),
        (b"\xff\xfe", "structure", "body"),
        ({"resourceType": "Patient", "birthDate": 86400}, "structure", "Patient.birthDate"),
        ({"resourceType": "Patient", "active": "true"}, "structure", "Patient.active"),
        ({"resourceType": "Patient", "gender": "xyz"}, "code-invalid", "Patient.gender"),
        ({"resourceType": "Patient", "contact": [{"gender": "xyz"}]}, "code-invalid", "Patient.contact[0].gender"),
        ({"resourceType": "Patient", "name": [{"given": "Ada"}]}, "structure", "Patient.name[0].given"),
        ({"resourceType": "Patient", "identifier": [{"value": "1", "colour": "red"}]}, "structure", "Patient.identifier[0].colour"),
        ({"resourceType": "Encounter", "status": "planned", "class": {"code": "AMB"}}, "invalid", "Patient.resourceType"),
    ],
)
def test_rejections_name_the_element_never_the_value(body: object, code: str, location: str) -> None:
    message = read(body)
    assert message.status is Status.REJECTED
    [problem] = message.problems
    assert (problem.code, problem.location) == (code, location)
    for value in ("86400", "xyz", "Ada", "red"):
        assert value not in problem.text


def test_update_needs_matching_id_and_parses_if_match() -> None:
    context = {"interaction": "update", "type": "Patient", "id": "p1", "if_match": 'W/"3"'}
    assert read({"resourceType": "Patient", "id": "p2"}, context).problems[0].location == "Patient.id"
    [event] = read({"resourceType": "Patient", "id": "p1"}, context).events
    assert (event.request.record_id, event.request.if_match) == ("p1", 3)
    bad = read({"resourceType": "Patient", "id": "p1"}, context | {"if_match": "yesterday"})
    assert bad.problems[0].location == "If-Match"


def test_xml_body_is_read_like_json() -> None:
    resource = FhirPatient.model_validate({"resourceType": "Patient", "name": [{"family": "Oakes"}], "gender": "male"})
    message = read_request(resource.model_dump_xml(), "fhir", CREATE | {"xml": True})
    assert message.status is Status.ACCEPTED
    assert message.events[0].patient.names[0].family == "Oakes"
    broken = read_request(b"<Patient xmlns='http://hl7.org/fhir'><gender value='male'/>", "fhir", CREATE | {"xml": True})
    assert broken.problems[0].code == "structure"


def test_transaction_entries_unknown_type_is_a_problem_not_a_crash() -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "NoSuchThing"}, "request": {"method": "POST", "url": "Patient"}}]}
    message = read(bundle, {"interaction": "transaction", "bundle": "transaction"})
    assert message.problems[0].location == "Bundle.entry[0].resource.resourceType"


def test_transaction_entries_become_requests() -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6f1c0a43-3d0e-4b7e-9a57-1d7f4b0c2e11", "resource": {"resourceType": "Patient"},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:hub:test|Z9"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
                      "subject": {"reference": "urn:uuid:6f1c0a43-3d0e-4b7e-9a57-1d7f4b0c2e11"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "DELETE", "url": "Patient?identifier=urn:hub:test|Z8"}},
        {"request": {"method": "GET", "url": "Patient/abc"}},
    ]}
    message = read(bundle, {"interaction": "transaction", "bundle": "transaction"})
    assert message.status is Status.ACCEPTED
    methods = [e.request.method for e in message.events]
    assert methods == ["create", "create", "delete", "read"]
    assert message.events[1].request.subject.startswith("urn:uuid:")
    assert message.events[2].request.conditions == [("identifier", "eq", "urn:hub:test|Z8")]


def test_date_ranges() -> None:
    assert date_bounds("1961") == ("1961", "1961~")
    assert date_bounds("2024-01-02T10:00:00+01:00") == ("2024-01-02T09:00:00", "2024-01-02T09:00:00")
    assert date_bounds("tomorrow") is None
    assert date_criteria("birthdate", "ge1961-03") == [("birthdate.hi", "ge", "1961-03")]
    assert date_criteria("birthdate", "1961") == [("birthdate", "ge", "1961"), ("birthdate.hi", "le", "1961~")]
    assert date_criteria("birthdate", "xx1961") is None


def test_search_criteria() -> None:
    assert search.criteria("Patient", "identifier", "urn:a|1") == [("identifier", "eq", "urn:a|1")]
    assert search.criteria("Patient", "identifier", "1") == [("identifier-value", "eq", "1")]
    assert search.criteria("Observation", "subject", "Patient/p1") == [("patient_id", "eq", "p1")]
    assert search.criteria("Patient", "family", "Ünder") == [("family", "prefix", "under")]
    with pytest.raises(search.SearchValueError):
        search.criteria("Observation", "subject", "Group/g1")
    assert search.parse_query("Patient", [("_count", "5"), ("shoe", "9")]) == ([], ["shoe"])
