"""The built-in HL7 v2 profiles (ehr, lab, billing), built from real inbound messages (the corpus
through the inbound reader), each output validated with hl7apy against its version's structure
and read back with the hub's own reader to prove the content survived (escapes included).

No I/O besides reading corpus files. All patients, identifiers and OIDs are fictional.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hl7apy.validation import Validator

from adapters.inbound.hl7v2.er7 import decode_frame
from adapters.inbound.hl7v2.reader import read_message
from adapters.outbound.hl7v2.writer import escape
from adapters.outbound.profiles import PROFILES
from hub.model import PatientEvent
from hub.outbound import Destination, RoutedEvent
from hub.routing import Built
from tests.unit.routed import ENTERPRISE_ID, routed

CONTROL_ID = "H2AA.0.TEST"


def destination(profile: str, version: str = "2.5.1", **options: str) -> Destination:
    return Destination(name=f"{profile}-dest", transport="mllp", profile=profile, host="127.0.0.1", port=6661,
                       version=version, options=options)


def build(profile: str, event: RoutedEvent, version: str = "2.5.1", **options: str) -> Built | None:
    return PROFILES[profile].formats["hl7v2"](event, destination(profile, version, **options), CONTROL_ID)


def text_of(built: Built | None) -> str:
    assert built is not None
    assert built.content_type == "application/hl7-v2; charset=utf-8"
    return built.payload.decode("utf-8")


# hl7apy defects we tolerate, and only these: it models ORM_O01's choice (OBR | RQD | RQ1 | RXO |
# ODS | ODT) as a group whose members are all required.
_HL7APY_CHOICE = "Missing required child ORM_O01_OBRRQDRQ1RXOODSODT_SUPPGRP."


def hl7apy_errors(text: str) -> list[str]:
    """Every error hl7apy's validator reports against the message's version and structure."""
    message = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT)
    with tempfile.NamedTemporaryFile("r", suffix=".txt") as report:
        try:
            Validator.validate(message, reference=message.reference, report_file=report.name)
        except Exception:  # noqa: BLE001 — the report lists every error; the exception only the first
            pass
        lines = Path(report.name).read_text().splitlines()
    return [line for line in lines if line.startswith("Error") and _HL7APY_CHOICE not in line]


def strict(text: str, structure: str):
    """Parse under hl7apy's strict validation and check the structure it recognised."""
    if structure == "ORM_O01":
        assert hl7apy_errors(text) == []
        message = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT)
    else:
        message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
        assert message.validate() is True
    assert message.name == structure
    return message


def segments(text: str, name: str) -> list[list[str]]:
    return [line.split("|") for line in text.split("\r") if line.startswith(name + "|")]


def field(text: str, name: str, n: int) -> str:
    """Field n of the first `name` segment (MSH counted like the standard: MSH-2 is fields[1])."""
    fields = segments(text, name)[0]
    index = n - 1 if name == "MSH" else n
    return fields[index] if index < len(fields) else ""


def read_back(built: Built | None) -> PatientEvent:
    inbound = read_message(built.payload if built else b"", "test")
    assert inbound.status == "accepted", [p.text for p in inbound.problems]
    (event,) = inbound.events
    return event


# --- every profile and message type, validated by hl7apy ------------------------------------

