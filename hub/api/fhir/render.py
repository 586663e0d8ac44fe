"""Stored records → FHIR resources: as written (records written over FHIR) or rendered from canonical data."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from hub.model import Patient
from hub.store.uow import RecordRow, RecordVersion
from mappings.fhir import resources
from mappings.fhir.patient import to_fhir as patient_to_fhir

KINDS = resources.KINDS
TYPES = resources.TYPES


def instant(at: datetime) -> str:
    """FHIR instants need a zone; SQLite hands back naive datetimes we stored as UTC."""
    at = at.astimezone(timezone.utc) if at.tzinfo else at.replace(tzinfo=timezone.utc)
    return at.isoformat().replace("+00:00", "Z")


def http_date(at: datetime) -> str:
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    return at.astimezone(timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")


def render(
    kind: str, record_id: str, version: int, data: dict[str, Any], resource: dict[str, Any] | None,
    feed: str | None, at: datetime, patient_id: str | None,
) -> dict[str, Any]:
    meta = {"versionId": str(version), "lastUpdated": instant(at)}
    if feed:
        meta["source"] = f"#{feed}"
    if resource is not None:
        out = {"resourceType": resource["resourceType"], "id": record_id, "meta": meta}
        out.update((k, v) for k, v in resource.items() if k not in ("resourceType", "id", "meta"))
        return out
    if kind == "patient":
        return patient_to_fhir(Patient.model_validate(data), record_id, meta)
    return resources.to_fhir(kind, data, record_id, meta, patient_id)


def row_resource(row: RecordRow) -> dict[str, Any]:
    return render(row.kind, row.id, row.version, row.data, row.resource, row.feed, row.updated_at, row.patient_id)


def version_resource(row: RecordRow, version: RecordVersion) -> dict[str, Any]:
    return render(
        row.kind, row.id, version.version, version.data, version.resource, version.feed, version.recorded_at,
        row.patient_id,
    )
