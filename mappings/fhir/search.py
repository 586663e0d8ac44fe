"""FHIR search parameters → canonical search criteria over the record index.

One table per resource type: the parameter's FHIR type and how its value becomes criteria
`(index param, operator, normalised value)`. Used by the search API and by conditional
interactions (If-None-Exist, conditional update and delete), so both mean the same thing.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from hub.model import Criterion
from hub.records import date_criteria, digits, normalise

COMMON = {"_id": "token", "_lastUpdated": "date"}
SUBJECT = {"patient": "reference", "subject": "reference"}
PARAMS: dict[str, dict[str, str]] = {
    "Patient": COMMON | {
        "identifier": "token", "family": "string", "given": "string", "name": "string", "birthdate": "date",
        "gender": "token", "telecom": "token", "phone": "token", "email": "token", "address-postalcode": "string",
    },
    "Encounter": COMMON | SUBJECT | {"date": "date", "status": "token", "identifier": "token", "class": "token"},
    "Observation": COMMON | SUBJECT | {"code": "token", "date": "date", "category": "token", "status": "token",
                                       "identifier": "token"},
    "DiagnosticReport": COMMON | SUBJECT | {"code": "token", "status": "token", "identifier": "token", "date": "date"},
    "ServiceRequest": COMMON | SUBJECT | {"code": "token", "status": "token", "identifier": "token", "authored": "date"},
    "Appointment": COMMON | {"patient": "reference", "actor": "reference", "date": "date", "status": "token",
                             "identifier": "token"},
    "ChargeItem": COMMON | SUBJECT | {"code": "token", "identifier": "token", "entered-date": "date"},
    "Account": COMMON | SUBJECT | {"identifier": "token", "status": "token"},
}
RESULT_PARAMS = {"_count", "_offset", "_format", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total"}
DATE_INDEX = {"birthdate": "birthdate", "date": "date", "authored": "date", "entered-date": "date"}


class SearchValueError(ValueError):
    """A known parameter with a value it cannot take: names the parameter, never the value."""


def _last_updated(value: str) -> list[Criterion]:
    prefix, rest = (value[:2], value[2:]) if value[:2].isalpha() else ("eq", value)
    try:
        if "T" in rest:
            low = datetime.fromisoformat(rest.replace("Z", "+00:00"))
            low = low if low.tzinfo else low.replace(tzinfo=timezone.utc)
            high = low + timedelta(seconds=1)
        else:
            parts = [int(p) for p in rest.split("-")]
            if len(parts) == 1:
                low, high = datetime(parts[0], 1, 1), datetime(parts[0] + 1, 1, 1)
            elif len(parts) == 2:
                low = datetime(parts[0], parts[1], 1)
                high = datetime(parts[0] + parts[1] // 12, parts[1] % 12 + 1, 1)
            else:
                low = datetime(parts[0], parts[1], parts[2])
                high = low + timedelta(days=1)
            low, high = low.replace(tzinfo=timezone.utc), high.replace(tzinfo=timezone.utc)
    except ValueError as exc:
        raise SearchValueError("_lastUpdated") from exc
    lo, hi = low.isoformat(), high.isoformat()
    table = {"eq": [("ge", lo), ("lt", hi)], "lt": [("lt", lo)], "le": [("lt", hi)], "gt": [("ge", hi)], "ge": [("ge", lo)]}
    if prefix not in table:
        raise SearchValueError("_lastUpdated")
    return [("_lastUpdated", op, v) for op, v in table[prefix]]


def _token(param: str, value: str) -> Criterion:
    if "|" in value:
        return (param, "eq", value)
    return (f"{param}-value", "eq", value)


def criteria(resource_type: str, name: str, value: str) -> list[Criterion]:
    """One FHIR search parameter → criteria (raises SearchValueError for an unusable value, KeyError if unknown)."""
    kind = PARAMS[resource_type][name]
    if not value:
        raise SearchValueError(name)
    if name == "_id":
        return [("_id", "eq", value)]
    if name == "_lastUpdated":
        return _last_updated(value)
    if kind == "reference":
        reference = value.rsplit("/", 1)
        if len(reference) == 2 and reference[0].rsplit("/", 1)[-1] != "Patient":
            raise SearchValueError(name)
        return [("patient_id", "eq", reference[-1])]
    if kind == "date":
        found = date_criteria(DATE_INDEX[name], value)
        if found is None:
            raise SearchValueError(name)
        return found
    if resource_type == "Patient":
        if name in ("family", "given", "name"):
            return [(name, "prefix", normalise(value))]
        if name == "address-postalcode":
            return [(name, "prefix", normalise(value).replace(" ", ""))]
        if name == "gender":
            return [("gender", "eq", value.lower())]
        if name in ("telecom", "phone"):
            return [(name, "eq", digits(value) or value.casefold())]
        if name == "email":
            return [("email", "eq", value.casefold())]
    if name in ("identifier", "code", "category"):
        return [_token(name, value)]
    if name == "class":
        return [("class", "eq", value.split("|")[-1])]
    return [(name, "eq", value)]


STRING_MODIFIERS = {"exact", "contains", "missing"}
TOKEN_MODIFIERS = {"not", "missing"}
EXACT = {"family": ["family:exact"], "given": ["given:exact"], "name": ["family:exact", "given:exact"]}
"""String `:exact` compares with the value as written (case and accents kept), indexed under these params."""


class UnknownParameter(KeyError):
    """A parameter, modifier or chain this server does not support: reported (lenient) or refused (strict)."""


def split_values(value: str) -> list[str]:
    """A parameter value's comma-separated alternatives (FHIR OR); `\\,` stays a comma inside a value."""
    parts, current, escaped = [], "", False
    for char in value:
        if escaped:
            current += "," if char == "," else "\\" + char  # other escapes are the parameter's business
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current + ("\\" if escaped else ""))
    return parts