CASES = [
    ("ehr", "adt_a01_epic_251.hl7", "ADT^A01^ADT_A01"),
    ("ehr", "adt_a03_meditech_23.hl7", "ADT^A03^ADT_A03"),
    ("ehr", "adt_a04_deu_25.hl7", "ADT^A04^ADT_A01"),
    ("ehr", "adt_a08_epic_update_251.hl7", "ADT^A08^ADT_A01"),
    ("ehr", "adt_a08_escapes_25.hl7", "ADT^A08^ADT_A01"),
    ("ehr", "adt_a40_merge_251.hl7", "ADT^A40^ADT_A39"),
    ("ehr", "adt_a02_cerner_231.hl7", "ADT^A02^ADT_A02"),
    ("ehr", "adt_a28_mpi_27.hl7", "ADT^A28^ADT_A05"),
    ("ehr", "oru_r01_lab_251.hl7", "ORU^R01^ORU_R01"),
    ("ehr", "oru_r01_meditech_23_cr.hl7", "ORU^R01^ORU_R01"),
    ("lab", "orm_o01_cerner_231.hl7", "ORM^O01^ORM_O01"),
    ("lab", "oml_o21_epic_251.hl7", "ORM^O01^ORM_O01"),
    ("lab", "adt_a01_epic_251.hl7", "ADT^A08^ADT_A01"),
    ("lab", "adt_a08_escapes_25.hl7", "ADT^A08^ADT_A01"),
    ("billing", "dft_p03_epic_24.hl7", "DFT^P03^DFT_P03"),
    ("billing", "adt_a03_meditech_23.hl7", "ADT^A03^ADT_A03"),
]


@pytest.mark.parametrize("version", ["2.5", "2.5.1"])
@pytest.mark.parametrize(("profile", "name", "msh9"), CASES)
def test_profile_builds_valid_hl7(profile: str, name: str, msh9: str, version: str) -> None:
    built = build(profile, routed(name), version)
    text = text_of(built)
    strict(text, msh9.split("^")[2])
    assert field(text, "MSH", 9) == msh9
    assert field(text, "MSH", 10) == CONTROL_ID
    assert field(text, "MSH", 12) == version
    assert built is not None and built.summary == "^".join(msh9.split("^")[:2])


def test_lab_builds_oml_o21_when_the_destination_asks() -> None:
    for name in ("orm_o01_cerner_231.hl7", "oml_o21_epic_251.hl7"):
        text = text_of(build("lab", routed(name), orders="OML^O21"))
        strict(text, "OML_O21")
        assert field(text, "MSH", 9) == "OML^O21^OML_O21"
        assert field(text, "ORC", 1) == "NW"


@pytest.mark.parametrize("version", ["2.3.1", "2.4", "2.6"])
@pytest.mark.parametrize(
    ("profile", "name", "structure"),
    [("ehr", "adt_a01_epic_251.hl7", "ADT_A01"), ("ehr", "adt_a40_merge_251.hl7", "ADT_A39"),
     ("billing", "dft_p03_epic_24.hl7", "DFT_P03"), ("billing", "adt_a03_meditech_23.hl7", "ADT_A03")],
)
def test_other_versions_validate(profile: str, name: str, structure: str, version: str) -> None:
    text = text_of(build(profile, routed(name), version))
    strict(text, structure)
    assert field(text, "MSH", 12) == version


@pytest.mark.parametrize(("version", "expected"), [("2.4", []), ("2.5.1", []), ("2.6", [])])
def test_results_validate_in_other_versions(version: str, expected: list[str]) -> None:
    assert hl7apy_errors(text_of(build("ehr", routed("oru_r01_lab_251.hl7"), version))) == expected


def test_v23_has_no_message_structure_and_one_name() -> None:
    text = text_of(build("ehr", routed("adt_a01_epic_251.hl7"), "2.3"))
    assert field(text, "MSH", 9) == "ADT^A01"
    assert "~" not in field(text, "PID", 5)  # PID-5 repeats only from v2.3.1


def test_phone_numbers_move_to_xtn_12_from_v26() -> None:
    text = text_of(build("ehr", routed("adt_a01_epic_251.hl7"), "2.6"))
    assert field(text, "PID", 14) == "^WPN^PH^^^^^^^^^(555)555-0142"
    assert read_back(build("ehr", routed("adt_a01_epic_251.hl7"), "2.6")).patient.telecoms == routed(
        "adt_a01_epic_251.hl7").event.patient.telecoms


# --- content --------------------------------------------------------------------------------


def test_pid3_carries_the_enterprise_id_beside_the_source_identifiers() -> None:
    text = text_of(build("ehr", routed("adt_a01_epic_251.hl7")))
    assert field(text, "PID", 3).split("~") == [
        "E1000234^^^EPI^PI",
        "000123^^^NFGH&2.999.1.2.3&ISO^MR",
        "OTH-0099^^^&2.999.7.7&ISO^PI",       # the person's other source record
        f"{ENTERPRISE_ID}^^^HUB^PI",          # the enterprise id, assigning authority HUB
    ]


