"""Canonical records ↔ FHIR R4 (4.0.1) resources other than Patient.

`to_fhir` renders records that came from other feeds (HL7 v2, CSV); records written over FHIR
are returned as they were written. `from_fhir` derives the canonical record from a FHIR resource
(what matching, routing and search use), plus the patient it belongs to and search values the
canonical record does not carry.

| FHIR | canonical kind | notes |
|---|---|---|
| Encounter | encounter | `class` ↔ HL7 table 0004 patient class |
| Observation | observation | |
| ServiceRequest | order | |
| DiagnosticReport | report | HL7 v2 ORU: one per order with results (OBR + its OBXs) |
| Appointment | appointment | |
| ChargeItem | charge | |
| Account | account | |
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from hub.model import (
    Account, Appointment, Canonical, Charge, CodeableConcept, Encounter, Identifier, Observation, Order, Quantity,
    Report,
)

KINDS = {
    "Patient": "patient", "Encounter": "encounter", "Observation": "observation", "ServiceRequest": "order",
    "DiagnosticReport": "report", "Appointment": "appointment", "ChargeItem": "charge", "Account": "account",
}
TYPES = {kind: name for name, kind in KINDS.items()}
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PATIENT_CLASS = {"I": "IMP", "O": "AMB", "E": "EMER", "P": "PRENC", "R": "AMB", "B": "OBSENC", "N": "AMB"}
ENCOUNTER_CLASS = {"IMP": "I", "AMB": "O", "EMER": "E", "PRENC": "P", "OBSENC": "B", "ACUTE": "I", "NONAC": "I"}


# ---------------------------------------------------------------- canonical → FHIR

def _dt(value: Any) -> str | None:
    """A canonical datetime as a FHIR dateTime. FHIR needs a zone once a time is given; HL7 v2 times
    sent without an offset are rendered as UTC (the hub has no per-sender zone yet)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.isoformat() + "Z"
    return value.isoformat().replace("+00:00", "Z")


def _concept(code: dict[str, Any] | CodeableConcept | None) -> dict[str, Any] | None:
    if code is None:
        return None
    if isinstance(code, CodeableConcept):
        code = code.model_dump(exclude_none=True)
    coding = {k: code[k] for k in ("system", "code", "display") if code.get(k)}
    out: dict[str, Any] = {}
    if coding.get("code"):
        out["coding"] = [coding]
    if code.get("display"):
        out["text"] = code["display"]
    return out or None


