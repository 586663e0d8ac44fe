"""The canonical model: what every feed's data becomes, whichever door it came through.

Names follow FHIR R4 so the FHIR view is a thin projection, but nothing here knows
about HL7 v2, FHIR JSON, CSV or storage. Provenance (feed, message, time) is kept beside each
stored record and its versions, not inside it. Dates that senders give with partial
precision (a birth year only) stay partial: `PartialDate` keeps what was known.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_PARTIAL_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")


def _check_partial_date(value: str) -> str:
    if not _PARTIAL_DATE.match(value):
        raise ValueError("expected YYYY, YYYY-MM or YYYY-MM-DD")
    return value


PartialDate = Annotated[str, AfterValidator(_check_partial_date)]
"""A date known to the year, the month or the day: `1980`, `1980-04`, `1980-04-02`."""

Gender = Literal["male", "female", "other", "unknown"]


class Canonical(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Identifier(Canonical):
    system: str | None = None
    value: str
    type: str | None = None
    """Identifier type code (HL7 table 0203: MR, PI, SS, VN …)."""
    assigner: str | None = None


class HumanName(Canonical):
    use: Literal["official", "usual", "maiden", "nickname", "anonymous", "old", "temp"] | None = None
    family: str | None = None
    given: list[str] = Field(default_factory=list)
    prefix: list[str] = Field(default_factory=list)
    suffix: list[str] = Field(default_factory=list)


class Address(Canonical):
    use: Literal["home", "work", "temp", "old", "billing"] | None = None
    line: list[str] = Field(default_factory=list)
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None


class ContactPoint(Canonical):
    system: Literal["phone", "email", "fax", "pager", "url", "other"] = "phone"
    value: str
    use: Literal["home", "work", "mobile", "temp", "old"] | None = None


class CodeableConcept(Canonical):
    code: str | None = None
    display: str | None = None
    system: str | None = None


class Quantity(Canonical):
    value: Decimal
    unit: str | None = None


class Patient(Canonical):
    identifiers: list[Identifier] = Field(default_factory=list)
    names: list[HumanName] = Field(default_factory=list)
    birth_date: PartialDate | None = None
    gender: Gender | None = None
    addresses: list[Address] = Field(default_factory=list)
    telecoms: list[ContactPoint] = Field(default_factory=list)
    marital_status: str | None = None
    language: str | None = None
    deceased: bool | None = None
    deceased_at: datetime | None = None
    multiple_birth: bool | int | None = None
    active: bool = True


class Encounter(Canonical):
    visit_number: Identifier | None = None
    patient_class: str | None = None
    """HL7 table 0004 code (I inpatient, O outpatient, E emergency …)."""
    status: Literal["planned", "arrived", "in-progress", "finished", "cancelled", "unknown"] = "unknown"
    location: str | None = None
    attending: str | None = None
    admitted_at: datetime | None = None
    discharged_at: datetime | None = None


class ReferenceRange(Canonical):
    low: Decimal | None = None
    high: Decimal | None = None
    text: str | None = None


class Observation(Canonical):
    code: CodeableConcept
    value_quantity: Quantity | None = None
    value_string: str | None = None
    value_code: CodeableConcept | None = None
    reference_range: ReferenceRange | None = None
    abnormal_flags: list[str] = Field(default_factory=list)
    status: Literal["registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"] = "unknown"
    effective_at: datetime | None = None
    notes: list[str] = Field(default_factory=list)
    order_placer_number: str | None = None
    order_filler_number: str | None = None


class Order(Canonical):
    placer_number: str | None = None
    filler_number: str | None = None
    code: CodeableConcept | None = None
    status: Literal["draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"] = "unknown"
    control: str | None = None
    """ORC-1 order control (NW new, CA cancel, SC status changed …)."""
    specimen: str | None = None
    ordered_at: datetime | None = None


class Charge(Canonical):
    transaction_id: str | None = None
    code: CodeableConcept
    quantity: Decimal | None = None
    amount: Decimal | None = None
    date: datetime | None = None
    visit_number: str | None = None


class Appointment(Canonical):
    placer_id: str | None = None
    filler_id: str | None = None
    status: Literal["proposed", "pending", "booked", "arrived", "fulfilled", "cancelled", "noshow", "unknown"] = "unknown"
    reason: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    duration_minutes: int | None = None
    location: str | None = None


class Account(Canonical):
    """A billing account (FHIR Account; HL7 v2 PID-18 patient account number)."""

    account_number: Identifier | None = None
    status: Literal["active", "inactive", "entered-in-error", "on-hold", "unknown"] = "active"
    name: str | None = None


class Report(Canonical):
    """A diagnostic report: an order's results as one whole (FHIR DiagnosticReport)."""

    identifier: Identifier | None = None
    code: CodeableConcept | None = None
    status: str = "unknown"
    effective_at: datetime | None = None
    issued_at: datetime | None = None
    order_id: str | None = None
    """The order (record id) the report answers."""
    result_ids: list[str] = Field(default_factory=list)
    """The observations (record ids) it groups."""


