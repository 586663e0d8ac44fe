"""Blocking keys: which keys a record gets, and that placeholders never make one."""

from __future__ import annotations

from hub.mpi.blocking import blocking_keys
from tests.unit.test_mpi_compare import pt


def test_full_record_keys():
    keys = blocking_keys(
        pt(
            "Bill",
            "Quennell-Ashby",
            "1980-04-12",
            nid="900-12-3456",
            phone="(212) 555-0142",
            email="Wil.Q@example.org",
            postal="60614-0001",
            line="12 Elm St",
        )
    )
    kinds = {k.split(":", 1)[0] for k in keys}
    assert kinds == {"fam_ny", "dob_pc", "nid", "phone", "email", "given_dob"}
    assert "nid:900123456" in keys and "phone:2125550142" in keys and "email:wil.q@example.org" in keys
    assert "dob_pc:1980-04-12|60614" in keys
    assert "given_dob:WILLIAM|1980-04-12" in keys  # the nickname's formal name
    assert sum(k.startswith("fam_ny:") for k in keys) == 3  # the whole surname and both parts
    assert len(keys) == len(set(keys))


def test_keys_survive_typos_and_formatting():
    a = blocking_keys(pt("Wilbur", "Quennell", "1980-04-12", phone="212.555.0142"))
    b = blocking_keys(pt("WILBUR", "Quenell", "1980-04-12", phone="+1 212 555 0142"))
    assert set(a) & set(b)


def test_placeholders_make_no_keys():
    keys = blocking_keys(
        pt(
            "Baby Girl",
            "Unknown",
            "1900-01-01",
            nid="999-99-9999",
            phone="000-000-0000",
            email="none@example.org",
            postal="00000",
        )
    )
    assert keys == []


def test_partial_birth_date_keeps_only_the_surname_key():
    keys = blocking_keys(pt("Wilbur", "Quennell", "1980", postal="60614"))
    assert [k.split(":")[0] for k in keys] == ["fam_ny"] and keys[0].endswith("|1980")
