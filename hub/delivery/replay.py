"""Resend and replay: send a stored outbound row again, or run a stored inbound message through
the routes as they are now.

- `resend(outbox row, to=None)`: a dead or skipped row is reopened in place (it keeps its place in
  its patient's order, its history stays); a delivered row, or a row sent to another destination,
  is copied into a new row (`resent_from` names the original) that joins the end of the queue.
- `replay(message, to=None, dry_run)`: the stored bytes are read again and routed through the
  current planner; `dry_run` writes nothing and returns, for each outbound message, a unified
  diff against what was sent before for the same event and destination, so a route or mapping
  change can be tried on yesterday's traffic before it goes live.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from hub.delivery.outbox import UNROUTED, Planner, plan_event, routed_events
from hub.messages import InboundMessage, Refused, Status
from hub.outbound import Destination, Outbound
from hub.store.outbox import BUILD_ERROR, OutboxRow
from hub.store.uow import UnitOfWork, utcnow

Reader = Callable[..., InboundMessage]


class ReplayError(Refused):
    """Why a resend or replay cannot be done."""


@dataclass(frozen=True)
class Planned:
    """One outbound message a replay would send (dry run) or has queued."""

    message_id: int
    event_index: int
    outbound: Outbound
    previous: OutboxRow | None
    """What was queued before for the same event and destination (the latest), if anything."""
    queued_as: int | None = None

    @property
    def diff(self) -> str:
        """Unified diff against what was sent before ('' when identical; everything '+' when new)."""
        before = _lines(self.previous.payload) if self.previous else []
        after = _lines(self.outbound.payload)
        label = f"outbox/{self.previous.id}" if self.previous else "(nothing sent before)"
        return "".join(difflib.unified_diff(before, after, label, f"replay/{self.outbound.destination}"))

    def as_dict(self) -> dict[str, object]:
        return {
            "message_id": self.message_id, "event_index": self.event_index,
            "destination": self.outbound.destination, "route": self.outbound.route,
            "summary": self.outbound.summary, "idempotency_key": self.outbound.idempotency_key,
            "previous_id": self.previous.id if self.previous else None,
            "changed": self.previous is None or self.previous.payload != self.outbound.payload,
            "diff": self.diff, "queued_as": self.queued_as,
        }


def _lines(payload: bytes) -> list[str]:
    """Payload as diffable lines: HL7 v2 segments end in CR, so CR is a line end too."""
    text = payload.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    return [line + "\n" for line in text.split("\n") if line != ""]


def resend(
    uow: UnitOfWork, outbox_id: int, destinations: Mapping[str, Destination], to: str | None = None,
    rebuild: Rebuild | None = None,
) -> OutboxRow:
    """Queue a stored outbound row again (see the module doc); returns the row that will be sent.

    A row that was never built (`build-error`: its profile failed) is built again from its stored
    message by `rebuild` (the current routes, after the fix) and queued in its place."""
    row = uow.outbox.get(outbox_id)
    if row is None:
        raise ReplayError(404, "no such outbox row")
    if row.last_code == BUILD_ERROR and row.state in ("dead", "skipped"):
        return _rebuild(uow, row, to, rebuild)
    target = to or row.destination
    if to is not None and to not in destinations:
        raise ReplayError(400, f"unknown destination {to!r}")
    now = utcnow()
    if target == row.destination and row.state in ("dead", "skipped"):
        uow.outbox.reopen(row.id, now)
        found = uow.outbox.get(row.id)
        assert found is not None
        return found
    if target == row.destination and row.state in ("pending", "sending"):
        raise ReplayError(409, "the row is still waiting for delivery")
    destination = destinations.get(target)
    ordering = target if destination is not None and destination.ordering == "strict" else row.ordering_key
    outbound = Outbound(target, row.route, ordering, row.idempotency_key, row.content_type, row.payload, row.summary)
    copy = uow.outbox.get(uow.outbox.add_one(row.message_id, row.event_index, outbound, now, resent_from=row.id))
    assert copy is not None
    return copy


Rebuild = Callable[[UnitOfWork, OutboxRow], Outbound]
"""Builds a never-built row's message again from its stored inbound message (raises ReplayError)."""


def rebuilder(readers: Mapping[str, Reader], planner: Planner | None) -> Rebuild:
    """`resend`'s `rebuild` with the current routes: the row's event, planned again for its destination."""

    def rebuild(uow: UnitOfWork, row: OutboxRow) -> Outbound:
        if row.message_id is None:
            raise ReplayError(409, "the row has no stored message to build it from")
        planned = replay(uow, readers, planner, row.message_id, row.destination, dry_run=True)
        found = [p.outbound for p in planned if p.event_index == row.event_index]
        if not found:
            raise ReplayError(409, "the current routes send nothing for this row's event to its destination")
        return found[0]

    return rebuild


def _rebuild(uow: UnitOfWork, row: OutboxRow, to: str | None, rebuild: Rebuild | None) -> OutboxRow:
    if to is not None and to != row.destination:
        raise ReplayError(409, "the row was never built: resend it to its own destination, or replay its message")
    if rebuild is None or row.destination == UNROUTED:
        raise ReplayError(409, "the row was never built: replay its message")
    outbound = rebuild(uow, row)
    if outbound.error:
        raise ReplayError(409, f"the message still cannot be built ({outbound.error})")
    uow.outbox.rebuilt(row.id, outbound, utcnow())
    found = uow.outbox.get(row.id)
    assert found is not None
    return found


def replay(
    uow: UnitOfWork, readers: Mapping[str, Reader], planner: Planner | None, message_id: int,
    to: str | None = None, dry_run: bool = False,
) -> list[Planned]:
    """Route a stored inbound message again with the current routes (queue it unless `dry_run`)."""
    if planner is None:
        raise ReplayError(503, "no routes are configured")
    stored = uow.outbox.inbound(message_id)
    if stored is None:
        raise ReplayError(404, "no such message")
    if stored.status != Status.ACCEPTED.value or stored.duplicate_of is not None:
        raise ReplayError(409, "only accepted, original messages can be replayed")
    reader = readers.get(stored.format)
    if reader is None:
        raise ReplayError(409, f"no reader for {stored.format} messages")
    inbound = reader(stored.raw, stored.feed, context=stored.context) if stored.context else reader(stored.raw, stored.feed)
    if inbound.status is not Status.ACCEPTED:
        raise ReplayError(409, "the stored message no longer reads as accepted")
    sent = uow.outbox.for_message(message_id)
    planned: list[Planned] = []
    for event in routed_events(uow, [(message_id, inbound)]):
        for outbound in plan_event(planner, event):
            if to is not None and outbound.destination != to:
                continue
            previous = [r for r in sent if r.event_index == event.event_index and r.destination == outbound.destination]
            planned.append(Planned(message_id, event.event_index, outbound, previous[-1] if previous else None))
    if not dry_run and planned:
        now = utcnow()
        planned = [replace(p, queued_as=uow.outbox.add_one(p.message_id, p.event_index, p.outbound, now)) for p in planned]
    return planned
