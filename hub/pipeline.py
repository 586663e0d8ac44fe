"""The one pipeline every feed goes through: accept (store) → map → match → route.

Two stages, each a small handler over a unit of work:
- `store_batch` (the hot path): the messages that arrived together are committed in one
  transaction (group commit), and only then does any of them get its answer.
- `process_pending`: accepted messages, in the order they were accepted, are mapped to canonical
  records (`hub.recordset`), matched (`hub.mpi.service`) and routed (`hub.delivery.outbox`: outbox rows),
  many per transaction. A crash between the stages loses nothing: pending rows are simply processed later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hub.delivery.outbox import route_events
from hub.messages import InboundMessage, Outcome, Status
from hub.mpi.service import link_batch
from hub.recordset import RecordSet, event_records
from hub.store.uow import NewMessage, PendingMessage, SourceKey, UnitOfWork, utcnow
from hub.writes import SharedWrites, apply_requests

log = logging.getLogger("hub.pipeline")

UowFactory = Callable[[], UnitOfWork]
Reader = Callable[[bytes, str], InboundMessage]
"""An inbound adapter's full read (bytes, feed) → message with its canonical event."""

PROCESSING_LOCK = "hub.pipeline.process"


def store_batch(uow_factory: UowFactory, batch: Sequence[InboundMessage]) -> list[Outcome]:
    """Store a batch; never raises. A message that could not be stored says so (and gets no AA)."""
    try:
        return _store(uow_factory, batch)
    except Exception as exc:  # noqa: BLE001 — isolate the message that fails, below
        # Only the class: database error messages can quote the values (patient data).
        log.warning("storing a batch of %d failed (%s); retrying one by one", len(batch), type(exc).__name__)
    outcomes = []
    for inbound in batch:
        try:
            outcomes += _store(uow_factory, [inbound])
        except Exception as exc:  # noqa: BLE001
            log.error("message could not be stored (%s)", type(exc).__name__)
            outcomes.append(Outcome(None, inbound.status, tuple(inbound.problems), stored=False))
    return outcomes


def _store(uow_factory: UowFactory, batch: Sequence[InboundMessage]) -> list[Outcome]:
    with uow_factory() as uow:
        outcomes = _store_into(uow, batch)
        uow.commit()
    return outcomes


def _store_into(uow: UnitOfWork, batch: Sequence[InboundMessage]) -> list[Outcome]:
    received_at = utcnow()
    ids = uow.messages.add(
        [NewMessage(inbound, "pending" if inbound.status is Status.ACCEPTED else "none") for inbound in batch], received_at
    )
    outcomes: list[Outcome | None] = [
        None if message_id is None else Outcome(message_id, inbound.status, tuple(inbound.problems))
        for inbound, message_id in zip(batch, ids)
    ]
    resent = [i for i, outcome in enumerate(outcomes) if outcome is None]
    if resent:  # answered with the original's outcome (also when the original is earlier in this batch)
        originals = uow.messages.outcomes_for([batch[i].dedupe_key for i in resent])  # type: ignore[misc]
        copies = [NewMessage(batch[i], "none", duplicate_of=originals[batch[i].dedupe_key].message_id) for i in resent]  # type: ignore[index]
        for i, message_id in zip(resent, uow.messages.add(copies, received_at)):
            original = originals[batch[i].dedupe_key]  # type: ignore[index]
            outcomes[i] = Outcome(message_id, original.status, original.problems, duplicate_of=original.message_id)
    return outcomes  # type: ignore[return-value]


def store_and_process(
    uow_factory: UowFactory, readers: Mapping[str, Reader], batch: Sequence[InboundMessage], limit: int,
    results: dict[int, Any], read: dict[int, InboundMessage],
) -> tuple[list[Outcome], int | None, bool]:
    """For doors that wait for the result (FHIR): store the batch and process pending messages (in
    acceptance order, these included as far as `limit` reaches) in one transaction, one disk flush.
    Still "stored, then processed, then answered": nobody is answered before the commit, and if
    processing fails the batch is stored on its own (then processed like any other).
    Returns the outcomes, the highest id processed, and whether nothing was left pending."""
    try:
        with uow_factory() as uow:
            outcomes = _store_into(uow, batch)
            fresh = {
                o.message_id: m for m, o in zip(batch, outcomes, strict=True)
                if (m.events or m.content) and m.status is Status.ACCEPTED and o.message_id is not None
                and o.duplicate_of is None
            }
            last, drained, done, processed = None, False, {}, set()
            if uow.try_lock(PROCESSING_LOCK):
                pending = uow.messages.pending(limit)
                if pending:
                    items = [(m.id, read.get(m.id) or fresh.get(m.id) or _read(readers, m)) for m in pending]
                    done = process_events(uow, items)
                    uow.messages.mark([m.id for m in pending], "processed")
                    last = pending[-1].id
                    processed = {m.id for m in pending}
                drained = len(pending) < limit
            uow.commit()
    except Exception as exc:  # noqa: BLE001
        log.warning("storing and processing a batch together failed (%s); storing it alone", type(exc).__name__)
        return store_batch(uow_factory, batch), None, False
    results.update(done)
    for message_id in processed:
        read.pop(message_id, None)
    for message_id, message in fresh.items():
        if message_id not in processed:  # left for a later slice (or another process holds the lock)
            read[message_id] = message
    return outcomes, last, drained


