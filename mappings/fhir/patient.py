"""Canonical Patient ↔ FHIR R4 (4.0.1) Patient JSON."""

from __future__ import annotations

from typing import Any

from hub.model import Patient

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0002 = "http://terminology.hl7.org/CodeSystem/v2-0002"


def to_fhir(patient: Patient, resource_id: str, meta: dict[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Patient", "id": resource_id, "meta": meta}
    if patient.identifiers:
        resource["identifier"] = [_identifier(i) for i in patient.identifiers]
    resource["active"] = patient.active
    if patient.names:
        resource["name"] = [_drop_empty(n.model_dump(exclude_none=True)) for n in patient.names]
    if patient.telecoms:
        resource["telecom"] = [t.model_dump(exclude_none=True) for t in patient.telecoms]
    if patient.gender:
        resource["gender"] = patient.gender
    if patient.birth_date:
        resource["birthDate"] = patient.birth_date
    if patient.deceased_at:
        at = patient.deceased_at
        resource["deceasedDateTime"] = at.isoformat() + ("Z" if at.tzinfo is None else "")
    elif patient.deceased is not None:
        resource["deceasedBoolean"] = patient.deceased
    if patient.addresses:
        resource["address"] = [_address(a.model_dump(exclude_none=True)) for a in patient.addresses]
    if patient.marital_status:
        resource["maritalStatus"] = {"coding": [{"system": V2_0002, "code": patient.marital_status}]}
    if isinstance(patient.multiple_birth, bool):
        resource["multipleBirthBoolean"] = patient.multiple_birth
    elif isinstance(patient.multiple_birth, int):
        resource["multipleBirthInteger"] = patient.multiple_birth
    if patient.language:
        resource["communication"] = [{"language": {"coding": [{"code": patient.language}], "text": patient.language}}]
    return resource


def _identifier(identifier: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if identifier.type:
        out["type"] = {"coding": [{"system": V2_0203, "code": identifier.type}]}
    if identifier.system:
        out["system"] = identifier.system
    out["value"] = identifier.value
    if identifier.assigner:
        out["assigner"] = {"display": identifier.assigner}
    return out


def _address(address: dict[str, Any]) -> dict[str, Any]:
    if "postal_code" in address:
        address["postalCode"] = address.pop("postal_code")
    return _drop_empty(address)


def _drop_empty(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v not in ([], None, "")}


def _code(concept: dict[str, Any] | None) -> str | None:
    for coding in (concept or {}).get("coding", []):
        if coding.get("code"):
            return coding["code"]
    return None


def from_fhir(resource: dict[str, Any]) -> Patient:
    """A FHIR Patient (validated JSON) → the canonical patient (what matching and routing use)."""
    from hub.model import Address, ContactPoint, HumanName, Identifier

    identifiers = [
        Identifier(
            system=i.get("system"), value=i["value"], type=_code(i.get("type")),
            assigner=(i.get("assigner") or {}).get("display"),
        )
        for i in resource.get("identifier", []) if i.get("value")
    ]
    names = [
        HumanName(
            use=n.get("use"), family=n.get("family"), given=n.get("given", []), prefix=n.get("prefix", []),
            suffix=n.get("suffix", []),
        )
        for n in resource.get("name", [])
    ]
    addresses = [
        Address(
            use=a.get("use") if a.get("use") in ("home", "work", "temp", "old", "billing") else None,
            line=a.get("line", []), city=a.get("city"), state=a.get("state"), postal_code=a.get("postalCode"),
            country=a.get("country"),
        )
        for a in resource.get("address", [])
    ]
    telecoms = [
        ContactPoint(system=t.get("system", "other"), value=t["value"], use=t.get("use"))
        for t in resource.get("telecom", []) if t.get("value")
    ]
    language = None
    for communication in resource.get("communication", []):
        language = _code(communication.get("language")) or (communication.get("language") or {}).get("text")
        break
    deceased_at = None
    deceased = resource.get("deceasedBoolean")
    if "deceasedDateTime" in resource:
        deceased = True
        text = resource["deceasedDateTime"]
        if "T" in text:
            from datetime import datetime

            deceased_at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    multiple = resource.get("multipleBirthInteger", resource.get("multipleBirthBoolean"))
    return Patient(
        identifiers=identifiers, names=names, birth_date=resource.get("birthDate"), gender=resource.get("gender"),
        addresses=addresses, telecoms=telecoms, marital_status=_code(resource.get("maritalStatus")),
        language=language, deceased=deceased, deceased_at=deceased_at, multiple_birth=multiple,
        active=resource.get("active", True),
    )
