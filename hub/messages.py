"""What crosses the boundary between an inbound adapter and the core.

An adapter turns bytes into an `InboundMessage` (its verdict and canonical content);
the core stores it, processes it and answers with an `Outcome`. Neither side knows
the other's protocol: the core never sees MLLP or HTTP, adapters never see storage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from hub.model import PatientEvent


class Status(StrEnum):
    ACCEPTED = "accepted"
    """Stored and usable (HL7 AA)."""
    ERROR = "error"
    """Stored, readable, but the content is unusable (HL7 AE)."""
    REJECTED = "rejected"
    """Stored as bytes only: not a message the hub can take (HL7 AR)."""


class Refused(Exception):
    """An operator's action the hub cannot do (a steward action, a resend): `status` is what an API
    answers with, `text` why, naming ids and states only, never patient values."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a message was not accepted. `text` names fields, never patient data."""

    code: str
    """HL7 table 0357 code (e.g. "102") for HL7 v2; an OperationOutcome issue code for FHIR."""
    text: str
    location: str | None = None
    """Where: `PID^1^7` for HL7 v2, `Patient.birthDate` for FHIR, a column for CSV."""

    def as_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "text": self.text, "location": self.location}


@dataclass(slots=True)
class InboundMessage:
    raw: bytes
    feed: str
    """Which door and listener it came through (`mllp`, `http`, `file`, a CSV feed name …)."""
    format: str
    status: Status
    problems: list[Problem] = field(default_factory=list)
    sender: str | None = None
    control_id: str | None = None
    message_type: str | None = None
    events: list[PatientEvent] = field(default_factory=list)
    """The canonical content: one event for an HL7 v2 message, one per row or entry for a CSV
    chunk or a FHIR Bundle. Empty until the adapter has mapped the content."""
    context: dict[str, Any] | None = None
    """What the door needs, besides the bytes, to read the message again at processing (stored with
    it): for FHIR the interaction (method, resource type, id, conditions, content type)."""
    content: Callable[[], list[PatientEvent]] | None = None
    """The events, mapped when called: a door that decoded the message to judge it but left the mapping
    for processing (HL7 v2, to keep ACKs fast) hands over what it decoded, so processing in this process
    does not decode the stored bytes again. Memory only; processing elsewhere reads the bytes."""

    def take_content(self) -> None:
        """Map what the door decoded (see `content`), once."""
        if self.content is not None:
            self.events, self.content = self.content(), None

    @property
    def dedupe_key(self) -> str | None:
        """Same sender and control id = the same message re-sent."""
        if not (self.sender and self.control_id):
            return None
        return f"{self.format}\x1f{self.sender}\x1f{self.control_id}"


@dataclass(frozen=True, slots=True)
class Outcome:
    message_id: int | None
    status: Status
    problems: tuple[Problem, ...] = ()
    duplicate_of: int | None = None
    """Set when this was a re-send: the status and problems are the original's."""
    stored: bool = True
