"""The built-in outbound profiles: what each kind of consumer gets, by destination format.

| profile | hl7v2 | fhir | csv |
|---|---|---|---|
| ehr | ADT^<trigger> (A01/A04/A08/A03/A40 …), ORU^R01 | Patient, Encounter, Observation, DiagnosticReport | — |
| lab | ORM^O01 or OML^O21 (option `orders`), ADT^A08 for any ADT but A40 | — | — |
| billing | DFT^P03, ADT^<trigger> (the finished encounter: A03) | Patient, Encounter, Account, ChargeItem | charge / encounter rows |

Profiles look at what an event carries (`adapters/outbound/kinds.py`), not at its door: a FHIR
Patient update or a CSV row is an ADT (A03 for a finished encounter, else A08) like an HL7 ADT.
A profile sends nothing (None) for events it has no message for; the routes decide which events
reach it. The lab's "only patients with open orders" needs state: route it with the condition
`has_open_orders: true`, which reads `RoutedEvent.has_open_orders` (filled by processing).
HL7 v2 options for every profile: `sending_application`, `sending_facility` (MSH-3/4, default HUB),
`receiving_application` (MSH-5, default the destination's name), `receiving_facility`, `processing_id`.
"""

from __future__ import annotations

from collections.abc import Callable

from adapters.outbound.csv import billing as csv_billing
from adapters.outbound.fhir import bundles
from adapters.outbound.hl7v2 import messages
from adapters.outbound.kinds import adt_trigger, has_charges, has_orders, has_results
from hub.outbound import Destination, RoutedEvent
from hub.routing.table import Built, Profile

HL7_CONTENT_TYPE = "application/hl7-v2; charset=utf-8"
_MSH_OPTIONS: dict[str, frozenset[str] | None] = {
    "sending_application": None, "sending_facility": None, "receiving_application": None,
    "receiving_facility": None, "processing_id": frozenset({"P", "T", "D"}),
}


def _hl7(payload: bytes | None, summary: str) -> Built | None:
    return Built(payload, HL7_CONTENT_TYPE, summary) if payload is not None else None


def ehr_hl7v2(event: RoutedEvent, destination: Destination, control_id: str) -> Built | None:
    if has_results(event):
        return _hl7(messages.oru_r01(event, destination, control_id), "ORU^R01")
    if trigger := adt_trigger(event):
        return _hl7(messages.adt(event, destination, control_id, trigger), f"ADT^{trigger}")
    return None


def lab_hl7v2(event: RoutedEvent, destination: Destination, control_id: str) -> Built | None:
    if has_orders(event):
        if destination.options.get("orders", "ORM^O01") == "OML^O21":
            return _hl7(messages.oml_o21(event, destination, control_id), "OML^O21")
        return _hl7(messages.orm_o01(event, destination, control_id), "ORM^O01")
    if (trigger := adt_trigger(event)) and trigger != "A40":
        return _hl7(messages.adt(event, destination, control_id, trigger="A08"), "ADT^A08")
    return None


def lab_check(destination: Destination) -> list[str]:
    """ORM was withdrawn in v2.7 (OML replaces it); OML^O21 exists from v2.4."""
    if destination.format != "hl7v2":
        return []
    orders = destination.options.get("orders", "ORM^O01")
    if orders == "ORM^O01" and destination.version >= "2.7":
        return [f"ORM^O01 does not exist in HL7 v{destination.version}: set options: {{orders: OML^O21}}"]
    if orders == "OML^O21" and destination.version < "2.4":
        return [f"OML^O21 does not exist in HL7 v{destination.version} (it does from 2.4)"]
    return []


def billing_hl7v2(event: RoutedEvent, destination: Destination, control_id: str) -> Built | None:
    if has_charges(event):
        return _hl7(messages.dft_p03(event, destination, control_id), "DFT^P03")
    if trigger := adt_trigger(event):
        return _hl7(messages.adt(event, destination, control_id, trigger), f"ADT^{trigger}")
    return None


def _fhir(build: Callable[[RoutedEvent, str], bytes | None]) -> Callable[[RoutedEvent, Destination, str], Built | None]:
    def builder(event: RoutedEvent, destination: Destination, control_id: str) -> Built | None:
        payload = build(event, control_id)
        return Built(payload, bundles.CONTENT_TYPE, "Bundle(transaction)") if payload is not None else None

    return builder


def billing_csv(event: RoutedEvent, destination: Destination, control_id: str) -> Built | None:
    result = csv_billing.billing_rows(event, control_id)
    if result is None:
        return None
    payload, rows = result
    return Built(payload, csv_billing.CONTENT_TYPE, f"csv({rows} row{'s' if rows != 1 else ''})")


PROFILES: dict[str, Profile] = {
    "ehr": Profile("ehr", {"hl7v2": ehr_hl7v2, "fhir": _fhir(bundles.ehr_bundle)}, _MSH_OPTIONS),
    "lab": Profile("lab", {"hl7v2": lab_hl7v2}, {**_MSH_OPTIONS, "orders": frozenset({"ORM^O01", "OML^O21"})}, lab_check),
    "billing": Profile(
        "billing", {"hl7v2": billing_hl7v2, "fhir": _fhir(bundles.billing_bundle), "csv": billing_csv}, _MSH_OPTIONS
    ),
}
