"""FHIR R4 REST, what issue 3 still lacked: paged instance history (`_count`, `_since`), `Patient.link`
on every Patient a response carries (`POST _search`, `_include`, batch reads), and the warning when
`_revinclude` leaves resources out; `hub reindex`. Over real HTTP against a running hub, on SQLite and PostgreSQL.
All data fictional."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from sqlalchemy import delete, select

from hub.api.fhir import includes
from hub.cli import main
from hub.store.tables import record_index
from tests.conftest import RunningHub, unique
from tests.integration.test_mpi_api import (
    person_of,
    record_id,
    send_over_two_connections,
)
from tests.integration.test_mpi_linking import adt_message, someone

JSON = {"Content-Type": "application/fhir+json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SYSTEM = "urn:oid:2.999.7.1"
ENTERPRISE = "urn:hub:enterprise-id"


def client(hub: RunningHub) -> httpx.Client:
    return httpx.Client(base_url=hub.http + "/fhir", timeout=30)


def patient(mrn: str | None = None, **overrides: object) -> dict:
    resource = {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": mrn or unique("L")}],
        "name": [{"family": unique("Vantreck").lower(), "given": ["Oriel"]}],
        "gender": "female",
        "birthDate": "1961-08-30",
    }
    resource.update(overrides)
    return resource


def observation(pid: str, code: str = "2345-7") -> dict:
    return {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": "2024-05-06T07:00:00Z",
    }


def create(c: httpx.Client, resource: dict) -> dict:
    response = c.post(f"/{resource['resourceType']}", json=resource, headers=JSON)
    assert response.status_code == 201, response.text
    return response.json()


def bundle_of(kind: str, response: httpx.Response) -> dict:
    """The response's Bundle, checked: 200, of this type, valid FHIR."""
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == kind
    Bundle.model_validate(bundle)
    return bundle


def history(response: httpx.Response) -> dict:
    return bundle_of("history", response)


def etags(bundle: dict) -> list[str]:
    return [e["response"]["etag"] for e in bundle.get("entry", [])]


def next_url(bundle: dict) -> str | None:
    return next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)


def searchset(response: httpx.Response) -> dict:
    return bundle_of("searchset", response)


def resources(bundle: dict, mode: str) -> dict[str, dict]:
    return {e["resource"]["id"]: e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode}


# ---------------------------------------------------------------- 1. instance history: _count, _since

def _five_versions(c: httpx.Client) -> tuple[str, list[dict]]:
    """A Patient written five times (created, updated three times, deleted); its versions as written."""
    first = create(c, patient())
    pid, written = first["id"], [first]
    for gender in ("male", "other", "unknown"):
        response = c.put(f"/Patient/{pid}", json=written[-1] | {"gender": gender}, headers=JSON)
        assert response.status_code == 200, response.text
        written.append(response.json())
    assert c.delete(f"/Patient/{pid}").status_code == 204
    return pid, written