def any_of(alternatives: list[list[Criterion]]) -> list[Criterion]:
    """Criteria that hold when any one of the alternatives (each a conjunction) holds."""
    if len(alternatives) == 1:
        return alternatives[0]
    return [("_or", "or", json.dumps(alternatives))]


def _missing_param(resource_type: str, name: str) -> str:
    """The index param whose absence means "no value" for this search parameter."""
    if PARAMS[resource_type][name] == "reference":
        return "patient_id"
    if name in ("identifier", "code", "category"):
        return f"{name}-value"
    return DATE_INDEX.get(name, name)


def _modified(resource_type: str, name: str, modifier: str, value: str) -> list[Criterion]:
    kind = PARAMS[resource_type][name]
    if modifier == "missing":
        if name.startswith("_") or value not in ("true", "false"):
            raise SearchValueError(f"{name}:missing")
        return [(_missing_param(resource_type, name), "missing", value)]
    if kind == "reference" and modifier == "Patient":
        return any_of([criteria(resource_type, name, v) for v in split_values(value)])
    if kind == "string" and modifier == "exact" and name in EXACT and resource_type == "Patient":
        return any_of([[(param, "eq", v.strip())] for v in split_values(value) for param in EXACT[name]])
    if kind == "string" and modifier == "contains":
        found = [criteria(resource_type, name, v) for v in split_values(value)]
        return any_of([[(p, "contains" if op == "prefix" else op, v) for p, op, v in c] for c in found])
    if kind == "token" and modifier == "not":  # none of the values (a record without any also matches)
        return [("_not", "not", json.dumps(criteria(resource_type, name, v))) for v in split_values(value)]
    raise UnknownParameter(f"{name}:{modifier}")


def _chained(resource_type: str, name: str, value: str) -> list[Criterion]:
    """`subject:Patient.identifier=…`, `patient.family=…`: records whose patient matches."""
    reference, _, target = name.partition(".")
    base, _, type_ = reference.partition(":")
    if PARAMS[resource_type].get(base) != "reference" or type_ not in ("", "Patient"):
        raise UnknownParameter(name)
    inner, unknown = parse_query("Patient", [(target, value)])
    if unknown or not inner:
        raise UnknownParameter(name)
    return [("_chain", "patient", json.dumps(inner))]


def parameter(resource_type: str, name: str, value: str) -> list[Criterion]:
    """One `name=value` of a query → criteria; raises UnknownParameter or SearchValueError."""
    if "." in name:
        return _chained(resource_type, name, value)
    base, _, modifier = name.partition(":")
    if base not in PARAMS[resource_type]:
        raise UnknownParameter(name)
    if modifier:
        return _modified(resource_type, base, modifier, value)
    return any_of([criteria(resource_type, base, v) for v in split_values(value)])


def parse_query(resource_type: str, pairs: list[tuple[str, str]]) -> tuple[list[Criterion], list[str]]:
    """Criteria for every known parameter (repeated parameters: AND; commas in a value: OR); the names
    of unknown or unsupported ones (parameters, modifiers, chains; result parameters are skipped)."""
    found: list[Criterion] = []
    unknown: list[str] = []
    for name, value in pairs:
        if name in RESULT_PARAMS:
            continue
        try:
            found += parameter(resource_type, name, value)
        except UnknownParameter:
            unknown.append(name)
    return found, unknown