def test_pid3_without_a_link_carries_only_the_message_identifiers() -> None:
    event = routed("adt_a01_epic_251.hl7", enterprise_id=None, identifiers=())
    assert field(text_of(build("ehr", event)), "PID", 3) == "E1000234^^^EPI^PI~000123^^^NFGH&2.999.1.2.3&ISO^MR"


@pytest.mark.parametrize(
    "name", ["adt_a01_epic_251.hl7", "adt_a08_escapes_25.hl7", "adt_a04_deu_25.hl7", "adt_a01_latin1_231.hl7",
             "adt_a03_meditech_23.hl7", "adt_a04_newborn_26.hl7"],
)
def test_patient_and_visit_survive_the_round_trip(name: str) -> None:
    """What we send, read by our own reader, is what we received (plus the linked identifiers)."""
    original = routed(name).event
    echoed = read_back(build("ehr", routed(name)))
    assert echoed.patient.model_dump(exclude={"identifiers"}) == original.patient.model_dump(exclude={"identifiers"})
    # `urn:hub:aa:X` systems go out as CX-4 namespace X, which the reader keeps as the assigner too
    keep = {"system", "value", "type"}
    assert [i.model_dump(include=keep) for i in echoed.patient.identifiers[: len(original.patient.identifiers)]] == [
        i.model_dump(include=keep) for i in original.patient.identifiers
    ]
    if original.encounter is not None:
        keep = {"patient_class", "location", "admitted_at", "discharged_at", "status"}
        assert echoed.encounter.model_dump(include=keep) == original.encounter.model_dump(include=keep)
        visit = {"system", "value", "type"}
        if original.encounter.visit_number is None:
            assert echoed.encounter.visit_number is None
        else:
            assert echoed.encounter.visit_number.model_dump(include=visit) == original.encounter.visit_number.model_dump(include=visit)


def test_delimiters_in_data_are_escaped() -> None:
    text = text_of(build("ehr", routed("adt_a08_escapes_25.hl7")))
    names = field(text, "PID", 5).split("~")
    assert names[1] == "Pipe\\F\\Caret\\S\\Amp\\T\\Tilde\\R\\Back\\E\\slash^Test^^^^^A"
    assert field(text, "PID", 11) == "100 Main St \\T\\ 2nd Ave^Bldg 7\\.br\\Rear entrance^Fairhollow^OH^43999^USA^H"
    assert field(text, "MSH", 18) == "UNICODE UTF-8"  # Siobhán
    assert "Siobhán" in names[0]


def test_escape_function() -> None:
    assert escape("a|b^c&d~e\\f\ng\r\nh") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\.br\\g\\.br\\h"
    assert escape("plain") == "plain"
    assert escape(None) == ""


def test_plain_ascii_messages_declare_no_charset() -> None:
    assert field(text_of(build("ehr", routed("adt_a01_epic_251.hl7"))), "MSH", 18) == ""


def test_explicit_nulls_are_sent_as_nulls() -> None:
    """PID-14 and PID-16 arrived as "" (delete): the EHR must be told to delete them too."""
    text = text_of(build("ehr", routed("adt_a08_epic_update_251.hl7")))
    assert field(text, "PID", 14) == '""'
    assert field(text, "PID", 16) == '""'
    assert field(text, "PID", 13) == "(555)555-0123^PRN^PH"


def test_msh_from_destination_options_and_the_acceptance_time() -> None:
    text = text_of(build("ehr", routed("adt_a01_epic_251.hl7"), sending_application="NWHUB",
                         sending_facility="NFGH", receiving_application="EPIC", processing_id="T"))
    assert [field(text, "MSH", n) for n in (3, 4, 5, 6, 7, 11)] == ["NWHUB", "NFGH", "EPIC", "", "20240312081530+0000", "T"]
    assert field(text, "EVN", 2) == "20240312081530+0000"


