"""Domain rules for canonical records: how an update combines with what we had, and what is searchable."""

from __future__ import annotations

import os
import re
import threading
import time
import unicodedata
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from functools import lru_cache

from hub.model import (
    Account, Appointment, Canonical, Charge, CodeableConcept, Encounter, Identifier, Observation, Order, Patient, Report,
)


_SEQUENCE_BITS = 12
_last_id = (0, 0)
"""(millisecond, counter) of the last id this process made."""
_id_lock = threading.Lock()


def new_record_id() -> str:
    """A UUIDv7 (RFC 9562) whose 12 `rand_a` bits count within the millisecond (the RFC's method 1),
    62 bits random: unguessable, and strictly increasing in the order this process makes them. Bulk
    loads append to the records' primary key and the search index (which lead with the record id);
    and the MPI, reading candidates in record-id order, meets ties in the order their records arrived,
    not at random (with random bits there, two imports of one 1,000,000-row file, same code, made one
    decision differently: which of several equal candidates were scored)."""
    global _last_id
    with _id_lock:
        ms, counter = time.time_ns() // 1_000_000, 0
        last_ms, last_counter = _last_id
        if ms <= last_ms:  # the same millisecond (or the clock stepped back): count on from the last id
            ms, counter = last_ms, last_counter + 1
            if counter >> _SEQUENCE_BITS:
                ms, counter = ms + 1, 0
        _last_id = ms, counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    h = f"{(ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"  # the canonical text of uuid.UUID(int=...), faster


def merge_patient(old: Patient, new: Patient, cleared: list[str]) -> Patient:
    """HL7 v2 update semantics: a value sent replaces, `""` deletes, a field not sent stays as it was.

    Identifiers are the exception: they accumulate. A feed that names the patient by one identifier
    (a billing row, a lab order) does not make the identifiers other feeds gave disappear; only an
    explicit `""` in the identifier field clears them."""
    merged = old.model_copy()
    defaults = Patient()
    for name in Patient.model_fields:
        value = getattr(new, name)
        if name == "identifiers" and value and name not in cleared:
            sent = {(i.system, i.value): i for i in value}
            kept = [sent.pop((i.system, i.value), i) for i in old.identifiers]  # order kept: no spurious versions
            setattr(merged, name, [*kept, *sent.values()])
        elif value not in (None, []):
            setattr(merged, name, value)
        elif name in cleared:
            setattr(merged, name, getattr(defaults, name))
    merged.active = new.active
    return merged