def test_instance_history_pages_with_count_and_next_links(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        pid, _ = _five_versions(c)
        other = create(c, patient())["id"]  # another Patient's versions never show up
        whole = history(c.get(f"/Patient/{pid}/_history"))
        assert etags(whole) == [f'W/"{n}"' for n in (5, 4, 3, 2, 1)]
        assert whole["total"] == 5 and next_url(whole) is None
        assert [e["request"]["method"] for e in whole["entry"]] == ["DELETE", "PUT", "PUT", "PUT", "POST"]
        assert "resource" not in whole["entry"][0]

        pages, url = [], f"{running_hub.http}/fhir/Patient/{pid}/_history?_count=2"
        while url:
            page = history(httpx.get(url, timeout=30))
            assert len(page["entry"]) <= 2
            assert {e["fullUrl"].rsplit("/", 1)[-1] for e in page["entry"]} == {pid}
            pages.append(etags(page))
            url = next_url(page)
            assert url is None or f"/fhir/Patient/{pid}/_history?" in url
        assert pages == [['W/"5"', 'W/"4"'], ['W/"3"', 'W/"2"'], ['W/"1"']]
        assert etags(history(c.get(f"/Patient/{other}/_history", params={"_count": 1}))) == ['W/"1"']


def test_instance_history_since_keeps_versions_at_or_after_the_instant(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        pid, written = _five_versions(c)
        since = written[1]["meta"]["lastUpdated"]  # version 2's own instant: included
        kept = history(c.get(f"/Patient/{pid}/_history", params={"_since": since}))
        assert etags(kept) == ['W/"5"', 'W/"4"', 'W/"3"', 'W/"2"']
        paged = history(c.get(f"/Patient/{pid}/_history", params={"_since": since, "_count": 3}))
        assert etags(paged) == ['W/"5"', 'W/"4"', 'W/"3"']
        rest = history(httpx.get(next_url(paged), timeout=30))
        assert etags(rest) == ['W/"2"'] and next_url(rest) is None
        assert "entry" not in history(c.get(f"/Patient/{pid}/_history", params={"_since": "2999-01-01T00:00:00Z"}))
        assert etags(history(c.get(f"/Patient/{pid}/_history", params={"_since": "2000-01-01"}))) == etags(
            history(c.get(f"/Patient/{pid}/_history")))


@pytest.mark.parametrize("since", ["last tuesday", "2024-13-45", "yesterday at noon"])
def test_instance_history_bad_since_is_400_naming_the_parameter(running_hub: RunningHub, since: str) -> None:
    with client(running_hub) as c:
        pid = create(c, patient())["id"]
        bad = c.get(f"/Patient/{pid}/_history", params={"_since": since})
    assert bad.status_code == 400
    issue = OperationOutcome.model_validate(bad.json()).issue[0]
    assert issue.code == "invalid" and issue.expression == ["_since"] and "_since" in issue.diagnostics


def test_instance_history_errors(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        pid = create(c, patient())["id"]
        assert c.get(f"/Patient/{pid}/_history", params={"_count": "many"}).status_code == 400
        assert c.get("/Patient/no-such-id/_history").status_code == 404
        assert c.get(f"/Observation/{pid}/_history").status_code == 404  # the id is a Patient's
        assert c.get(f"/Basic/{pid}/_history").status_code == 404
        xml = c.get(f"/Patient/{pid}/_history", params={"_count": 1}, headers={"Accept": "application/fhir+xml"})
    assert xml.status_code == 200 and xml.headers["content-type"].startswith("application/fhir+xml")
    assert b"<Bundle" in xml.content and b'value="history"' in xml.content


# ---------------------------------------------------------------- 2. Patient.link wherever a Patient is returned

def _linked(c: httpx.Client) -> tuple[dict, list[dict]]:
    """A Patient written over FHIR (so matched to a person), read back with its link."""
    created = create(c, patient())
    read = c.get(f"/Patient/{created['id']}").json()
    assert [k["type"] for k in read["link"]] == ["refer"]
    return read, read["link"]


def test_post_search_patients_carry_their_link(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        read, link = _linked(c)
        family = read["name"][0]["family"]
        posted = searchset(c.post("/Patient/_search", content=f"family={family}", headers=FORM))
        assert resources(posted, "match")[read["id"]]["link"] == link
        assert posted["link"][0]["url"].endswith(f"/fhir/Patient?family={family}")  # self: the GET equivalent
        fetched = searchset(c.get("/Patient", params={"family": family}))
        assert posted["entry"] == fetched["entry"]
        # URL and form parameters together; golden records by enterprise id, as with GET
        both = searchset(c.post("/Patient/_search?gender=male", content=f"family={family}", headers=FORM))
        assert "entry" not in both
        person = link[0]["other"]["reference"].split("/")[1]
        golden = searchset(c.post("/Patient/_search", data={"identifier": f"{ENTERPRISE}|{person}"}))
        assert {k["other"]["reference"] for k in resources(golden, "match")[person]["link"]} >= {f"Patient/{read['id']}"}


def test_post_search_other_types_and_bad_bodies(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        read, _ = _linked(c)
        obs = create(c, observation(read["id"]))
        found = searchset(c.post("/Observation/_search", data={"patient": read["id"], "code": "2345-7"}))
        assert set(resources(found, "match")) == {obs["id"]}
        empty = searchset(c.post(f"/Observation/_search?patient={read['id']}"))  # no body: the URL's parameters
        assert set(resources(empty, "match")) == {obs["id"]}
        wrong = c.post("/Patient/_search", json={"family": "x"}, headers=JSON)
        assert wrong.status_code == 415 and wrong.json()["resourceType"] == "OperationOutcome"
        assert c.post("/Observation/_search", content="{}", headers=JSON).status_code == 415
        assert c.post("/Basic/_search", data={"x": "y"}).status_code == 404
        strict = c.post("/Observation/_search", data={"shoe-size": "9"}, headers={"Prefer": "handling=strict"})
        assert strict.status_code == 400


def test_included_subject_patients_carry_their_link(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        read, link = _linked(c)
        create(c, observation(read["id"], "2093-3"))
        params = {"patient": read["id"], "_include": "Observation:subject"}
        for response in (c.get("/Observation", params=params), c.post("/Observation/_search", data=params)):
            included = resources(searchset(response), "include")
            assert included[read["id"]]["link"] == link


def test_patients_in_batch_reads_and_searches_carry_their_link(running_hub: RunningHub) -> None:
    with client(running_hub) as c:
        read, link = _linked(c)
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"Patient/{read['id']}"}},
            {"request": {"method": "GET", "url": f"Patient?_id={read['id']}"}},
        ]}
        answer = httpx.post(f"{running_hub.http}/fhir", json=bundle, headers=JSON, timeout=30)
    assert answer.status_code == 200, answer.text
    single, found = (e["resource"] for e in answer.json()["entry"])
    assert single["link"] == link
    assert found["entry"][0]["resource"]["link"] == link


def test_merged_away_patient_is_replaced_by_in_post_search_and_include(running_hub: RunningHub) -> None:
    p, q = someone(), someone()
    send_over_two_connections(running_hub.mllp_port, [adt_message("LM1", **p)], [adt_message("LM2", **q)])
    person_of(running_hub, "LM1", "NORTHWIND")
    send_over_two_connections(running_hub.mllp_port, [adt_message("LM1", trigger="A40", **p, merged="LM2")], [])
    person_of(running_hub, "LM2", "NORTHWIND")
    survivor, merged = record_id(running_hub, "LM1", "NORTHWIND"), record_id(running_hub, "LM2", "NORTHWIND")
    replaced_by = [{"other": {"reference": f"Patient/{survivor}"}, "type": "replaced-by"}]
    with client(running_hub) as c:
        posted = searchset(c.post("/Patient/_search", data={"identifier": "urn:hub:aa:NORTHWIND|LM2"}))
        assert resources(posted, "match")[merged]["link"] == replaced_by
        create(c, observation(merged, "718-7"))
        included = searchset(c.get("/Observation", params={"patient": merged, "_include": "Observation:patient"}))
        assert resources(included, "include")[merged]["link"] == replaced_by


# ---------------------------------------------------------------- 4. _revinclude says when it cut results

def _outcome_issues(bundle: dict) -> list[dict]:
    return [i for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome" for i in e["resource"]["issue"]]


def test_revinclude_cut_at_the_limit_is_reported(running_hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(includes, "REVINCLUDE_LIMIT", 2)
    with client(running_hub) as c:
        pid = create(c, patient())["id"]
        for code in ("1742-6", "1920-8", "6768-6"):
            create(c, observation(pid, code))
        encounter = create(c, {"resourceType": "Encounter", "status": "finished",
                               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                               "subject": {"reference": f"Patient/{pid}"}})
        params = [("_id", pid), ("_revinclude", "Observation:subject"), ("_revinclude", "Encounter:subject")]
        found = searchset(c.get("/Patient", params=params))
    included = [e["resource"] for e in found["entry"] if e["search"]["mode"] == "include"]
    assert sum(r["resourceType"] == "Observation" for r in included) == 2
    assert [r["id"] for r in included if r["resourceType"] == "Encounter"] == [encounter["id"]]
    [issue] = _outcome_issues(found)  # the Encounters were not cut: one warning, for the Observations
    assert issue["severity"] == "warning" and issue["code"] == "incomplete"
    assert issue["expression"] == ["_revinclude"]
    assert "_revinclude" in issue["diagnostics"] and "Observation" in issue["diagnostics"]
    assert "only 2 of the 3 Observation" in issue["diagnostics"] and "limit is 2" in issue["diagnostics"]


def test_revinclude_exactly_at_the_limit_is_not_a_cut(running_hub: RunningHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(includes, "REVINCLUDE_LIMIT", 2)
    with client(running_hub) as c:
        pid = create(c, patient())["id"]
        for code in ("1742-6", "1920-8"):
            create(c, observation(pid, code))
        found = searchset(c.get("/Patient", params={"_id": pid, "_revinclude": "Observation:subject"}))
        lenient = searchset(c.get("/Patient", params={"_id": pid, "_revinclude": "Observation:subject", "shoe": "9"}))
    assert len(resources(found, "include")) == 2 and _outcome_issues(found) == []
    assert [i["code"] for i in _outcome_issues(lenient)] == ["not-supported"]  # unknown parameters still reported


# ---------------------------------------------------------------- 5. hub reindex

def _drop_index_rows(hub: RunningHub, record_id: str, params: tuple[str, ...] | None = None) -> None:
    """What a record indexed by older index rules looks like: some (or all) of its rows missing."""
    condition = record_index.c.record_id == record_id
    if params is not None:
        condition &= record_index.c.param.in_(params)
    with hub.hub.engine.begin() as conn:
        assert conn.execute(delete(record_index).where(condition)).rowcount > 0


def _reindex(hub: RunningHub, tmp_path: Path, *args: str) -> str:
    env = {"HUB_DATABASE_URL": hub.hub.settings.database, "HUB_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(main, ["reindex", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_reindex_gives_records_back_the_index_rows_they_lack(running_hub: RunningHub, tmp_path: Path) -> None:
    with client(running_hub) as c:
        family = unique("Ößwald")
        pid = create(c, patient(name=[{"family": family, "given": ["Ëlin"]}]))["id"]
        mrn = c.get(f"/Patient/{pid}").json()["identifier"][0]["value"]
        obs = create(c, observation(pid, "3094-0") | {
            "identifier": [{"system": SYSTEM, "value": unique("OB")}],
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory"}]}]})
        searches = [
            ("/Patient", {"family:exact": family}, pid), ("/Patient", {"identifier": f"{SYSTEM}|{mrn}"}, pid),
            ("/Patient", {"given": "elin", "family": family}, pid),
            ("/Observation", {"identifier": obs["identifier"][0]["value"]}, obs["id"]),  # from the FHIR resource
            ("/Observation", {"category": "laboratory", "patient": pid}, obs["id"]),
            ("/Observation", {"code": "3094-0", "patient": pid}, obs["id"]),
        ]
        for path, params, expected in searches:
            assert set(resources(searchset(c.get(path, params=params)), "match")) == {expected}, params

        _drop_index_rows(running_hub, pid, ("family:exact", "given:exact"))  # indexed before `:exact` existed
        _drop_index_rows(running_hub, obs["id"])  # or not indexed at all
        assert "entry" not in searchset(c.get("/Patient", params={"family:exact": family}))
        assert "entry" not in searchset(c.get("/Observation", params={"code": "3094-0", "patient": pid}))

        first = _reindex(running_hub, tmp_path, "--batch-size", "7")
        assert " 2 rewritten" in first, first
        for path, params, expected in searches:
            assert set(resources(searchset(c.get(path, params=params)), "match")) == {expected}, params
        again = _reindex(running_hub, tmp_path)  # idempotent: nothing left to rewrite
        assert " 0 rewritten (0 index rows)" in again and "0 unreadable" in again, again


def test_reindex_writes_the_rows_processing_writes(running_hub: RunningHub, tmp_path: Path) -> None:
    """Rebuilt rows are exactly the ones processing wrote, for records from every door."""
    with client(running_hub) as c:
        pid = create(c, patient())["id"]
        create(c, observation(pid, "2951-2"))
    send_over_two_connections(running_hub.mllp_port, [adt_message("RX1", **someone())], [])
    person_of(running_hub, "RX1", "NORTHWIND")
    with running_hub.hub.engine.connect() as conn:
        before = set(conn.execute(select(record_index)).all())
    output = _reindex(running_hub, tmp_path)
    with running_hub.hub.engine.connect() as conn:
        after = set(conn.execute(select(record_index)).all())
    assert after == before and " 0 rewritten" in output, output
