"""Operational views for interface engineers: what is waiting, what failed."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from sqlalchemy import func, select

from hub.access import Permission, requires
from hub.store.tables import messages

router = APIRouter(prefix="/api", dependencies=[Depends(requires(Permission.ADMIN))])


@router.get("/status")
def status(request: Request) -> dict[str, object]:
    """Message counts by processing state; `pending` is the processing backlog."""
    hub = request.app.state.hub
    with hub.engine.connect() as conn:
        counts = dict(conn.execute(select(messages.c.state, func.count()).group_by(messages.c.state)).all())
    return {
        "messages": {state: counts.get(state, 0) for state in ("pending", "processed", "failed", "none")},
        "backlog": hub.intake.backlog,
    }
