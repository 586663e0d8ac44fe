"""FHIR on the wire: content negotiation (JSON and XML), responses and OperationOutcomes."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import Response
from fhir.resources.R4B import get_fhir_model_class

from hub import jsoncodec

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


def negotiate(request: Request) -> str | None:
    """The response format, "json" or "xml"; None when the client accepts neither (406).

    FHIR R4 http.html, "Content Types and encodings": `_format` overrides `Accept`; a request for a
    format the server cannot produce is answered 406. `Accept` ranges are tried by quality (q=0
    excludes); `*/*` and `application/*` take the default, JSON; no `Accept` at all means JSON."""
    requested = request.query_params.get("_format")
    if requested:
        media = requested.split(";")[0].strip().lower()
        return "xml" if media in XML_TYPES else "json" if media in JSON_TYPES else None
    header = request.headers.get("accept", "").strip()
    if not header:
        return "json"
    ranges = []
    for n, part in enumerate(header.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            if param.lower().startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        if media and quality > 0:
            ranges.append((-quality, n, media.lower()))
    for _, _, media in sorted(ranges):
        if media in JSON_TYPES or media in ("*/*", "application/*"):
            return "json"
        if media in XML_TYPES:
            return "xml"
    return None


async def acceptable(request: Request) -> None:
    """Router dependency: 406 (an OperationOutcome in JSON, see hub.api.app) before any work is done.
    Async on purpose: FastAPI runs a plain `def` dependency on its thread pool, a thread hop per request."""
    chosen = negotiate(request)
    if chosen is None:
        raise HTTPException(406, "not acceptable")
    request.state.fhir_format = chosen


def wants_xml(request: Request) -> bool:
    """`_format` wins over `Accept`; JSON when neither names a FHIR format (406 is decided by `acceptable`,
    which keeps its answer for the rest of the request)."""
    chosen = getattr(request.state, "fhir_format", None) or negotiate(request)
    return chosen == "xml"


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
    return Response(jsoncodec.dumps(body), status, headers=headers, media_type=f"{FHIR_JSON}; charset=utf-8")


def outcome_body(code: str, diagnostics: str, expression: str | None = None, severity: str = "error") -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def operation_outcome(
    status: int, code: str, diagnostics: str, expression: str | None = None, xml: bool = False
) -> Response:
    return fhir_response(outcome_body(code, diagnostics, expression), status, xml=xml)
