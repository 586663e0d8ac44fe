"""Billing as CSV lines for a daily file drop.

Row format (RFC 4180, comma-separated, UTF-8, `\\r\\n` line ends, every field quoted only when it
needs to be). Each payload starts with the header line below, then one row per charge (DFT) or one
row for the encounter (ADT, typically the finished encounter ADT^A03):

| column | content |
|---|---|
| record_type | `charge` or `encounter` |
| control_id | the outbound message's stable id: the same on a retry or replay, so duplicates can be dropped |
| event | the triggering message type and trigger, e.g. `DFT^P03` |
| enterprise_id | the person's enterprise id (empty until the MPI has linked the record) |
| patient_system, patient_id | the source record's identifier (its MR-typed identifier, else the first) |
| family, given, birth_date, gender | the patient as the message described them (birth date as YYYY[-MM[-DD]]) |
| visit_number, patient_class | PV1-19 and PV1-2 (HL7 table 0004 code) |
| admitted_at, discharged_at, encounter_status | ISO 8601 |
| transaction_id | FT1-2 (charges) |
| code, code_system, description | the charge code (FT1-7) |
| quantity, amount, charge_date | FT1-10, FT1-11, FT1-4 |

Contract with the file transport: the payload is a complete CSV document (header included), so
one delivery can be parsed on its own; when appending to an existing daily file the transport
drops the payload's first line (the header) — the file starts with it once.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from decimal import Decimal

from adapters.outbound.kinds import adt_trigger, has_charges
from hub.model import Charge, source_identifier
from hub.outbound import RoutedEvent

CONTENT_TYPE = "text/csv; charset=utf-8; header=present"
COLUMNS = (
    "record_type", "control_id", "event", "enterprise_id", "patient_system", "patient_id", "family", "given",
    "birth_date", "gender", "visit_number", "patient_class", "admitted_at", "discharged_at", "encounter_status",
    "transaction_id", "code", "code_system", "description", "quantity", "amount", "charge_date",
)
HEADER = ",".join(COLUMNS) + "\r\n"


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def _base(event: RoutedEvent, control_id: str) -> dict[str, object]:
    patient = event.event.patient
    own = source_identifier(patient) if patient else None
    name = patient.names[0] if patient and patient.names else None
    encounter = event.event.encounter
    visit = encounter.visit_number if encounter else None
    return {
        "control_id": control_id, "event": event.event.event, "enterprise_id": event.enterprise_id,
        "patient_system": own.system if own else None, "patient_id": own.value if own else None,
        "family": name.family if name else None, "given": " ".join(name.given) if name else None,
        "birth_date": patient.birth_date if patient else None, "gender": patient.gender if patient else None,
        "visit_number": visit.value if visit else None,
        "patient_class": encounter.patient_class if encounter else None,
        "admitted_at": encounter.admitted_at if encounter else None,
        "discharged_at": encounter.discharged_at if encounter else None,
        "encounter_status": encounter.status if encounter else None,
    }


def _charge(charge: Charge) -> dict[str, object]:
    return {
        "record_type": "charge", "transaction_id": charge.transaction_id, "code": charge.code.code,
        "code_system": charge.code.system, "description": charge.code.display, "quantity": charge.quantity,
        "amount": charge.amount, "charge_date": charge.date,
    }


def billing_rows(event: RoutedEvent, control_id: str) -> tuple[bytes, int] | None:
    """Header + one row per charge (DFT) or the encounter row (ADT with an encounter), and the row
    count; None when the event has neither."""
    base = _base(event, control_id)
    if has_charges(event):
        rows = [base | _charge(c) for c in event.event.charges]
    elif adt_trigger(event) is not None and event.event.encounter is not None:
        rows = [base | {"record_type": "encounter"}]
    else:
        return None
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    writer.writerows([_text(row.get(column)) for column in COLUMNS] for row in rows)
    return out.getvalue().encode("utf-8"), len(rows)
