"""FHIR search parameters → canonical search criteria over the record index.

One table per resource type: the parameter's FHIR type and how its value becomes criteria
`(index param, operator, normalised value)`. Used by the search API and by conditional
interactions (If-None-Exist, conditional update and delete), so both mean the same thing.
"""

from __future__ import annotations

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


def parse_query(resource_type: str, pairs: list[tuple[str, str]]) -> tuple[list[Criterion], list[str]]:
    """Criteria for every known parameter; the names of unknown ones (result parameters skipped)."""
    found: list[Criterion] = []
    unknown: list[str] = []
    for name, value in pairs:
        if name in RESULT_PARAMS:
            continue
        if name not in PARAMS[resource_type]:
            unknown.append(name)
            continue
        found += criteria(resource_type, name, value)
    return found, unknown