def process_pending(
    uow_factory: UowFactory, readers: Mapping[str, Reader], limit: int = 200, results: dict[int, Any] | None = None,
    read: dict[int, InboundMessage] | None = None, max_events: int | None = None,
) -> int | None:
    """Process up to `limit` pending messages in acceptance order, stopping early once `max_events`
    events are in hand (a CSV chunk carries a thousand: slices are sized by work, not by count;
    at least one message is always taken). Returns the highest message id
    processed (None when there was nothing to do or another process holds the processing lock).
    `results`, if given, receives the full result of each message a door waits on (FHIR), once committed.
    `read` holds messages a door already read in full (by id): they are not read from their bytes again
    (the same reader on the same bytes and context gives the same events); any other is re-read."""
    read = read if read is not None else {}
    try:
        with uow_factory() as uow:
            if not uow.try_lock(PROCESSING_LOCK):
                return None
            pending = uow.messages.pending(limit)
            if not pending:
                return None
            items: list[tuple[int, InboundMessage]] = []
            events = 0
            for message in pending:
                inbound = read.pop(message.id, None) or _read(readers, message)
                items.append((message.id, inbound))
                events += max(1, len(inbound.events))
                if max_events is not None and events >= max_events:
                    break
            done = process_events(uow, items)
            uow.messages.mark([message_id for message_id, _ in items], "processed")
            uow.commit()
            if results is not None:
                results.update(done)
            return items[-1][0]
    except Exception as exc:  # noqa: BLE001
        log.warning("processing a batch failed (%s); isolating the message that fails", type(exc).__name__)
    return _process_one_by_one(uow_factory, readers, limit, results)


def _process_one_by_one(
    uow_factory: UowFactory, readers: Mapping[str, Reader], limit: int, results: dict[int, Any] | None = None
) -> int | None:
    """Slow path after a failed batch: each message in its own transaction; a failing one is marked."""
    last = None
    for _ in range(limit):
        with uow_factory() as uow:
            pending = uow.messages.pending(1)
            if not pending:
                break
            message = pending[0]
            try:
                inbound = _read(readers, message)
                done = process_events(uow, [(message.id, inbound)])
                uow.messages.mark([message.id], "processed")
                uow.commit()
                if results is not None:
                    results.update(done)
            except Exception as exc:  # noqa: BLE001
                log.error("processing message %d failed (%s); marked failed", message.id, type(exc).__name__)
                uow.tx.rollback()
                with uow_factory() as failed:
                    failed.messages.mark([message.id], "failed", type(exc).__name__)
                    failed.commit()
        last = message.id
    return last


def _read(readers: Mapping[str, Reader], message: PendingMessage) -> InboundMessage:
    """Read a stored message again; a door that stored a context (FHIR) gets it back."""
    reader: Any = readers[message.format]
    if message.context is not None:
        return reader(message.raw, message.feed, context=message.context)
    return reader(message.raw, message.feed)


def process_events(uow: UnitOfWork, items: Sequence[tuple[int, InboundMessage]]) -> dict[int, Any]:
    """Map: the canonical records of every event in the batch, in acceptance order.

    Upserts (HL7 v2, CSV) are gathered and written in bulk; a message of REST requests (FHIR) is
    applied on its own, after the upserts accepted before it, and its result stored with it."""
    uow.prefer_index_scans()
    for _, inbound in items:
        inbound.take_content()

    def is_rest(inbound: InboundMessage) -> bool:
        return inbound.format == "fhir" or any(e.request is not None for e in inbound.events)

    run: list[tuple[int, InboundMessage]] = []
    results: dict[int, Any] = {}
    shared: SharedWrites | None = None
    written: dict[SourceKey, str] = {}
    for n, (message_id, inbound) in enumerate(items):
        if is_rest(inbound):
            written |= _process_upserts(uow, run)
            run = []
            if shared is None:
                shared = SharedWrites(uow)
                following = []
                for _, later in items[n:]:
                    if not is_rest(later):
                        break
                    following.append(later)
                shared.preload(following)
            results[message_id] = apply_requests(uow, message_id, inbound, shared)
        else:
            if shared is not None:
                shared.close()
                shared = None
            run.append((message_id, inbound))
    if shared is not None:
        shared.close()
    written |= _process_upserts(uow, run)
    uow.messages.set_results({i: _stored_result(r) for i, r in results.items()})
    route_events(uow, items, written)  # outbox rows, in this transaction (nothing without routes)
    return results


def _stored_result(result: Any) -> Any:
    """The result as kept with the message: what was written where, without the resources themselves."""
    if isinstance(result, dict):
        return {k: _stored_result(v) for k, v in result.items() if k != "resource"}
    if isinstance(result, list):
        return [_stored_result(v) for v in result]
    return result


def _process_upserts(uow: UnitOfWork, items: Sequence[tuple[int, InboundMessage]]) -> dict[SourceKey, str]:
    """Write the records of these events and link their patients; returns the record id of every
    source key the events named (routing addresses the patients by them, without looking them up)."""
    if not items:
        return {}
    events = [(message_id, n, inbound.feed, event) for message_id, inbound in items for n, event in enumerate(inbound.events)]
    keys = [key for message_id, n, _, event in events for key, _ in event_records(event, f"{message_id}.{n}")]
    record_set = RecordSet(uow.records, keys)
    at = utcnow()
    for message_id, n, feed, event in events:
        record_set.apply(event, feed, message_id, f"{message_id}.{n}", at)
    changes = record_set.changes()
    uow.records.write(changes)
    link_batch(uow, changes, [(message_id, event) for message_id, _, _, event in events], at)
    return {key: row.id for key, row in record_set.rows.items()}
