"""What crosses the boundary between the core and the outbound side (issue 5).

Processing hands every processed event to the routes as a `RoutedEvent`; the routes answer with
the `Outbound` messages to write to the outbox, built *now*, from this event's data (a late or
replayed delivery never sends a newer state under an older event). Delivery later hands an
`Outbound` to its `Destination`'s transport and records the `DeliveryAnswer`.

Like `hub.messages` on the inbound side, nothing here knows MLLP, HTTP, files or storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from hub.model import PatientEvent


@dataclass(frozen=True, slots=True)
class RoutedEvent:
    """One processed event, as route filters and profiles see it."""

    message_id: int
    event_index: int
    """Position of the event in its message (a CSV chunk or a FHIR Bundle carries many)."""
    feed: str
    format: str
    """hl7v2 | fhir | csv: the door it came through (filters may use it; profiles must not need it)."""
    event: PatientEvent
    patient_key: str
    """`system|value` of the patient's source record: the per-patient ordering key."""
    patient_record_id: str | None = None
    enterprise_id: str | None = None
    """The person the patient's source record is linked to (None until the MPI has linked it)."""
    identifiers: tuple[tuple[str, str], ...] = ()
    """Every (system, value) of the person's source records, for PID-3 / Patient.identifier."""
    facility: str | None = None
    """MSH-4 for HL7 v2 (the sending facility); None for other doors."""
    accepted_at: datetime | None = None
    """When the hub accepted the message: outbound MSH-7/EVN-2 come from it, so a rebuild of the same
    event (retry, replay dry-run) gives the same bytes. None = the time of building."""
    has_open_orders: bool | None = None
    """Whether the patient has open orders (the lab's "demographic updates for patients with open
    orders" rule). Needs state: the caller fills it (one query per batch); None = unknown, and the
    route condition `has_open_orders` then does not match."""

    @property
    def message_type(self) -> str:
        return self.event.event.split("^", 1)[0]

    @property
    def trigger(self) -> str:
        parts = self.event.event.split("^")
        return parts[1] if len(parts) > 1 else ""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 10
    initial_delay: float = 1.0
    max_delay: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.2
    """± fraction of each delay, so that a destination coming back is not hit by every retry at once."""
    on_error: Literal["retry", "dead"] = "retry"
    """MLLP AE/CE (application error): retry, or dead-letter at once. AR/CR and HTTP 4xx are permanent."""


@dataclass(frozen=True, slots=True)
class Destination:
    name: str
    transport: Literal["mllp", "http", "file"]
    profile: str
    """A built-in profile (ehr, lab, billing) or a mapping file."""
    format: Literal["hl7v2", "fhir", "csv", "json"] = "hl7v2"
    version: str = "2.5.1"
    host: str | None = None
    port: int | None = None
    tls: bool = False
    tls_ca: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    directory: str | None = None
    connect_timeout: float = 5.0
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    ordering: Literal["per_patient", "strict"] = "per_patient"
    connections: int = 4
    """At most this many messages in flight to the destination per worker (different patients in
    parallel; a strict destination always has one)."""
    options: dict[str, str] = field(default_factory=dict)
    """Profile options (e.g. lab `orders: OML^O21`; MSH-3..6 `sending_application` …), checked
    against what the profile declares when the routes are loaded."""
    on_poison: Literal["block", "skip"] = "skip"
    """After the last attempt: skip (dead-letter it, go on with the patient's next message) or block
    the patient's queue (strict: the destination's) until a person resolves it."""


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message for one destination, ready to send; written to the outbox with the processing."""

    destination: str
    route: str
    ordering_key: str
    """Per-patient FIFO key (RoutedEvent.patient_key); the destination name for strict FIFO."""
    idempotency_key: str
    """Stable across retries and replays of the same event to the same destination (MSH-10,
    X-Request-Id, conditional update identifier)."""
    content_type: str
    payload: bytes
    summary: str
    """What it is, for listings and logs: e.g. `ADT^A01`, `Bundle(transaction)` — never patient data."""
    error: str | None = None
    """Set when the message could not be built (a profile failed on the event): the row is written
    dead (`last_code` build-error) with this text — the exception class and the route and destination
    names, never data — so processing still commits and a resend after a fix rebuilds it."""
    blocking: bool = False
    """With `error`: the destination's `on_poison: block` holds the patient's later messages back."""


@dataclass(frozen=True, slots=True)
class DeliveryAnswer:
    ok: bool
    retry: bool
    """False when the failure is permanent (AR/CR, HTTP 4xx): no point trying again."""
    code: str
    """MSA-1, the HTTP status, or `timeout` / `refused` / `io-error`."""
    detail: str = ""
    """The receiver's error text (ERR/MSA-3 or an OperationOutcome's diagnostics), truncated."""
