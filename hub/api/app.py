"""The HTTP application: routers for each door plus errors that never leak internals."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from hub.api import admin, csv, fhir, health, hl7v2

if TYPE_CHECKING:
    from hub.bootstrap import Hub

log = logging.getLogger("hub.api")


def create_app(hub: Hub) -> FastAPI:
    app = FastAPI(title="hl7-hub", version="0.1.0", docs_url="/docs", redoc_url=None)
    app.state.hub = hub
    app.include_router(health.router)
    app.include_router(hl7v2.router)
    app.include_router(csv.router)
    app.include_router(fhir.router)
    app.include_router(admin.router)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    return app


def _is_fhir(request: Request) -> bool:
    return request.url.path.startswith("/fhir")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if _is_fhir(request):
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
        text = {404: "no such resource type or interaction", 405: "method not allowed here"}.get(exc.status_code, "request failed")
        return fhir.operation_outcome(exc.status_code, code, text)
    return JSONResponse({"detail": exc.detail}, exc.status_code, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: Exception) -> Response:
    if _is_fhir(request):
        return fhir.operation_outcome(400, "invalid", "the request is malformed")
    return JSONResponse({"detail": "the request is malformed"}, 400)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Only the exception class is logged: messages of database errors can carry patient data.
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    if _is_fhir(request):
        return fhir.operation_outcome(500, "exception", "internal error; the request was not completed")
    return JSONResponse({"detail": "internal error"}, 500)
