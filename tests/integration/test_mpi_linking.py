"""The master patient index wired into processing and the steward actions, on SQLite and PostgreSQL.

Messages go through the real pipeline (store → process); assertions read the MPI tables back.
Every patient here is fictional (555-01xx phones, invented names).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from functools import partial

import pytest
from sqlalchemy import Engine, func, select

from adapters.inbound.hl7v2.reader import read_frame, read_message
from hub.mpi import steward
from hub.mpi.service import MpiError, enterprise_ids, event_detail
from hub.pipeline import process_pending, store_batch
from hub.store.engine import make_engine
from hub.store.migrate import upgrade
from hub.store.mpi import link_events, links, persons, reviews
from hub.store.uow import UnitOfWork
from tests.conftest import unique


def adt_message(
    mrn: str, *, authority: str = "NORTHWIND", trigger: str = "A01", family: str = "Testperson", given: str = "Alma",
    dob: str = "19800402", sex: str = "F", street: str = "12 Elm St", postal: str = "62701",
    phone: str = "(555)555-0123", merged: str | None = None, merged_authority: str | None = None,
) -> bytes:
    """A fictional ADT with every field the matcher reads; `merged` adds an MRG (A40)."""
    structure = "ADT_A39" if trigger == "A40" else "ADT_A01"
    pid = ["PID", "1", "", f"{mrn}^^^{authority}^MR", "", f"{family}^{given}^^^^^L", "", dob, sex, "", "",
           f"{street}^^Springfield^IL^{postal}" if street else "", "", phone]
    segments = [
        f"MSH|^~\\&|TESTADT|{authority}|HUB|HUB|20240101120000||ADT^{trigger}^{structure}|{unique('C')}|P|2.5.1",
        f"EVN|{trigger}|20240101120000",
        "|".join(pid),
    ]
    if merged:
        segments.append(f"MRG|{merged}^^^{merged_authority or authority}^MR")
    else:
        segments.append("PV1|1|I|W1^101^A")
    return "\r".join(segments).encode() + b"\r"


@pytest.fixture(scope="module")
def engine(database_url: str) -> Engine:
    engine = make_engine(database_url)
    upgrade(engine)
    return engine


def feed(engine: Engine, *frames: bytes, door: str = "mllp") -> None:
    """Store the frames as one batch and process everything pending (one processing batch)."""
    uow = partial(UnitOfWork, engine)
    outcomes = store_batch(uow, [read_frame(f, door, with_content=False).inbound for f in frames])
    assert all(o.status.value == "accepted" or o.status.name == "ACCEPTED" for o in outcomes), outcomes
    while process_pending(uow, {"hl7v2": read_message}, limit=200) is not None:
        pass


def record_id(engine: Engine, mrn: str, authority: str = "NORTHWIND") -> str:
    with UnitOfWork(engine) as uow:
        key = ("patient", f"urn:hub:aa:{authority}", mrn)
        return uow.records.by_sources([key])[key].id


def person_of(engine: Engine, mrn: str, authority: str = "NORTHWIND") -> str:
    rid = record_id(engine, mrn, authority)
    with engine.connect() as conn:
        return conn.execute(select(links.c.person_id).where(links.c.record_id == rid)).scalar_one()


def link_row(engine: Engine, rid: str) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(select(links).where(links.c.record_id == rid)).one()._mapping)


def person_row(engine: Engine, pid: str) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(select(persons).where(persons.c.id == pid)).one()._mapping)


def open_reviews(engine: Engine, rid: str) -> list[dict]:
    with engine.connect() as conn:
        query = select(reviews).where(reviews.c.record_id == rid, reviews.c.status == "open")
        return [dict(r._mapping) for r in conn.execute(query)]


_people = itertools.count(10)


def family() -> str:
    return "Zq" + unique("")[:8].lower()


def someone() -> dict[str, str]:
    """Demographics of their own per call (surname, birth year, phone, street), so that tests sharing
    a database never find each other's patients as candidates (up to 39 people per module: the
    phones stay 555-01xx)."""
    n = next(_people)
    return {"family": family(), "dob": f"{1930 + n % 70}0402", "phone": f"(555)555-01{10 + n % 39}", "street": f"{n} Elm St"}


def moved(p: dict[str, str]) -> dict[str, str]:
    """The same person after a move, with day and month of birth swapped: a possible match only."""
    n = int(p["phone"][-2:])
    return p | {"dob": p["dob"][:4] + "0204", "street": f"{p['street'].split()[0]} Oak Rd", "postal": "62702",
                "phone": f"(555)555-01{n + 51}"}


def stranger() -> dict[str, str]:
    return someone() | {"given": "Carl", "sex": "M", "postal": "11111", "dob": "19500101"}


# --- bands ----------------------------------------------------------------------------------------


def test_same_person_from_two_feeds_is_auto_linked_with_golden_record_and_audit(engine: Engine) -> None:
    p = someone()
    feed(engine, adt_message("A1", authority="EHRX", **p))
    feed(engine, adt_message("L1", authority="LABX", **p | {"given": "Alma Jo", "street": ""}), door="http")
    person = person_of(engine, "A1", "EHRX")
    assert person_of(engine, "L1", "LABX") == person
    lab = record_id(engine, "L1", "LABX")
    assert link_row(engine, lab)["how"] == "auto" and link_row(engine, lab)["score"] >= 12
    golden = person_row(engine, person)
    assert golden["active"] and golden["data"]["names"][0]["family"] == p["family"]
    ehr = record_id(engine, "A1", "EHRX")
    assert golden["provenance"]["names"] == ehr  # source priority: mllp before http, though http is newer
    assert golden["data"]["names"][0]["given"] == ["Alma"]
    assert golden["provenance"]["addresses"] == ehr  # the only non-empty address wins
    assert {(x["system"], x["value"]) for x in golden["data"]["identifiers"]} >= {
        ("urn:hub:aa:EHRX", "A1"), ("urn:hub:aa:LABX", "L1")}
    with engine.connect() as conn:
        event = conn.execute(select(link_events).where(link_events.c.record_id == lab)).one()
    assert event.action == "link" and event.to_person == person and event.model_version
    levels = {f["field"]: f["level"] for f in event_detail(event.detail)["explanation"]["fields"]}
    assert levels["family"] == "exact" and levels["birth_date"] == "exact"
    assert p["family"].upper() not in str(event.detail).upper()  # levels and weights, never values


def test_possible_match_gets_own_person_and_a_review_task(engine: Engine) -> None:
    p = someone()
    feed(engine, adt_message("R1", authority="EHRX", **p))
    feed(engine, adt_message("R2", authority="BILLX", **moved(p)))
    first, second = person_of(engine, "R1", "EHRX"), person_of(engine, "R2", "BILLX")
    assert first != second
    rid = record_id(engine, "R2", "BILLX")
    assert link_row(engine, rid)["how"] == "review"
    [task] = open_reviews(engine, rid)
    assert [c["person_id"] for c in task["candidates"]] == [first]
    assert 2 <= task["candidates"][0]["weight"] < 12


def test_non_match_gets_a_new_person_without_review(engine: Engine) -> None:
    p = someone()
    feed(engine, adt_message("N1", authority="EHRX", **p))
    feed(engine, adt_message("N2", authority="EHRX", **stranger() | {"family": p["family"]}))
    assert person_of(engine, "N1", "EHRX") != person_of(engine, "N2", "EHRX")
    assert link_row(engine, record_id(engine, "N2", "EHRX"))["how"] == "new"
    assert open_reviews(engine, record_id(engine, "N2", "EHRX")) == []


def test_two_records_of_one_new_person_in_one_batch_make_one_person(engine: Engine) -> None:
    p = someone()
    feed(engine, adt_message("B1", authority="EHRX", **p), adt_message("B2", authority="LABX", **p))
    assert person_of(engine, "B1", "EHRX") == person_of(engine, "B2", "LABX")


def test_twins_are_not_auto_linked(engine: Engine) -> None:
    p = someone()
    feed(engine, adt_message("T1", authority="EHRX", **p | {"given": "Alma"}))
    feed(engine, adt_message("T2", authority="EHRX", **p | {"given": "Berta"}))
    assert person_of(engine, "T1", "EHRX") != person_of(engine, "T2", "EHRX")


def test_an_update_re_evaluates_the_link(engine: Engine) -> None:
    p = someone()
    feed(engine, adt_message("U1", authority="EHRX", **p), adt_message("U2", authority="LABX", **p))
    assert person_of(engine, "U1", "EHRX") == person_of(engine, "U2", "LABX")
    # the lab corrects its record: a different patient altogether → it leaves the person
    feed(engine, adt_message("U2", authority="LABX", trigger="A08", **stranger()))
    assert person_of(engine, "U1", "EHRX") != person_of(engine, "U2", "LABX")
    with engine.connect() as conn:
        actions = [r.action for r in conn.execute(select(link_events.c.action).where(
            link_events.c.record_id == record_id(engine, "U2", "LABX")).order_by(link_events.c.id))]
    assert actions == ["link", "relink"]


# --- A40 ----------------------------------------------------------------------------------------


def test_a40_merges_a_known_record_into_the_survivor(engine: Engine) -> None:
    p = someone()
    feed(engine, adt_message("S1", **p))
    feed(engine, adt_message("S2", **stranger()))
    survivor, merged = record_id(engine, "S1"), record_id(engine, "S2")
    gone = person_of(engine, "S2")
    assert person_of(engine, "S1") != gone
    feed(engine, adt_message("S1", trigger="A40", **p, merged="S2"))
    assert person_of(engine, "S2") == person_of(engine, "S1")
    link = link_row(engine, merged)
    assert link["how"] == "merge" and link["replaced_by"] == survivor
    old = person_row(engine, gone)
    assert not old["active"] and old["merged_into"] == person_of(engine, "S1")
    key = ("patient", "urn:hub:aa:NORTHWIND", "S2")
    with UnitOfWork(engine) as uow:  # still readable, by its own identifier, inactive
        row = uow.records.by_sources([key])[key]
        assert row.id == merged and row.active is False and row.data["active"] is False and row.version == 2


def test_a40_naming_an_unseen_record_is_applied_when_it_arrives(engine: Engine) -> None:
    p = someone()
    feed(engine, adt_message("P1", **p))
    feed(engine, adt_message("P1", trigger="A40", **p, merged="P9"))  # P9 never seen: still accepted
    key = ("patient", "urn:hub:aa:NORTHWIND", "P9")
    with UnitOfWork(engine) as uow:
        assert not uow.records.by_sources([key])
    feed(engine, adt_message("P9", **stranger()))
    assert person_of(engine, "P9") == person_of(engine, "P1")
    link = link_row(engine, record_id(engine, "P9"))
    assert link["how"] == "merge" and link["replaced_by"] == record_id(engine, "P1")
    with UnitOfWork(engine) as uow:
        assert uow.records.by_sources([key])[key].active is False


# --- steward actions and stickiness ------------------------------------------------------------------


def test_steward_link_is_sticky_against_updates(engine: Engine) -> None:
    p = someone()
    feed(engine, adt_message("K1", **p))
    feed(engine, adt_message("K2", **moved(p)))
    target, rid = person_of(engine, "K1"), record_id(engine, "K2")
    assert person_of(engine, "K2") != target and open_reviews(engine, rid)
    with UnitOfWork(engine) as uow:
        steward.link(uow, rid, target, "steward:test")
        uow.commit()
    assert person_of(engine, "K2") == target and link_row(engine, rid)["how"] == "manual"
    assert open_reviews(engine, rid) == []
    feed(engine, adt_message("K2", trigger="A08", **stranger()))
    assert person_of(engine, "K2") == target  # an automatic re-evaluation never undoes the steward


def test_steward_unlink_rematches_and_remembers(engine: Engine) -> None:
    p = someone()
    feed(engine, adt_message("W1", **p), adt_message("W2", authority="LABX", **p))
    person, rid = person_of(engine, "W1"), record_id(engine, "W2", "LABX")
    assert person_of(engine, "W2", "LABX") == person
    with UnitOfWork(engine) as uow:
        result = steward.unlink(uow, rid, "steward:test")
        uow.commit()
    assert result["previous_person"] == person and result["person"] != person
    assert person_of(engine, "W2", "LABX") != person
    feed(engine, adt_message("W2", authority="LABX", trigger="A08", **p | {"given": "Alma"}, sex="F"))
    assert person_of(engine, "W2", "LABX") != person  # the update matches W1 perfectly, and still stays apart
    with UnitOfWork(engine) as uow, pytest.raises(MpiError):
        steward.unlink(uow, rid, "steward:test")  # alone in its person now


def test_steward_merge_and_not_a_match(engine: Engine) -> None:
    p = someone()
    feed(engine, adt_message("M1", **p))
    feed(engine, adt_message("M2", **moved(p)))
    a, b = person_of(engine, "M1"), person_of(engine, "M2")
    assert a != b
    with UnitOfWork(engine) as uow:
        steward.merge(uow, b, a, "steward:test")
        uow.commit()
    assert person_of(engine, "M2") == a
    assert person_row(engine, b)["merged_into"] == a and not person_row(engine, b)["active"]
    with UnitOfWork(engine) as uow:
        result = steward.not_match(uow, record_id(engine, "M2"), record_id(engine, "M1"), "steward:test")
        uow.commit()
    assert result["person"] != result["other_person"]
    feed(engine, adt_message("M2", trigger="A08", **p, sex="F"))  # now identical to M1: still kept apart
    assert person_of(engine, "M2") != person_of(engine, "M1")
    with UnitOfWork(engine) as uow, pytest.raises(MpiError):
        steward.merge(uow, a, a, "steward:test")


def test_explain_export_and_enterprise_ids(engine: Engine) -> None:
    p = someone()
    feed(engine, adt_message("E1", authority="EHRX", **p), adt_message("E2", authority="LABX", **p))
    e1, e2 = record_id(engine, "E1", "EHRX"), record_id(engine, "E2", "LABX")
    with UnitOfWork(engine) as uow:
        explanation = steward.explain(uow, "urn:hub:aa:EHRX|E1", e2)
        rows = [r for r in steward.export_rows(uow) if r[2] in ("E1", "E2")]
        ids = enterprise_ids(uow, [e1])
    assert explanation.band == "link"
    person = person_of(engine, "E1", "EHRX")
    assert sorted(rows) == [(person, "urn:hub:aa:EHRX", "E1"), (person, "urn:hub:aa:LABX", "E2")]
    assert ids[e1][0] == person
    assert sorted(ids[e1][1]) == [("urn:hub:aa:EHRX", "E1"), ("urn:hub:aa:LABX", "E2")]


def test_every_source_record_has_exactly_one_person(engine: Engine) -> None:
    from hub.store.tables import records

    with engine.connect() as conn:
        patients = conn.execute(select(func.count()).select_from(records).where(records.c.kind == "patient")).scalar()
        linked = conn.execute(select(func.count()).select_from(links)).scalar()
    assert patients == linked > 0


def test_a_review_is_superseded_when_an_update_makes_the_match_certain(engine: Engine) -> None:
    p = someone()
    feed(engine, adt_message("V1", **p))
    feed(engine, adt_message("V2", **moved(p)))
    rid = record_id(engine, "V2")
    assert open_reviews(engine, rid) and person_of(engine, "V2") != person_of(engine, "V1")
    feed(engine, adt_message("V2", trigger="A08", **p))  # corrected: the same as V1 now
    assert person_of(engine, "V2") == person_of(engine, "V1") and open_reviews(engine, rid) == []
    with engine.connect() as conn:
        assert conn.execute(select(reviews.c.status).where(reviews.c.record_id == rid)).scalar_one() == "superseded"


def test_candidate_retrieval_is_an_index_search(engine: Engine) -> None:
    """Blocking-key look-ups never scan: an index serves them on both databases."""
    from hub.store.mpi import keys
    from hub.store.tables import records

    query = (select(keys.c.key, keys.c.record_id, links.c.person_id, records.c.version)
             .join(links, links.c.record_id == keys.c.record_id).join(records, records.c.id == keys.c.record_id)
             .where(keys.c.key.in_(["fam_ny:X|1980", "nid:900000001"])))
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            plan = " / ".join(row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
            assert "SCAN" not in plan and "SEARCH mpi_keys" in plan, plan
            return
        # A table this small is cheaper to scan, so PostgreSQL's choice proves nothing: forbid the
        # scan and check that an index on mpi_keys can answer (a missing index would still scan).
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = " / ".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql))
    assert "Seq Scan on mpi_keys" not in plan and "Index Scan on mpi_keys" in plan, plan


def test_hub_mpi_train_writes_a_new_versioned_model(engine: Engine, database_url: str, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys
    import uuid as uuid_module
    from datetime import datetime, timezone

    from bench.mpi_synth import generate
    from hub.mpi.model import load_model
    from hub.mpi.service import link_patients
    from hub.store.uow import RecordChanges, RecordRow
    from tests.integration.test_cli import hub_env

    at = datetime.now(timezone.utc)
    rows = [
        RecordRow(str(uuid_module.uuid4()), "patient", f"urn:hub:synth:{r.feed.lower()}", f"syn{r.record_id}", None, 1,
                  True, r.patient.model_dump(mode="json", exclude_none=True), r.feed.lower(), None, at, at)
        for r in generate(120, seed=3).records
    ]
    with UnitOfWork(engine) as uow:  # the bulk path processing uses: write the records, link them in one call
        uow.records.write(RecordChanges(inserted=rows))
        link_patients(uow, rows, at)
        uow.commit()
    out = tmp_path / "model.json"
    result = subprocess.run([sys.executable, "-m", "hub", "mpi", "train", "--out", str(out), "--seed", "1"],
                            env=hub_env(tmp_path, database_url), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    model = load_model(out)
    assert model.version != load_model().version and model.version in result.stdout
    assert json.loads(out.read_text())["trained_on"]["records"] >= 120
    # term frequencies from the stored records: a surname many records share counts for less than a rare one
    tf = model.term_frequencies
    assert tf is not None and tf.tables["family"] and tf.floor <= 1 / 120
    common = max(tf.tables["family"], key=tf.tables["family"].__getitem__)
    assert tf.get("family", common) > tf.get("family", "QZXWUNSEEN")
    home = {"family": common, "given": "Alma", "dob": "1980-04-02", "postal": "62701"}
    rare = home | {"family": "Qzxwunseen"}
    from tests.unit.test_mpi_compare import pt

    assert model.score(pt(**home), pt(**home)).weight < model.score(pt(**rare), pt(**rare)).weight


def test_a_late_update_to_a_merged_away_record_keeps_it_inactive(engine: Engine) -> None:
    p, q = someone(), someone()
    feed(engine, adt_message("Y1", **p), adt_message("Y2", **q))
    feed(engine, adt_message("Y1", trigger="A40", **p, merged="Y2"))
    feed(engine, adt_message("Y2", trigger="A08", **q | {"street": "77 Late St"}))  # the old system still sends
    key = ("patient", "urn:hub:aa:NORTHWIND", "Y2")
    with UnitOfWork(engine) as uow:
        row = uow.records.by_sources([key])[key]
    assert row.active is False and row.data["addresses"][0]["line"] == ["77 Late St"]
    assert person_of(engine, "Y2") == person_of(engine, "Y1") and link_row(engine, row.id)["how"] == "merge"
