"""Master patient index over HTTP: review tasks, explanations and the data steward's actions.

    GET  /api/mpi/reviews?status=open&limit=50&after=0   review tasks (ids and scores only)
    GET  /api/mpi/explain?a=REF&b=REF                    why two records match or not, field by field
    GET  /api/mpi/persons/{enterprise_id}                a person's records, how each is linked, provenance
    GET  /api/mpi/records/{REF}/events                   every link change of a record (the audit trail)
    POST /api/mpi/link         {"record": REF, "person": ENTERPRISE_ID}
    POST /api/mpi/unlink       {"record": REF}
    POST /api/mpi/merge        {"source": ENTERPRISE_ID, "target": ENTERPRISE_ID}
    POST /api/mpi/not-a-match  {"record": REF, "other": REF}

REF is a patient record id or its source identifier `system|value`. Answers name ids, never patient
values. Errors: 400 malformed body, 404 unknown record or person, 409 an action that makes no sense
(merging a person into itself, unlinking a record alone in its person), 503 the index stayed busy.
Until authentication lands the actor is the `X-Hub-Actor` header (default `api`), recorded with
every link event.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from hub.access import Permission, requires
from hub.delivery.outbox import RoutingUnitOfWork
from hub.mpi import steward
from hub.store.uow import UnitOfWork

router = APIRouter(prefix="/api/mpi")

Ref = Field(min_length=1, max_length=700)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LinkBody(_Body):
    record: str = Ref
    person: str = Ref


class UnlinkBody(_Body):
    record: str = Ref


class MergeBody(_Body):
    source: str = Ref
    target: str = Ref


class NotMatchBody(_Body):
    record: str = Ref
    other: str = Ref


def _actor(request: Request) -> str:
    return "api:" + (request.headers.get("x-hub-actor") or "anonymous")[:80]


async def _run(request: Request, action: Any, *args: Any, commit: bool = True) -> JSONResponse:
    """Run a steward function in a unit of work on the thread pool (a refusal: see hub.api.app)."""
    hub = request.app.state.hub

    def work() -> Any:
        with RoutingUnitOfWork(hub.engine, hub.routing) as uow:  # link-change notices go to the outbox
            result = action(uow, *args)
            if commit:
                uow.commit()
            return result

    return JSONResponse(await run_in_threadpool(work))


@router.get("/reviews", dependencies=[Depends(requires(Permission.MPI_REVIEW))])
async def list_reviews(
    request: Request, status: str | None = Query("open", pattern="^(open|resolved|superseded|all)$"),
    limit: int = Query(50, ge=1, le=500), after: int = Query(0, ge=0),
) -> JSONResponse:
    def reviews(uow: UnitOfWork) -> dict[str, Any]:
        found = steward.reviews(uow, None if status == "all" else status, limit, after)
        return {"reviews": found, "next_after": found[-1]["id"] if len(found) == limit else None}

    return await _run(request, reviews, commit=False)


@router.get("/explain", dependencies=[Depends(requires(Permission.MPI_REVIEW))])
async def explain(request: Request, a: str = Query(min_length=1, max_length=700),
                  b: str = Query(min_length=1, max_length=700)) -> JSONResponse:
    return await _run(request, lambda uow: steward.explain(uow, a, b).to_dict(), commit=False)


@router.get("/persons/{person_id}", dependencies=[Depends(requires(Permission.MPI_REVIEW))])
async def person(request: Request, person_id: str) -> JSONResponse:
    return await _run(request, steward.person, person_id, commit=False)


@router.get("/records/{record}/events", dependencies=[Depends(requires(Permission.MPI_REVIEW))])
async def record_events(request: Request, record: str) -> JSONResponse:
    return await _run(request, lambda uow: {"events": steward.history(uow, record)}, commit=False)


@router.post("/link", dependencies=[Depends(requires(Permission.MPI_STEWARD))])
async def link(request: Request, body: LinkBody) -> JSONResponse:
    return await _run(request, steward.link, body.record, body.person, _actor(request))


@router.post("/unlink", dependencies=[Depends(requires(Permission.MPI_STEWARD))])
async def unlink(request: Request, body: UnlinkBody) -> JSONResponse:
    return await _run(request, steward.unlink, body.record, _actor(request))


@router.post("/merge", dependencies=[Depends(requires(Permission.MPI_STEWARD))])
async def merge(request: Request, body: MergeBody) -> JSONResponse:
    return await _run(request, steward.merge, body.source, body.target, _actor(request))


@router.post("/not-a-match", dependencies=[Depends(requires(Permission.MPI_STEWARD))])
async def not_a_match(request: Request, body: NotMatchBody) -> JSONResponse:
    return await _run(request, steward.not_match, body.record, body.other, _actor(request))
