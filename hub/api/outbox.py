"""Delivery administration: the dead-letter queue, resend, replay (with a dry-run diff), skip, prune.

Listings never carry payloads (patient data); a replay's dry run does, since showing what would be
sent is its purpose — all of it needs the admin permission.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from hub.access import Permission, requires
from hub.delivery.outbox import RoutingUnitOfWork
from hub.delivery.replay import rebuilder, replay, resend
from hub.store.outbox import STATES, prune_outbox
from hub.store.uow import utcnow

router = APIRouter(prefix="/api", dependencies=[Depends(requires(Permission.ADMIN))])

State = Literal["pending", "sending", "delivered", "dead", "skipped"]
assert set(State.__args__) == set(STATES)  # type: ignore[attr-defined]


class ResendBody(BaseModel):
    destination: str | None = Field(None, max_length=100, description="another destination (default: the row's own)")


class ReplayBody(BaseModel):
    destination: str | None = Field(None, max_length=100, description="only this destination")
    dry_run: bool = False


def _uow(request: Request) -> RoutingUnitOfWork:
    hub = request.app.state.hub
    return RoutingUnitOfWork(hub.engine, hub.routing)


@router.get("/outbox")
def list_outbox(
    request: Request, state: State | None = None, destination: str | None = Query(None, max_length=100),
    limit: int = Query(100, ge=1, le=1000), after: int = Query(0, ge=0),
) -> dict[str, object]:
    """Outbound rows (e.g. `?state=dead`: the dead-letter queue), oldest first; page with `after`."""
    with _uow(request) as uow:
        rows = uow.outbox.listing(state, destination, limit, after)
        counts = uow.outbox.counts()
    return {"counts": counts, "items": [r.listing() for r in rows],
            "next_after": rows[-1].id if len(rows) == limit else None}


@router.post("/outbox/prune")
def prune(
    request: Request, delivered_older_than_days: float = Query(..., ge=0),
    dead_older_than_days: float | None = Query(None, ge=0),
) -> dict[str, object]:
    """Delete rows delivered more than N days ago (and dead rows written more than M days ago, only
    when asked), a batch per transaction; pending, sending and skipped rows stay. The counts deleted."""
    dead = timedelta(days=dead_older_than_days) if dead_older_than_days is not None else None
    pruned = prune_outbox(request.app.state.hub.engine, utcnow(), timedelta(days=delivered_older_than_days), dead)
    return {"pruned": pruned.as_dict()}


@router.get("/outbox/{outbox_id}")
def get_outbox(request: Request, outbox_id: int) -> dict[str, object]:
    """One row and its full history of attempts and answers."""
    with _uow(request) as uow:
        row = uow.outbox.get(outbox_id)
        if row is None:
            raise HTTPException(404, "no such outbox row")
        attempts = uow.outbox.attempts(outbox_id)
    return row.listing() | {"history": [
        {"attempt": a.attempt, "at": a.at.isoformat(), "ok": a.ok, "code": a.code, "detail": a.detail,
         "duration": round(a.duration, 4), "worker": a.worker}
        for a in attempts
    ]}


@router.post("/outbox/{outbox_id}/resend")
def resend_outbox(request: Request, outbox_id: int, body: ResendBody | None = None) -> dict[str, object]:
    """Send a stored outbound row again: in place if it is dead or skipped, else as a new row."""
    hub = request.app.state.hub
    with _uow(request) as uow:  # a ReplayError becomes its status (hub.api.app)
        row = resend(uow, outbox_id, hub.destinations(), (body or ResendBody()).destination,
                     rebuilder(hub.readers, hub.routing.planner))
        uow.commit()
    return row.listing()


@router.post("/outbox/{outbox_id}/skip")
def skip_outbox(request: Request, outbox_id: int) -> dict[str, object]:
    """Give up on a pending or dead row (a poison message blocking its patient's queue)."""
    with _uow(request) as uow:
        row = uow.outbox.get(outbox_id)
        if row is None:
            raise HTTPException(404, "no such outbox row")
        if not uow.outbox.skip(outbox_id):
            raise HTTPException(409, f"a {row.state} row cannot be skipped")
        uow.outbox.touched.add(row.destination)  # the rows behind it may go now
        uow.commit()
        row = uow.outbox.get(outbox_id) or row
    return row.listing()


@router.post("/messages/{message_id}/replay")
def replay_message(request: Request, message_id: int, body: ReplayBody | None = None) -> dict[str, object]:
    """Run a stored inbound message through the current routes; `dry_run` queues nothing and shows
    what would be sent, with a diff against what was sent before."""
    hub = request.app.state.hub
    body = body or ReplayBody()
    if body.destination is not None and body.destination not in hub.destinations():
        raise HTTPException(400, f"unknown destination {body.destination!r}")
    with _uow(request) as uow:
        planned = replay(uow, hub.readers, hub.routing.planner, message_id, body.destination, body.dry_run)
        if not body.dry_run:
            uow.commit()
    return {"dry_run": body.dry_run, "planned": [p.as_dict() for p in planned]}
