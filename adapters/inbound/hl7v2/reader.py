"""One HL7 v2 frame → an `InboundMessage`: the ACK policy (AA/AE/AR) and the canonical event.

The policy is the issue's, exactly: AR when the frame is not a message the hub takes
(no MSH, MSH-9/10/12 unusable, unsupported type or version); AE when it is one but the
patient content is unusable (no PID, no PID-3 value, bad PID-7, PID-8 outside table 0001);
AA otherwise, Z-segments and extra fields included.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from adapters.inbound.hl7v2.er7 import Er7Error, Er7Message, Segment, decode_frame
from hub.messages import InboundMessage, Problem, Status
from hub.model import PatientEvent
from mappings.hl7v2 import segments, table
from mappings.hl7v2.datatypes import InvalidDate, partial_date

log = logging.getLogger("hub.hl7v2")


@dataclass(slots=True)
class Hl7Frame:
    """A read frame: the decoded message (if readable) and what the core needs."""

    message: Er7Message | None
    inbound: InboundMessage


def read_frame(raw: bytes, feed: str, *, with_content: bool = True) -> Hl7Frame:
    """Decode and judge a frame; with `with_content`, also map it to its canonical event.

    The ACK path only judges (mapping waits until the message is stored and processed), and it
    must answer every frame: a reader defect becomes an AR (207), logged by class only."""
    if with_content:
        return _read_frame(raw, feed, with_content=True)
    try:
        return _read_frame(raw, feed, with_content=False)
    except Exception as exc:  # noqa: BLE001 — never leave a sender without an ACK
        log.error("reading a frame failed (%s); answered AR", type(exc).__name__)
        problem = Problem("207", "the message could not be read", "MSH")
        return Hl7Frame(None, InboundMessage(raw, feed, "hl7v2", Status.REJECTED, [problem]))


def _read_frame(raw: bytes, feed: str, *, with_content: bool) -> Hl7Frame:
    try:
        message = decode_frame(raw)
    except Er7Error as exc:
        problem = Problem("100", str(exc), "MSH")
        return Hl7Frame(None, InboundMessage(raw, feed, "hl7v2", Status.REJECTED, [problem]))
    msh = message.msh
    inbound = InboundMessage(
        raw=raw,
        feed=feed,
        format="hl7v2",
        status=Status.ACCEPTED,
        sender=f"{msh.raw(3)}|{msh.raw(4)}",
        control_id=msh.get(10) or None,
        message_type="^".join(p for p in (msh.get(9, 1), msh.get(9, 2)) if p) or None,
    )
    problems = _envelope_problems(msh)
    if problems:
        inbound.status, inbound.problems = Status.REJECTED, problems
        return Hl7Frame(message, inbound)
    problems = _content_problems(message)
    if problems:
        inbound.status, inbound.problems = Status.ERROR, problems
        return Hl7Frame(message, inbound)
    if with_content:
        inbound.events = [to_event(message)]
    else:
        inbound.content = lambda: [to_event(message)]
    return Hl7Frame(message, inbound)


def read_message(raw: bytes, feed: str) -> InboundMessage:
    """The HL7 v2 reader the pipeline uses to process a stored message."""
    return read_frame(raw, feed).inbound


def version_of(msh: Segment) -> str:
    return msh.get(12, 1)


def _supported_version(version: str) -> bool:
    parts = version.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts):
        return False
    return parts[0] == "2" and 2 <= int(parts[1]) <= 8


def _envelope_problems(msh: Segment) -> list[Problem]:
    msg_type, trigger = msh.get(9, 1), msh.get(9, 2)
    if not msg_type:
        return [Problem("101", "MSH-9 (message type) is empty", "MSH^1^9")]
    if not msh.get(10):
        return [Problem("101", "MSH-10 (message control ID) is empty", "MSH^1^10")]
    version = version_of(msh)
    if not version:
        return [Problem("101", "MSH-12 (version ID) is empty", "MSH^1^12")]
    if not _supported_version(version):
        return [Problem("203", f"MSH-12 version {version[:10]} is not supported (2.2 to 2.8 are)", "MSH^1^12")]
    events = table("supported_events")
    if msg_type not in events:
        return [Problem("200", f"message type {msg_type[:3]} is not supported", "MSH^1^9")]
    if trigger not in events[msg_type]:
        return [Problem("201", f"trigger event {msg_type[:3]}^{trigger[:3]} is not supported", "MSH^1^9^1^2")]
    return []


def _content_problems(message: Er7Message) -> list[Problem]:
    pid = message.first("PID")
    if pid is None:
        return [Problem("100", "required segment PID is missing", "PID")]
    problems = []
    if not any(pid.part(rep, 1).strip() for rep in pid.repetitions(3)):
        problems.append(Problem("101", "PID-3 (patient identifier list) has no identifier value", "PID^1^3"))
    if pid.get(7):
        try:
            partial_date(pid.get(7))
        except InvalidDate:
            problems.append(Problem("102", "PID-7 (date of birth) is not a valid date", "PID^1^7"))
    if pid.get(8) and pid.get(8) not in table("sex"):
        problems.append(Problem("103", "PID-8 (administrative sex) is not in HL7 table 0001", "PID^1^8"))
    if message.msh.get(9, 2) == "A40":
        mrg = message.first("MRG")
        if mrg is None or not any(mrg.part(rep, 1).strip() for rep in mrg.repetitions(1)):
            problems.append(Problem("101", "MRG-1 (prior patient identifier) is missing", "MRG^1^1"))
    return problems


def default_system(message: Er7Message) -> str:
    """Identifier system for a CX without an assigning authority: the sending facility, else application."""
    facility = message.msh.get(4, 1) or message.msh.get(3, 1) or "unknown"
    return f"urn:hub:aa:{facility}"


def to_event(message: Er7Message) -> PatientEvent:
    """The canonical content of an accepted message."""
    msh = message.msh
    msg_type, trigger = msh.get(9, 1), msh.get(9, 2)
    system = default_system(message)
    pid = message.first("PID")
    assert pid is not None  # guaranteed by _content_problems
    patient, cleared = segments.patient(pid, system)
    event = PatientEvent(event=f"{msg_type}^{trigger}", patient=patient, cleared=cleared)
    pv1 = message.first("PV1")
    if pv1 is not None:
        event.encounter = segments.encounter(pv1, system, trigger)
    if trigger == "A40":
        mrg = message.first("MRG")
        event.merged_identifier = segments.identifier(mrg, mrg.repetitions(1)[0], system) if mrg else None
    if msg_type in ("ORU", "ORM", "OML"):
        _add_orders_and_results(message, event)
    if msg_type == "DFT":
        visit = event.encounter.visit_number.value if event.encounter and event.encounter.visit_number else None
        event.charges = [c for ft1 in message.all("FT1") if (c := segments.charge(ft1, visit))]
    if msg_type == "SIU":
        sch = message.first("SCH")
        if sch is not None:
            event.appointment = segments.appointment(sch, message.first("AIL"), trigger)
    return event


def _add_orders_and_results(message: Er7Message, event: PatientEvent) -> None:
    """Walk ORC/OBR/OBX/NTE in order: each OBR opens an order, OBX results belong to it, NTE notes to the OBX before."""
    orc = obr = None
    pending_obx: Segment | None = None
    notes: list[str] = []

    def flush_obx() -> None:
        nonlocal pending_obx, notes
        if pending_obx is not None:
            current = event.orders[-1] if event.orders else None
            obs = segments.observation(
                pending_obx, notes, current.placer_number if current else None, current.filler_number if current else None
            )
            if obs:
                event.observations.append(obs)
        pending_obx, notes = None, []

    for seg in message.segments:
        if seg.name == "ORC":
            flush_obx()
            orc, obr = seg, None
        elif seg.name == "OBR":
            flush_obx()
            obr = seg
            event.orders.append(segments.order(orc, obr))
        elif seg.name == "OBX":
            flush_obx()
            pending_obx = seg
        elif seg.name == "NTE" and pending_obx is not None:
            notes.append(seg.get(3))
    flush_obx()
    if orc is not None and obr is None and not event.orders:
        event.orders.append(segments.order(orc, None))
