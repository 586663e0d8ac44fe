"""Golden records by survivorship rules (pure: no database)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from hub.mpi.survivorship import Rules, SourceRecord, golden, load_rules

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def rec(record_id: str, feed: str, minutes: int, **data: object) -> SourceRecord:
    return SourceRecord(record_id, feed, T0 + timedelta(minutes=minutes), dict(data))


RULES = Rules(("mllp", "registry"), "most_recent", {
    "names": "source_priority", "birth_date": "most_frequent", "identifiers": "union", "gender": "most_recent",
})


def test_each_rule_picks_its_value_and_remembers_where_it_came_from() -> None:
    records = [
        rec("a", "registry", 0, names=[{"family": "Quillby"}], birth_date="1980-04-02", gender="female",
            identifiers=[{"system": "urn:s:1", "value": "1"}]),
        rec("b", "mllp", 1, names=[{"family": "Quilby"}], birth_date="1980-02-04",
            identifiers=[{"system": "urn:s:2", "value": "2"}]),
        rec("c", "billing", 2, names=[{"family": "Q"}], birth_date="1980-04-02", gender="",
            identifiers=[{"system": "urn:s:1", "value": "1", "type": "MR"}]),
    ]
    data, provenance = golden(records, RULES)
    assert data["names"] == [{"family": "Quilby"}] and provenance["names"] == "b"  # mllp first, though older
    assert data["birth_date"] == "1980-04-02" and provenance["birth_date"] == "c"  # two of three; newest of those
    assert data["gender"] == "female" and provenance["gender"] == "a"  # newest non-empty
    assert [i["value"] for i in data["identifiers"]] == ["1", "2"] and provenance["identifiers"] == ["a", "b"]
    assert data["active"] is True and "addresses" not in data


def test_unknown_feeds_rank_after_listed_ones_and_ties_go_to_the_newest() -> None:
    records = [rec("a", "lab", 0, names=[{"family": "Old"}]), rec("b", "lab", 5, names=[{"family": "New"}])]
    data, provenance = golden(records, RULES)
    assert data["names"] == [{"family": "New"}] and provenance["names"] == "b"


def test_the_shipped_rules_load_and_bad_rules_are_refused(tmp_path: Path) -> None:
    rules = load_rules()
    assert rules.rule("identifiers") == "union" and rules.source_priority
    bad = tmp_path / "s.yaml"
    bad.write_text("default: newest\n")
    with pytest.raises(ValueError, match="unknown rule"):
        load_rules(bad)
    bad.write_text("fields: {shoe_size: most_recent}\n")
    with pytest.raises(ValueError, match="not Patient fields"):
        load_rules(bad)


def test_a_single_source_gives_its_non_empty_fields_with_itself_as_provenance() -> None:
    only = rec("a", "lab", 0, names=[{"family": "Quillby"}], gender="", birth_date="1980-04-02",
               identifiers=[{"system": "urn:s:1", "value": "1"}, {"system": "urn:s:1", "value": "1"}], active=False)
    data, provenance = golden([only], RULES)
    assert data == {"names": [{"family": "Quillby"}], "birth_date": "1980-04-02",
                    "identifiers": [{"system": "urn:s:1", "value": "1"}], "active": True}
    assert provenance == {"names": "a", "birth_date": "a", "identifiers": ["a"]}
