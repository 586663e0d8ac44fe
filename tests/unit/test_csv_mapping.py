"""CSV mappings and the streaming reader: every rule with a real small CSV (no database, no sockets)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from adapters.inbound.csv.mapping import MAPPINGS_DIR, MappingError, find_by_feed, find_by_name, load_mapping, parse_mapping, register
from adapters.inbound.csv.reader import CsvFileError, RowMapper, open_csv, read_chunk
from adapters.inbound.csv.service import chunks, to_message

MINIMAL = """
feed: registry              # provenance name
resource: patient
identifier: {column: rec_id, system: "urn:hub:registry"}
family: surname
given: given_name
middle: middle_name
birth_date: {column: date_of_birth, formats: ["%Y%m%d", "%Y-%m-%d"]}
gender: {column: sex, map: {M: male, F: female, U: unknown}}
address: {line: [street_number, address_1, address_2], city: suburb, postal_code: postcode, state: state}
phone: phone
email: email
national_id: {column: soc_sec_id, system: "urn:hub:ssn"}
"""
HEADER = "rec_id,surname,given_name,middle_name,date_of_birth,sex,street_number,address_1,address_2,suburb,postcode,state,phone,email,soc_sec_id"


def mapping(text: str = MINIMAL, **changes: object):  # type: ignore[no-untyped-def]
    data = yaml.safe_load(text)
    data.update(changes)
    return parse_mapping(data, "test", "test.yaml")


def mapped(csv_text: str | bytes, m=None, encoding: str | None = None, delimiter: str | None = None):  # type: ignore[no-untyped-def]
    raw = csv_text.encode("utf-8") if isinstance(csv_text, str) else csv_text
    opened = open_csv(io.BytesIO(raw), encoding, delimiter)
    mapper = RowMapper(m or mapping(), opened.header)
    return [mapper.map(row) for row in opened.rows]


# ---- the mapping file ----

def test_the_issues_minimal_mapping_and_the_shipped_examples_load() -> None:
    m = mapping()
    assert (m.feed, m.resource, m.identifier.column, m.identifier.system) == ("registry", "patient", "rec_id", "urn:hub:registry")
    assert m.patient["birth_date"].formats == ("%Y%m%d", "%Y-%m-%d")
    assert [c.column for c in m.address_lines] == ["street_number", "address_1", "address_2"]
    registry = load_mapping(MAPPINGS_DIR / "registry.yaml")
    assert registry.feed == "registry" and registry.patient["national_id"].system == "urn:hub:ssn"
    billing = find_by_name("billing_encounters")
    assert billing is not None and billing.resource == "encounter" and "visit_number" in billing.encounter
    assert billing.charge["code"].system == "urn:oid:2.999.1.3"


def test_only_identifier_is_required() -> None:
    m = parse_mapping({"identifier": "id"}, "bare")
    assert m.feed == "bare" and m.resource == "patient" and m.identifier.system == "urn:hub:csv:bare"
    with pytest.raises(MappingError, match="'identifier' is required"):
        parse_mapping({"feed": "x", "family": "surname"}, "x")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"resource": "observation"}, "'resource' must be one of"),
        ({"feed": "bad feed!"}, "'feed' must be"),
        ({"colour": "x"}, r"unknown key\(s\) \['colour'\]"),
        ({"birth_date": {"column": "dob", "formats": "nonsense"}}, r"'birth_date.formats'"),
        ({"birth_date": {"column": "dob", "formats": ["%m%d"]}}, r"'birth_date.formats': every date format needs a year"),
        ({"birth_date": {"formats": ["%Y"]}}, r"'birth_date.column' must be a non-empty column name"),
        ({"gender": {"column": "sex", "map": {"M": "man"}}}, r"'gender.map' values must be among"),
        ({"gender": {"column": "sex", "map": []}}, r"'gender.map' must be a non-empty table"),
        ({"gender": {"column": "sex", "mapping": {}}}, r"'gender' has unknown key\(s\) \['mapping'\]"),
        ({"national_id": "ssn"}, r"'national_id.system' is required"),
        ({"on_invalid": "explode"}, r"'on_invalid' must be one of"),
        ({"address": {"line": [1, 2]}}, r"'address.line' must be a column name or a list"),
        ({"address": {"town": "suburb"}}, r"'address' has unknown key\(s\) \['town'\]"),
        ({"encoding": "klingon-8"}, r"'encoding': unknown encoding"),
        ({"encoding": "utf-16"}, r"'encoding': only ASCII-compatible encodings"),
        ({"delimiter": "#"}, r"'delimiter' must be"),
        ({"resource": "encounter"}, r"'resource: encounter' needs an 'encounter' section"),
        ({"resource": "charge"}, r"'resource: charge' needs a 'charge' section with 'code'"),
        ({"family": 12}, r"'family' must be a column name"),
    ],
)
def test_invalid_mappings_name_the_key(change: dict[str, object], message: str) -> None:
    with pytest.raises(MappingError, match=message):
        mapping(**change)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("feed: x\nidentifier: {column: [\n")
    with pytest.raises(MappingError, match=r"broken.yaml: not valid YAML at line"):
        load_mapping(path)


def test_a_mapped_column_missing_from_the_header_stops_the_file() -> None:
    with pytest.raises(CsvFileError, match=r"birth_date → date_of_birth"):
        mapped("rec_id,surname\nR1,Quillby\n")


def test_empty_file_or_no_header() -> None:
    with pytest.raises(CsvFileError, match="empty"):
        mapped("")
    with pytest.raises(CsvFileError, match="empty"):
        mapped("\n\n")


# ---- rows → canonical ----

def test_a_full_row_becomes_a_canonical_patient() -> None:
    [row] = mapped(HEADER + "\nR1,Quillby,Ansel,Tobin,19800402,M,12,Elm St,,Springfield,62701,IL,555-0101,ansel@example.org,900-00-0001\n")
    assert row.reject is None and row.warnings == []
    p = row.event.patient
    assert [(i.system, i.value, i.type) for i in p.identifiers] == [("urn:hub:registry", "R1", None), ("urn:hub:ssn", "900-00-0001", "SS")]
    assert (p.names[0].family, p.names[0].given) == ("Quillby", ["Ansel", "Tobin"])
    assert (p.birth_date, p.gender) == ("1980-04-02", "male")
    assert p.addresses[0].line == ["12 Elm St"]  # non-empty line columns joined
    assert (p.addresses[0].city, p.addresses[0].postal_code, p.addresses[0].state) == ("Springfield", "62701", "IL")
    assert [(t.system, t.value) for t in p.telecoms] == [("phone", "555-0101"), ("email", "ansel@example.org")]


def test_empty_cells_are_missing_values_and_every_format_is_tried() -> None:
    [row] = mapped(HEADER + "\nR2,Marrow,,, 1990-07-15 ,,,,,,,,,,\n")
    p = row.event.patient
    assert p.birth_date == "1990-07-15" and p.gender is None and p.addresses == [] and p.telecoms == []
    assert [i.value for i in p.identifiers] == ["R2"]


def test_invalid_optional_values_are_dropped_with_a_warning_naming_the_column_not_the_value() -> None:
    [row] = mapped(HEADER + "\nR3,Tally,Bo,,19990231,Q,,,,,,,,not-an-email,\n")
    assert row.reject is None
    p = row.event.patient
    assert p.birth_date is None and p.gender is None and p.telecoms == []
    assert [(w.line, w.column) for w in row.warnings] == [(2, "date_of_birth"), (2, "sex"), (2, "email")]
    text = " ".join(w.reason for w in row.warnings)
    assert "19990231" not in text and "Q" not in text.replace("Q", "", 0) and "not-an-email" not in text


def test_future_birth_dates_are_invalid() -> None:
    [row] = mapped(HEADER + "\nR4,Tally,Bo,,29990101,F,,,,,,,,,\n")
    assert row.event.patient.birth_date is None and "future" in row.warnings[0].reason


def test_on_invalid_reject_row() -> None:
    [bad, good] = mapped(HEADER + "\nR5,Tally,Bo,,19990231,F,,,,,,,,,\nR6,Tally,Bo,,19990131,F,,,,,,,,,\n", mapping(on_invalid="reject_row"))
    assert bad.event is None and bad.reject.column == "date_of_birth" and "reject_row" in bad.reject.reason
    assert good.event is not None


def test_code_maps_are_exact_then_case_insensitive() -> None:
    rows = mapped(HEADER + "\nR7,A,B,,,f,,,,,,,,,\nR8,A,B,,,U,,,,,,,,,\n")
    assert [r.event.patient.gender for r in rows] == ["female", "unknown"]
    bare = parse_mapping({"identifier": "id", "gender": "sex"}, "bare")
    rows = mapped("id,sex\n1,Female\n2,M\n", bare)
    assert rows[0].event.patient.gender == "female" and rows[1].warnings and rows[1].event.patient.gender is None


def test_rows_without_identifier_or_malformed_are_rejected_with_their_line() -> None:
    rows = mapped(HEADER + "\n,Nobody,No,,,,,,,,,,,,\n   ,Blank,Id,,,,,,,,,,,,\nR9,short\n" + "R10,A,B,,,M,,,,,,,,,,extra\n")
    assert [(r.line, r.reject.column, r.reject.reason) for r in rows] == [
        (2, "rec_id", "rec_id (identifier) is empty"),
        (3, "rec_id", "rec_id (identifier) is empty"),
        (4, None, "malformed row: 2 fields where the header has 15"),
        (5, None, "malformed row: 16 fields where the header has 15"),
    ]


def test_quoted_fields_with_embedded_newlines_keep_line_numbers_right() -> None:
    text = HEADER + '\nR1,"Quill\nby","Ansel ""Al""",,,,,"Unit 4\r\nRear",,,,,,,\nR2,,,,,,,,,,,,,,\n,x,,,,,,,,,,,,,\n'
    rows = mapped(text)
    assert [r.line for r in rows] == [2, 5, 6]  # R1 spans lines 2–4
    assert rows[0].event.patient.names[0].family == "Quill\nby"
    assert rows[0].event.patient.names[0].given == ['Ansel "Al"']
    assert rows[0].event.patient.addresses[0].line == ["Unit 4\r\nRear"]
    assert rows[2].reject is not None and rows[2].line == 6


