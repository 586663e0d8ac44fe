"""FHIR R4 (4.0.1) read side: CapabilityStatement, Patient read and search.

Resources are built as plain JSON from canonical records (fast, and exactly R4 on the
wire); tests validate what we emit against fhir.resources' R4B models, which match R4
for the resources served here.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from hub.access import PatientData, Permission, requires
from hub.model import Patient
from hub.records import normalise
from hub.store.uow import Criterion, RecordRow
from mappings.fhir.patient import to_fhir

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"

router = APIRouter(prefix="/fhir")

PATIENT_SEARCH = {
    "_id": "token", "identifier": "token", "family": "string", "given": "string", "name": "string",
    "birthdate": "date", "gender": "token", "telecom": "token", "phone": "token", "email": "token",
    "address-postalcode": "string",
}
RESULT_PARAMS = {"_count", "_offset", "_format"}


def fhir_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status, headers=headers, media_type=FHIR_JSON)


def operation_outcome(status: int, code: str, diagnostics: str, expression: str | None = None) -> Response:
    issue: dict[str, Any] = {"severity": "error", "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return fhir_response({"resourceType": "OperationOutcome", "issue": [issue]}, status)


def _data(request: Request) -> PatientData:
    return request.app.state.hub.patient_data


def instant(at: datetime) -> str:
    """FHIR instants need a zone; SQLite hands back naive datetimes we stored as UTC."""
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).isoformat()


def patient_resource(row: RecordRow) -> dict[str, Any]:
    meta = {"versionId": str(row.version), "lastUpdated": instant(row.updated_at), "source": f"#{row.feed}"}
    return to_fhir(Patient.model_validate(row.data), row.id, meta)


@router.get("/metadata", dependencies=[Depends(requires(Permission.HEALTH))])
def capability_statement(request: Request) -> Response:
    return fhir_response({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "kind": "instance",
        "software": {"name": "hl7-hub", "version": "0.1.0"},
        "implementation": {"description": "HL7 v2 / FHIR / CSV integration hub", "url": str(request.base_url) + "fhir"},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "resource": [{
                "type": "Patient",
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": [{"name": n, "type": t} for n, t in PATIENT_SEARCH.items()],
            }],
        }],
    })


@router.get("/Patient/{resource_id}", dependencies=[Depends(requires(Permission.PATIENT_READ))])
def read_patient(resource_id: str, request: Request) -> Response:
    row = _data(request).get("patient", resource_id)
    if row is None:
        return operation_outcome(404, "not-found", f"Patient/{resource_id[:64]} is not known")
    return fhir_response(patient_resource(row), headers={"ETag": f'W/"{row.version}"'})


@router.get("/Patient", dependencies=[Depends(requires(Permission.PATIENT_READ))])
def search_patients(request: Request) -> Response:
    params = request.query_params
    criteria: list[Criterion] = []
    unknown: list[str] = []
    for name, value in params.multi_items():
        if name in RESULT_PARAMS:
            continue
        if name not in PATIENT_SEARCH:
            unknown.append(name)
            continue
        criterion = _criterion(name, value)
        if criterion is None:
            return operation_outcome(400, "invalid", f"search parameter {name} has an unusable value", name)
        criteria.append(criterion)
    try:
        count = min(max(int(params.get("_count", "50")), 0), 1000)
        offset = max(int(params.get("_offset", "0")), 0)
    except ValueError:
        return operation_outcome(400, "invalid", "_count and _offset must be integers", "_count")
    rows = _data(request).search("patient", criteria, count + 1, offset) if count else []
    base = str(request.url).split("?")[0]
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "self", "url": str(request.url)}],
        "entry": [
            {"fullUrl": f"{base}/{row.id}", "resource": patient_resource(row), "search": {"mode": "match"}}
            for row in rows[:count]
        ],
    }
    if len(rows) > count:
        next_params = [(k, v) for k, v in params.multi_items() if k != "_offset"] + [("_offset", str(offset + count))]
        bundle["link"].append({"relation": "next", "url": f"{base}?{urlencode(next_params)}"})
    if unknown:
        bundle["entry"].append({"resource": {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "warning", "code": "not-supported", "diagnostics": f"unknown search parameter {u[:40]} ignored"} for u in unknown],
        }, "search": {"mode": "outcome"}})
    if not bundle["entry"]:
        del bundle["entry"]
    return fhir_response(bundle)


def _criterion(name: str, value: str) -> Criterion | None:
    """A FHIR search parameter → an index criterion (param, operator, normalised value)."""
    if not value:
        return None
    if name == "identifier":
        return ("identifier", "eq", value) if "|" in value else ("identifier-value", "eq", value)
    if name in ("family", "given", "name"):
        return (name, "prefix", normalise(value))
    if name == "address-postalcode":
        return (name, "prefix", normalise(value).replace(" ", ""))
    if name == "birthdate":
        op, date = (value[:2], value[2:]) if value[:2].isalpha() else ("eq", value)
        return ("birthdate", op, date) if op in ("eq", "lt", "le", "gt", "ge") and date[:4].isdigit() else None
    if name == "gender":
        return ("gender", "eq", value.lower())
    if name in ("telecom", "phone"):
        return (name, "eq", "".join(c for c in value if c.isdigit()) or value.casefold())
    if name == "email":
        return ("email", "eq", value.casefold())
    return ("_id", "eq", value) if name == "_id" else None
