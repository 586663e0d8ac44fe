"""FHIR on the wire: content negotiation (JSON and XML), responses and OperationOutcomes."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fhir.resources.R4B import get_fhir_model_class

FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"
FHIR_VERSION = "4.0.1"

JSON_TYPES = {"application/fhir+json", "application/json", "json", "application/json+fhir", "text/json"}
XML_TYPES = {"application/fhir+xml", "application/xml", "xml", "text/xml", "application/xml+fhir"}

STATUS_CODES = {
    "structure": 400, "invalid": 400, "value": 400, "required": 400, "code-invalid": 400, "not-supported": 400,
    "processing": 422, "business-rule": 422, "not-found": 404, "deleted": 410, "conflict": 409, "duplicate": 409,
    "multiple-matches": 412, "too-costly": 400,
}


class Unsupported(Exception):
    """A body in a media type the server does not take (415)."""


def wants_xml(request: Request) -> bool:
    """`_format` wins over `Accept`; JSON when neither names a FHIR format."""
    requested = request.query_params.get("_format")
    if requested:
        return requested.split(";")[0].strip().lower() in XML_TYPES
    for part in request.headers.get("accept", "").split(","):
        media = part.split(";")[0].strip().lower()
        if media in JSON_TYPES:
            return False
        if media in XML_TYPES:
            return True
    return False


def body_is_xml(request: Request) -> bool:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not media or media in JSON_TYPES:
        return False
    if media in XML_TYPES:
        return True
    raise Unsupported(media)


def to_xml(body: dict[str, Any]) -> bytes:
    model = get_fhir_model_class(body["resourceType"])
    return model.model_validate(body).model_dump_xml()


def fhir_response(
    body: dict[str, Any] | None, status: int = 200, headers: dict[str, str] | None = None, xml: bool = False
) -> Response:
    if body is None:
        return Response(None, status, headers=headers)
    if xml:
        return Response(to_xml(body), status, headers=headers, media_type=f"{FHIR_XML}; charset=utf-8")
    content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(content, status, headers=headers, media_type=f"{FHIR_JSON}; charset=utf-8")


def outcome_body(code: str, diagnostics: str, expression: str | None = None, severity: str = "error") -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def operation_outcome(
    status: int, code: str, diagnostics: str, expression: str | None = None, xml: bool = False
) -> Response:
    return fhir_response(outcome_body(code, diagnostics, expression), status, xml=xml)
