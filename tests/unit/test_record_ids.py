"""Record ids: UUIDv7, so bulk loads append to the primary key and the search index, in the order they
are made (candidates meet ties in the order their records arrived)."""

from __future__ import annotations

import threading
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


def test_record_ids_made_within_one_millisecond_keep_their_order() -> None:
    ids = [new_record_id() for _ in range(20_000)]  # thousands a millisecond: the counter, then the next ms
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert len({uuid.UUID(i).int >> 80 for i in ids}) < len(ids)  # many share their millisecond
    assert all(uuid.UUID(i).version == 7 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)


def test_record_ids_made_on_several_threads_are_unique_and_each_threads_increase() -> None:
    made: dict[int, list[str]] = {}

    def make(n: int) -> None:
        made[n] = [new_record_id() for _ in range(5_000)]

    threads = [threading.Thread(target=make, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for ids in made.values() for i in ids]
    assert len(set(everything)) == len(everything)
    assert all(ids == sorted(ids) for ids in made.values())
