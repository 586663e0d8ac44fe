"""Record ids: UUIDv7, so bulk loads append to the primary key and the search index."""

from __future__ import annotations

import time
import uuid

from hub.records import new_record_id


def test_record_ids_are_uuid7_and_unique() -> None:
    ids = [new_record_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == ids[0]  # the canonical form, a valid FHIR id (64 characters at most)


def test_record_ids_increase_with_time() -> None:
    earlier = new_record_id()
    time.sleep(0.002)
    later = new_record_id()
    assert earlier < later
    millis = uuid.UUID(later).int >> 80
    assert abs(millis - time.time_ns() // 1_000_000) < 5_000
