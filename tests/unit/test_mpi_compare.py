"""MPI normalisation and comparison levels: every level of every field, placeholders as missing."""

from __future__ import annotations

import pytest

from hub.model import Address, ContactPoint, HumanName, Identifier, Patient
from hub.mpi import compare as c
from hub.mpi.compare import features


def pt(
    given: str | None = "Wilbur",
    family: str | None = "Quennell",
    dob: str | None = "1980-04-12",
    **kw,
) -> Patient:
    """A fictional patient; keywords: nid, phone, email, line, postal, gender, suffix, multiple_birth."""
    names = (
        [
            HumanName(
                family=family,
                given=[given] if given else [],
                suffix=kw.get("suffix", []),
            )
        ]
        if (given or family)
        else []
    )
    ids = [Identifier(system="urn:hub:test:mrn", value="M1", type="MR")]
    if kw.get("nid"):
        ids.append(Identifier(system="urn:hub:national-id", value=kw["nid"], type="SS"))
    telecoms = []
    if kw.get("phone"):
        telecoms.append(ContactPoint(system="phone", value=kw["phone"]))
    if kw.get("email"):
        telecoms.append(ContactPoint(system="email", value=kw["email"]))
    addresses = (
        [
            Address(
                line=[kw["line"]] if kw.get("line") else [],
                postal_code=kw.get("postal"),
            )
        ]
        if kw.get("line") or kw.get("postal")
        else []
    )
    return Patient(
        identifiers=ids,
        names=names,
        birth_date=dob,
        gender=kw.get("gender"),
        telecoms=telecoms,
        addresses=addresses,
        multiple_birth=kw.get("multiple_birth"),
    )


def level(fn, a: Patient, b: Patient) -> str:
    return fn(features(a), features(b))


def test_normalisation():
    assert c.norm_text("  Zoë  O'Brien-Smith ") == "ZOE OBRIEN SMITH"
    assert c.norm_phone("+1 (212) 555-0142") == "2125550142"
    assert c.norm_email(" Wil.Q@Example.ORG ") == "wil.q@example.org"
    assert c.norm_postal("60614-1234") == "60614"
    assert c.norm_postal("sw1a 1aa") == "SW1A1AA"


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        ("Wilbur", "WILBUR", "exact"),
        ("William", "Bill", "nickname"),
        ("Margaret", "Peggy", "nickname"),
        ("Wilbur", "Wilbor", "jw92"),
        ("Cassandra", "Casandrea", "jw92"),
        ("Eric", "Erik", "jw85"),
        ("Stefan", "Stephen", "phonetic"),
        ("W", "Wilbur", "initial"),
        ("Wilbur", "Ottilie", "different"),
        ("W", "Ottilie", "different"),
        (None, "Wilbur", "missing"),
        ("UNKNOWN", "Wilbur", "missing"),
        ("Baby Girl", "Wilbur", "missing"),
    ],
)
def test_given_levels(x, y, expected):
    assert level(c.compare_given, pt(given=x), pt(given=y)) == expected


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        ("Quennell", "quennell", "exact"),
        ("Quennell", "Quenell", "jw92"),
        ("Quennell-Ashby", "Ashby", "partial"),
        ("Marsh", "Marsha", "jw92"),
        ("Abernathy", "Abernethie", "jw85"),
        ("Phillips", "Filips", "phonetic"),
        ("Quennell", "Abernathy", "different"),
        ("Quennell", None, "missing"),
        ("Unknown", "Quennell", "missing"),
    ],
)
def test_family_levels(x, y, expected):
    assert level(c.compare_family, pt(family=x), pt(family=y)) == expected


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        ("1980-04-12", "1980-04-12", "exact"),
        ("1980-04-12", "1980-12-04", "transposed"),
        ("1980-04-12", "1980-04-13", "one_off"),
        ("1980-04-12", "1980-05-12", "one_off"),
        ("1980-04-12", "1981-04-12", "year_off"),
        ("1980-04-12", "1980", "partial"),
        ("1980-04", "1980-04-12", "partial"),
        ("1980", "1980", "partial"),
        ("1980-04-12", "1975-09-30", "different"),
        ("1980", "1981-04-12", "different"),
        ("1900-01-01", "1980-04-12", "missing"),
        (None, "1980-04-12", "missing"),
    ],
)
def test_birth_date_levels(x, y, expected):
    assert level(c.compare_dob, pt(dob=x), pt(dob=y)) == expected


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        ("900-12-3456", "900123456", "exact"),
        ("900-12-3456", "900-12-3457", "typo"),
        ("900-12-3456", "900-21-3456", "transposed"),
        ("900-12-3456", "911-55-0000", "different"),
        ("900-12-3456", "900-34-3456", "different"),  # two adjacent digits changed, not swapped
        ("900-12-3456", "900-13-3466", "different"),  # two digits apart
        ("900-12-3456", "90-01-23456", "exact"),
        ("900-12-3456", "9001-23-456", "exact"),
        ("900-12-3456", "900-12-345", "different"),  # a digit short: not a substitution
        ("999-99-9999", "999-99-9999", "missing"),
        ("000-00-0000", "900-12-3456", "missing"),
        ("123-45-6789", "123-45-6789", "missing"),
        (None, "900-12-3456", "missing"),
    ],
)
def test_national_id_levels(x, y, expected):
    assert level(c.compare_national_id, pt(nid=x), pt(nid=y)) == expected


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        ("(212) 555-0142", "+1 212 555 0142", "exact"),
        ("212-555-0142", "212-555-0143", "typo"),
        ("555-0142", "212-555-0142", "typo"),
        ("212-555-0142", "212-555-0124", "typo"),  # two adjacent digits swapped
        ("212-555-0142", "213-555-0152", "different"),
        ("212-555-0142", "312-555-0199", "different"),
        ("000-000-0000", "000-000-0000", "missing"),
        (None, "212-555-0142", "missing"),
    ],
)
def test_phone_levels(x, y, expected):
    assert level(c.compare_phone, pt(phone=x), pt(phone=y)) == expected


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        ("Wil.Q@Example.org", "wil.q@example.org", "exact"),
        ("wil.q@example.org", "wil.q@example.net", "fuzzy"),
        ("wil.q12@example.org", "wil.q45@example.org", "different"),
        ("noemail@example.org", "noemail@example.org", "missing"),
        (None, "wil.q@example.org", "missing"),
    ],
)
def test_email_levels(x, y, expected):
    assert level(c.compare_email, pt(email=x), pt(email=y)) == expected


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        ("60614", "60614-0001", "exact"),
        ("60614", "60699", "prefix"),
        ("60614", "44101", "different"),
        ("00000", "60614", "missing"),
    ],
)
def test_postal_levels(x, y, expected):
    assert level(c.compare_postal, pt(postal=x), pt(postal=y)) == expected


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        ("12 Elm Street", "12 ELM ST.", "exact"),
        ("12 Elm Street", "12 Elmm Street", "fuzzy"),
        ("12 Elm Street", "990 Juniper Court", "different"),
        ("Homeless", "12 Elm Street", "missing"),
    ],
)
def test_address_levels(x, y, expected):
    assert level(c.compare_address, pt(line=x), pt(line=y)) == expected


