"""`POST /api/routes/reload`: load the routes file again in the running hub (as SIGHUP does).

200 with the new summary when the file is valid and in use; 422 with every problem (`file:line:
text`, naming keys, never values) when it is not — the current routes then stay in use.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from hub.access import Permission, requires
from hub.routing.reload import reload_routes

router = APIRouter(prefix="/api/routes", dependencies=[Depends(requires(Permission.ROUTES_RELOAD))])


@router.post("/reload")
async def reload(request: Request) -> JSONResponse:
    outcome = await run_in_threadpool(reload_routes, request.app.state.hub)
    if outcome.ok:
        return JSONResponse({"reloaded": True, "summary": outcome.summary})
    return JSONResponse(
        {"reloaded": False, "detail": "the routes file has problems; the current routes stay in use",
         "problems": [str(p) for p in outcome.problems]},
        422,
    )
