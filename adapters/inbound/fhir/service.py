"""The FHIR door: request bodies in, the core's results out. The core is reached only through `submit`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from adapters.inbound.fhir.reader import read_request
from hub.messages import InboundMessage, Outcome

Submit = Callable[[InboundMessage], Awaitable[tuple[Outcome, Any]]]


class FhirDoor:
    def __init__(self, submit: Submit, feed: str = "fhir") -> None:
        self.submit = submit
        self.feed = feed

    async def write(self, raw: bytes, context: dict[str, Any]) -> tuple[InboundMessage, Outcome, Any]:
        """Judge the request, have it stored (rejected ones too) and, if accepted, processed; the
        processing result says, per entry, what was written (or why not)."""
        inbound = read_request(raw, self.feed, context)
        outcome, result = await self.submit(inbound)
        return inbound, outcome, result
