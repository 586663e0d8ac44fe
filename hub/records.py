"""Domain rules for canonical records: how an update combines with what we had, and what is searchable."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from hub.model import Patient


def merge_patient(old: Patient, new: Patient, cleared: list[str]) -> Patient:
    """HL7 v2 update semantics: a value sent replaces, `""` deletes, a field not sent stays as it was."""
    merged = old.model_copy()
    defaults = Patient()
    for name in Patient.model_fields:
        value = getattr(new, name)
        if value not in (None, []):
            setattr(merged, name, value)
        elif name in cleared:
            setattr(merged, name, getattr(defaults, name))
    merged.active = new.active
    return merged


def normalise(text: str) -> str:
    """FHIR string search is case- and accent-insensitive: compare on this form."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


def digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def patient_index(patient: Patient) -> Iterator[tuple[str, str]]:
    """Search parameter values for a patient (param, normalised value)."""
    for identifier in patient.identifiers:
        yield "identifier", f"{identifier.system or ''}|{identifier.value}"
        yield "identifier-value", identifier.value
    for name in patient.names:
        if name.family:
            yield "family", normalise(name.family)
            yield "name", normalise(name.family)
        for part in [*name.given, *name.prefix, *name.suffix]:
            yield "name", normalise(part)
        for given in name.given:
            yield "given", normalise(given)
    if patient.birth_date:
        yield "birthdate", patient.birth_date
    if patient.gender:
        yield "gender", patient.gender
    for telecom in patient.telecoms:
        if telecom.system == "email":
            yield "email", telecom.value.casefold()
            yield "telecom", telecom.value.casefold()
        else:
            yield "phone", digits(telecom.value)
            yield "telecom", digits(telecom.value)
    for address in patient.addresses:
        if address.postal_code:
            yield "address-postalcode", normalise(address.postal_code).replace(" ", "")
