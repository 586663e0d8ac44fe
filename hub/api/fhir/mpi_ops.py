"""FHIR views of the master patient index: golden records, Patient.link, `$match` and `$ihe-pix`.

- A person is a Patient whose id is its enterprise id, with the identifier `urn:hub:enterprise-id|<id>`
  and `link` entries of type `seealso` to each source record (a merged person: `replaced-by` the
  survivor). Golden records are never in the search index, so a search by a source identifier returns
  that source record only (golden copies turning up as duplicate patients is a known MDM complaint);
  they are reached by id, through `Patient.link`, or by `identifier=urn:hub:enterprise-id|<id>`.
- A source record carries `link` type `refer` to its person; a record merged away by an A40 carries
  `replaced-by` to the surviving record instead: wherever a Patient is returned (reads, searchsets,
  `_include`), given by `patient_links` in the generic routes.
- `POST /fhir/Patient/$match` (FHIR R4 patient-operation-match): Parameters with `resource`,
  optionally `onlyCertainMatches` and `count`; a searchset of golden records with `search.score`
  (0–1) and the `match-grade` extension (certain / probable / possible).
- `GET /fhir/Patient/$ihe-pix?sourceIdentifier=system|value[&targetSystem=…]` (IHE ITI-83 PIXm):
  Parameters with every cross-referenced identifier (`targetIdentifier`) and record (`targetId`).

Registered ahead of the generic routes (which it delegates to for everything that is not the MPI's).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from hub.access import Permission, requires
from hub.api.fhir import routes
from hub.api.fhir.render import instant
from hub.api.fhir.wire import (
    Unsupported,
    body_is_xml,
    fhir_response,
    operation_outcome,
    wants_xml,
)
from hub.model import Patient
from hub.mpi.model import Explanation
from hub.mpi.service import current_model, match_candidates
from hub.store.mpi import PersonRow
from hub.store.uow import UnitOfWork
from mappings.fhir.patient import to_fhir as patient_to_fhir

router = APIRouter(prefix="/fhir")
READ = [Depends(requires(Permission.PATIENT_READ))]

ENTERPRISE_SYSTEM = "urn:hub:enterprise-id"
MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
GOLDEN_TAG = {"system": "urn:hub:mpi", "code": "GOLDEN_RECORD", "display": "Golden record (master patient index)"}


def _engine(request: Request) -> Any:
    return request.app.state.hub.engine


def _audit(request: Request, ids: list[str]) -> None:
    request.app.state.hub.patient_data.record_access(Permission.PATIENT_READ, "person", ids)


def golden_resource(person: PersonRow, record_ids: list[str]) -> dict[str, Any]:
    meta = {"versionId": str(person.version), "lastUpdated": instant(person.updated_at), "tag": [GOLDEN_TAG]}
    resource = patient_to_fhir(Patient.model_validate(person.data), person.id, meta)
    resource["identifier"] = [{"use": "official", "system": ENTERPRISE_SYSTEM, "value": person.id},
                              *resource.get("identifier", [])]
    resource["active"] = person.active
    links = [{"other": {"reference": f"Patient/{r}"}, "type": "seealso"} for r in record_ids]
    if person.merged_into:
        links.append({"other": {"reference": f"Patient/{person.merged_into}"}, "type": "replaced-by"})
    if links:
        resource["link"] = links
    return resource


def _golden(uow: UnitOfWork, person_ids: list[str]) -> dict[str, dict[str, Any]]:
    persons = uow.mpi.persons(person_ids)
    members = uow.mpi.members(list(persons))
    return {
        pid: golden_resource(p, [m.record_id for m in members.get(pid, []) if not m.deleted])
        for pid, p in persons.items()
    }


# ---------------------------------------------------------------- $ihe-pix (before /Patient/{id})

@router.get("/Patient/$ihe-pix", dependencies=READ)
def ihe_pix(request: Request) -> Response:
    xml = wants_xml(request)
    sources = request.query_params.getlist("sourceIdentifier")
    if len(sources) != 1 or "|" not in sources[0] or not all(sources[0].split("|", 1)):
        return operation_outcome(400, "required", "give exactly one sourceIdentifier as system|value", "sourceIdentifier", xml)
    system, value = sources[0].split("|", 1)
    targets = set(request.query_params.getlist("targetSystem"))
    key = ("patient", system, value)
    with UnitOfWork(_engine(request)) as uow:
        # IHE PIXm ITI-83: a target domain the index does not know is 403 "targetSystem not found", an
        # unknown source domain 400, an unknown identifier in a known domain 404
        unknown = sorted(targets - {ENTERPRISE_SYSTEM} - uow.mpi.known_patient_systems(targets - {ENTERPRISE_SYSTEM}))
        if unknown:
            return operation_outcome(403, "code-invalid", "targetSystem not found", "targetSystem", xml)
        row = uow.records.by_sources([key]).get(key)
        link = uow.mpi.links([row.id]).get(row.id) if row is not None and not row.deleted else None
        if link is None:
            if row is None and not uow.mpi.known_patient_systems([system]):
                return operation_outcome(400, "code-invalid", "sourceIdentifier Assigning Authority not found",
                                         "sourceIdentifier", xml)
            return operation_outcome(404, "not-found", "sourceIdentifier Patient Identifier not found", "sourceIdentifier", xml)
        members = uow.mpi.members([link.person_id])[link.person_id]
    found = [(ENTERPRISE_SYSTEM, link.person_id, None)] + [
        (m.source_system, m.source_value, m.record_id) for m in members
        if not m.deleted and (m.source_system, m.source_value) != (system, value)
    ]
    parameters = []
    for target_system, target_value, record_id in found:
        if targets and target_system not in targets:
            continue
        parameters.append({"name": "targetIdentifier", "valueIdentifier": {"system": target_system, "value": target_value}})
        if record_id:
            parameters.append({"name": "targetId", "valueReference": {"reference": f"Patient/{record_id}"}})
    _audit(request, [link.person_id])
    return fhir_response({"resourceType": "Parameters", **({"parameter": parameters} if parameters else {})}, xml=xml)


# ---------------------------------------------------------------- $match

@router.post("/Patient/$match", dependencies=READ)
async def match(request: Request) -> Response:
    from adapters.inbound.fhir.reader import FhirInputError, parse_body, validate
    from mappings.fhir.patient import from_fhir

    xml = wants_xml(request)
    try:
        body = parse_body(await request.body(), body_is_xml(request))
        if body.get("resourceType") != "Parameters":
            raise FhirInputError("invalid", "the body must be a Parameters resource", "Parameters")
        validate(body)
        params = {p.get("name"): p for p in body.get("parameter", [])}
        resource = params.get("resource", {}).get("resource")
        if not resource or resource.get("resourceType") != "Patient":
            raise FhirInputError("required", "the resource parameter must hold a Patient", "Parameters.parameter")
        only_certain = bool(params.get("onlyCertainMatches", {}).get("valueBoolean", False))
        count = params.get("count", {}).get("valueInteger", 10)
        if not isinstance(count, int) or not 1 <= count <= 100:
            raise FhirInputError("value", "count must be an integer from 1 to 100", "Parameters.parameter")
        patient = from_fhir(resource)
    except Unsupported:
        return operation_outcome(415, "not-supported", "send application/fhir+json or application/fhir+xml", "Content-Type", xml)
    except FhirInputError as exc:
        return operation_outcome(exc.status, exc.problem.code, exc.problem.text, exc.problem.location, xml)
    except (ValueError, TypeError):
        return operation_outcome(400, "invalid", "the Patient could not be read", "Parameters.parameter", xml)

    def run() -> tuple[list[tuple[str, Explanation]], dict[str, dict[str, Any]]]:
        with UnitOfWork(_engine(request)) as uow:
            scored = [(p, e) for p, e in match_candidates(uow, patient, 100) if e.band != "new"]
            if only_certain:
                scored = [(p, e) for p, e in scored if e.band == "link"]
            scored = scored[:count]
            return scored, _golden(uow, [p for p, _ in scored])

    from starlette.concurrency import run_in_threadpool

    scored, golden = await run_in_threadpool(run)
    base = str(request.base_url).rstrip("/") + "/fhir"
    entries = [
        {"fullUrl": f"{base}/Patient/{pid}", "resource": golden[pid],
         "search": {"mode": "match", "score": round(e.probability, 4),
                    "extension": [{"url": MATCH_GRADE, "valueCode": _grade(e)}]}}
        for pid, e in scored if pid in golden
    ]
    _audit(request, [pid for pid, _ in scored])
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(entries), **({"entry": entries} if entries else {})}
    return fhir_response(bundle, xml=xml)


def _grade(e: Explanation) -> str:
    """certain: the auto-link band; probable: the upper half of the review band; possible: the rest."""
    model = current_model()
    if e.band == "link":
        return "certain"
    return "probable" if e.weight >= (model.link_weight + model.review_weight) / 2 else "possible"


# ---------------------------------------------------------------- golden records and Patient.link

@router.get("/Patient/{resource_id}", dependencies=READ)
def read_patient(resource_id: str, request: Request) -> Response:
    """A person (golden record) by enterprise id; otherwise the source record, read as any other."""
    with UnitOfWork(_engine(request)) as uow:
        golden = _golden(uow, [resource_id]).get(resource_id)
    if golden is not None:
        _audit(request, [resource_id])
        return fhir_response(golden, 200, {"ETag": f'W/"{golden["meta"]["versionId"]}"'}, wants_xml(request))
    return routes.read("Patient", resource_id, request)


@router.get("/Patient", dependencies=READ)
def search_patient(request: Request) -> Response:
    return _search(request, list(request.query_params.multi_items()))


@router.post("/Patient/_search", dependencies=READ)
async def search_patient_posted(request: Request) -> Response:
    try:
        pairs = await routes.search_parameters(request)
    except Unsupported:
        return operation_outcome(415, "not-supported", "send the search parameters as application/x-www-form-urlencoded",
                                 "Content-Type", wants_xml(request))
    return _search(request, pairs)


def _search(request: Request, pairs: list[tuple[str, str]]) -> Response:
    """`identifier=urn:hub:enterprise-id|<id>` finds golden records; any other search is the generic one."""
    identifiers = [v for k, v in pairs if k == "identifier"]
    enterprise = [i.split("|", 1)[1] for i in identifiers if i.startswith(ENTERPRISE_SYSTEM + "|")]
    if not enterprise:
        return routes.search_response(request, "Patient", pairs)
    with UnitOfWork(_engine(request)) as uow:
        golden = _golden(uow, enterprise[:1])
    base = str(request.base_url).rstrip("/") + "/fhir"
    entries = [{"fullUrl": f"{base}/Patient/{pid}", "resource": r, "search": {"mode": "match"}} for pid, r in golden.items()]
    _audit(request, list(golden))
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(entries), **({"entry": entries} if entries else {})}
    return fhir_response(bundle, xml=wants_xml(request))
