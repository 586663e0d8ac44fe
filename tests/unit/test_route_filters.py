"""Route filters on real canonical events (the HL7 v2 corpus through the inbound reader), and
`RouteTable.plan`: which destinations get what, once, with stable ids and the right ordering key.

No I/O besides reading corpus files. All patients are fictional.
"""

from __future__ import annotations

import textwrap
from dataclasses import replace

import pytest

from hub.outbound import RoutedEvent
from hub.routing import RouteTable, control_id, parse_routes
from tests.unit.routed import routed

DESTINATIONS = """\
destinations:
  ehr: {transport: mllp, host: 127.0.0.1, port: 6661, profile: ehr}
  lab: {transport: mllp, host: 127.0.0.1, port: 6662, profile: lab}
  billing: {transport: http, url: "http://127.0.0.1:6663/fhir", profile: billing, format: fhir}
  ledger: {transport: file, directory: /var/hub/ledger, profile: billing, format: csv, ordering: strict}
"""


def table(routes: str) -> RouteTable:
    return parse_routes(DESTINATIONS + "routes:\n" + textwrap.indent(textwrap.dedent(routes), "  "), "routes.yaml")


def matches(when: str, event: RoutedEvent) -> bool:
    """Whether a single route with this `when:` (YAML flow mapping) matches the event."""
    (route,) = table(f"- {{name: r, to: [ehr], when: {when}}}\n").routes
    return route.matches(event)


A01 = routed("adt_a01_epic_251.hl7")          # ADT^A01, inpatient, facility NFGH, MR 000123
A03 = routed("adt_a03_meditech_23.hl7")       # ADT^A03 v2.3, inpatient, discharged
ORU = routed("oru_r01_lab_251.hl7")           # five results, one order
DFT = routed("dft_p03_epic_24.hl7")           # two charges: 125.00 and 48.50
OML = routed("oml_o21_epic_251.hl7")
SIU = routed("siu_s12_epic_251.hl7")


# --- shorthand keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "event", "expected"),
    [
        ("{message_type: ADT}", A01, True),
        ("{message_type: ADT}", ORU, False),
        ("{message_type: [ORM, OML]}", OML, True),
        ("{message_type: [ORM, OML]}", DFT, False),
        ("{trigger: A03}", A03, True),
        ("{trigger: [A01, A04]}", A03, False),
        ("{message_type: ADT, trigger: [A03]}", A03, True),
        ("{message_type: ADT, trigger: [A03]}", A01, False),
        ("{event: 'ADT^A01'}", A01, True),
        ("{event: ['ADT^A08', 'ADT^A03']}", A01, False),
        ("{feed: mllp}", A01, True),
        ("{feed: [file, http]}", A01, False),
        ("{format: hl7v2}", A01, True),
        ("{format: [fhir, csv]}", A01, False),
        ("{facility: NFGH}", A01, True),                 # HD namespace of MSH-4 NFGH^2.999.1.1^ISO
        ("{facility: 'NFGH^2.999.1.1^ISO'}", A01, True),
        ("{facility: SMH}", A01, False),
        ("{patient_class: I}", A01, True),
        ("{patient_class: [O, E]}", A01, False),
        ("{patient_class: I}", DFT, False),              # outpatient
        ("{}", SIU, True),                               # no conditions: every event
    ],
)
def test_shorthand_condition(when: str, event: RoutedEvent, expected: bool) -> None:
    assert matches(when, event) is expected


def test_patient_class_does_not_match_an_event_without_an_encounter() -> None:
    merge = routed("adt_a40_merge_251.hl7")
    assert merge.event.encounter is None
    assert matches("{patient_class: [I, O, E]}", merge) is False


@pytest.mark.parametrize(("known", "expected"), [(True, True), (False, False), (None, False)])
def test_has_open_orders_needs_a_known_yes(known: bool | None, expected: bool) -> None:
    """Unknown (the lookup not wired) never sends demographics to a lab."""
    assert matches("{message_type: ADT, has_open_orders: true}", replace(A01, has_open_orders=known)) is expected


