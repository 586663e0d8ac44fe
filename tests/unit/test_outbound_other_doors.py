"""Profiles serve every door: a FHIR Patient update and a CSV billing row (read by the real FHIR and
CSV readers) reach the EHR, lab and billing profiles like HL7 v2 events do — the profiles look at
what an event carries, not at the door it came through.

No I/O besides reading mapping files. All patients and identifiers are fictional.
"""

from __future__ import annotations

import csv
import io
import json

from fhir.resources.R4B.bundle import Bundle
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from adapters.inbound.csv.reader import read_chunk
from adapters.inbound.fhir.reader import read_request
from adapters.outbound.profiles import PROFILES
from hub.model import source_identifier
from hub.outbound import Destination, RoutedEvent
from hub.routing import Built
from tests.unit.routed import ACCEPTED_AT
from tests.unit.test_outbound_hl7v2 import field, hl7apy_errors

FHIR_PATIENT = {
    "resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:oid:2.999.9.1", "value": "F-0042"}],
    "name": [{"family": "Vantongeren", "given": ["Ilse"]}], "gender": "female", "birthDate": "1975-06",
}
CSV_ROW = (
    b"patient_rec_id,visit_no,visit_type,visit_status,ward,attending_doctor,admit_date,discharge_date,"
    b"invoice_line_id,item_code,item_description,qty,amount,service_date\n"
    b"R-0001,V-77,IP,CLOSED,W3,Dr Testdoc,20240301,20240305,INV-1,99223,Initial hospital care,1,310.00,20240301\n"
)


def as_routed(inbound, fmt: str) -> RoutedEvent:
    (event,) = inbound.events
    own = source_identifier(event.patient) if event.patient else None
    return RoutedEvent(
        message_id=77, event_index=0, feed=inbound.feed, format=fmt, event=event,
        patient_key=f"{own.system}|{own.value}" if own else "Patient/p1", enterprise_id="P00000077", accepted_at=ACCEPTED_AT,
    )


def fhir_update(interaction: str = "update") -> RoutedEvent:
    body = json.dumps(FHIR_PATIENT).encode()
    inbound = read_request(body, "fhir", {"interaction": interaction, "type": "Patient", "id": "p1"})
    assert inbound.status == "accepted"
    return as_routed(inbound, "fhir")


def csv_row() -> RoutedEvent:
    inbound = read_chunk(CSV_ROW, "billing")
    assert inbound.status == "accepted"
    return as_routed(inbound, "csv")


def build(profile: str, fmt: str, event: RoutedEvent) -> Built | None:
    transport = {"hl7v2": "mllp", "fhir": "http", "csv": "file"}[fmt]
    destination = Destination(name=profile, transport=transport, profile=profile, format=fmt,  # type: ignore[arg-type]
                              host="127.0.0.1", port=6661, url="http://127.0.0.1:6663/fhir", directory="/tmp/unused")
    return PROFILES[profile].formats[fmt](event, destination, "H1Z.0.DOOR")


def hl7(built: Built | None) -> str:
    assert built is not None
    return built.payload.decode()


def test_fhir_patient_update_is_an_a08_for_the_ehr_and_the_lab() -> None:
    for profile in ("ehr", "lab", "billing"):
        text = hl7(build(profile, "hl7v2", fhir_update()))
        message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
        assert message.validate() is True
        assert field(text, "MSH", 9) == "ADT^A08^ADT_A01"
        assert field(text, "PID", 3) == "F-0042^^^&2.999.9.1&ISO~P00000077^^^HUB^PI"
        assert field(text, "PID", 5) == "Vantongeren^Ilse"
        assert field(text, "PID", 7) == "197506"


def test_fhir_patient_update_as_a_bundle() -> None:
    built = build("ehr", "fhir", fhir_update())
    assert built is not None
    Bundle.model_validate_json(built.payload)
    (entry,) = json.loads(built.payload)["entry"]
    assert entry["request"] == {"method": "PUT", "url": "Patient?identifier=urn:hub:enterprise-id|P00000077"}


def test_a_fhir_deletion_is_not_told_as_an_update() -> None:
    event = fhir_update("delete")
    for profile, fmt in (("ehr", "hl7v2"), ("ehr", "fhir"), ("lab", "hl7v2"), ("billing", "csv")):
        assert build(profile, fmt, event) is None


def test_csv_billing_row_is_a_dft_with_its_charge() -> None:
    text = hl7(build("billing", "hl7v2", csv_row()))
    # The row names its patient by identifier only: PID-5 (required) stays empty rather than invented.
    assert hl7apy_errors(text) == ["Error: Missing required child PID.PID_5"]
    assert field(text, "MSH", 9) == "DFT^P03^DFT_P03"
    assert field(text, "FT1", 2) == "INV-1"
    assert field(text, "FT1", 7) == "99223^Initial hospital care^urn:oid:2.999.1.3"
    assert field(text, "FT1", 11) == "310.00"
    assert field(text, "PV1", 19) == "V-77^^^&2.999.1.2&ISO^VN"


def test_csv_billing_row_tells_the_ehr_the_finished_encounter() -> None:
    text = hl7(build("ehr", "hl7v2", csv_row()))
    assert field(text, "MSH", 9) == "ADT^A03^ADT_A03"
    assert field(text, "PV1", 45) == "20240305000000"


def test_csv_billing_row_as_fhir_and_csv() -> None:
    built = build("billing", "fhir", csv_row())
    assert built is not None
    Bundle.model_validate_json(built.payload)
    kinds = [e["resource"]["resourceType"] for e in json.loads(built.payload)["entry"]]
    assert kinds == ["Patient", "Encounter", "Account", "ChargeItem"]
    built = build("billing", "csv", csv_row())
    assert built is not None
    (row,) = csv.DictReader(io.StringIO(built.payload.decode(), newline=""))
    assert (row["record_type"], row["transaction_id"], row["amount"], row["patient_id"]) == ("charge", "INV-1", "310.00", "R-0001")
