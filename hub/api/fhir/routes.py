"""FHIR R4 (4.0.1) REST: read, vread, history, search, create, update, delete (plain and conditional),
transaction and batch Bundles, in JSON and XML.

Writes go through the FHIR door (adapters/inbound/fhir) into the one pipeline: the request is
stored, processed on the writer (serialised with every other feed), and answered from the result
processing stored. Reads go through `PatientData`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from adapters.inbound.fhir.reader import bundle_entries
from hub.access import PatientData, Permission, requires
from hub.api.fhir import includes
from hub.api.fhir.patient_links import add_bundle_links, add_links
from hub.api.fhir.render import (
    KINDS,
    TYPES,
    http_date,
    instant,
    render,
    row_resource,
    version_resource,
)
from hub.api.fhir.wire import (
    FHIR_VERSION,
    STATUS_CODES,
    Unsupported,
    body_is_xml,
    fhir_response,
    operation_outcome,
    outcome_body,
    wants_xml,
)
from hub.messages import Status
from hub.store.uow import RecordRow
from mappings.fhir import search

router = APIRouter(prefix="/fhir")
writes = APIRouter(prefix="/fhir")
"""The write interactions: matched first (FastAPI tries routes in order, at a cost per route tried); no read
route shares their method and path shape, so the order changes no match."""

READ = [Depends(requires(Permission.PATIENT_READ))]
WRITE = [Depends(requires(Permission.PATIENT_WRITE))]
SORTS = {"date": "date", "birthdate": "birthdate", "authored": "date"}
REASONS = {
    200: "200 OK", 201: "201 Created", 204: "204 No Content", 400: "400 Bad Request", 404: "404 Not Found",
    409: "409 Conflict", 410: "410 Gone", 412: "412 Precondition Failed", 422: "422 Unprocessable Entity",
}


def _data(request: Request) -> PatientData:
    return request.app.state.hub.patient_data


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def _unknown_type(request: Request, resource_type: str) -> Response:
    return operation_outcome(404, "not-supported", "resource type not supported by this server", "type", wants_xml(request))


def _headers(row: RecordRow, request: Request, location: bool = False) -> dict[str, str]:
    headers = {"ETag": f'W/"{row.version}"', "Last-Modified": http_date(row.updated_at)}
    if location:
        headers["Location"] = f"{_base(request)}/{TYPES[row.kind]}/{row.id}/_history/{row.version}"
    return headers


# ---------------------------------------------------------------- capability statement

MPI_OPERATIONS = [  # served by hub/api/fhir/mpi_ops.py
    {"name": "match", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match"},
    {"name": "ihe-pix", "definition": "https://profiles.ihe.net/ITI/PIXm/OperationDefinition/IHE.PIXm.pix"},
]

@router.get("/metadata", dependencies=[Depends(requires(Permission.HEALTH))])
def capability_statement(request: Request) -> Response:
    interactions = ["read", "vread", "update", "delete", "history-instance", "history-type", "search-type", "create"]
    return fhir_response({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "kind": "instance",
        "software": {"name": "hl7-hub", "version": "0.1.0"},
        "implementation": {"description": "HL7 v2 / FHIR / CSV integration hub", "url": _base(request)},
        "fhirVersion": FHIR_VERSION,
        "format": ["json", "xml"],
        "rest": [{
            "mode": "server",
            "resource": [
                {
                    "type": name,
                    "versioning": "versioned-update",
                    "readHistory": True,
                    "updateCreate": True,
                    "conditionalCreate": True,
                    "conditionalUpdate": True,
                    "conditionalDelete": "single",
                    "interaction": [{"code": c} for c in interactions],
                    **includes.capability(name, params),
                    "operation": [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"},
                                  *(MPI_OPERATIONS if name == "Patient" else [])],
                }
                for name, params in search.PARAMS.items()
            ],
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
        }],
    }, xml=wants_xml(request))


# ---------------------------------------------------------------- reads

def _read(request: Request, resource_type: str, resource_id: str) -> tuple[int, dict[str, Any], RecordRow | None]:
    kind = KINDS[resource_type]
    row = _data(request).get(kind, resource_id)
    if row is None:
        return 404, outcome_body("not-found", f"{resource_type} with this id is not known", f"{resource_type}.id"), None
    if row.deleted:
        return 410, outcome_body("deleted", f"{resource_type} with this id was deleted", f"{resource_type}.id"), row
    resource = row_resource(row)
    add_links(request.app.state.hub.engine, [resource])
    return 200, resource, row


@router.get("/{resource_type}/{resource_id}", dependencies=READ)
def read(resource_type: str, resource_id: str, request: Request) -> Response:
    if resource_type not in KINDS:
        return _unknown_type(request, resource_type)
    status, body, row = _read(request, resource_type, resource_id)
    headers = _headers(row, request) if row is not None and status == 200 else None
    return fhir_response(body, status, headers, wants_xml(request))


@router.get("/{resource_type}/{resource_id}/_history/{version_id}", dependencies=READ)
def vread(resource_type: str, resource_id: str, version_id: str, request: Request) -> Response:
    if resource_type not in KINDS:
        return _unknown_type(request, resource_type)
    xml = wants_xml(request)
    row, versions = _data(request).history(KINDS[resource_type], resource_id)
    if row is None:
        return operation_outcome(404, "not-found", f"{resource_type} with this id is not known", f"{resource_type}.id", xml)
    if version_id == str(row.version):
        if row.deleted:
            return operation_outcome(410, "deleted", f"this version of the {resource_type} is a deletion", "versionId", xml)
        return fhir_response(row_resource(row), 200, _headers(row, request), xml)
    for version in versions:
        if str(version.version) == version_id:
            if version.deleted:
                return operation_outcome(410, "deleted", f"this version of the {resource_type} is a deletion", "versionId", xml)
            headers = {"ETag": f'W/"{version.version}"', "Last-Modified": http_date(version.recorded_at)}
            return fhir_response(version_resource(row, version), 200, headers, xml)
    return operation_outcome(404, "not-found", f"{resource_type} has no such version", "versionId", xml)


# ---------------------------------------------------------------- search

def _strict(request: Request) -> bool:
    return "handling=strict" in request.headers.get("prefer", "").replace(" ", "")


def search_response(request: Request, resource_type: str, pairs: list[tuple[str, str]]) -> Response:
    """The answer to a search of `resource_type` with these parameters (from the URL, or the URL and a
    POSTed form): a searchset, or an OperationOutcome; `Prefer: handling=strict` honoured."""
    self_url = str(request.url) if request.method == "GET" else f"{_base(request)}/{resource_type}?{urlencode(pairs)}"
    status, body = search_bundle(request, resource_type, pairs, _strict(request), self_url)
    return fhir_response(body, status, xml=wants_xml(request))


async def search_parameters(request: Request) -> list[tuple[str, str]]:
    """Search parameters of a GET (the query) or a `POST {type}/_search` (the query and the form body).
    Raises Unsupported when a POSTed body is not `application/x-www-form-urlencoded`."""
    pairs = list(request.query_params.multi_items())
    if request.method != "POST":
        return pairs
    body = await request.body()
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded" and (body.strip() or content_type):
        raise Unsupported(content_type)
    return pairs + parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)


def search_bundle(
    request: Request, resource_type: str, pairs: list[tuple[str, str]], strict: bool, self_url: str
) -> tuple[int, dict[str, Any]]:
    """(status, searchset or OperationOutcome): every search of a resource type, whichever way it came."""
    kind = KINDS[resource_type]
    try:
        criteria, unknown = search.parse_query(resource_type, pairs)
    except search.SearchValueError as exc:
        return 400, outcome_body("invalid", f"search parameter {exc} has an unusable value", str(exc))
    params = dict(pairs)
    sort = None
    if "_sort" in params:
        field = params["_sort"].lstrip("-")
        if SORTS.get(field) and (field in search.PARAMS[resource_type]):
            sort = ("-" if params["_sort"].startswith("-") else "") + SORTS[field]
        else:
            unknown.append("_sort")
    include, revinclude, unsupported = includes.parse(resource_type, pairs)
    unknown += unsupported
    if unknown and strict:
        return 400, outcome_body("not-supported", f"unknown or unsupported search parameter {unknown[0][:40]}", unknown[0][:40])
    try:
        count = min(max(int(params.get("_count", "50")), 0), 1000)
        offset = max(int(params.get("_offset", "0")), 0)
    except ValueError:
        return 400, outcome_body("invalid", "_count and _offset must be integers", "_count")
    data = _data(request)
    if params.get("_summary") == "count":
        count = 0
    rows = data.search(kind, criteria, count + 1, offset, sort) if count else []
    base = _base(request)
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "self", "url": self_url}],
        "entry": [
            {"fullUrl": f"{base}/{resource_type}/{row.id}", "resource": row_resource(row), "search": {"mode": "match"}}
            for row in rows[:count]
        ],
    }
    if count == 0 or params.get("_total") == "accurate" or params.get("_summary") == "count":
        bundle["total"] = data.count(kind, criteria)
    elif len(rows) <= count and offset == 0:
        bundle["total"] = len(rows)
    if len(rows) > count:
        next_params = [(k, v) for k, v in pairs if k != "_offset"] + [("_offset", str(offset + count))]
        bundle["link"].append({"relation": "next", "url": f"{base}/{resource_type}?{urlencode(next_params)}"})
    if include:
        patient_ids = list({row.patient_id for row in rows[:count] if row.patient_id})
        bundle["entry"] += [
            {"fullUrl": f"{base}/Patient/{row.id}", "resource": row_resource(row), "search": {"mode": "include"}}
            for row in data.get_many("patient", patient_ids)
        ]
    issues = [
        {"severity": "warning", "code": "not-supported", "diagnostics": f"unknown or unsupported search parameter {u[:40]} ignored"}
        for u in unknown
    ]
    if revinclude:
        included, cut = includes.revinclude_entries(data, base, revinclude, [row.id for row in rows[:count]])
        bundle["entry"] += included
        issues += cut
    if issues:
        bundle["entry"].append({"resource": {"resourceType": "OperationOutcome", "issue": issues}, "search": {"mode": "outcome"}})
    if not bundle["entry"]:
        del bundle["entry"]
    add_bundle_links(request.app.state.hub.engine, bundle)
    return 200, bundle


@router.get("/{resource_type}", dependencies=READ)
def search_type(resource_type: str, request: Request) -> Response:
    if resource_type not in KINDS:
        return _unknown_type(request, resource_type)
    return search_response(request, resource_type, list(request.query_params.multi_items()))


@router.post("/{resource_type}/_search", dependencies=READ)
async def search_posted(resource_type: str, request: Request) -> Response:
    """`POST {type}/_search`: a search whose parameters come in a form body (and the URL)."""
    if resource_type not in KINDS:
        return _unknown_type(request, resource_type)
    try:
        pairs = await search_parameters(request)
    except Unsupported:
        return operation_outcome(415, "not-supported", "send the search parameters as application/x-www-form-urlencoded", "Content-Type", wants_xml(request))
    return search_response(request, resource_type, pairs)


# ---------------------------------------------------------------- writes

def _query(request: Request) -> str | None:
    pairs = [(k, v) for k, v in request.query_params.multi_items() if k != "_format"]
    return urlencode(pairs) if pairs else None


async def _write(request: Request, context: dict[str, Any]) -> tuple[Response | None, Any]:
    """Store and process one write; an error response, or None and the processing result."""
    xml = wants_xml(request)
    try:
        context["xml"] = body_is_xml(request) if context["interaction"] != "delete" else False
    except Unsupported:
        return operation_outcome(415, "not-supported", "unsupported media type: send application/fhir+json or application/fhir+xml", "Content-Type", xml), None
    raw = await request.body() if context["interaction"] != "delete" else b""
    inbound, outcome, result = await request.app.state.hub.fhir_door.write(raw, context)
    if not outcome.stored:
        return operation_outcome(503, "transient", "the request could not be stored; try again", None, xml), None
    if inbound.status is not Status.ACCEPTED:
        problem = inbound.problems[0]
        status = (inbound.context or {}).get("status") or STATUS_CODES.get(problem.code, 400)
        return operation_outcome(status, problem.code, problem.text, problem.location, xml), None
    if result is None:
        return operation_outcome(500, "exception", "the request could not be processed", None, xml), None
    return None, result


def _answer(request: Request, resource_type: str, result: dict[str, Any]) -> Response:
    xml = wants_xml(request)
    status = result["status"]
    if "outcome" in result:
        problem = result["outcome"]
        return operation_outcome(status, problem["code"], problem["text"], problem.get("location"), xml)
    if status == 204:
        headers = {"ETag": f'W/"{result["version"]}"'} if "version" in result else None
        return Response(status_code=204, headers=headers)
    data = _data(request)
    written = _from_result(result)
    if written is not None:
        body, version, at = written
    else:
        row = data.get(KINDS[resource_type], result["id"], wait=False)
        if row is None:  # deleted meanwhile by someone else
            return operation_outcome(404, "not-found", f"{resource_type} is not known", None, xml)
        body, version, at = row_resource(row), row.version, row.updated_at
    data.written(KINDS[resource_type], [result["id"]])
    headers = {
        "ETag": f'W/"{version}"', "Last-Modified": http_date(at),
        "Location": f"{_base(request)}/{resource_type}/{result['id']}/_history/{version}",
    }
    prefer = request.headers.get("prefer", "").replace(" ", "")
    if "return=minimal" in prefer:
        return Response(status_code=status, headers=headers)
    if "return=OperationOutcome" in prefer:
        body = outcome_body("informational", "done", None, severity="information")
        return fhir_response(body, status, headers, xml)
    return fhir_response(body, status, headers, xml)


def _from_result(result: dict[str, Any]) -> tuple[dict[str, Any], int, datetime] | None:
    """The written resource, rendered from the processing result (no read back) when it has one."""
    if "resource" not in result or "updated_at" not in result:
        return None
    at = datetime.fromisoformat(result["updated_at"])
    body = render(result["kind"], result["id"], result["version"], {}, result["resource"], result.get("feed"), at,
                  result.get("patient_id"))
    return body, result["version"], at


@router.post("/{resource_type}/$validate", dependencies=[Depends(requires(Permission.MESSAGE_SUBMIT))])
async def validate_resource(resource_type: str, request: Request) -> Response:
    """`$validate`: the body (a resource, or Parameters with a `resource` parameter) checked exactly as a
    create would check it; nothing is stored. 200 with an informational OperationOutcome, else the problem."""
    from adapters.inbound.fhir.reader import FhirInputError, parse_body, validate

    xml = wants_xml(request)
    if resource_type not in KINDS:
        return _unknown_type(request, resource_type)
    try:
        body = parse_body(await request.body(), body_is_xml(request))
        if body.get("resourceType") == "Parameters":
            validate(body)
            body = next((p["resource"] for p in body.get("parameter", []) if p.get("name") == "resource" and "resource" in p), None)
            if body is None:
                raise FhirInputError("required", "Parameters has no resource parameter", "Parameters.parameter")
        if body.get("resourceType") != resource_type:
            raise FhirInputError("invalid", "resourceType does not match the URL", f"{resource_type}.resourceType")
        validate(body)
    except Unsupported:
        return operation_outcome(415, "not-supported", "unsupported media type: send application/fhir+json or application/fhir+xml", "Content-Type", xml)
    except FhirInputError as exc:
        return operation_outcome(exc.status, exc.problem.code, exc.problem.text, exc.problem.location, xml)
    return fhir_response(outcome_body("informational", "the resource is valid", None, severity="information"), 200, xml=xml)


async def _submit(request: Request, resource_type: str, context: dict[str, Any]) -> Response:
    """Every write interaction: through the pipeline (stored, processed), answered from its result."""
    error, result = await _write(request, {"type": resource_type, **context})
    return error or _answer(request, resource_type, result)


@writes.post("/{resource_type}", dependencies=WRITE)
async def create(resource_type: str, request: Request) -> Response:
    if resource_type not in KINDS:
        return _unknown_type(request, resource_type)
    if_none_exist = request.headers.get("if-none-exist")
    if if_none_exist is not None:
        if_none_exist = if_none_exist.split("?", 1)[-1]
    return await _submit(request, resource_type, {"interaction": "create", "if_none_exist": if_none_exist})


@writes.put("/{resource_type}/{resource_id}", dependencies=WRITE)
async def update(resource_type: str, resource_id: str, request: Request) -> Response:
    if resource_type not in KINDS:
        return _unknown_type(request, resource_type)
    return await _submit(request, resource_type, {"interaction": "update", "id": resource_id, "if_match": request.headers.get("if-match")})


@writes.put("/{resource_type}", dependencies=WRITE)
async def conditional_update(resource_type: str, request: Request) -> Response:
    return await _conditional(request, resource_type, "update", (400, "invalid", "update needs an id or search conditions"))


@writes.delete("/{resource_type}/{resource_id}", dependencies=WRITE)
async def delete(resource_type: str, resource_id: str, request: Request) -> Response:
    if resource_type not in KINDS:
        return _unknown_type(request, resource_type)
    return await _submit(request, resource_type, {"interaction": "delete", "id": resource_id, "if_match": request.headers.get("if-match")})


@writes.delete("/{resource_type}", dependencies=WRITE)
async def conditional_delete(resource_type: str, request: Request) -> Response:
    return await _conditional(
        request, resource_type, "delete", (405, "not-supported", "deleting a whole resource type is not supported")
    )


async def _conditional(
    request: Request, resource_type: str, interaction: str, without_query: tuple[int, str, str]
) -> Response:
    """Conditional update or delete: the search conditions name the record (`PUT Patient?identifier=…`)."""
    if resource_type not in KINDS:
        return _unknown_type(request, resource_type)
    query = _query(request)
    if query is None:
        status, code, text = without_query
        return operation_outcome(status, code, text, "url", wants_xml(request))
    return await _submit(
        request, resource_type, {"interaction": interaction, "query": query, "if_match": request.headers.get("if-match")}
    )


# ---------------------------------------------------------------- transaction and batch

def _get_entry(request: Request, url: str) -> tuple[int, dict[str, Any]]:
    path, _, query = url.partition("?")
    parts = path.strip("/").split("/")
    resource_type = parts[0]
    if resource_type not in KINDS:
        return 404, outcome_body("not-supported", "resource type not supported by this server", "request.url")
    if len(parts) == 1:
        return search_bundle(request, resource_type, parse_qsl(query), False, f"{_base(request)}/{url}")
    status, body, _ = _read(request, resource_type, parts[1])
    return status, body


@writes.post("", dependencies=WRITE)
async def transaction_or_batch(request: Request) -> Response:
    xml = wants_xml(request)
    try:
        xml_in = body_is_xml(request)
    except Unsupported:
        return operation_outcome(415, "not-supported", "unsupported media type: send application/fhir+json or application/fhir+xml", "Content-Type", xml)
    raw = await request.body()
    kind = None
    if not xml_in:
        import json

        try:
            kind = json.loads(raw).get("type")
        except (ValueError, AttributeError, UnicodeDecodeError):
            kind = None
    else:
        from lxml import etree

        try:
            node = etree.fromstring(raw, parser=etree.XMLParser(resolve_entities=False, no_network=True)).find("{http://hl7.org/fhir}type")
            kind = node.get("value") if node is not None else None
        except etree.XMLSyntaxError:
            kind = None
    context = {"interaction": "batch" if kind == "batch" else "transaction", "bundle": "batch" if kind == "batch" else "transaction"}
    context["xml"] = xml_in
    inbound, outcome, result = await request.app.state.hub.fhir_door.write(raw, context)
    if not outcome.stored:
        return operation_outcome(503, "transient", "the request could not be stored; try again", None, xml)
    if inbound.status is not Status.ACCEPTED:
        problem = inbound.problems[0]
        status = (inbound.context or {}).get("status") or STATUS_CODES.get(problem.code, 400)
        return operation_outcome(status, problem.code, problem.text, problem.location, xml)
    if result is None:
        return operation_outcome(500, "exception", "the request could not be processed", None, xml)
    if "outcome" in result:
        problem = result["outcome"]
        where = f"Bundle.entry[{result['entry']}]" if "entry" in result else None
        return operation_outcome(result["status"], problem["code"], problem["text"], problem.get("location") or where, xml)
    entries = bundle_entries(raw, xml_in)
    data = _data(request)
    ids = [r["id"] for r in result["entries"] if r.get("id") and r["status"] in (200, 201) and "resource" not in r]
    rows = {row.id: row for kind_ in {r["kind"] for r in result["entries"] if r.get("kind")} for row in data.get_many(kind_, ids)}
    out = []
    base = _base(request)
    for entry, entry_result in zip(entries, result["entries"], strict=True):
        status = entry_result["status"]
        if entry_result.get("read"):
            status, body = _get_entry(request, entry["request"]["url"])
            out.append({"resource": body, "response": {"status": REASONS.get(status, str(status))}})
        elif "outcome" in entry_result:
            problem = entry_result["outcome"]
            out.append({"response": {
                "status": REASONS.get(status, str(status)),
                "outcome": outcome_body(problem["code"], problem["text"], problem.get("location")),
            }})
        elif status == 204:
            out.append({"response": {"status": REASONS[204]}})
        else:
            written = _from_result(entry_result)
            row = rows.get(entry_result["id"])
            if written is None and row is None:
                out.append({"response": {"status": REASONS[204 if status == 200 else 404]}})
                continue
            body, version, at = written if written is not None else (row_resource(row), row.version, row.updated_at)
            type_ = TYPES[entry_result["kind"]]
            out.append({
                "fullUrl": f"{base}/{type_}/{entry_result['id']}",
                "resource": body,
                "response": {
                    "status": REASONS.get(status, str(status)),
                    "location": f"{type_}/{entry_result['id']}/_history/{version}",
                    "etag": f'W/"{version}"',
                    "lastModified": instant(at),
                },
            })
    for kind_ in {r["kind"] for r in result["entries"] if r.get("kind")}:
        data.written(kind_, [r["id"] for r in result["entries"] if r.get("kind") == kind_])
    bundle_type = "batch-response" if context["bundle"] == "batch" else "transaction-response"
    return fhir_response({"resourceType": "Bundle", "type": bundle_type, "entry": out}, 200, xml=xml)