def test_has_open_orders_false_matches_only_a_known_no() -> None:
    assert matches("{has_open_orders: false}", replace(A01, has_open_orders=False)) is True
    assert matches("{has_open_orders: false}", replace(A01, has_open_orders=None)) is False


# --- field expressions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "event", "expected"),
    [
        ("{field: encounter.patient_class, in: [I, E]}", A01, True),
        ("{field: encounter.patient_class, in: [I, E]}", DFT, False),
        ("{field: encounter.patient_class, not_in: [I, E]}", DFT, True),
        ("{field: encounter.patient_class, equals: I}", A01, True),
        ("{field: encounter.patient_class, not_equals: I}", A01, False),
        ("{field: encounter.status, equals: finished}", A03, True),
        ("{field: encounter.discharged_at, exists: true}", A03, True),
        ("{field: encounter.discharged_at, exists: true}", A01, False),
        ("{field: encounter.discharged_at, exists: false}", A01, True),
        ("{field: patient.gender, equals: female}", A01, True),
        ("{field: patient.birth_date, matches: '^1980-'}", A01, True),
        ("{field: patient.birth_date, matches: '^1990-'}", A01, False),
        # lists: a positive operator holds if any element does, a negative one if none does
        ("{field: patient.identifiers.type, equals: PI}", A01, True),
        ("{field: patient.identifiers.type, not_equals: PI}", A01, False),
        ("{field: patient.identifiers.system, in: ['urn:oid:2.999.1.2.3']}", A01, True),
        ("{field: patient.names.given, equals: Mari}", A01, True),
        ("{field: observations.code.code, equals: 2823-3}", ORU, True),
        ("{field: observations.abnormal_flags, in: [LL, HH]}", ORU, True),
        ("{field: observations.abnormal_flags, in: [HH]}", ORU, False),
        ("{field: observations.code.system, equals: LN}", A01, False),
        ("{field: observations.code.code, exists: false}", A01, True),
        # numbers compare as numbers: 125 equals 125.00
        ("{field: charges.amount, equals: 125}", DFT, True),
        ("{field: charges.amount, in: [48.5, 1000]}", DFT, True),
        ("{field: charges.amount, equals: 12.5}", DFT, False),
        ("{field: charges.code.system, equals: CPT4}", DFT, True),
        # yes/no fields
        ("{field: patient.active, equals: true}", A01, True),
        ("{field: patient.deceased, equals: true}", A03, True),
        ("{field: orders.placer_number, matches: '^ORD9'}", OML, True),
    ],
)
def test_field_expression(expression: str, event: RoutedEvent, expected: bool) -> None:
    assert matches(f"{{fields: [{expression}]}}", event) is expected


def test_all_conditions_must_hold() -> None:
    when = "{message_type: ADT, fields: [{field: encounter.patient_class, equals: I}, {field: patient.gender, equals: male}]}"
    assert matches(when, A01) is False
    assert matches(when.replace("male}", "female}"), A01) is True


def test_a_single_field_expression_needs_no_list() -> None:
    assert matches("{fields: {field: encounter.patient_class, equals: I}}", A01) is True


# --- plan -----------------------------------------------------------------------------------


MINIMAL_ROUTES = """\
- {name: adt-to-ehr, when: {message_type: ADT}, to: [ehr]}
- {name: results-to-ehr, when: {message_type: ORU}, to: [ehr]}
- {name: orders-to-lab, when: {message_type: [ORM, OML]}, to: [lab]}
- {name: encounters-to-billing, when: {message_type: ADT, trigger: [A03]}, to: [billing]}
- {name: charges-to-billing, when: {message_type: DFT}, to: [billing]}
"""


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("adt_a01_epic_251.hl7", [("ehr", "adt-to-ehr", "ADT^A01")]),
        ("adt_a03_meditech_23.hl7", [("ehr", "adt-to-ehr", "ADT^A03"), ("billing", "encounters-to-billing", "Bundle(transaction)")]),
        ("adt_a40_merge_251.hl7", [("ehr", "adt-to-ehr", "ADT^A40")]),
        ("oru_r01_lab_251.hl7", [("ehr", "results-to-ehr", "ORU^R01")]),
        ("orm_o01_cerner_231.hl7", [("lab", "orders-to-lab", "ORM^O01")]),
        ("oml_o21_epic_251.hl7", [("lab", "orders-to-lab", "ORM^O01")]),
        ("dft_p03_epic_24.hl7", [("billing", "charges-to-billing", "Bundle(transaction)")]),
        ("siu_s12_epic_251.hl7", []),
    ],
)
def test_minimal_routes_plan(name: str, expected: list[tuple[str, str, str]]) -> None:
    planned = table(MINIMAL_ROUTES).plan(routed(name))
    assert [(o.destination, o.route, o.summary) for o in planned] == expected


