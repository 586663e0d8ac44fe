"""FHIR history at type and system level: `GET /fhir/{type}/_history` and `GET /fhir/_history`.

A Bundle of type `history`, newest version first, entries shaped like instance history (same
`request`/`response`, deleted versions without a resource). `_since` (an instant) leaves out older
versions; `_count` sizes a page and a `next` link (`_offset`) continues. Pages are counted from the
newest version, so versions written between two page requests shift later pages by as many entries
(an entry may be seen twice, none is skipped).

This router is included before the one of `routes`, whose `/{type}/{id}` and `/{type}` would
otherwise take these paths.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from hub.access import Permission, requires
from hub.api.fhir.render import KINDS, TYPES
from hub.api.fhir.routes import _base, _data, _history_entry, _unknown_type
from hub.api.fhir.wire import fhir_response, operation_outcome, wants_xml

router = APIRouter(prefix="/fhir")

READ = [Depends(requires(Permission.PATIENT_READ))]
MAX_COUNT = 1000


def _since(value: str | None) -> datetime | None:
    """`_since` is an instant; a date alone is taken as its start (UTC). Raises ValueError."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _page(request: Request, kinds: list[str], path: str) -> Response:
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
    items = _data(request).history_page(kinds, since, count + 1, offset)
    entries = [
        _history_entry(request, TYPES[i.row.kind], i.row, i.version, i.version is None) for i in items[:count]
    ]
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