def _identifier(identifier: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not identifier:
        return []
    return [{k: identifier[k] for k in ("system", "value") if identifier.get(k)}]


def _clean(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if v not in (None, [], {}, "")}


def to_fhir(kind: str, data: dict[str, Any], record_id: str, meta: dict[str, Any], patient_id: str | None) -> dict[str, Any]:
    subject = {"reference": f"Patient/{patient_id}"} if patient_id else None
    base = {"resourceType": TYPES[kind], "id": record_id, "meta": meta}
    if kind == "encounter":
        code = data.get("patient_class")
        resource = base | {
            "identifier": _identifier(data.get("visit_number")),
            "status": data.get("status", "unknown"),
            "class": {"system": V3_ACT_CODE, "code": PATIENT_CLASS.get(code, "AMB") if code else "AMB"},
            "subject": subject,
            "period": _clean({"start": _dt(data.get("admitted_at")), "end": _dt(data.get("discharged_at"))}),
            "location": [{"location": {"display": data["location"]}}] if data.get("location") else None,
            "participant": [{"individual": {"display": data["attending"]}}] if data.get("attending") else None,
        }
    elif kind == "observation":
        resource = base | {
            "status": data.get("status", "unknown"),
            "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory"}]}],
            "code": _concept(data.get("code")) or {"text": "unknown"},
            "subject": subject,
            "effectiveDateTime": _dt(data.get("effective_at")),
            "interpretation": [{"coding": [{"code": f}]} for f in data.get("abnormal_flags", [])] or None,
            "note": [{"text": n} for n in data.get("notes", [])] or None,
        }
        if data.get("value_quantity"):
            quantity = data["value_quantity"]
            resource["valueQuantity"] = _clean({"value": float(Decimal(str(quantity["value"]))), "unit": quantity.get("unit")})
        elif data.get("value_code"):
            resource["valueCodeableConcept"] = _concept(data["value_code"])
        elif data.get("value_string"):
            resource["valueString"] = data["value_string"]
        if data.get("reference_range"):
            rr = data["reference_range"]
            resource["referenceRange"] = [_clean({
                "low": {"value": float(rr["low"])} if rr.get("low") is not None else None,
                "high": {"value": float(rr["high"])} if rr.get("high") is not None else None,
                "text": rr.get("text"),
            })]
    elif kind == "order":
        identifiers = [{"type": {"coding": [{"code": t}]}, "value": data[k]}
                       for k, t in (("placer_number", "PLAC"), ("filler_number", "FILL")) if data.get(k)]
        resource = base | {
            "identifier": identifiers,
            "status": data.get("status", "unknown"),
            "intent": "order",
            "code": _concept(data.get("code")),
            "subject": subject or {"display": "unknown"},
            "authoredOn": _dt(data.get("ordered_at")),
        }
    elif kind == "report":
        resource = base | {
            "identifier": _identifier(data.get("identifier")),
            "basedOn": [{"reference": f"ServiceRequest/{data['order_id']}"}] if data.get("order_id") else None,
            "status": data.get("status", "unknown"),
            "code": _concept(data.get("code")) or {"text": "results"},
            "subject": subject,
            "effectiveDateTime": _dt(data.get("effective_at")),
            "issued": _dt(data.get("issued_at")),
            "result": [{"reference": f"Observation/{i}"} for i in data.get("result_ids", [])],
        }
    elif kind == "charge":
        resource = base | {
            "identifier": [{"value": data["transaction_id"]}] if data.get("transaction_id") else None,
            "status": "billable",
            "code": _concept(data.get("code")) or {"text": "unknown"},
            "subject": subject or {"display": "unknown"},
            "occurrenceDateTime": _dt(data.get("date")),
            "quantity": {"value": float(data["quantity"])} if data.get("quantity") is not None else None,
            "priceOverride": {"value": float(data["amount"])} if data.get("amount") is not None else None,
        }
    elif kind == "appointment":
        participant = [{"actor": subject, "status": "accepted"}] if subject else [{"actor": {"display": "unknown"}, "status": "accepted"}]
        resource = base | {
            "identifier": [{"value": data[k]} for k in ("placer_id", "filler_id") if data.get(k)],
            "status": data.get("status", "proposed") if data.get("status") != "unknown" else "proposed",
            "description": data.get("reason"),
            "start": _dt(data.get("start")),
            "end": _dt(data.get("end")),
            "minutesDuration": data.get("duration_minutes"),
            "participant": participant,
        }
    elif kind == "account":
        resource = base | {
            "identifier": _identifier(data.get("account_number")),
            "status": data.get("status", "active"),
            "name": data.get("name"),
            "subject": [subject] if subject else None,
        }
    else:
        raise KeyError(kind)
    return _clean(resource)


# ---------------------------------------------------------------- FHIR → canonical

def _first_code(concept: dict[str, Any] | None) -> CodeableConcept | None:
    if not concept:
        return None
    for coding in concept.get("coding", []):
        if coding.get("code"):
            return CodeableConcept(code=coding["code"], system=coding.get("system"), display=coding.get("display") or concept.get("text"))
    return CodeableConcept(display=concept["text"]) if concept.get("text") else None


def _when(text: str | None) -> datetime | None:
    if not text or "T" not in text:
        return None if not text else datetime.fromisoformat(text + ("-01-01" if len(text) == 4 else "-01" if len(text) == 7 else ""))
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _first_identifier(resource: dict[str, Any]) -> Identifier | None:
    for identifier in resource.get("identifier", []):
        if identifier.get("value"):
            return Identifier(system=identifier.get("system"), value=identifier["value"])
    return None


def _decimal(value: Any) -> Decimal | None:
    try:
        return None if value is None else Decimal(str(value))
    except InvalidOperation:
        return None


def _pick(value: str | None, allowed: tuple[str, ...], default: str) -> str:
    return value if value in allowed else default


