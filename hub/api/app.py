"""The HTTP application: routers for each door plus errors that never leak internals."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from hub.api import admin, csv, fhir, health, hl7v2, mpi
from hub.api import outbox as outbox_api
from hub.api import routes as routes_api
from hub.intake import StillProcessing
from hub.messages import Refused

if TYPE_CHECKING:
    from hub.bootstrap import Hub

log = logging.getLogger("hub.api")


def create_app(hub: Hub) -> FastAPI:
    app = FastAPI(title="hl7-hub", version="0.1.0", docs_url="/docs", redoc_url=None)
    app.state.hub = hub
    app.include_router(fhir.router)  # the busiest, tried first (FastAPI tries routers in order; no paths are shared)
    app.include_router(health.router)
    app.include_router(hl7v2.router)
    app.include_router(csv.router)
    app.include_router(admin.router)
    app.include_router(outbox_api.router)
    app.include_router(routes_api.router)
    app.include_router(mpi.router)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StillProcessing, _still_processing)
    app.add_exception_handler(Refused, _refused)
    app.add_exception_handler(Exception, _internal_error)
    return app


def _is_fhir(request: Request) -> bool:
    return request.url.path.startswith("/fhir")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if _is_fhir(request):
        code = {404: "not-found", 405: "not-supported", 406: "not-supported"}.get(exc.status_code, "processing")
        text = {
            404: "no such resource type or interaction", 405: "method not allowed here",
            406: "none of the accepted media types can be produced: accept application/fhir+json or application/fhir+xml",
        }.get(exc.status_code, "request failed")
        return fhir.operation_outcome(exc.status_code, code, text)
    return JSONResponse({"detail": exc.detail}, exc.status_code, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> Response:
    if _is_fhir(request):
        return fhir.operation_outcome(400, "invalid", "the request is malformed")
    return JSONResponse({"detail": "the request is malformed"}, 400)


async def _refused(request: Request, exc: Exception) -> Response:
    """An operator's action the hub cannot do (steward action, resend, replay): its status and reason."""
    assert isinstance(exc, Refused)
    return JSONResponse({"detail": exc.text}, exc.status)


async def _still_processing(request: Request, exc: Exception) -> Response:
    """A write stored but not processed within the door's bound (another hub process holds the
    processing lock): 503 + Retry-After. It will be applied; a conditional retry is safe."""
    text = "the request is stored and will be applied, but is not processed yet; retry later (conditional requests are safe to retry)"
    if _is_fhir(request):
        response = fhir.operation_outcome(503, "transient", text)
    else:
        response = JSONResponse({"detail": text}, 503)
    response.headers["Retry-After"] = "2"
    return response


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Only the exception class is logged: messages of database errors can carry patient data.
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    if _is_fhir(request):
        return fhir.operation_outcome(500, "exception", "internal error; the request was not completed")
    return JSONResponse({"detail": "internal error"}, 500)
