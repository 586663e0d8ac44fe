"""MPI link changes told to the EHRs that need them: a data steward's merge, link, unlink or
"not a match" changes which identifiers belong to one patient, and an EHR that was told the old
ones must hear of it, or it keeps two charts for one person (or one chart for two).

Who needs to hear (the rule): an EHR destination *knows* a source record when the hub sent it
something about it — an outbox row under the record's ordering key that is pending, sending or
delivered, or a delivered row since pruned (`hub.store.outbox.known_destinations`). Every message
about a record carried the whole identifier list of its person (PID-3 / Patient.identifier: every
source identifier and the enterprise id), so an EHR that knows a record was shown its person's
list. It is told when a list it was shown is now wrong — an identifier it holds was retired, or
moved to another person, or an identifier left its person. A list that only *grew* by records the
EHR never heard of (the survivor of a merge, the person a record joins) wrongs nothing it holds:
it hears nothing, and learns the new list with the next message about that person. An EHR that
knows none of the records involved hears nothing.

What it is told (HL7 v2.5.1, chapter 3):

- merge (person S folded into T): ADT^A40 "merge patient – patient identifier list" to every EHR
  that knows one of S's records, whether or not it also knows T's. PID-3 carries the survivor's
  identifiers (its source identifiers and enterprise id T), MRG-1 the retired one (`S^^^HUB^PI`).
  A40 says the MRG-1 identifier is no longer to be used and everything filed under it belongs to the
  PID-3 patient — what an EHR holding a chart under S needs, whether it has a T chart to fold it into
  (both known) or not (it only learns S's chart is now T's: the merge into an absent survivor
  amounts to a change of identifiers). An A31 with T's identifiers would not do for an EHR that
  knows only S: it describes a patient it never heard of, and an EHR keyed on the enterprise id
  opens a second chart beside the stale S one — the duplicate the notice exists to prevent. (A47
  "change patient identifier list" is for one incorrect identifier value within a list, not a
  person retired into another; the ehr profile does not build it.)
- a record R moved from person P to Q — `unlink` (R matched again), `link` (R pinned into Q), or
  `not-a-match` between two records of one person (R, the first, leaves and is matched again):
  ADT^A31 "update person information" for each person whose list changed, PID-3 showing it as it is
  now: for Q (with R, R's demographics) to every EHR that knows R; for P (without R) to every EHR
  that knows R or one of P's remaining records. A24/A37 (link/unlink patient information) were
  considered and not used: they link or unlink two PID-3 identifiers *at the receiver*, records
  kept distinct, which says nothing of the enterprise id that changed; and A37 names both
  identifiers, which for an EHR that knew only one of them would introduce the other. A31 tells
  each EHR the complete, current list of a person it knows. When R was P's last record, P is
  retired into Q (its person is inactive, merged into Q): that is a merge for the EHRs that know R,
  and they get the ADT^A40 of P into Q instead.
- `not-a-match` between records already in different persons, or a link that leaves the record
  where it was, changes no identifiers: nothing is sent.

HL7 v2 EHR destinations get those messages built by their profile. FHIR EHR destinations (format
fhir) get the same notices as the profile's transaction bundle of conditional updates, built from
the person's stored golden record: `PUT Patient?identifier=urn:hub:enterprise-id|<id>` carrying the
person's current identifiers (A31, and the survivor of an A40), and for an A40 also the retired
person's Patient, inactive, `link` replaced-by the survivor. Rows are written in the steward
action's transaction (a rolled-back action sends nothing). Each EHR's notice goes under the ordering
key of a record that EHR knows (for a merge, one of the merged-away records), so it leaves after
the messages already queued for that record there (per-destination FIFO cannot order it against
every key of the person). Idempotency keys start with `L` and come from the action's link event id,
so they never collide with `H…` keys of routed messages.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from hub.model import Identifier, Patient, PatientEvent
from hub.outbound import Destination, Outbound, RoutedEvent
from hub.routing.table import control_id
from hub.store.outbox import known_destinations, patient_ordering_keys
from hub.store.uow import RecordRow, UnitOfWork, utcnow

log = logging.getLogger("hub.delivery")

ROUTE = "mpi-link-change"
"""The `route` of notice rows (there is no route in the file for them)."""
ENTERPRISE_AUTHORITY = "HUB"
ENTERPRISE_SYSTEM = "urn:hub:enterprise-id"
NOTICE_FORMATS = ("hl7v2", "fhir")


@dataclass(frozen=True, slots=True)
class Notice:
    """One message to tell: a person's identifiers as they are now, to the EHRs in `to`."""

    trigger: str
    """ADT^A40 or ADT^A31."""
    person: str
    to: Mapping[str, str]
    """Destination → the record (one it knows) whose ordering key the notice goes under."""
    prefer: str | None = None
    """The record whose demographics an HL7 v2 notice carries (else the most recently updated one)."""
    avoid: Collection[str] = ()
    merged: str | None = None
    """A40: the retired enterprise id (MRG-1)."""


