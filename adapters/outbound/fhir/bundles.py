"""FHIR R4 transaction Bundles from one routed event, every entry a conditional update.

`PUT Patient?identifier=system|value` (and the same for Encounter, Observation, DiagnosticReport,
Account, ChargeItem) creates the resource the first time and replaces it afterwards, so a retried
or replayed bundle never creates a duplicate. References between entries use `urn:uuid:` full
URLs derived from the control id, which the receiver resolves to the ids it assigns (FHIR R4
http.html, transaction processing). Resources come from the same canonical → FHIR projection as
the hub's own FHIR API (`mappings/fhir`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from adapters.outbound.kinds import adt_trigger, has_charges, has_results
from hub import jsoncodec
from hub.model import Encounter, Identifier, Observation, Order, Patient, PatientEvent, source_identifier
from hub.outbound import RoutedEvent
from mappings.fhir import patient as fhir_patient
from mappings.fhir import resources as fhir_resources

ENTERPRISE_SYSTEM = "urn:hub:enterprise-id"
BUNDLE_SYSTEM = "urn:hub:outbound"
OBSERVATION_SYSTEM = "urn:hub:observation"
REPORT_SYSTEM = "urn:hub:report"
CHARGE_SYSTEM = "urn:hub:charge"
CONTENT_TYPE = "application/fhir+json"

Resource = dict[str, Any]


class TransactionBuilder:
    """Entries of one transaction bundle, each a conditional PUT keyed by one identifier."""

    def __init__(self, control_id: str) -> None:
        self.control_id = control_id
        self.entries: list[dict[str, Any]] = []

    def full_url(self, kind: str, key: str) -> str:
        return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{BUNDLE_SYSTEM}/{self.control_id}/{kind}/{key}')}"

    def put(self, resource: Resource, key: tuple[str, str]) -> str:
        """Add `resource` as `PUT <type>?identifier=<system>|<value>`; returns its full URL."""
        kind = resource["resourceType"]
        full_url = self.full_url(kind, "|".join(key))
        self.entries.append({
            "fullUrl": full_url,
            "resource": resource,
            "request": {"method": "PUT", "url": f"{kind}?identifier={token(*key)}"},
        })
        return full_url

    def bundle(self) -> bytes:
        body = {
            "resourceType": "Bundle",
            "identifier": {"system": BUNDLE_SYSTEM, "value": self.control_id},
            "type": "transaction",
            "entry": self.entries,
        }
        return jsoncodec.dumps(body)


def token(system: str, value: str) -> str:
    """A token search value `system|value`: FHIR escapes `\\ , $ |` with a backslash; then URL-encoded."""
    def esc(text: str) -> str:
        for char in ("\\", ",", "$", "|"):
            text = text.replace(char, "\\" + char)
        return text

    return quote(f"{esc(system)}|{esc(value)}", safe=":/|")


def _strip(resource: Resource) -> Resource:
    """The projection gives id and meta (for the hub's own API); a conditional update sends neither."""
    resource.pop("id", None)
    resource.pop("meta", None)
    return resource


def _ref(full_url: str | None) -> dict[str, str] | None:
    return {"reference": full_url} if full_url else None


# --- Patient --------------------------------------------------------------------------------


def patient_identifiers(event: RoutedEvent) -> list[Identifier]:
    """The message's identifiers, the person's other source identifiers, then the enterprise id."""
    own = list(event.event.patient.identifiers) if event.event.patient else []
    seen = {(i.system, i.value) for i in own}
    out = list(own)
    for system, value in event.identifiers:
        if (system, value) not in seen and system != ENTERPRISE_SYSTEM:
            seen.add((system, value))
            out.append(Identifier(system=system, value=value))
    if event.enterprise_id:
        out.append(Identifier(system=ENTERPRISE_SYSTEM, value=event.enterprise_id, assigner="HUB"))
    return out


def patient_key(event: RoutedEvent) -> tuple[str, str] | None:
    """Which identifier the receiver finds the patient by: the enterprise id once the MPI knows the
    person (stable across the person's source records), else the source record's own identifier."""
    if event.enterprise_id:
        return ENTERPRISE_SYSTEM, event.enterprise_id
    own = source_identifier(event.event.patient) if event.event.patient else None
    if own is None:
        return None
    return own.system or "urn:hub:unknown", own.value


def add_patient(tx: TransactionBuilder, event: RoutedEvent) -> str | None:
    key = patient_key(event)
    if key is None or event.event.patient is None:
        return None
    patient = event.event.patient.model_copy(update={"identifiers": patient_identifiers(event)})
    resource = _strip(fhir_patient.to_fhir(patient, "x", {}))
    full_url = tx.put(resource, key)
    merged = event.event.merged_identifier
    if merged is not None:  # ADT^A40: the merged-away record points at the survivor
        old = _strip(fhir_patient.to_fhir(Patient(identifiers=[merged], active=False), "x", {}))
        old["link"] = [{"other": {"reference": full_url}, "type": "replaced-by"}]
        tx.put(old, (merged.system or "urn:hub:unknown", merged.value))
    return full_url


# --- clinical and billing resources ---------------------------------------------------------


def add_encounter(tx: TransactionBuilder, encounter: Encounter | None, subject: str | None) -> str | None:
    visit = encounter.visit_number if encounter else None
    if encounter is None or visit is None:
        return None  # nothing to key a conditional update on
    resource = _project("encounter", encounter.model_dump(), subject)
    return tx.put(resource, (visit.system or "urn:hub:unknown", visit.value))


def _project(kind: str, data: dict[str, Any], subject: str | None) -> Resource:
    resource = _strip(fhir_resources.to_fhir(kind, data, "x", {}, None))
    if subject:
        resource["subject"] = [_ref(subject)] if kind == "account" else _ref(subject)
    return resource


def _order_key(order: Order | None) -> str | None:
    if order is None:
        return None
    if order.filler_number:
        return f"F:{order.filler_number}"
    return f"P:{order.placer_number}" if order.placer_number else None


def add_results(tx: TransactionBuilder, event: PatientEvent, subject: str | None, encounter: str | None) -> None:
    """Observations, and one DiagnosticReport per order that has results."""
    by_order: dict[str | None, list[str]] = {}
    used: set[str] = set()
    for n, obs in enumerate(event.observations):
        order = _order_of(event.orders, obs)
        value = _observation_key(obs, order, tx.control_id, n, used)
        resource = _project("observation", obs.model_dump(), subject)
        resource["identifier"] = [{"system": OBSERVATION_SYSTEM, "value": value}]
        if encounter:
            resource["encounter"] = _ref(encounter)
        by_order.setdefault(_order_key(order), []).append(tx.put(resource, (OBSERVATION_SYSTEM, value)))
    for order in event.orders or [None]:  # type: ignore[list-item]
        key = _order_key(order)
        results = by_order.get(key)
        if not results:
            continue
        report_key = key or f"M:{tx.control_id}"
        data = {"status": _report_status(event.observations), "code": order.code.model_dump() if order and order.code else None}
        resource = _project("report", data, subject)
        resource["identifier"] = [{"system": REPORT_SYSTEM, "value": report_key}]
        resource["result"] = [_ref(r) for r in results]
        if encounter:
            resource["encounter"] = _ref(encounter)
        tx.put(resource, (REPORT_SYSTEM, report_key))


def _order_of(orders: Iterable[Order], obs: Observation) -> Order | None:
    last = None
    for order in orders:
        last = order
        if (obs.order_filler_number and obs.order_filler_number == order.filler_number) or (
            obs.order_placer_number and obs.order_placer_number == order.placer_number
        ):
            return order
    return last


def _observation_key(obs: Observation, order: Order | None, control_id: str, n: int, used: set[str]) -> str:
    """Order + test code: a corrected result for the same test replaces the earlier one."""
    base = _order_key(order) or f"M:{control_id}"
    value = f"{base}:{obs.code.code or obs.code.display or n}"
    if value in used:
        value = f"{value}:{n}"
    used.add(value)
    return value


def _report_status(observations: list[Observation]) -> str:
    statuses = {o.status for o in observations}
    if statuses == {"final"}:
        return "final"
    if statuses & {"corrected", "amended"}:
        return "amended"
    if statuses & {"preliminary", "final"}:
        return "partial"
    return "unknown"


def add_account(tx: TransactionBuilder, event: PatientEvent, subject: str | None) -> str | None:
    """The billing account: the event's account, else one per visit (the visit number is the usual
    account key when the sender has no separate PID-18)."""
    number = event.account.account_number if event.account else None
    if number is None and event.encounter and event.encounter.visit_number:
        number = event.encounter.visit_number
    if number is None:
        return None
    data = event.account.model_dump() if event.account else {"status": "active"}
    data["account_number"] = number.model_dump()
    resource = _project("account", data, subject)
    return tx.put(resource, (number.system or "urn:hub:unknown", number.value))


def add_charges(tx: TransactionBuilder, event: PatientEvent, subject: str | None, encounter: str | None,
                account: str | None) -> None:
    for n, charge in enumerate(event.charges):
        value = charge.transaction_id or f"{tx.control_id}:{n}"
        resource = _project("charge", charge.model_dump(), subject)
        resource["identifier"] = [{"system": CHARGE_SYSTEM, "value": value}]
        if encounter:
            resource["context"] = _ref(encounter)
        if account:
            resource["account"] = [_ref(account)]
        tx.put(resource, (CHARGE_SYSTEM, value))


# --- profiles -------------------------------------------------------------------------------


def ehr_bundle(event: RoutedEvent, control_id: str) -> bytes | None:
    """EHR: Patient (+ Encounter) for patient and visit updates; + Observations and DiagnosticReports for results."""
    results = has_results(event)
    if not results and adt_trigger(event) is None:
        return None
    tx = TransactionBuilder(control_id)
    subject = add_patient(tx, event)
    if subject is None:
        return None
    encounter = add_encounter(tx, event.event.encounter, subject)
    if results:
        add_results(tx, event.event, subject, encounter)
    return tx.bundle()


def billing_bundle(event: RoutedEvent, control_id: str) -> bytes | None:
    """Billing: Patient, Encounter and Account for visit updates (the finished encounter), + ChargeItems for charges."""
    if not has_charges(event) and adt_trigger(event) is None:
        return None
    tx = TransactionBuilder(control_id)
    subject = add_patient(tx, event)
    if subject is None:
        return None
    encounter = add_encounter(tx, event.event.encounter, subject)
    account = add_account(tx, event.event, subject)
    add_charges(tx, event.event, subject, encounter, account)
    return tx.bundle()