def test_blank_lines_are_not_rows() -> None:
    rows = mapped(HEADER + "\n\nR1,A,,,,,,,,,,,,,\n,,,,,,,,,,,,,,\n\n")
    assert [r.line for r in rows] == [3]  # empty lines and lines of empty cells are skipped


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_delimiter_detected_from_the_header(delimiter: str) -> None:
    text = (HEADER + "\nR1,Quillby,Ansel,,19800402,M,,,,,,,,,\n").replace(",", delimiter)
    [row] = mapped(text)
    assert row.event.patient.names[0].family == "Quillby" and row.event.patient.gender == "male"


def test_delimiter_override() -> None:
    text = "rec_id;surname\nR1;Quill,by\n"
    m = parse_mapping({"identifier": "rec_id", "family": "surname"}, "t")
    [row] = mapped(text, m, delimiter=";")
    assert row.event.patient.names[0].family == "Quill,by"


def test_utf8_with_bom_and_latin1() -> None:
    m = parse_mapping({"identifier": "rec_id", "family": "surname"}, "t")
    [row] = mapped(b"\xef\xbb\xbfrec_id,surname\nR1,Br\xc3\xb6nte\n", m)
    assert row.event.patient.names[0].family == "Brönte"
    [row] = mapped("rec_id,surname\nR1,Brönte\n".encode("latin-1"), m, encoding="latin-1")
    assert row.event.patient.names[0].family == "Brönte"