@dataclass(frozen=True, slots=True)
class Change:
    """What a steward action did to the links, in records and persons."""

    about: str
    """The record whose latest link event numbers the notices."""
    retired: str | None = None
    """A merge: the person folded into `survivor` (its records are `moved`)."""
    survivor: str | None = None
    moved: tuple[str, ...] = ()
    record: str | None = None
    """A move: the record that left `previous` for `person`."""
    previous: str | None = None
    person: str | None = None
    involved: set[str] = field(default_factory=set)


def notify_link_change(uow: UnitOfWork, action: str, result: dict[str, Any]) -> dict[str, Any]:
    """Write the notices for a steward action (`merge`, `unlink`, `link` or `not_match`, with the
    action's result) to the outbox in the caller's transaction; returns the result unchanged (the
    steward returns it). No routes (a unit of work without `routing.table`), no EHR destination or no
    EHR that knows the records involved: nothing is written."""
    routing = getattr(uow, "routing", None)
    table = getattr(routing, "table", None)
    if table is None or not hasattr(table, "build_notice"):
        return result
    targets = {d.name: d for d in table.destinations.values() if d.profile == "ehr" and d.format in NOTICE_FORMATS}
    change = _change(uow, action, result)
    if not targets or change is None:
        return result
    strict = [name for name, d in targets.items() if d.ordering == "strict"]
    known = known_destinations(uow.outbox.conn, change.involved, list(targets), strict)
    notices = _notices(uow, change, known)
    if not notices:
        return result
    at = utcnow()
    link_event = _last_link_event(uow, change.about)
    rows: list[tuple[int | None, int, Outbound]] = []
    for n, notice in enumerate(notices):
        rows += _rows(uow, table, targets, notice, n, link_event, at)
    uow.outbox.add(rows, at)
    log.info("MPI %s: %d notice(s) queued for EHR destinations", action, len(rows))
    return result


def _change(uow: UnitOfWork, action: str, result: dict[str, Any]) -> Change | None:
    """The action's result as a change of links; None when no identifiers changed."""
    if action == "merge":
        moved = tuple(result.get("records") or ())
        if not moved:
            return None
        return Change(about=moved[0], retired=result["merged"], survivor=result["person"], moved=moved,
                      involved=set(moved))
    if action not in ("unlink", "link", "not_match"):
        raise ValueError(f"no notices for MPI action {action!r}")
    # not_match: `previous_person` only when the two records shared a person (the steward says so)
    record, previous, person = result["record"], result.get("previous_person"), result["person"]
    if previous is None or previous == person:
        return None
    remaining = set(uow.mpi.record_ids_of(previous))
    return Change(about=record, record=record, previous=previous, person=person, involved=remaining | {record})


