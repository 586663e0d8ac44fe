"""FHIR R4 request bodies → `InboundMessage`s: parse (JSON or XML), validate, map to canonical events.

The raw bytes are the request body verbatim; what else the request said (interaction, resource
type, id, conditions) travels in the message's `context`, stored with it, so the same read can be
done again at processing. Validation uses fhir.resources' R4B models (R4B = R4 for the resources
served here) plus checks for what they wrongly accept (see LIBRARY-NOTES): a date given as a number,
a boolean as a string, `gender` outside its value set, an unknown resourceType in a Bundle entry.
Problems name the element (`Patient.birthDate`), never its value.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from fhir.resources.R4B import get_fhir_model_class
from lxml import etree
from pydantic import ValidationError

from hub.messages import InboundMessage, Problem, Status
from hub.model import PatientEvent, RecordRequest
from mappings.fhir import search
from mappings.fhir.patient import from_fhir as patient_from_fhir
from mappings.fhir.resources import KINDS, from_fhir, subject_reference

FHIR_NS = "http://hl7.org/fhir"
WRITABLE = set(KINDS)
EVENT_FIELDS = {
    "patient": "patient", "encounter": "encounter", "appointment": "appointment", "account": "account",
    "report": "report", "observation": "observations", "order": "orders", "charge": "charges",
}
BOOLEAN = {"active", "deceasedBoolean", "multipleBirthBoolean", "experimental", "primary", "preferred",
           "allowedBoolean", "valueBoolean", "abstract", "userSelected"}
DATES = {"birthDate", "date", "start", "end", "issued", "authoredOn", "effectiveDateTime", "effectiveInstant",
         "occurrenceDateTime", "deceasedDateTime", "lastUpdated", "enteredDate", "recorded", "created"}
GENDERS = {"male", "female", "other", "unknown"}
METHODS = {"POST": "create", "PUT": "update", "DELETE": "delete", "GET": "read"}


class FhirInputError(Exception):
    def __init__(self, code: str, text: str, location: str | None = None, status: int = 400) -> None:
        super().__init__(text)
        self.problem = Problem(code, text, location)
        self.status = status


def parse_body(raw: bytes, xml: bool) -> dict[str, Any]:
    """Body → resource JSON (XML is validated and converted by its R4B model)."""
    if not raw.strip():
        raise FhirInputError("required", "the request has no body", "body")
    if xml:
        try:
            root = etree.fromstring(raw, parser=_safe_parser())
        except etree.XMLSyntaxError as exc:
            raise FhirInputError("structure", "the body is not well-formed XML", "body") from exc
        name = etree.QName(root).localname
        if etree.QName(root).namespace != FHIR_NS:
            raise FhirInputError("structure", "the root element is not in the FHIR namespace", name)
        model = _model(name, name)
        try:
            return model.model_validate_xml(raw, xmlparser=_safe_parser()).model_dump(mode="json", exclude_none=True)
        except ValidationError as exc:
            raise _validation_problem(name, exc) from exc
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise FhirInputError("structure", "the XML does not follow the FHIR resource structure", name) from exc
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FhirInputError("structure", "the body is not valid JSON", "body") from exc
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        raise FhirInputError("structure", "the body is not a FHIR resource (no resourceType)", "resourceType")
    return body


def _safe_parser() -> etree.XMLParser:
    """No entity expansion, no network, no DTD loading: bodies come from anyone."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _model(name: str, where: str) -> Any:
    try:
        return get_fhir_model_class(name)
    except (KeyError, ValueError, AttributeError) as exc:
        raise FhirInputError("not-supported", "unknown resourceType", f"{where}.resourceType") from exc


def _validation_problem(name: str, exc: ValidationError) -> FhirInputError:
    error = exc.errors()[0]
    path = name
    for part in error["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not str(part).startswith("function-") and part not in ("__root__",):
            path += f".{part}"
    kind = error["type"]
    if kind == "extra_forbidden":
        return FhirInputError("structure", f"unknown element {path}", path)
    if kind == "missing":
        return FhirInputError("required", f"missing required element {path}", path)
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return FhirInputError("structure", f"wrong type for {path}", path)
    return FhirInputError("value", f"invalid value for {path}", path)


def _own_checks(value: Any, path: str) -> None:
    """What the R4B models accept although it is wrong."""
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}"
            if key in BOOLEAN and not isinstance(item, bool):
                raise FhirInputError("structure", f"wrong type for {here} (boolean expected)", here)
            if key in DATES and not isinstance(item, str):
                raise FhirInputError("structure", f"wrong type for {here} (date string expected)", here)
            if key == "gender" and item not in GENDERS:  # AdministrativeGender wherever `gender` occurs in R4
                raise FhirInputError("code-invalid", f"{here} is not in the AdministrativeGender value set", here)
            if key == "resource" and isinstance(item, dict):
                name = item.get("resourceType")
                if not isinstance(name, str):
                    raise FhirInputError("structure", f"{here} has no resourceType", f"{here}.resourceType")
                _model(name, here)
                _own_checks(item, here)
                continue
            _own_checks(item, here)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            _own_checks(item, f"{path}[{n}]")


