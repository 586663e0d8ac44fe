"""What an event is about, from its content: so every door's events reach the profiles.

HL7 v2 events say it with their message type; a FHIR Patient update (`FHIR^update^Patient`) or a
CSV row (`CSV^encounter`) says it with the records it carries. Profiles ask these questions
instead of looking at the message type or the door.
"""

from __future__ import annotations

from hub.outbound import RoutedEvent

_OTHER_HL7 = frozenset({"ORU", "ORM", "OML", "DFT", "SIU"})
"""HL7 v2 message types that have their own outbound message: never re-told as ADT."""


def adt_trigger(event: RoutedEvent) -> str | None:
    """The ADT trigger that tells this event: an HL7 ADT's own; for a patient or encounter update from
    another door A03 when the encounter is finished, else A08; None for anything else."""
    if event.message_type == "ADT":
        return event.trigger
    content = event.event
    if event.message_type in _OTHER_HL7 or content.patient is None:
        return None
    if content.request is not None and content.request.method in ("delete", "read"):
        return None  # a deletion is not an update to tell (the lead may add A23/A29 later)
    if content.observations or content.orders or content.appointment is not None:
        return None
    return "A03" if content.encounter is not None and content.encounter.status == "finished" else "A08"


def has_results(event: RoutedEvent) -> bool:
    return bool(event.event.observations) and event.message_type not in ("ORM", "OML")


def has_orders(event: RoutedEvent) -> bool:
    return bool(event.event.orders) and not event.event.observations


def has_charges(event: RoutedEvent) -> bool:
    return bool(event.event.charges)
