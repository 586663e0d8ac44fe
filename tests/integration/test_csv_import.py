"""CSV import end to end, on SQLite and PostgreSQL: `hub import-csv` as a real process and
`POST /csv/{mapping}` against a running hub; the result read back over FHIR."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import adapters.inbound.csv.mapping as csv_mapping
from tests.conftest import RunningHub, unique
from tests.integration.test_cli import hub_env

HUB = [sys.executable, "-m", "hub"]
HEADER = "rec_id,surname,given_name,middle_name,date_of_birth,sex,street_number,address_1,address_2,suburb,postcode,state,phone,email,soc_sec_id"
SYSTEM = "urn:hub:registry"


def row(rec_id: str, family: str = "Quillby", given: str = "Ansel", dob: str = "19800402", sex: str = "M", **extra: str) -> str:
    cells = dict(
        rec_id=rec_id, surname=family, given_name=given, middle_name="", date_of_birth=dob, sex=sex, street_number="12",
        address_1="Elm St", address_2="", suburb="Springfield", postcode="62701", state="IL", phone="555-0101",
        email="", soc_sec_id="",
    )
    cells.update(extra)
    out = []
    for name in HEADER.split(","):
        value = cells[name]
        out.append(f'"{value}"' if any(c in value for c in ',"\n;\t') else value)
    return ",".join(out)


def import_csv(tmp_path: Path, database_url: str, file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HUB, "import-csv", str(file), *args], env=hub_env(tmp_path, database_url, HUB_LOG_LEVEL="WARNING"),
        capture_output=True, text=True, timeout=120,
    )


def fhir_patient(hub: RunningHub, rec_id: str) -> dict:  # type: ignore[type-arg]
    with hub.client() as client:
        bundle = client.get("/fhir/Patient", params={"identifier": f"{SYSTEM}|{rec_id}"}).json()
    entries = bundle.get("entry", [])
    assert len(entries) == 1, bundle
    return entries[0]["resource"]


def report_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_cli_import_with_bom_embedded_newlines_rejects_and_warnings_then_idempotent_reimport(
    tmp_path: Path, database_url: str, running_hub: RunningHub
) -> None:
    a, b, c, d = (unique("R") for _ in range(4))
    lines = [
        HEADER,
        row(a, family="Fenwhistle", given="Odalys", sex="F", address_2="Unit 4\nRear", email="odalys@example.org", soc_sec_id="900-00-0001"),
        row("", family="Nobody"),  # line 4: no identifier
        row(b, dob="19990231", sex="Q"),  # line 5: impossible date and unknown code → warnings
        f"{c},too,few",  # line 6: malformed
        row(d, family="Brönte"),
    ]
    file = tmp_path / "registry.csv"
    file.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")
    result = import_csv(tmp_path, database_url, file, "--mapping", "registry")
    assert result.returncode == 0, result.stderr
    assert "rows read: 5, accepted: 3, rejected: 2, duplicates: 0, warnings: 2" in result.stdout
    for secret in ("Fenwhistle", "Odalys", "Brönte", "900-00-0001", "odalys@example.org", a):
        assert secret not in result.stdout and secret not in result.stderr
    report = report_rows(Path(str(file) + ".rejects.csv"))
    assert [(r["line"], r["kind"], r["column"]) for r in report] == [
        ("4", "rejected", "rec_id"), ("5", "warning", "date_of_birth"), ("5", "warning", "sex"), ("6", "rejected", ""),
    ]
    assert "19990231" not in report[1]["reason"] and report[3]["row"] == f"{c},too,few"

    patient = fhir_patient(running_hub, a)
    assert patient["meta"]["versionId"] == "1"
    assert patient["name"][0]["family"] == "Fenwhistle" and patient["gender"] == "female"
    assert patient["birthDate"] == "1980-04-02"
    assert patient["address"][0]["line"] == ["12 Elm St Unit 4\nRear"]
    assert {"system": "urn:hub:ssn", "value": "900-00-0001"}.items() <= patient["identifier"][1].items()
    assert {t["value"] for t in patient["telecom"]} == {"555-0101", "odalys@example.org"}
    warned = fhir_patient(running_hub, b)
    assert "birthDate" not in warned and "gender" not in warned and warned["name"][0]["family"] == "Quillby"
    assert fhir_patient(running_hub, d)["name"][0]["family"] == "Brönte"

    again = import_csv(tmp_path, database_url, file, "--mapping", "registry", "--rejects", str(tmp_path / "second.csv"))
    assert again.returncode == 0, again.stderr
    assert "rows read: 5, accepted: 0, rejected: 2, duplicates: 3" in again.stdout
    for rec_id in (a, b, d):
        assert fhir_patient(running_hub, rec_id)["meta"]["versionId"] == "1"

    # The same rows in a differently cut file (new chunks): stored and processed, but unchanged rows make no new version.
    edited = tmp_path / "edited.csv"
    edited.write_text("\n".join([HEADER, row(d, family="Brönte"), row(b, dob="19990231", sex="Q"), row(a, family="Fenwhistle-Pike", given="Odalys", sex="F", address_2="Unit 4\nRear", email="odalys@example.org", soc_sec_id="900-00-0001")]) + "\n", encoding="utf-8")
    third = import_csv(tmp_path, database_url, edited, "--mapping", "registry")
    assert third.returncode == 0, third.stderr
    assert "accepted: 3" in third.stdout
    assert fhir_patient(running_hub, d)["meta"]["versionId"] == "1"
    assert fhir_patient(running_hub, b)["meta"]["versionId"] == "1"
    changed = fhir_patient(running_hub, a)
    assert changed["meta"]["versionId"] == "2" and changed["name"][0]["family"] == "Fenwhistle-Pike"


@pytest.mark.parametrize(("delimiter", "encoding", "args"), [(";", "latin-1", ["--encoding", "latin-1"]), ("\t", "utf-8", []), (";", "utf-8", ["--delimiter", ";"])])
def test_cli_encodings_and_delimiters(tmp_path: Path, database_url: str, running_hub: RunningHub, delimiter: str, encoding: str, args: list[str]) -> None:
    rec_id = unique("R")
    text = "rec_id{d}surname{d}given_name{d}sex\n{r}{d}Ærøskøbing{d}\"Zoë{d} Jr\"{d}F\n".format(d=delimiter, r=rec_id)
    file = tmp_path / "people.csv"
    file.write_bytes(text.encode(encoding))
    mapping = tmp_path / "people.yaml"
    mapping.write_text('feed: registry\nidentifier: {column: rec_id, system: "urn:hub:registry"}\nfamily: surname\ngiven: given_name\ngender: {column: sex, map: {M: male, F: female}}\n')
    result = import_csv(tmp_path, database_url, file, "--mapping", str(mapping), *args)
    assert result.returncode == 0, result.stderr
    assert "accepted: 1, rejected: 0" in result.stdout
    patient = fhir_patient(running_hub, rec_id)
    assert patient["name"][0]["family"] == "Ærøskøbing" and patient["name"][0]["given"] == [f"Zoë{delimiter} Jr"]


def test_cli_on_invalid_reject_row(tmp_path: Path, database_url: str, running_hub: RunningHub) -> None:
    good, bad = unique("R"), unique("R")
    file = tmp_path / "strict.csv"
    file.write_text(f"rec_id,date_of_birth\n{bad},19990231\n{good},19990131\n")
    mapping = tmp_path / "strict.yaml"
    mapping.write_text('feed: strict\non_invalid: reject_row\nidentifier: {column: rec_id, system: "urn:hub:registry"}\nbirth_date: {column: date_of_birth, formats: ["%Y%m%d"]}\n')
    result = import_csv(tmp_path, database_url, file, "--mapping", str(mapping))
    assert result.returncode == 0, result.stderr
    assert "accepted: 1, rejected: 1" in result.stdout
    [entry] = report_rows(Path(str(file) + ".rejects.csv"))
    assert (entry["line"], entry["kind"], entry["column"]) == ("2", "rejected", "date_of_birth")
    assert fhir_patient(running_hub, good)["birthDate"] == "1999-01-31"
    with running_hub.client() as client:
        assert "entry" not in client.get("/fhir/Patient", params={"identifier": f"{SYSTEM}|{bad}"}).json()


def test_cli_exit_codes_when_the_file_cannot_be_processed(tmp_path: Path, database_url: str) -> None:
    file = tmp_path / "x.csv"
    file.write_text("id,surname\n1,Quillby\n")
    missing = import_csv(tmp_path, database_url, file, "--mapping", "registry")
    assert missing.returncode == 1 and "mapped column(s) missing from the header" in missing.stderr
    unknown = import_csv(tmp_path, database_url, file, "--mapping", "no_such_mapping")
    assert unknown.returncode == 1 and "no such mapping" in unknown.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("identifier: {column: id}\ngender: {column: surname, map: {Q: queen}}\n")
    invalid = import_csv(tmp_path, database_url, file, "--mapping", str(broken))
    assert invalid.returncode == 1 and "'gender.map'" in invalid.stderr
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert import_csv(tmp_path, database_url, empty, "--mapping", "registry").returncode == 1
    assert import_csv(tmp_path, database_url, file, "--mapping", "registry", "--encoding", "nope").returncode == 1


def post(hub: RunningHub, mapping: str, content: bytes, **params: str) -> httpx.Response:
    with hub.client() as client:
        return client.post(f"/csv/{mapping}", files={"file": ("upload.csv", content, "text/csv")}, params=params)


def test_upload_imports_reports_and_is_idempotent(running_hub: RunningHub) -> None:
    a, b = unique("U"), unique("U")
    content = "\n".join([HEADER, row(a, family="Corvane", given="Liora", sex="F"), row("", family="Nobody"), row(b, dob="20231301")]).encode() + b"\n"
    response = post(running_hub, "registry", content)
    assert response.status_code == 200, response.text
    body = response.json()
    assert {k: body["summary"][k] for k in ("rows_read", "accepted", "rejected", "duplicates", "warnings")} == {
        "rows_read": 3, "accepted": 2, "rejected": 1, "duplicates": 0, "warnings": 1,
    }
    assert body["rejects"] == [{"line": 3, "column": "rec_id", "reason": "rec_id (identifier) is empty"}]
    assert body["warnings"][0]["line"] == 4 and body["warnings"][0]["column"] == "date_of_birth"
    assert "Corvane" not in response.text and "Liora" not in response.text
    patient = fhir_patient(running_hub, a)
    assert patient["name"][0]["family"] == "Corvane" and patient["meta"]["versionId"] == "1"

    again = post(running_hub, "registry", content).json()["summary"]
    assert (again["accepted"], again["duplicates"], again["rejected"]) == (0, 2, 1)
    assert fhir_patient(running_hub, a)["meta"]["versionId"] == "1"


def test_upload_latin1_semicolons(running_hub: RunningHub) -> None:
    rec_id = unique("U")
    content = (HEADER.replace(",", ";") + "\n" + row(rec_id, family="Lindqvåle").replace(",", ";") + "\n").encode("latin-1")
    response = post(running_hub, "registry", content, encoding="latin-1")
    assert response.status_code == 200, response.text
    assert response.json()["summary"]["accepted"] == 1 and response.json()["summary"]["delimiter"] == ";"
    assert fhir_patient(running_hub, rec_id)["name"][0]["family"] == "Lindqvåle"


def test_upload_errors_are_4xx_never_500(running_hub: RunningHub) -> None:
    with running_hub.client() as client:
        assert client.post("/csv/no_such_mapping", files={"file": ("a.csv", b"x\n1\n")}).status_code == 404
        assert client.post("/csv/..%2Fsecrets", files={"file": ("a.csv", b"x\n1\n")}).status_code == 404
        assert client.post("/csv/registry", content=HEADER.encode(), headers={"content-type": "text/csv"}).status_code == 415
        assert client.post("/csv/registry", data={"other": "x"}, files={"notfile": ("a.csv", b"x")}).status_code == 400
        assert client.post("/csv/registry", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=zz"}).status_code == 400
    assert post(running_hub, "registry", b"id,surname\n1,Quillby\n").status_code == 400  # mapped columns missing
    assert post(running_hub, "registry", b"").status_code == 400
    assert post(running_hub, "registry", HEADER.encode() + b"\n", encoding="klingon").status_code == 400
    ok = post(running_hub, "registry", HEADER.encode() + b"\n")  # a header and no rows: processed, nothing to do
    assert ok.status_code == 200 and ok.json()["summary"]["rows_read"] == 0


def test_upload_with_a_test_mapping_directory(running_hub: RunningHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken.yaml").write_text("feed: broken\nresource: nonsense\nidentifier: id\n")
    (tmp_path / "billing_encounters.yaml").write_text((csv_mapping.MAPPINGS_DIR / "billing_encounters.yaml").read_text())
    monkeypatch.setattr(csv_mapping, "MAPPINGS_DIR", tmp_path)
    response = post(running_hub, "broken", b"id\n1\n")
    assert response.status_code == 422 and "'resource'" in response.json()["detail"]
    rec_id, visit = unique("P"), unique("V")
    header = "patient_rec_id,visit_no,visit_type,visit_status,ward,attending_doctor,admit_date,discharge_date,invoice_line_id,item_code,item_description,qty,amount,service_date"
    content = f"{header}\n{rec_id},{visit},IP,CLOSED,W1,Dr Fenwick,202401051230,20240107,{visit}-1,CHG-77,Bed day,2,450.50,20240105\n".encode()
    response = post(running_hub, "billing_encounters", content)
    assert response.status_code == 200 and response.json()["summary"]["accepted"] == 1
    assert fhir_patient(running_hub, rec_id)["identifier"][0]["value"] == rec_id


def test_a_pending_chunk_whose_mapping_cannot_be_found_is_marked_failed(database_url: str) -> None:
    from functools import partial

    from sqlalchemy import select

    from adapters.inbound.csv.reader import read_chunk
    from hub.messages import InboundMessage, Status
    from hub.pipeline import process_pending, store_batch
    from hub.store.engine import make_engine
    from hub.store.migrate import upgrade
    from hub.store.tables import messages
    from hub.store.uow import UnitOfWork

    engine = make_engine(database_url)
    upgrade(engine)
    uow = partial(UnitOfWork, engine)
    ghost = InboundMessage(b"rec_id\nR1\n", "ghost_feed", "csv", Status.ACCEPTED, sender="ghost_feed", control_id=unique("G"))
    [outcome] = store_batch(uow, [ghost])
    while process_pending(uow, {"csv": read_chunk}) is not None:
        pass
    with engine.connect() as conn:
        state, error = conn.execute(select(messages.c.state, messages.c.processing_error).where(messages.c.id == outcome.message_id)).one()
    engine.dispose()
    assert (state, error) == ("failed", "LookupError")


def test_cli_plain_progress_lines_when_not_a_terminal(tmp_path: Path, database_url: str) -> None:
    file = tmp_path / "many.csv"
    file.write_text(HEADER + "\n" + "\n".join(row(unique("P"), family="Oakrill") for _ in range(3000)) + "\n")
    result = import_csv(tmp_path, database_url, file, "--mapping", "registry", "--chunk-rows", "500", "--progress-every", "0")
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("import-csv: ")]
    assert len(progress) >= 5 and progress[-1].startswith("import-csv: 3000 rows (100 %)")
    assert "Oakrill" not in result.stderr and "Oakrill" not in result.stdout
    assert "rows read: 3000, accepted: 3000" in result.stdout


def test_a_billing_row_leaves_the_registry_patient_unchanged(tmp_path: Path, database_url: str, running_hub: RunningHub) -> None:
    rec_id, visit = unique("B"), unique("V")
    registry = tmp_path / "registry.csv"
    registry.write_text(HEADER + "\n" + row(rec_id, soc_sec_id="900-00-0042") + "\n")
    assert import_csv(tmp_path, database_url, registry, "--mapping", "registry").returncode == 0
    header = "patient_rec_id,visit_no,visit_type,visit_status,ward,attending_doctor,admit_date,discharge_date,invoice_line_id,item_code,item_description,qty,amount,service_date"
    billing = tmp_path / "billing.csv"
    billing.write_text(f"{header}\n{rec_id},{visit},OP,CLOSED,,,20240105,,{visit}-1,CHG-1,,1,10.00,20240105\n")
    assert import_csv(tmp_path, database_url, billing, "--mapping", "billing_encounters").returncode == 0
    patient = fhir_patient(running_hub, rec_id)
    assert len(patient["identifier"]) == 2 and patient["meta"]["versionId"] == "1"