Record = Patient | Encounter | Observation | Order | Charge | Appointment | Account | Report

RECORD_KINDS: dict[type[Canonical], str] = {
    Patient: "patient",
    Encounter: "encounter",
    Observation: "observation",
    Order: "order",
    Charge: "charge",
    Appointment: "appointment",
    Account: "account",
    Report: "report",
}
MODELS_BY_KIND: dict[str, type[Canonical]] = {kind: model for model, kind in RECORD_KINDS.items()}


def source_identifier(patient: Patient) -> Identifier | None:
    """The identifier that names this source record: the MR-typed one, else the first."""
    for identifier in patient.identifiers:
        if identifier.type == "MR":
            return identifier
    return patient.identifiers[0] if patient.identifiers else None


def primary_name(patient: Patient) -> HumanName | None:
    """The official name if one is marked, else the first."""
    for name in patient.names:
        if name.use == "official":
            return name
    return patient.names[0] if patient.names else None


Criterion = tuple[str, str, str]
"""A search condition in canonical terms: (index param, operator eq|prefix|lt|le|gt|ge, normalised value)."""


class RecordRequest(Canonical):
    """How a write names its target, for doors with REST semantics (FHIR): the record it creates,
    replaces or deletes, and the conditions it is subject to. Events without one are upserts by
    source key (HL7 v2, CSV)."""

    method: Literal["create", "update", "delete", "read"]
    kind: str
    record_id: str | None = None
    """The target (update, delete, read) or the id the client chose (update as create)."""
    if_match: int | None = None
    """Expected current version: the write fails (412) when it differs."""
    if_none_exist: list[Criterion] | None = None
    """Conditional create: create only when nothing matches; one match = nothing changes."""
    conditions: list[Criterion] | None = None
    """Conditional update/delete: the target is the one record matching these."""
    resource: dict | None = None
    """The resource as submitted (minus meta), kept so a read returns what was written."""
    full_url: str | None = None
    """A transaction's temporary id (`urn:uuid:…`), replaced by the new record's id in references."""
    subject: str | None = None
    """Reference to the patient the record belongs to (`Patient/<id>` or a temporary `urn:uuid:…`)."""
    references: list[str] = Field(default_factory=list)
    """Other record references the resource makes (for reports: its results)."""
    index: list[tuple[str, str]] = Field(default_factory=list)
    """Search values (param, normalised value) beyond those derived from the canonical record."""


class PatientEvent(Canonical):
    """Everything one inbound message says, in canonical terms: one patient and what happened to them."""

    event: str
    """Message type and trigger, e.g. `ADT^A01`."""
    patient: Patient | None = None
    cleared: list[str] = Field(default_factory=list)
    """Patient fields the sender explicitly nulled (HL7 v2 `""`): delete, not "unchanged"."""
    encounter: Encounter | None = None
    observations: list[Observation] = Field(default_factory=list)
    orders: list[Order] = Field(default_factory=list)
    charges: list[Charge] = Field(default_factory=list)
    appointment: Appointment | None = None
    merged_identifier: Identifier | None = None
    """For a merge (ADT^A40): the source identifier folded into `patient`."""
    account: Account | None = None
    report: Report | None = None
    request: RecordRequest | None = None
    """Set by REST doors (FHIR): the event is one interaction on one record, see `RecordRequest`."""