def test_plan_ids_are_stable_and_differ_by_destination_and_event() -> None:
    routes = table("- {name: all, to: [ehr, billing]}\n")
    first, again = routes.plan(A03), routes.plan(A03)
    assert first == again  # the same bytes, the same ids: a rebuild is identical
    ehr, billing = first
    assert ehr.idempotency_key == control_id(1234, 0, "ehr")
    assert billing.idempotency_key == control_id(1234, 0, "billing")
    assert ehr.idempotency_key != billing.idempotency_key
    assert routes.plan(replace(A03, event_index=1))[0].idempotency_key != ehr.idempotency_key
    assert routes.plan(replace(A03, message_id=1235))[0].idempotency_key != ehr.idempotency_key


def test_control_id_fits_msh_10() -> None:
    assert control_id(0, 0, "ehr") == control_id(0, 0, "ehr")
    assert len(control_id(36**10 - 1, 36**3 - 1, "a-long-destination-name")) == 20
    ids = {control_id(m, e, d) for m in range(200) for e in range(3) for d in ("ehr", "lab", "billing")}
    assert len(ids) == 200 * 3 * 3


def test_a_destination_gets_an_event_once_even_when_several_routes_match() -> None:
    routes = table("""\
        - {name: adt-to-ehr, when: {message_type: ADT}, to: [ehr]}
        - {name: inpatients-to-ehr, when: {patient_class: I}, to: [ehr, lab]}
    """)
    assert [(o.destination, o.route) for o in routes.plan(A01)] == [("ehr", "adt-to-ehr"), ("lab", "inpatients-to-ehr")]


def test_a_route_profile_override_is_a_second_message_with_its_own_id() -> None:
    routes = table("""\
        - {name: adt-to-ehr, when: {message_type: ADT}, to: [ehr]}
        - {name: adt-as-lab, when: {message_type: ADT}, to: [ehr], profile: lab}
    """)
    ehr, as_lab = routes.plan(A01)
    assert (ehr.summary, as_lab.summary) == ("ADT^A01", "ADT^A08")
    assert ehr.idempotency_key != as_lab.idempotency_key


def test_ordering_key_is_the_patient_unless_the_destination_is_strict() -> None:
    routes = table("- {name: charges, when: {message_type: DFT}, to: [billing, ledger]}\n")
    billing, ledger = routes.plan(DFT)
    assert billing.ordering_key == "urn:oid:2.999.1.2.3|000123" == DFT.patient_key
    assert ledger.ordering_key == "ledger"


def test_a_profile_with_nothing_to_send_plans_nothing() -> None:
    routes = table("- {name: everything-to-lab, to: [lab]}\n")
    assert routes.plan(DFT) == []
    assert routes.plan(ORU) == []
    assert [o.summary for o in routes.plan(A01)] == ["ADT^A08"]


def test_demographics_reach_the_lab_only_for_patients_with_open_orders(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from hub.routing import load_routes

    monkeypatch.setenv("HUB_EHR_TOKEN", "t0k3n")
    routes = load_routes(Path(__file__).resolve().parents[2] / "mappings" / "routes.example.yaml")
    update = routed("adt_a08_escapes_25.hl7")
    assert [o.destination for o in routes.plan(update)] == ["ehr"]
    assert [o.destination for o in routes.plan(replace(update, has_open_orders=False))] == ["ehr"]
    with_orders = routes.plan(replace(update, has_open_orders=True))
    assert [(o.destination, o.route, o.summary) for o in with_orders] == [
        ("ehr", "adt-to-ehr", "ADT^A08"), ("lab", "demographics-to-lab", "ADT^A08"),
    ]
