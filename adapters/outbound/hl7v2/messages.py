"""HL7 v2 messages built from one routed event: ADT, ORU^R01, ORM^O01, OML^O21, DFT^P03.

Each function takes the event, its destination (version, MSH options) and the stable control id
(MSH-10) and returns the message as bytes. Only what the triggering message said is written
(`RoutedEvent` is the event as processed, not the patient's current state).
"""

from __future__ import annotations

from decimal import Decimal

from adapters.outbound.hl7v2.writer import (
    assemble,
    ce,
    coded_value_type,
    cx,
    dtm,
    escape,
    evn,
    fields,
    pid,
    pv1,
    segment,
    timestamp_of,
)
from hub.model import Observation, Order
from hub.outbound import Destination, RoutedEvent
from mappings.hl7v2.reverse import to_hl7

ADT_STRUCTURE = {
    "A01": "ADT_A01", "A02": "ADT_A02", "A03": "ADT_A03", "A04": "ADT_A01", "A05": "ADT_A05",
    "A06": "ADT_A06", "A07": "ADT_A06", "A08": "ADT_A01", "A11": "ADT_A09", "A12": "ADT_A12",
    "A13": "ADT_A01", "A28": "ADT_A05", "A31": "ADT_A05", "A40": "ADT_A39",
}
"""Trigger → message structure (MSH-9.3), v2.5.1 chapter 3."""

_UNKNOWN_RESULT_STATUS = "R"
"""OBX-11 is required; a result whose status the sender did not give goes out as R (entered, not
verified) — never as F, which would claim a final result."""


def adt(event: RoutedEvent, destination: Destination, control_id: str, trigger: str | None = None) -> bytes:
    """ADT^<trigger> (the event's own trigger unless one is forced, e.g. the lab's A08)."""
    trigger = trigger or event.trigger
    structure = ADT_STRUCTURE.get(trigger, "ADT_A01")
    when = timestamp_of(event)
    body: list[str | None] = [evn(trigger, when, destination.version), pid(event, destination.version)]
    if trigger == "A40":
        merged = event.event.merged_identifier
        body.append(segment("MRG", [cx(merged, "PI") if merged else ""]))
        body.append(pv1(event))
    else:
        body.append(pv1(event) or "PV1|1|N")  # PV1 is required in these structures; N = not applicable
    return assemble(destination, event, "ADT", trigger, structure, control_id, body)


def oru_r01(event: RoutedEvent, destination: Destination, control_id: str) -> bytes | None:
    """ORU^R01: each order (ORC/OBR) followed by its results (OBX, NTE for notes)."""
    observations = event.event.observations
    if not observations:
        return None
    orders = list(event.event.orders) or [Order(code=event.event.report.code if event.event.report else observations[0].code)]
    body: list[str | None] = [pid(event, destination.version), pv1(event)]
    for n, (order, results) in enumerate(_results_by_order(orders, observations), start=1):
        body.append(_orc(order, "RE"))
        body.append(_obr(n, order))
        for i, obs in enumerate(results, start=1):
            body.append(_obx(i, obs, destination.version))
            body.extend(segment("NTE", [str(k), "L", escape(note)]) for k, note in enumerate(obs.notes, start=1))
    return assemble(destination, event, "ORU", "R01", "ORU_R01", control_id, body)


def _results_by_order(orders: list[Order], observations: list[Observation]) -> list[tuple[Order, list[Observation]]]:
    """Results go with the order whose placer or filler number they carry, else with the last order."""
    grouped: list[tuple[Order, list[Observation]]] = [(o, []) for o in orders]
    for obs in observations:
        target = grouped[-1][1]
        for order, results in grouped:
            if (obs.order_placer_number and obs.order_placer_number == order.placer_number) or (
                obs.order_filler_number and obs.order_filler_number == order.filler_number
            ):
                target = results
                break
        target.append(obs)
    return grouped


def _orc(order: Order, control: str) -> str:
    """ORC; `control` is ORC-1 (RE for results, the order's own control or NW for orders)."""
    return segment("ORC", fields(
        9,
        f1=control,
        f2=escape(order.placer_number), f3=escape(order.filler_number),
        f5=to_hl7("order_status", order.status), f9=dtm(order.ordered_at),
    ))


def _obr(n: int, order: Order) -> str:
    return segment("OBR", fields(
        15, f1=str(n), f2=escape(order.placer_number), f3=escape(order.filler_number), f4=ce(order.code),
        f7=dtm(order.ordered_at), f15=escape(order.specimen),
    ))


def _number(value: Decimal) -> str:
    return format(value, "f")


def _obx(n: int, obs: Observation, version: str) -> str:
    if obs.value_quantity is not None:
        value_type, value = "NM", _number(obs.value_quantity.value)
        unit = escape(obs.value_quantity.unit)
    elif obs.value_code is not None:
        value_type, value, unit = coded_value_type(version), ce(obs.value_code), ""
    elif obs.value_string is not None:
        value_type = "FT" if "\n" in obs.value_string else "ST"
        value, unit = escape(obs.value_string), ""
    else:
        value_type, value, unit = "", "", ""
    ref = obs.reference_range
    ref_text = ""
    if ref is not None:
        ref_text = escape(ref.text) or (f"{_number(ref.low)}-{_number(ref.high)}" if ref.low is not None and ref.high is not None else "")
    return segment("OBX", fields(
        14, f1=str(n), f2=value_type, f3=ce(obs.code), f5=value, f6=unit, f7=ref_text,
        f8="~".join(escape(f) for f in obs.abnormal_flags),
        f11=to_hl7("observation_status", obs.status, _UNKNOWN_RESULT_STATUS), f14=dtm(obs.effective_at),
    ))


def orm_o01(event: RoutedEvent, destination: Destination, control_id: str) -> bytes | None:
    """ORM^O01 (to v2.6): one ORC + OBR per order."""
    return _orders(event, destination, control_id, "ORM", "O01")


def oml_o21(event: RoutedEvent, destination: Destination, control_id: str) -> bytes | None:
    """OML^O21 (laboratory order, from v2.4): one ORC + OBR per order."""
    return _orders(event, destination, control_id, "OML", "O21")


def _orders(event: RoutedEvent, destination: Destination, control_id: str, msg_type: str, trigger: str) -> bytes | None:
    orders = event.event.orders
    if not orders:
        return None
    body: list[str | None] = [pid(event, destination.version), pv1(event)]
    for n, order in enumerate(orders, start=1):
        body += [_orc(order, escape(order.control) or "NW"), _obr(n, order)]
    return assemble(destination, event, msg_type, trigger, f"{msg_type}_{trigger}", control_id, body)


def dft_p03(event: RoutedEvent, destination: Destination, control_id: str) -> bytes | None:
    """DFT^P03: one FT1 per charge (transaction type CG)."""
    charges = event.event.charges
    if not charges:
        return None
    when = timestamp_of(event)
    body: list[str | None] = [evn("P03", when, destination.version), pid(event, destination.version), pv1(event)]
    for n, charge in enumerate(charges, start=1):
        body.append(segment("FT1", fields(
            11, f1=str(n), f2=escape(charge.transaction_id), f4=dtm(charge.date or when), f6="CG", f7=ce(charge.code),
            f10=_number(charge.quantity) if charge.quantity is not None else "",
            f11=_number(charge.amount) if charge.amount is not None else "",
        )))
    return assemble(destination, event, "DFT", "P03", "DFT_P03", control_id, body)