def subject_reference(resource: dict[str, Any]) -> str | None:
    """The patient a resource belongs to (`Patient/<id>` or `urn:uuid:…`), if it names one."""
    kind = resource.get("resourceType")
    if kind == "Appointment":
        for participant in resource.get("participant", []):
            reference = (participant.get("actor") or {}).get("reference", "")
            if reference.startswith(("Patient/", "urn:uuid:")):
                return reference
        return None
    subject = resource.get("subject")
    if isinstance(subject, list):
        subject = subject[0] if subject else None
    reference = (subject or {}).get("reference")
    return reference if reference and reference.startswith(("Patient/", "urn:uuid:")) else None


def from_fhir(resource: dict[str, Any]) -> tuple[Canonical, list[tuple[str, str]]]:
    """A validated FHIR resource → its canonical record and extra search values (param, value)."""
    kind = resource["resourceType"]
    extra: list[tuple[str, str]] = []
    for identifier in resource.get("identifier", []):
        if identifier.get("value"):
            extra += [("identifier", f"{identifier.get('system', '')}|{identifier['value']}"), ("identifier-value", identifier["value"])]
    if kind == "Encounter":
        period = resource.get("period", {})
        code = (resource.get("class") or {}).get("code")
        record: Canonical = Encounter(
            visit_number=_first_identifier(resource),
            patient_class=ENCOUNTER_CLASS.get(code or "", code),
            status=_pick(resource.get("status"), ("planned", "arrived", "in-progress", "finished", "cancelled"), "unknown"),
            admitted_at=_when(period.get("start")), discharged_at=_when(period.get("end")),
        )
    elif kind == "Observation":
        value = resource.get("valueQuantity")
        record = Observation(
            code=_first_code(resource.get("code")) or CodeableConcept(display="unknown"),
            value_quantity=Quantity(value=_decimal(value["value"]), unit=value.get("unit")) if value and value.get("value") is not None else None,
            value_string=resource.get("valueString"),
            value_code=_first_code(resource.get("valueCodeableConcept")),
            status=_pick(resource.get("status"), ("registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error"), "unknown"),
            effective_at=_when(resource.get("effectiveDateTime") or (resource.get("effectivePeriod") or {}).get("start") or resource.get("effectiveInstant")),
        )
        for category in resource.get("category", []):
            for coding in category.get("coding", []):
                if coding.get("code"):
                    extra += [("category", f"{coding.get('system', '')}|{coding['code']}"), ("category-value", coding["code"])]
    elif kind == "ServiceRequest":
        record = Order(
            placer_number=(_first_identifier(resource) or Identifier(value="")).value or None,
            code=_first_code(resource.get("code")),
            status=_pick(resource.get("status"), ("draft", "active", "on-hold", "revoked", "completed", "entered-in-error"), "unknown"),
            ordered_at=_when(resource.get("authoredOn")),
        )
    elif kind == "DiagnosticReport":
        record = Report(
            identifier=_first_identifier(resource), code=_first_code(resource.get("code")),
            status=resource.get("status", "unknown"),
            effective_at=_when(resource.get("effectiveDateTime")), issued_at=_when(resource.get("issued")),
            order_id=next((r["reference"].split("/")[-1] for r in resource.get("basedOn", []) if r.get("reference")), None),
            result_ids=[r["reference"].split("/")[-1] for r in resource.get("result", []) if r.get("reference")],
        )
    elif kind == "ChargeItem":
        record = Charge(
            transaction_id=(_first_identifier(resource) or Identifier(value="")).value or None,
            code=_first_code(resource.get("code")) or CodeableConcept(display="unknown"),
            quantity=_decimal((resource.get("quantity") or {}).get("value")),
            amount=_decimal((resource.get("priceOverride") or {}).get("value")),
            date=_when(resource.get("occurrenceDateTime")),
        )
    elif kind == "Appointment":
        record = Appointment(
            placer_id=(_first_identifier(resource) or Identifier(value="")).value or None,
            status=_pick(resource.get("status"), ("proposed", "pending", "booked", "arrived", "fulfilled", "cancelled", "noshow"), "unknown"),
            reason=resource.get("description"), start=_when(resource.get("start")), end=_when(resource.get("end")),
            duration_minutes=resource.get("minutesDuration"),
        )
    elif kind == "Account":
        record = Account(
            account_number=_first_identifier(resource),
            status=_pick(resource.get("status"), ("active", "inactive", "entered-in-error", "on-hold"), "unknown"),
            name=resource.get("name"),
        )
    else:
        raise KeyError(kind)
    return record, extra