def _notices(uow: UnitOfWork, change: Change, known: Mapping[str, set[str]]) -> list[Notice]:
    """Who hears what (the rule in the module docstring)."""
    if change.retired is not None:
        assert change.survivor is not None
        to = _first_known(change.moved, known)
        return [Notice("ADT^A40", change.survivor, to, avoid=change.moved, merged=change.retired)] if to else []
    assert change.record is not None and change.previous is not None and change.person is not None
    record = change.record
    remaining = sorted(change.involved - {record})
    knows_record = {d: record for d in known.get(record, ())}
    if not remaining:  # the record was its person's last: the person is retired into the other
        return [Notice("ADT^A40", change.person, knows_record, prefer=record, merged=change.previous)] if knows_record else []
    notices = []
    if knows_record:
        notices.append(Notice("ADT^A31", change.person, knows_record, prefer=record))
    left = {**knows_record, **_first_known(remaining, known)}
    if left:
        notices.append(Notice("ADT^A31", change.previous, left, avoid=(record,)))
    return notices


def _first_known(record_ids: Sequence[str], known: Mapping[str, set[str]]) -> dict[str, str]:
    """Destination → the first of these records it knows (its notice's ordering key)."""
    to: dict[str, str] = {}
    for record_id in sorted(record_ids):
        for destination in sorted(known.get(record_id, ())):
            to.setdefault(destination, record_id)
    return to


def _rows(
    uow: UnitOfWork, table: Any, targets: Mapping[str, Destination], notice: Notice, n: int, link_event: int,
    at: datetime,
) -> list[tuple[int | None, int, Outbound]]:
    keys = patient_ordering_keys(uow.conn, sorted(set(notice.to.values())))
    events = {fmt: _person_event(uow, notice, at, fmt) for fmt in {targets[d].format for d in notice.to}}
    rows: list[tuple[int | None, int, Outbound]] = []
    for name in sorted(notice.to):
        event = events[targets[name].format]
        key = keys.get(notice.to[name])
        if event is None or key is None:
            continue
        idempotency_key = "L" + control_id(link_event, n, name)[1:]
        outbound = table.build_notice(replace(event, patient_key=key), name, ROUTE, idempotency_key)
        if outbound is not None:
            rows.append((None, n, outbound))
    return rows


def _person_event(uow: UnitOfWork, notice: Notice, at: datetime, fmt: str) -> RoutedEvent | None:
    """The person as one event, PID-3 / Patient.identifier every source identifier of the person.

    HL7 v2: the demographics of one of its records (`prefer`, else the most recently updated one not
    in `avoid`), as routed messages carry a record's own. FHIR: the person's golden record, since the
    conditional update replaces the enterprise id's Patient whole."""
    rows = [r for r in uow.records.get_many(uow.mpi.record_ids_of(notice.person)).values() if not r.deleted]
    if not rows:
        return None
    chosen = _choose(rows, notice.prefer, notice.avoid)
    patient = Patient.model_validate(chosen.data)
    merged = None
    if fmt == "fhir":
        person = uow.mpi.persons([notice.person]).get(notice.person)
        if person is not None and person.data:
            patient = Patient.model_validate(person.data)
        if notice.merged:
            merged = Identifier(system=ENTERPRISE_SYSTEM, value=notice.merged, assigner=ENTERPRISE_AUTHORITY)
    elif notice.merged:
        merged = Identifier(value=notice.merged, assigner=ENTERPRISE_AUTHORITY, type="PI")
    return RoutedEvent(
        message_id=0, event_index=0, feed="mpi", format="mpi",
        event=PatientEvent(event=notice.trigger, patient=patient, merged_identifier=merged),
        patient_key=f"{chosen.source_system}|{chosen.source_value}", patient_record_id=chosen.id,
        enterprise_id=notice.person, identifiers=tuple(uow.mpi.identifiers([notice.person])[notice.person]), accepted_at=at,
    )


def _choose(rows: Sequence[RecordRow], prefer: str | None, avoid: Collection[str]) -> RecordRow:
    for row in rows:
        if row.id == prefer:
            return row
    kept = [r for r in rows if r.id not in avoid] or list(rows)
    return max(kept, key=lambda r: (r.updated_at, r.id))


def _last_link_event(uow: UnitOfWork, record_id: str | None) -> int:
    """The id of the action's link event (the latest of a record it moved): a stable, unique number
    for the notices' idempotency keys."""
    events = uow.mpi.events_for(record_id) if record_id else []
    return int(events[-1]["id"]) if events else 0