@lru_cache(maxsize=65536)
def normalise(text: str) -> str:
    """FHIR string search is case- and accent-insensitive: compare on this form.
    Cached: names repeat (a registry has far fewer distinct name parts than rows)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


def digits(text: str) -> str:
    return re.sub(r"\D", "", text)


INDEX_UNIONS = {
    "name": ("family", "given", "name"),
    "telecom": ("phone", "email"),
}
"""Search params whose values are the union of other params' index entries: written once, under the
narrower param. The index is most of what processing writes, and storing name parts and telecoms twice
made a registry patient 21 index rows instead of 17."""


def patient_index(patient: Patient) -> Iterator[tuple[str, str]]:
    """Search parameter values for a patient (param, normalised value); see INDEX_UNIONS."""
    for identifier in patient.identifiers:
        yield "identifier", f"{identifier.system or ''}|{identifier.value}"
        yield "identifier-value", identifier.value
    for name in patient.names:
        if name.family:
            yield "family", normalise(name.family)
            yield "family:exact", name.family.strip()  # FHIR `:exact`: case and accents as written
        for part in [*name.prefix, *name.suffix]:
            yield "name", normalise(part)
        for given in name.given:
            yield "given", normalise(given)
            yield "given:exact", given.strip()
    if patient.birth_date:
        yield from date_index("birthdate", patient.birth_date)
    if patient.gender:
        yield "gender", patient.gender
    for telecom in patient.telecoms:
        if telecom.system == "email":
            yield "email", telecom.value.casefold()
        else:
            yield "phone", digits(telecom.value)
    for address in patient.addresses:
        if address.postal_code:
            yield "address-postalcode", normalise(address.postal_code).replace(" ", "")


HIGH = "~"
"""Appended to a partial date or time to make the upper end of its range: "~" sorts after every digit,
"-", ":" and "T", so "1961" covers ["1961", "1961~"] and ISO strings compare lexicographically."""


def instant_text(value: datetime) -> str:
    """A datetime as the index stores it: UTC, to the second, no zone."""
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S")


def date_bounds(value: str) -> tuple[str, str] | None:
    """A FHIR date/dateTime search value or stored partial date → (low, high) as index strings."""
    if not re.fullmatch(r"\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?", value):
        return None
    if "T" in value:
        text = value if len(value.split("T")[1]) > 5 or value.endswith("Z") else value
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        normal = instant_text(parsed)
        return normal, normal
    return value, value + HIGH


def date_index(param: str, low: str | datetime | None, high: str | datetime | None = None) -> Iterator[tuple[str, str]]:
    """Index entries for a date or period: `param` holds the low end, `param.hi` the high end."""
    if low is None:
        return
    lo = instant_text(low) if isinstance(low, datetime) else low
    hi_value = high if high is not None else low
    hi = instant_text(hi_value) if isinstance(hi_value, datetime) else hi_value
    if not isinstance(hi_value, datetime) and len(hi) < 19:
        hi += HIGH
    yield param, lo
    yield f"{param}.hi", hi


def date_criteria(param: str, value: str) -> list[tuple[str, str, str]] | None:
    """A FHIR date search (`[prefix]value`) → criteria on the low/high index entries (range semantics)."""
    prefix, rest = (value[:2], value[2:]) if value[:2].isalpha() else ("eq", value)
    bounds = date_bounds(rest)
    if bounds is None or prefix not in ("eq", "ne", "lt", "le", "gt", "ge"):
        return None
    lo, hi = bounds
    return {
        "eq": [(param, "ge", lo), (f"{param}.hi", "le", hi)],
        "lt": [(param, "lt", lo)],
        "le": [(param, "le", hi)],
        "gt": [(f"{param}.hi", "gt", hi)],
        "ge": [(f"{param}.hi", "ge", lo)],
    }.get(prefix)


def identifier_index(identifier: Identifier | None) -> Iterator[tuple[str, str]]:
    if identifier is not None and identifier.value:
        yield "identifier", f"{identifier.system or ''}|{identifier.value}"
        yield "identifier-value", identifier.value


def code_index(code: CodeableConcept | None, param: str = "code") -> Iterator[tuple[str, str]]:
    if code is not None and code.code:
        yield param, f"{code.system or ''}|{code.code}"
        yield f"{param}-value", code.code


def record_index_entries(record: Canonical) -> Iterator[tuple[str, str]]:
    """Search values (param, normalised value) of any canonical record."""
    if isinstance(record, Patient):
        yield from patient_index(record)
    elif isinstance(record, Encounter):
        yield from identifier_index(record.visit_number)
        yield "status", record.status
        yield from date_index("date", record.admitted_at, record.discharged_at or record.admitted_at)
        if record.patient_class:
            yield "class", record.patient_class
    elif isinstance(record, Observation):
        yield from code_index(record.code)
        yield "status", record.status
        yield from date_index("date", record.effective_at)
    elif isinstance(record, Order):
        yield from code_index(record.code)
        yield "status", record.status
        for number in (record.placer_number, record.filler_number):
            if number:
                yield "identifier-value", number
        yield from date_index("date", record.ordered_at)
    elif isinstance(record, Report):
        yield from code_index(record.code)
        yield "status", record.status
        yield from identifier_index(record.identifier)
        yield from date_index("date", record.effective_at or record.issued_at)
    elif isinstance(record, Charge):
        yield from code_index(record.code)
        yield from date_index("date", record.date)
        if record.transaction_id:
            yield "identifier-value", record.transaction_id
    elif isinstance(record, Appointment):
        yield "status", record.status
        yield from date_index("date", record.start, record.end or record.start)
        for number in (record.placer_id, record.filler_id):
            if number:
                yield "identifier-value", number
    elif isinstance(record, Account):
        yield from identifier_index(record.account_number)
        yield "status", record.status


IndexRow = tuple[str, str, str, str]
"""(record_id, param, value, kind): a `record_index` row."""
INDEX_VALUE_MAX = 300


def index_rows(record_id: str, kind: str, record: Canonical, extra: Iterable[tuple[str, str]]) -> list[IndexRow]:
    """The search-index rows of one record version: its own entries and the extra ones its door adds (a
    FHIR resource's identifiers and categories); values clipped, empty ones dropped. A record's patient
    is not among them: reference searches read `records.patient_id` (indexed). Processing writes these;
    `hub reindex` rebuilds them the same way."""
    entries = set(record_index_entries(record)) | set(extra)
    return [(record_id, param, value[:INDEX_VALUE_MAX], kind) for param, value in sorted(entries) if value]

