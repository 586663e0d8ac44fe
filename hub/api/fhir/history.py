"""FHIR history: of an instance `GET /fhir/{type}/{id}/_history`, a type `GET /fhir/{type}/_history`
and the system `GET /fhir/_history`, all paged by one function.

A Bundle of type `history`, newest version first; each entry has the `request`/`response` of the
interaction that wrote the version, deleted versions have no resource. `_since` (an instant) leaves
out older versions; `_count` sizes a page and a `next` link (`_offset`) continues. Pages are counted
from the newest version, so versions written between two page requests shift later pages by as
many entries (an entry may be seen twice, none is skipped).

This router is included before the one of `routes`, whose `/{type}/{id}` and `/{type}` would
otherwise take these paths.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from hub.access import Permission, requires
from hub.api.fhir.render import KINDS, TYPES, instant, row_resource, version_resource
from hub.api.fhir.routes import _base, _data, _unknown_type
from hub.api.fhir.wire import fhir_response, operation_outcome, wants_xml
from hub.store.uow import RecordRow, RecordVersion

router = APIRouter(prefix="/fhir")

READ = [Depends(requires(Permission.PATIENT_READ))]
MAX_COUNT = 1000


def _since(value: str | None) -> datetime | None:
    """`_since` is an instant; a date alone is taken as its start (UTC). Raises ValueError."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value)  # Python 3.11 reads a trailing Z
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _history_entry(request: Request, row: RecordRow, version: RecordVersion | None) -> dict[str, Any]:
    """One version of `row` (the current one when `version` is None) as a history entry."""
    if version is None:
        number, deleted, at = row.version, row.deleted, row.updated_at
    else:
        number, deleted, at = version.version, version.deleted, version.recorded_at
    url = f"{TYPES[row.kind]}/{row.id}"
    entry: dict[str, Any] = {"fullUrl": f"{_base(request)}/{url}"}
    if not deleted:
        entry["resource"] = row_resource(row) if version is None else version_resource(row, version)
    method = "DELETE" if deleted else "POST" if number == 1 else "PUT"
    entry["request"] = {"method": method, "url": url}
    entry["response"] = {
        "status": "204" if deleted else "201" if number == 1 else "200",
        "etag": f'W/"{number}"', "lastModified": instant(at),
    }
    return entry


def _page(request: Request, kinds: list[str], path: str, record_id: str | None = None) -> Response:
    """One page of history of these kinds (of one record of them when `record_id` is given)."""
    xml = wants_xml(request)
    params = request.query_params
    try:
        since = _since(params.get("_since"))
    except ValueError:
        return operation_outcome(400, "invalid", "_since must be an instant (e.g. 2026-01-01T00:00:00Z)", "_since", xml)
    try:
        count = min(max(int(params.get("_count", "50")), 1), MAX_COUNT)
        offset = max(int(params.get("_offset", "0")), 0)
    except ValueError:
        return operation_outcome(400, "invalid", "_count and _offset must be integers", "_count", xml)
    items = _data(request).history_page(kinds, since, count + 1, offset, record_id)
    entries = [_history_entry(request, i.row, i.version) for i in items[:count]]
    base = _base(request)
    bundle: dict[str, Any] = {
        "resourceType": "Bundle", "type": "history",
        "link": [{"relation": "self", "url": str(request.url)}],
    }
    if len(items) > count:
        pairs = [(k, v) for k, v in params.multi_items() if k != "_offset"] + [("_offset", str(offset + count))]
        bundle["link"].append({"relation": "next", "url": f"{base}{path}?{urlencode(pairs)}"})
    elif offset == 0:
        bundle["total"] = len(entries)
    if entries:
        bundle["entry"] = entries
    return fhir_response(bundle, xml=xml)


@router.get("/_history", dependencies=READ)
def system_history(request: Request) -> Response:
    return _page(request, list(TYPES), "/_history")


@router.get("/{resource_type}/_history", dependencies=READ)
def type_history(resource_type: str, request: Request) -> Response:
    if resource_type not in KINDS:
        return _unknown_type(request, resource_type)
    return _page(request, [KINDS[resource_type]], f"/{resource_type}/_history")


@router.get("/{resource_type}/{resource_id}/_history", dependencies=READ)
def instance_history(resource_type: str, resource_id: str, request: Request) -> Response:
    if resource_type not in KINDS:
        return _unknown_type(request, resource_type)
    if _data(request).get(KINDS[resource_type], resource_id) is None:
        detail = f"{resource_type} with this id is not known"
        return operation_outcome(404, "not-found", detail, f"{resource_type}.id", wants_xml(request))
    return _page(request, [KINDS[resource_type]], f"/{resource_type}/{resource_id}/_history", resource_id)
