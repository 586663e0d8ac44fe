"""The built-in FHIR (ehr, billing) and CSV (billing) profiles, built from real inbound messages:
bundles validated with fhir.resources (R4B, the closest package to R4), every entry a conditional
update so a retry never duplicates; CSV read back with the csv module.

No I/O besides reading corpus files. All patients, identifiers and OIDs are fictional.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from adapters.outbound.csv.billing import COLUMNS
from adapters.outbound.fhir.bundles import token
from adapters.outbound.profiles import PROFILES
from hub.model import HumanName
from hub.outbound import Destination, RoutedEvent
from hub.routing import Built
from tests.unit.routed import ENTERPRISE_ID, routed

CONTROL_ID = "H2AA.0.FHIR"


def build(profile: str, fmt: str, event: RoutedEvent) -> Built | None:
    transport = "file" if fmt == "csv" else "http"
    destination = Destination(name=f"{profile}-{fmt}", transport=transport, profile=profile, format=fmt,  # type: ignore[arg-type]
                              url="http://127.0.0.1:6663/fhir", directory="/tmp/unused")
    return PROFILES[profile].formats[fmt](event, destination, CONTROL_ID)


def bundle(profile: str, name: str, **changes: Any) -> dict[str, Any]:
    built = build(profile, "fhir", routed(name, **changes))
    assert built is not None
    assert (built.content_type, built.summary) == ("application/fhir+json", "Bundle(transaction)")
    Bundle.model_validate_json(built.payload)  # every entry against its resource's R4B model
    data = json.loads(built.payload)
    assert data["type"] == "transaction"
    assert data["identifier"] == {"system": "urn:hub:outbound", "value": CONTROL_ID}
    urls = [e["request"]["url"] for e in data["entry"]]
    assert len(urls) == len(set(urls)), "two entries with one conditional URL fail the whole transaction"
    assert all(e["request"]["method"] == "PUT" and "?identifier=" in e["request"]["url"] for e in data["entry"])
    return data


def entries(data: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in data["entry"] if e["resource"]["resourceType"] == kind]


def identifier_in_url(entry: dict[str, Any]) -> bool:
    """The conditional URL names an identifier the resource itself carries (else the PUT would not
    find what it wrote last time)."""
    url = entry["request"]["url"]
    return any(url.endswith("?identifier=" + token(i["system"], i["value"])) for i in entry["resource"]["identifier"])


# --- FHIR: ehr ------------------------------------------------------------------------------


def test_ehr_admission_is_a_patient_and_an_encounter() -> None:
    data = bundle("ehr", "adt_a01_epic_251.hl7")
    (patient,) = entries(data, "Patient")
    (encounter,) = entries(data, "Encounter")
    assert patient["request"]["url"] == f"Patient?identifier=urn:hub:enterprise-id|{ENTERPRISE_ID}"
    assert [(i["system"], i["value"]) for i in patient["resource"]["identifier"]] == [
        ("urn:hub:aa:EPI", "E1000234"), ("urn:oid:2.999.1.2.3", "000123"), ("urn:oid:2.999.7.7", "OTH-0099"),
        ("urn:hub:enterprise-id", ENTERPRISE_ID),
    ]
    assert patient["resource"]["name"][0]["family"] == "Quintavalle"
    assert "id" not in patient["resource"] and "meta" not in patient["resource"]
    assert encounter["request"]["url"] == "Encounter?identifier=urn:hub:aa:NFGH|V00044411"
    assert encounter["resource"]["subject"] == {"reference": patient["fullUrl"]}
    assert encounter["resource"]["class"]["code"] == "IMP"
    assert all(identifier_in_url(e) for e in data["entry"])


def test_ehr_without_an_enterprise_id_finds_the_patient_by_the_source_identifier() -> None:
    data = bundle("ehr", "adt_a01_epic_251.hl7", enterprise_id=None, identifiers=())
    (patient,) = entries(data, "Patient")
    assert patient["request"]["url"] == "Patient?identifier=urn:oid:2.999.1.2.3|000123"


def test_ehr_results_are_observations_and_a_report() -> None:
    data = bundle("ehr", "oru_r01_lab_251.hl7")
    (patient,) = entries(data, "Patient")
    observations = entries(data, "Observation")
    (report,) = entries(data, "DiagnosticReport")
    assert len(observations) == 5
    assert [o["resource"]["code"]["coding"][0]["code"] for o in observations] == ["2345-7", "2160-0", "2823-3", "2951-2", "33914-3"]
    assert observations[0]["resource"]["valueQuantity"] == {"value": 182.0, "unit": "mg/dL"}
    assert observations[0]["request"]["url"] == "Observation?identifier=urn:hub:observation|F:LAB55120:2345-7"
    assert report["request"]["url"] == "DiagnosticReport?identifier=urn:hub:report|F:LAB55120"
    assert report["resource"]["result"] == [{"reference": o["fullUrl"]} for o in observations]
    assert report["resource"]["status"] == "final"
    assert all(o["resource"]["subject"] == {"reference": patient["fullUrl"]} for o in observations)
    assert all(identifier_in_url(e) for e in data["entry"])


def test_ehr_merge_marks_the_old_record_replaced_by_the_survivor() -> None:
    data = bundle("ehr", "adt_a40_merge_251.hl7")
    survivor, old = entries(data, "Patient")
    assert old["request"]["url"] == "Patient?identifier=urn:oid:2.999.1.2.3|000777"
    assert old["resource"]["active"] is False
    assert old["resource"]["link"] == [{"other": {"reference": survivor["fullUrl"]}, "type": "replaced-by"}]


def test_ehr_fhir_sends_nothing_for_charges_and_orders() -> None:
    for name in ("dft_p03_epic_24.hl7", "orm_o01_cerner_231.hl7", "siu_s12_epic_251.hl7"):
        assert build("ehr", "fhir", routed(name)) is None, name


def test_a_rebuild_is_byte_identical_so_a_retry_is_the_same_transaction() -> None:
    assert build("ehr", "fhir", routed("oru_r01_lab_251.hl7")) == build("ehr", "fhir", routed("oru_r01_lab_251.hl7"))


def test_token_escapes_fhir_search_separators() -> None:
    assert token("urn:oid:2.999.1", "A|B,C$D\\E") == "urn:oid:2.999.1|A%5C|B%5C%2CC%5C%24D%5C%5CE"


# --- FHIR: billing --------------------------------------------------------------------------


def test_billing_charges_are_chargeitems_on_the_visit_account() -> None:
    data = bundle("billing", "dft_p03_epic_24.hl7")
    (patient,) = entries(data, "Patient")
    (encounter,) = entries(data, "Encounter")
    (account,) = entries(data, "Account")
    charges = entries(data, "ChargeItem")
    assert account["request"]["url"] == "Account?identifier=urn:hub:aa:NFGH|V00044512"
    assert account["resource"]["subject"] == [{"reference": patient["fullUrl"]}]
    assert [c["resource"]["code"]["coding"][0]["code"] for c in charges] == ["93000", "80053"]
    assert [c["resource"]["priceOverride"]["value"] for c in charges] == [125.0, 48.5]
    assert all(c["resource"]["account"] == [{"reference": account["fullUrl"]}] for c in charges)
    assert all(c["resource"]["context"] == {"reference": encounter["fullUrl"]} for c in charges)
    assert all(identifier_in_url(e) for e in data["entry"])


def test_billing_finished_encounter() -> None:
    data = bundle("billing", "adt_a03_meditech_23.hl7")
    (encounter,) = entries(data, "Encounter")
    assert encounter["resource"]["status"] == "finished"
    assert encounter["resource"]["period"] == {"start": "2024-02-15T10:30:00Z", "end": "2024-02-20T16:30:00Z"}
    assert len(entries(data, "Account")) == 1 and entries(data, "ChargeItem") == []


# --- CSV: billing ---------------------------------------------------------------------------


def rows(built: Built | None) -> list[dict[str, str]]:
    assert built is not None and built.content_type.startswith("text/csv")
    reader = csv.DictReader(io.StringIO(built.payload.decode("utf-8"), newline=""))
    assert tuple(reader.fieldnames or ()) == COLUMNS
    return list(reader)


def test_csv_one_row_per_charge() -> None:
    built = build("billing", "csv", routed("dft_p03_epic_24.hl7"))
    charges = rows(built)
    assert built is not None and built.summary == "csv(2 rows)"
    assert [(r["record_type"], r["code"], r["amount"], r["quantity"], r["charge_date"]) for r in charges] == [
        ("charge", "93000", "125.00", "1", "2024-03-20T00:00:00"),
        ("charge", "80053", "48.50", "1", "2024-03-20T00:00:00"),
    ]
    first = charges[0]
    assert (first["control_id"], first["event"], first["enterprise_id"]) == (CONTROL_ID, "DFT^P03", ENTERPRISE_ID)
    assert (first["patient_system"], first["patient_id"], first["family"], first["given"]) == (
        "urn:oid:2.999.1.2.3", "000123", "Quintavalle", "Marisol Anne"
    )
    assert (first["visit_number"], first["patient_class"], first["description"]) == ("V00044512", "O", "ECG ROUTINE W/INTERP")


def test_csv_encounter_row_for_the_finished_encounter() -> None:
    (row,) = rows(build("billing", "csv", routed("adt_a03_meditech_23.hl7")))
    assert (row["record_type"], row["event"], row["encounter_status"], row["discharged_at"]) == (
        "encounter", "ADT^A03", "finished", "2024-02-20T16:30:00"
    )
    assert row["code"] == row["amount"] == ""


def test_csv_quotes_what_needs_quoting() -> None:
    event = routed("dft_p03_epic_24.hl7")
    name = HumanName(family='O\'Brannagh, "Jr"', given=["Ann\nMarie"])
    patient = event.event.patient.model_copy(update={"names": [name]})
    event = replace(event, event=event.event.model_copy(update={"patient": patient}))
    first = rows(build("billing", "csv", event))[0]
    assert (first["family"], first["given"]) == ('O\'Brannagh, "Jr"', "Ann\nMarie")


@pytest.mark.parametrize("name", ["oru_r01_lab_251.hl7", "orm_o01_cerner_231.hl7", "adt_a40_merge_251.hl7"])
def test_csv_has_nothing_for_other_events(name: str) -> None:
    assert build("billing", "csv", routed(name)) is None
