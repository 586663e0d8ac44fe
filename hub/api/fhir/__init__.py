"""FHIR R4 (4.0.1) REST API: `router` (mounted at /fhir) and `operation_outcome` for the app's error handlers."""

from hub.api.fhir.routes import router
from hub.api.fhir.wire import fhir_response, operation_outcome

__all__ = ["fhir_response", "operation_outcome", "router"]