def test_bytes_invalid_in_the_encoding_reject_only_their_row() -> None:
    m = parse_mapping({"identifier": "rec_id", "family": "surname"}, "t")
    rows = mapped(b"rec_id,surname\nR1,Br\xf6nte\nR2,Plain\n", m)
    assert rows[0].reject is not None and "encoding" in rows[0].reject.reason
    assert rows[1].event.patient.names[0].family == "Plain"


def test_nul_bytes_and_broken_quoting_reject_the_row_only() -> None:
    m = parse_mapping({"identifier": "rec_id", "family": "surname"}, "t")
    rows = mapped(b"rec_id,surname\nR1,Bad\x00Nul\nR2,Good\n", m)
    assert rows[0].reject is not None and "NUL" in rows[0].reject.reason
    assert rows[1].event.patient.names[0].family == "Good"


def test_billing_encounter_rows() -> None:
    billing = find_by_name("billing_encounters")
    header = "patient_rec_id,visit_no,visit_type,visit_status,ward,attending_doctor,admit_date,discharge_date,invoice_line_id,item_code,item_description,qty,amount,service_date"
    rows = mapped(header + "\nR1,V100,IP,CLOSED,W1,Dr Fenwick,202401051230,20240107,INV-1,CHG-77,Bed day,2,450.50,20240105\n"
                  "R2,V101,ZZ,OPEN,,,20240230,,INV-2,CHG-78,,x,,\n", billing)
    e = rows[0].event
    assert e.event == "CSV^encounter"
    assert e.patient.identifiers[0].value == "R1" and e.patient.identifiers[0].system == "urn:hub:registry"
    assert (e.encounter.visit_number.value, e.encounter.patient_class, e.encounter.status) == ("V100", "I", "finished")
    assert e.encounter.admitted_at.isoformat() == "2024-01-05T12:30:00"
    [charge] = e.charges
    assert (charge.transaction_id, charge.code.code, str(charge.quantity), str(charge.amount), charge.visit_number) == ("INV-1", "CHG-77", "2", "450.50", "V100")
    assert sorted(w.column for w in rows[1].warnings) == ["admit_date", "qty", "visit_type"]


