"""HL7 v2 acknowledgements (chapter 2.9 and 2.15): MSA and ERR built from the stored outcome.

Original mode (the default) answers every message with AA/AE/AR whatever MSH-15/16 say:
many senders fill them with AL/NE and still expect an AA. Enhanced mode, opt-in per
listener, honours MSH-15 (commit ACK: CA/CE/CR) and MSH-16 (application ACK).
"""

from __future__ import annotations

import itertools
import os
import time
from datetime import datetime
from enum import StrEnum

from adapters.inbound.hl7v2.er7 import Delimiters, Er7Message
from adapters.inbound.hl7v2.reader import version_of
from hub.messages import Outcome, Problem, Status
from mappings.hl7v2 import table


class AckMode(StrEnum):
    ORIGINAL = "original"
    ENHANCED = "enhanced"


APPLICATION_CODE = {Status.ACCEPTED: "AA", Status.ERROR: "AE", Status.REJECTED: "AR"}
_DEFAULT_VERSION = "2.5.1"
_counter = itertools.count(1)
_prefix = f"{os.getpid() % 10000:04d}{int(time.time()) % 100000:05d}"


def next_control_id() -> str:
    """Unique per process run and short enough for MSH-10 in every version (≤ 20)."""
    return f"A{_prefix}{next(_counter) % 10**10:010d}"


def acks_for(message: Er7Message | None, outcome: Outcome, mode: AckMode = AckMode.ORIGINAL) -> list[str]:
    """The acknowledgements to send back for one message, in order (none, one, or commit + application)."""
    code = APPLICATION_CODE[outcome.status] if outcome.stored else "AR"
    problems = list(outcome.problems)
    if not outcome.stored:
        problems = [Problem("207", "the message could not be stored; send it again later")]
    if mode is AckMode.ORIGINAL or message is None:
        return [build_ack(message, code, problems)]
    accept_type, app_type = message.msh.get(15), message.msh.get(16)
    if not accept_type and not app_type:
        return [build_ack(message, code, problems)]
    commit = "CA" if outcome.stored and outcome.status is not Status.REJECTED else ("CE" if not outcome.stored else "CR")
    acks = []
    commit_sent = _wanted(accept_type or "AL", commit == "CA")
    if commit_sent:
        acks.append(build_ack(message, commit, [] if commit == "CA" else problems))
    # After a CE (resend) or CR the commit ACK has said everything; an application ACK
    # would read as a final answer to a message the sender must still act on.
    if (commit == "CA" or not commit_sent) and _wanted(app_type or "NE", code == "AA"):
        acks.append(build_ack(message, code, problems))
    return acks


def _wanted(condition: str, success: bool) -> bool:
    """MSH-15/16 (table 0155): AL always, NE never, ER only on error, SU only on success."""
    return condition == "AL" or (condition == "ER" and not success) or (condition == "SU" and success)


def escape(text: str, d: Delimiters) -> str:
    """Escape delimiters in free text placed into an ACK (the escape character first)."""
    out = text.replace(d.escape, f"{d.escape}E{d.escape}")
    for char, name in ((d.field, "F"), (d.component, "S"), (d.subcomponent, "T"), (d.repetition, "R")):
        out = out.replace(char, f"{d.escape}{name}{d.escape}")
    return out.replace("\r", " ").replace("\n", " ")


def build_ack(message: Er7Message | None, code: str, problems: list[Problem]) -> str:
    """One ACK message as ER7 text (segments joined by \\r, no MLLP framing)."""
    d = message.delimiters if message else Delimiters()
    msh = message.msh if message else None
    version_field = msh.raw(12) if msh and msh.raw(12) else _DEFAULT_VERSION
    version = version_of(msh) if msh and version_of(msh) else _DEFAULT_VERSION
    trigger = msh.get(9, 2) if msh else ""
    msg_type = f"ACK{d.component}{trigger}{d.component}ACK" if version >= "2.3.1" else f"ACK{d.component}{trigger}"
    if not trigger and version < "2.3.1":
        msg_type = "ACK"
    now = datetime.now().strftime("%Y%m%d%H%M%S")
    fields = [
        "MSH", d.encoding_characters,
        msh.raw(5) if msh else "", msh.raw(6) if msh else "",
        msh.raw(3) if msh else "", msh.raw(4) if msh else "",
        now, "", msg_type, next_control_id(), (msh.raw(11) if msh else "") or "P", version_field,
    ]
    if msh and msh.raw(18):
        fields += ["", "", "", "", "", msh.raw(18)]
    control_id = msh.raw(10) if msh else ""
    old_style = version < "2.5"
    text = "; ".join(p.text for p in problems)
    msa = ["MSA", code, control_id]
    if old_style and text:
        msa.append(escape(text, d))
    segments = [d.field.join(fields), d.field.join(msa)]
    segments += [_err_segment(p, d, old_style) for p in problems]
    return "\r".join(segments)


def _err_segment(problem: Problem, d: Delimiters, old_style: bool) -> str:
    error_text = table("error_codes").get(problem.code, "Application error")
    location = (problem.location or "").replace("^", d.component)
    err3 = d.component.join([problem.code, error_text, "HL70357"])
    err1 = ""
    if old_style:  # v2.4 and earlier read ERR-1 (ELD): location^code&text&table
        parts = (location.split(d.component) + ["", "", ""])[:3]
        err1 = d.component.join([*parts, d.subcomponent.join([problem.code, error_text, "HL70357"])])
    return d.field.join(["ERR", err1, location, err3, "E", "", "", "", escape(problem.text, d)])