def test_gender_levels():
    assert level(c.compare_gender, pt(gender="female"), pt(gender="female")) == "exact"
    assert level(c.compare_gender, pt(gender="female"), pt(gender="male")) == "different"
    assert level(c.compare_gender, pt(gender="unknown"), pt(gender="male")) == "missing"


def test_a_pair_has_every_field_in_the_order_of_the_comparators():
    """Explanations list the fields in this order; each level is the field's own comparison."""
    a = features(pt("Wilbur", "Quennell", nid="900-12-3456", phone="212-555-0142", email="wq@example.org", line="12 Elm St"))
    b = features(pt("Will", "Quenel", nid="900-12-3465", phone="212-555-0124", line="12 Elm Street"))
    levels, swapped = c.compare_pair(a, b)
    assert list(levels) == list(c.COMPARATORS) and not swapped
    assert levels == {name: compare(a, b) for name, compare in c.COMPARATORS.items()}


def test_given_family_swap_is_detected():
    levels, swapped = c.compare_pair(features(pt("Quennell", "Wilbur")), features(pt("Wilbur", "Quennell")))
    assert swapped and levels["given"] == "exact" and levels["family"] == "exact"


def test_generation_suffix_is_read_and_not_part_of_the_name():
    f = features(pt("Wilbur", "Quennell Jr"))
    assert f.family == "QUENNELL" and f.generation == "JR"
    assert features(pt(suffix=["Sr."])).generation == "SR"


def test_placeholder_full_name_and_every_field_is_missing():
    f = features(
        pt(
            "John",
            "Doe",
            "1900-01-01",
            nid="999-99-9999",
            phone="0000000000",
            email="none@example.org",
            postal="99999",
            line="Unknown",
        )
    )
    assert (
        f.given,
        f.family,
        f.dob,
        f.national_id,
        f.phones,
        f.emails,
        f.postal,
        f.address,
    ) == ("", "", "", "", (), (), "", "")


def test_nickname_table_is_loaded_both_ways():
    nick = c.load_nicknames()
    assert "WILLIAM" in nick["BILL"] and nick["WILLIAM"] == frozenset({"WILLIAM"})
    assert len(nick) > 200
