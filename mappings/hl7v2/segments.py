"""Segment → canonical rules, following the HL7 v2-to-FHIR IG where it speaks.

Each function reads one segment (or a segment group) and returns canonical records;
code translations come from `tables.yaml`. Optional values that cannot be read are
dropped rather than failing the message (acceptance rules live in the inbound adapter).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from hub.model import (
    Address,
    Appointment,
    Charge,
    CodeableConcept,
    ContactPoint,
    Encounter,
    HumanName,
    Identifier,
    Observation,
    Order,
    Patient,
    Quantity,
    ReferenceRange,
)
from mappings.hl7v2 import table
from mappings.hl7v2.datatypes import InvalidDate, optional_timestamp, partial_date

if TYPE_CHECKING:
    from adapters.inbound.hl7v2.er7 import Segment

# PID fields whose explicit null ("") clears the canonical field.
_PID_FIELD_FOR = {
    "names": 5, "birth_date": 7, "gender": 8, "addresses": 11, "telecoms": (13, 14),
    "language": 15, "marital_status": 16, "multiple_birth": (24, 25), "deceased": 30,
}


def identifier_system(seg: Segment, rep: str, default_system: str) -> str:
    """CX-4 assigning authority → Identifier.system (OID, URI, or a namespace under urn:hub:aa:)."""
    namespace = seg.part(rep, 4, 1)
    universal, universal_type = seg.part(rep, 4, 2), seg.part(rep, 4, 3).upper()
    if universal and universal_type == "ISO":
        return f"urn:oid:{universal}"
    if universal and universal_type in ("URI", "URL"):
        return universal
    return f"urn:hub:aa:{namespace}" if namespace else default_system


def identifier(seg: Segment, rep: str, default_system: str) -> Identifier | None:
    """One CX repetition; the value is kept verbatim (leading zeros are significant)."""
    value = seg.part(rep, 1, trim=False).strip("\r\n")
    if not value.strip():
        return None
    return Identifier(
        value=value,
        system=identifier_system(seg, rep, default_system),
        type=seg.part(rep, 5) or None,
        assigner=seg.part(rep, 4, 1) or None,
    )


def identifiers(seg: Segment, n: int, default_system: str) -> list[Identifier]:
    return [i for rep in seg.repetitions(n) if (i := identifier(seg, rep, default_system))]


def human_name(seg: Segment, rep: str) -> HumanName | None:
    family = seg.part(rep, 1, 1)
    given = [g for g in (seg.part(rep, 2), seg.part(rep, 3)) if g]
    if not family and not given:
        return None
    return HumanName(
        family=family or None,
        given=given,
        suffix=[s for s in (seg.part(rep, 4),) if s],
        prefix=[p for p in (seg.part(rep, 5),) if p],
        use=table("name_use").get(seg.part(rep, 7)),
    )


def address(seg: Segment, rep: str) -> Address | None:
    lines = [line for line in (seg.part(rep, 1, 1), seg.part(rep, 2)) if line]
    result = Address(
        line=lines,
        city=seg.part(rep, 3) or None,
        state=seg.part(rep, 4) or None,
        postal_code=seg.part(rep, 5) or None,
        country=seg.part(rep, 6) or None,
        use=table("address_use").get(seg.part(rep, 7)),
    )
    return result if result.model_dump(exclude_defaults=True) else None


def contact_point(seg: Segment, rep: str, default_use: str) -> ContactPoint | None:
    equipment = seg.part(rep, 3)
    system = table("telecom_system").get(equipment, "phone")
    if system == "email":
        value = seg.part(rep, 4) or seg.part(rep, 1)
    else:
        value = seg.part(rep, 1) or seg.part(rep, 12) or _assembled_phone(seg, rep)
    if not value:
        return None
    use = table("telecom_use").get(seg.part(rep, 2), default_use)
    if equipment == "CP":
        use = "mobile"
    return ContactPoint(system=system, value=value, use=use)


def _assembled_phone(seg: Segment, rep: str) -> str:
    country, area, local, ext = (seg.part(rep, i) for i in (5, 6, 7, 8))
    if not local:
        return ""
    number = f"({area}){local}" if area else local
    number = f"+{country} {number}" if country else number
    return f"{number} x{ext}" if ext else number


def patient(pid: Segment, default_system: str) -> tuple[Patient, list[str]]:
    """PID → Patient, plus the names of fields the sender explicitly nulled."""
    birth_date = None
    if pid.get(7):
        try:
            birth_date = partial_date(pid.get(7))
        except InvalidDate:
            birth_date = None
    multiple_birth: bool | int | None = None
    if pid.get(25).isdigit():
        multiple_birth = int(pid.get(25))
    elif pid.get(24) in ("Y", "N"):
        multiple_birth = pid.get(24) == "Y"
    deceased = {"Y": True, "N": False}.get(pid.get(30))
    record = Patient(
        identifiers=identifiers(pid, 3, default_system),
        names=[n for rep in pid.repetitions(5) if (n := human_name(pid, rep))],
        birth_date=birth_date,
        gender=table("sex").get(pid.get(8)),
        addresses=[a for rep in pid.repetitions(11) if (a := address(pid, rep))],
        telecoms=[
            *(c for rep in pid.repetitions(13) if (c := contact_point(pid, rep, "home"))),
            *(c for rep in pid.repetitions(14) if (c := contact_point(pid, rep, "work"))),
        ],
        language=pid.get(15) or None,
        marital_status=pid.get(16) or None,
        multiple_birth=multiple_birth,
        deceased=True if optional_timestamp(pid.get(29)) else deceased,
        deceased_at=optional_timestamp(pid.get(29)),
    )
    return record, _cleared_fields(pid)


def _cleared_fields(pid: Segment) -> list[str]:
    cleared = []
    for name, fields in _PID_FIELD_FOR.items():
        numbers = fields if isinstance(fields, tuple) else (fields,)
        if any(pid.is_null(n) for n in numbers):
            cleared.append(name)
    return cleared


def _person(seg: Segment, n: int) -> str | None:
    """XCN → a display string (id and name); the canonical model keeps practitioners as text for now."""
    rep = (seg.repetitions(n) or [""])[0]
    parts = [seg.part(rep, 1), seg.part(rep, 3), seg.part(rep, 2)]
    text = " ".join(p for p in parts if p)
    return text or None


def encounter(pv1: Segment, default_system: str, trigger: str) -> Encounter:
    visit = identifier(pv1, (pv1.repetitions(19) or [""])[0], default_system)
    location = [pv1.get(3, c) for c in (1, 2, 3, 4)]
    status = {"A03": "finished", "A11": "cancelled", "A13": "in-progress", "A05": "planned", "A14": "planned"}
    admitted = optional_timestamp(pv1.get(44))
    discharged = optional_timestamp(pv1.get(45))
    return Encounter(
        visit_number=visit,
        patient_class=pv1.get(2) or None,
        location="^".join(location).rstrip("^") or None,
        attending=_person(pv1, 7),
        admitted_at=admitted,
        discharged_at=discharged,
        status=status.get(trigger, "finished" if discharged else "in-progress" if admitted else "unknown"),  # type: ignore[arg-type]
    )


def coded(seg: Segment, n: int) -> CodeableConcept | None:
    code, display, system = seg.get(n, 1), seg.get(n, 2), seg.get(n, 3)
    if not (code or display):
        return None
    return CodeableConcept(code=code or None, display=display or None, system=system or None)


def _decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text.strip()) if text.strip() else None
    except InvalidOperation:
        return None


def _reference_range(text: str) -> ReferenceRange | None:
    if not text:
        return None
    low, sep, high = text.partition("-")
    if sep and _decimal(low) is not None and _decimal(high) is not None:
        return ReferenceRange(low=_decimal(low), high=_decimal(high), text=text)
    return ReferenceRange(text=text)


def observation(obx: Segment, notes: list[str], placer: str | None, filler: str | None) -> Observation | None:
    code = coded(obx, 3)
    if code is None:
        return None
    value_type = obx.get(2)
    raw_value = obx.get(5)
    quantity = None
    value_code = None
    value_string = None
    if value_type in ("NM", "SN") and _decimal(raw_value) is not None:
        quantity = Quantity(value=_decimal(raw_value), unit=obx.get(6) or None)  # type: ignore[arg-type]
    elif value_type in ("CE", "CWE", "CNE") and raw_value:
        value_code = coded(obx, 5)
    elif raw_value:
        value_string = "\n".join(obx.get(5, repetition=i) for i in range(len(obx.repetitions(5))))
    return Observation(
        code=code,
        value_quantity=quantity,
        value_code=value_code,
        value_string=value_string,
        reference_range=_reference_range(obx.get(7)),
        abnormal_flags=[obx.part(rep) for rep in obx.repetitions(8) if obx.part(rep)],
        status=table("observation_status").get(obx.get(11), "unknown"),
        effective_at=optional_timestamp(obx.get(14)),
        notes=notes,
        order_placer_number=placer,
        order_filler_number=filler,
    )


def order(orc: Segment | None, obr: Segment | None) -> Order:
    """ORC + OBR (either may be missing) → Order."""
    placer = (orc and orc.get(2)) or (obr and obr.get(2)) or None
    filler = (orc and orc.get(3)) or (obr and obr.get(3)) or None
    control = orc.get(1) if orc else ""
    status = table("order_status").get(orc.get(5)) if orc and orc.get(5) else None
    status = status or table("order_control_status").get(control, "unknown")
    return Order(
        placer_number=placer,
        filler_number=filler,
        code=coded(obr, 4) if obr else None,
        status=status,
        control=control or None,
        specimen=(obr.get(15) if obr else "") or None,
        ordered_at=optional_timestamp((orc.get(9) if orc else "") or (obr.get(6) if obr else "")),
    )


def charge(ft1: Segment, visit_number: str | None) -> Charge | None:
    code = coded(ft1, 7)
    if code is None:
        return None
    return Charge(
        transaction_id=ft1.get(2) or None,
        code=code,
        quantity=_decimal(ft1.get(10)),
        amount=_decimal(ft1.get(11)) or _decimal(ft1.get(12)),
        date=optional_timestamp(ft1.get(4)),
        visit_number=visit_number,
    )


def appointment(sch: Segment, ail: Segment | None, trigger: str) -> Appointment:
    status = table("appointment_status").get(sch.get(25))
    if status is None:
        status = {"S12": "booked", "S13": "booked", "S14": "booked", "S15": "cancelled"}.get(trigger, "unknown")
    start = optional_timestamp(sch.get(11, 4))
    end = optional_timestamp(sch.get(11, 5))
    duration = sch.get(9)
    return Appointment(
        placer_id=sch.get(1) or None,
        filler_id=sch.get(2) or None,
        status=status,
        reason=sch.get(7, 2) or sch.get(7, 1) or None,
        start=start,
        end=end,
        duration_minutes=int(duration) if duration.isdigit() else None,
        location=(ail.get(3, 1) if ail else "") or None,
    )
