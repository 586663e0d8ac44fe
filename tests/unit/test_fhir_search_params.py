"""FHIR search parameters → criteria (mappings/fhir/search.py): OR values, modifiers, chains, what is refused."""

from __future__ import annotations

import json

import pytest

from mappings.fhir.search import SearchValueError, parse_query, split_values


def test_commas_split_values_and_an_escaped_comma_does_not() -> None:
    assert split_values("a|1,b|2") == ["a|1", "b|2"]
    assert split_values(r"Smith\,Jr,Jones") == ["Smith,Jr", "Jones"]
    assert split_values(r"a\|b") == [r"a\|b"]  # other escapes are left to the parameter
    assert split_values("x") == ["x"]


def test_or_values_become_one_alternative_criterion() -> None:
    found, unknown = parse_query("Patient", [("gender", "male,female")])
    assert unknown == []
    [(param, op, value)] = found
    assert (param, op) == ("_or", "or")
    assert json.loads(value) == [[["gender", "eq", "male"]], [["gender", "eq", "female"]]]
    single, _ = parse_query("Patient", [("gender", "male")])
    assert single == [("gender", "eq", "male")]


def test_modifiers() -> None:
    found, unknown = parse_query("Patient", [
        ("family:exact", "Ærø"), ("given:contains", "NN"), ("birthdate:missing", "true"), ("gender:not", "male"),
    ])
    assert unknown == []
    assert found[0] == ("family:exact", "eq", "Ærø")
    assert found[1] == ("given", "contains", "nn")
    assert found[2] == ("birthdate", "missing", "true")
    assert found[3][:2] == ("_not", "not") and json.loads(found[3][2]) == [["gender", "eq", "male"]]
    [(param, op, value)] = parse_query("Patient", [("name:exact", "Ærø")])[0]
    assert op == "or" and json.loads(value) == [[["family:exact", "eq", "Ærø"]], [["given:exact", "eq", "Ærø"]]]
    assert parse_query("Observation", [("subject:missing", "false")])[0] == [("patient_id", "missing", "false")]
    assert parse_query("Observation", [("code:missing", "true")])[0] == [("code-value", "missing", "true")]


def test_chains_on_the_patient() -> None:
    for name in ("subject:Patient.identifier", "subject.identifier", "patient.identifier"):
        [(param, op, value)] = parse_query("Observation", [(name, "urn:oid:2.999.1|42")])[0]
        assert (param, op) == ("_chain", "patient")
        assert json.loads(value) == [["identifier", "eq", "urn:oid:2.999.1|42"]]


@pytest.mark.parametrize("name", [
    "family:below", "gender:text", "identifier:of-type", "birthdate:exact", "shoe-size", "family:Patient",
])
def test_unsupported_patient_parameters_are_reported(name: str) -> None:
    assert parse_query("Patient", [(name, "x")]) == ([], [name])


@pytest.mark.parametrize("name", ["subject:Group", "subject.name.given", "patient.shoe-size", "code.identifier"])
def test_unsupported_chains_are_reported(name: str) -> None:
    assert parse_query("Observation", [(name, "x")]) == ([], [name])


def test_unusable_values_name_the_parameter() -> None:
    with pytest.raises(SearchValueError, match="family:missing"):
        parse_query("Patient", [("family:missing", "perhaps")])
    with pytest.raises(SearchValueError, match="gender"):
        parse_query("Patient", [("gender", "male,")])
