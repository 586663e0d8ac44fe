"""Routed events from the HL7 v2 corpus, read by the real inbound reader (shared by outbound tests).

The enterprise id and the person's other source identifiers are invented, as the MPI would give them."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from adapters.inbound.hl7v2.reader import read_message
from hub.model import source_identifier
from hub.outbound import RoutedEvent

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "hl7v2"
ACCEPTED_AT = datetime(2024, 3, 12, 8, 15, 30, tzinfo=timezone.utc)
ENTERPRISE_ID = "P00000042"
OTHER_RECORD = ("urn:oid:2.999.7.7", "OTH-0099")


def routed(name: str, *, message_id: int = 1234, event_index: int = 0, feed: str = "mllp", **changes: Any) -> RoutedEvent:
    """The corpus message `name` as processing hands it to the routes."""
    inbound = read_message((CORPUS / name).read_bytes(), feed)
    assert inbound.events, f"{name} has no event"
    event = inbound.events[0]
    own = source_identifier(event.patient) if event.patient else None
    values: dict[str, Any] = {
        "message_id": message_id, "event_index": event_index, "feed": feed, "format": "hl7v2", "event": event,
        "patient_key": f"{own.system}|{own.value}" if own else "none", "patient_record_id": "rec-1",
        "enterprise_id": ENTERPRISE_ID,
        "identifiers": ((own.system, own.value), OTHER_RECORD) if own and own.system else (OTHER_RECORD,),
        "facility": inbound.sender.split("|", 1)[1] if inbound.sender else None,
        "accepted_at": ACCEPTED_AT,
    }
    values.update(changes)
    return RoutedEvent(**values)