def validate(resource: dict[str, Any], where: str | None = None) -> dict[str, Any]:
    """Structural validation of one resource (JSON); returns it without `meta`."""
    name = resource["resourceType"]
    where = where or name
    _own_checks(resource, where)
    model = _model(name, where)
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        problem = _validation_problem(where, exc)
        raise problem from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise FhirInputError("structure", f"{where} does not follow the FHIR resource structure", where) from exc
    return {k: v for k, v in resource.items() if k != "meta"}


def _conditions(resource_type: str, query: str | None, where: str) -> list | None:
    if query is None:
        return None
    pairs = parse_qsl(query, keep_blank_values=True)
    try:
        found, unknown = search.parse_query(resource_type, pairs)
    except search.SearchValueError as exc:
        raise FhirInputError("invalid", f"search parameter {exc} has an unusable value", where) from exc
    if unknown:
        raise FhirInputError("not-supported", f"unknown search parameter {unknown[0][:40]} in conditions", where)
    if not found:
        raise FhirInputError("invalid", "conditions with no usable search parameter", where)
    return found


def _if_match(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not text.isdigit():
        raise FhirInputError("invalid", "If-Match must name a version (W/\"n\")", "If-Match")
    return int(text)


def _event(
    interaction: str, resource_type: str, resource: dict[str, Any] | None, *, record_id: str | None = None,
    if_match: int | None = None, if_none_exist: list | None = None, conditions: list | None = None,
    full_url: str | None = None, where: str | None = None,
) -> PatientEvent:
    kind = KINDS[resource_type]
    where = where or resource_type
    fields: dict[str, Any] = {}
    extra: list[tuple[str, str]] = []
    subject = None
    if resource is not None:
        try:
            if resource_type == "Patient":
                record: Any = patient_from_fhir(resource)
            else:
                record, extra = from_fhir(resource)
        except (ValidationError, ValueError, TypeError, KeyError) as exc:
            raise FhirInputError("processing", f"{where} cannot be represented in the hub's records", where, 422) from exc
        fields[EVENT_FIELDS[kind]] = [record] if EVENT_FIELDS[kind].endswith("s") else record
        subject = subject_reference(resource)
        resource = {k: v for k, v in resource.items() if k not in ("id", "meta")}  # the record keeps both
        if resource_type == "Patient":  # Patient.link belongs to the master patient index (added on read)
            resource.pop("link", None)
    request = RecordRequest(
        method=interaction, kind=kind, record_id=record_id, if_match=if_match, if_none_exist=if_none_exist,
        conditions=conditions, resource=resource, full_url=full_url, subject=subject, index=extra,
    )
    return PatientEvent(event=f"FHIR^{interaction}^{resource_type}", request=request, **fields)


def _single(raw: bytes, context: dict[str, Any]) -> list[PatientEvent]:
    interaction, resource_type = context["interaction"], context["type"]
    if resource_type not in WRITABLE:
        raise FhirInputError("not-supported", "resource type not supported", resource_type, 404)
    where = resource_type
    if interaction == "delete":
        conditions = _conditions(resource_type, context.get("query"), "url")
        return [_event("delete", resource_type, None, record_id=context.get("id"), conditions=conditions,
                       if_match=_if_match(context.get("if_match")))]
    body = parse_body(raw, context.get("xml", False))
    if body.get("resourceType") != resource_type:
        raise FhirInputError("invalid", "resourceType does not match the URL", f"{where}.resourceType")
    resource = validate(body)
    if interaction == "create":
        resource.pop("id", None)  # the server assigns ids on create
        return [_event("create", resource_type, resource,
                       if_none_exist=_conditions(resource_type, context.get("if_none_exist"), "If-None-Exist"))]
    record_id = context.get("id")
    conditions = _conditions(resource_type, context.get("query"), "url")
    if record_id is not None and resource.get("id") != record_id:
        raise FhirInputError("invalid", "the resource id must equal the id in the URL", f"{where}.id")
    if record_id is None and conditions is None:
        raise FhirInputError("invalid", "update needs an id or search conditions", "url")
    if conditions is not None and "id" in resource:
        record_id = None
    return [_event("update", resource_type, resource, record_id=record_id, conditions=conditions,
                   if_match=_if_match(context.get("if_match")))]


def _entry_events(bundle: dict[str, Any]) -> list[PatientEvent]:
    events = []
    for n, entry in enumerate(bundle.get("entry", [])):
        where = f"Bundle.entry[{n}]"
        request = entry.get("request") or {}
        method, url = request.get("method"), request.get("url")
        if method not in METHODS or not url:
            raise FhirInputError("required", "each entry needs request.method and request.url", f"{where}.request")
        path, _, query = url.partition("?")
        parts = path.strip("/").split("/")
        resource_type = parts[0]
        if resource_type not in WRITABLE:
            raise FhirInputError("not-supported", "resource type not supported", f"{where}.request.url")
        record_id = parts[1] if len(parts) > 1 else None
        interaction = METHODS[method]
        if interaction == "read":
            events.append(_event("read", resource_type, None, record_id=record_id, where=where))
            continue
        if_match = _if_match(request.get("ifMatch"))
        if interaction == "delete":
            events.append(_event("delete", resource_type, None, record_id=record_id, if_match=if_match,
                                 conditions=_conditions(resource_type, query or None, f"{where}.request.url")))
            continue
        resource = entry.get("resource")
        if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
            raise FhirInputError("invalid", "entry resource missing or not of the type in request.url", f"{where}.resource")
        resource = validate(resource, f"{where}.resource")
        full_url = entry.get("fullUrl") if str(entry.get("fullUrl", "")).startswith("urn:uuid:") else None
        if interaction == "create":
            resource.pop("id", None)
            if_none_exist = _conditions(resource_type, request.get("ifNoneExist"), f"{where}.request.ifNoneExist")
            events.append(_event("create", resource_type, resource, if_none_exist=if_none_exist, full_url=full_url, where=where))
        else:
            conditions = _conditions(resource_type, query or None, f"{where}.request.url")
            if record_id is not None and resource.get("id") != record_id:
                raise FhirInputError("invalid", "the resource id must equal the id in request.url", f"{where}.resource.id")
            if record_id is None and conditions is None:
                raise FhirInputError("invalid", "update needs an id or search conditions", f"{where}.request.url")
            events.append(_event("update", resource_type, resource, record_id=record_id, conditions=conditions,
                                 if_match=if_match, full_url=full_url, where=where))
    return events


def _bundle(raw: bytes, context: dict[str, Any]) -> list[PatientEvent]:
    body = parse_body(raw, context.get("xml", False))
    if body.get("resourceType") != "Bundle":
        raise FhirInputError("invalid", "POST to the base takes a Bundle", "resourceType")
    if body.get("type") not in ("transaction", "batch"):
        raise FhirInputError("invalid", "only transaction and batch Bundles are processed", "Bundle.type")
    _own_checks(body, "Bundle")
    _model("Bundle", "Bundle")
    for n, entry in enumerate(body.get("entry", [])):
        if not isinstance(entry, dict):
            raise FhirInputError("structure", "entry must be an object", f"Bundle.entry[{n}]")
    skeleton = {**body, "entry": [{k: v for k, v in e.items() if k != "resource"} for e in body.get("entry", [])]}
    validate(skeleton, "Bundle")
    return _entry_events(body)


def read_request(raw: bytes, feed: str, context: dict[str, Any] | None = None) -> InboundMessage:
    """The FHIR reader registered with the core: bytes and their request context → message."""
    context = context or {}
    interaction = context.get("interaction", "")
    message_type = f"{context.get('type', 'Bundle')}^{interaction}"[:32]
    inbound = InboundMessage(raw, feed, "fhir", Status.ACCEPTED, message_type=message_type, context=context)
    try:
        inbound.events = _bundle(raw, context) if interaction in ("transaction", "batch") else _single(raw, context)
    except FhirInputError as exc:
        inbound.status = Status.ERROR if exc.status == 422 else Status.REJECTED
        inbound.problems = [exc.problem]
        inbound.context = context | {"status": exc.status}
    return inbound


def bundle_entries(raw: bytes, xml: bool) -> list[dict[str, Any]]:
    """The entries of a Bundle already judged valid (for the door's GET entries and answers)."""
    return parse_body(raw, xml).get("entry", [])