def test_chunks_carry_the_header_and_rows_verbatim_and_read_chunk_maps_them_again() -> None:
    m = mapping(feed="unit_chunks")
    register(m)
    text = (HEADER + "\r\n" + "".join(f'R{i},Fam{i},"Gi\nven",,19800402,M,,,,,,,,,\r\n' for i in range(5)) + ",no id,,,,,,,,,,,,,\r\n").encode()
    _, iterator = chunks(m, io.BytesIO(text), None, None, 2)
    parts = list(iterator)
    assert [len(c.rows) for c in parts] == [2, 2, 2]
    assert all(c.raw.startswith(HEADER.encode() + b"\r\n") for c in parts)
    assert b"".join(c.raw[len(HEADER) + 2:] for c in parts) == text[len(HEADER) + 2:]  # verbatim, nothing lost
    messages = [to_message(m, c) for c in parts]
    assert len({msg.control_id for msg in messages}) == 3 and all(msg.sender == "unit_chunks" for msg in messages)
    again = read_chunk(parts[2].raw, "unit_chunks")
    assert [e.model_dump() for e in again.events] == [e.model_dump() for e in messages[2].events]
    assert len(again.events) == 1  # the rejected row stays rejected


def test_read_chunk_finds_file_mappings_by_feed_and_fails_without_one() -> None:
    assert find_by_feed("registry") is not None
    with pytest.raises(LookupError):
        read_chunk(b"rec_id\nR1\n", "no_such_feed_anywhere")
