"""FHIR R4 (4.0.1) REST API: `router` (mounted at /fhir) and `operation_outcome` for the app's error handlers.

Every FHIR route first checks that the client accepts a format we produce (406 otherwise). Type and
system history come before the other routes, whose `/{type}/{id}` and `/{type}` patterns would take them."""

from fastapi import APIRouter, Depends

from hub.api.fhir import history, mpi_ops, routes
from hub.api.fhir.wire import acceptable, fhir_response, operation_outcome

router = APIRouter(dependencies=[Depends(acceptable)])
router.include_router(routes.writes)  # POST/PUT/DELETE: no other route takes these paths
router.include_router(history.router)
router.include_router(mpi_ops.router)  # golden records, Patient.link, $match, $ihe-pix: ahead of /{type}/{id}
router.include_router(routes.router)

__all__ = ["fhir_response", "operation_outcome", "router"]