def test_a_rebuild_gives_the_same_bytes() -> None:
    assert build("ehr", routed("oru_r01_lab_251.hl7")) == build("ehr", routed("oru_r01_lab_251.hl7"))


def test_merge_carries_mrg() -> None:
    text = text_of(build("ehr", routed("adt_a40_merge_251.hl7")))
    assert field(text, "MRG", 1) == "000777^^^NFGH&2.999.1.2.3&ISO^MR"
    echoed = read_back(build("ehr", routed("adt_a40_merge_251.hl7")))
    assert echoed.merged_identifier == routed("adt_a40_merge_251.hl7").event.merged_identifier


def test_results_keep_values_units_ranges_flags_and_notes() -> None:
    original = routed("oru_r01_lab_251.hl7").event
    text = text_of(build("ehr", routed("oru_r01_lab_251.hl7")))
    assert len(segments(text, "OBX")) == 5 and len(segments(text, "OBR")) == 1
    assert field(text, "ORC", 1) == "RE"
    echoed = read_back(build("ehr", routed("oru_r01_lab_251.hl7")))
    keep = {"code", "value_quantity", "value_string", "abnormal_flags", "status", "effective_at", "notes",
            "order_placer_number", "order_filler_number"}
    assert [o.model_dump(include=keep) for o in echoed.observations] == [o.model_dump(include=keep) for o in original.observations]
    assert [o.reference_range.text for o in echoed.observations] == [o.reference_range.text for o in original.observations]
    assert [o.model_dump(include={"placer_number", "filler_number", "code"}) for o in echoed.orders] == [
        o.model_dump(include={"placer_number", "filler_number", "code"}) for o in original.orders
    ]


def test_a_result_without_a_status_is_not_sent_as_final() -> None:
    event = routed("oru_r01_lab_251.hl7")
    observations = [o.model_copy(update={"status": "unknown"}) for o in event.event.observations]
    event = replace(event, event=event.event.model_copy(update={"observations": observations}))
    assert {obx[11] for obx in segments(text_of(build("ehr", event)), "OBX")} == {"R"}


def test_orders_keep_numbers_codes_and_control() -> None:
    original = routed("orm_o01_cerner_231.hl7").event
    echoed = read_back(build("lab", routed("orm_o01_cerner_231.hl7")))
    keep = {"placer_number", "filler_number", "code", "control", "ordered_at"}
    assert [o.model_dump(include=keep) for o in echoed.orders] == [o.model_dump(include=keep) for o in original.orders]


def test_charges_survive_the_round_trip() -> None:
    original = routed("dft_p03_epic_24.hl7").event
    text = text_of(build("billing", routed("dft_p03_epic_24.hl7")))
    assert [ft1[6] for ft1 in segments(text, "FT1")] == ["CG", "CG"]
    echoed = read_back(build("billing", routed("dft_p03_epic_24.hl7")))
    assert echoed.charges == original.charges


def test_lab_gets_a08_for_demographics_but_no_merge_results_or_charges() -> None:
    assert field(text_of(build("lab", routed("adt_a04_deu_25.hl7"))), "MSH", 9) == "ADT^A08^ADT_A01"
    for name in ("adt_a40_merge_251.hl7", "oru_r01_lab_251.hl7", "dft_p03_epic_24.hl7", "siu_s12_epic_251.hl7"):
        assert build("lab", routed(name)) is None, name


def test_ehr_gets_nothing_for_charges_orders_or_appointments() -> None:
    for name in ("dft_p03_epic_24.hl7", "orm_o01_cerner_231.hl7", "siu_s12_epic_251.hl7"):
        assert build("ehr", routed(name)) is None, name


def test_every_segment_ends_with_a_carriage_return_and_nothing_else() -> None:
    payload = build("ehr", routed("oru_r01_lab_251.hl7")).payload
    assert payload.endswith(b"\r") and b"\n" not in payload
    assert decode_frame(payload).msh.get(10) == CONTROL_ID
