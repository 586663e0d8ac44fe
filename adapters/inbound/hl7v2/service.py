"""The HL7 v2 door: frames in, ACKs out. The core is reached only through `accept`."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from adapters.inbound.hl7v2.reader import Hl7Frame, read_frame
from adapters.outbound.hl7v2.ack import APPLICATION_CODE, AckMode, acks_for
from hub.messages import InboundMessage, Outcome, Problem, Status

Accept = Callable[[InboundMessage], Awaitable[Outcome]]

_BATCH_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")
_LINE = re.compile(rb"\r\n|\r|\n")


@dataclass(slots=True)
class Answer:
    """The ACKs for one message and the application code they carry (AA/AE/AR)."""

    acks: list[str]
    code: str
    charset: str

    def encoded(self) -> list[bytes]:
        return [ack.encode(self.charset, errors="replace") for ack in self.acks]


class Hl7v2Door:
    def __init__(self, accept: Accept, feed: str, mode: AckMode = AckMode.ORIGINAL) -> None:
        self.accept = accept
        self.feed = feed
        self.mode = mode

    def with_feed(self, feed: str) -> Hl7v2Door:
        return Hl7v2Door(self.accept, feed, self.mode)

    async def answer(self, raw: bytes, mode: AckMode | None = None) -> Answer:
        read = read_frame(raw, self.feed, with_content=False)
        outcome = await self.accept(read.inbound)
        return _answer(read, outcome, mode or self.mode)

    async def on_frame(self, raw: bytes) -> list[bytes]:
        return (await self.answer(raw)).encoded()

    async def on_oversize(self, head: bytes) -> list[bytes]:
        """A frame over the size limit: stored as its first bytes, rejected with AR."""
        read = read_frame(head, self.feed, with_content=False)
        problem = Problem("100", "the frame exceeds the listener's maximum frame size", "MSH")
        seen = read.inbound
        inbound = InboundMessage(
            head, self.feed, "hl7v2", Status.REJECTED, [problem],
            sender=seen.sender, control_id=seen.control_id, message_type=seen.message_type,
        )
        outcome = await self.accept(inbound)
        return _answer(Hl7Frame(read.message, inbound), outcome, AckMode.ORIGINAL).encoded()

    async def answer_all(self, raw: bytes) -> list[Answer]:
        """A single message or an FHS/BHS batch: each message inside is processed as if sent alone."""
        return [await self.answer(message, AckMode.ORIGINAL) for message in split_batch(raw)]


def _answer(read: Hl7Frame, outcome: Outcome, mode: AckMode) -> Answer:
    code = APPLICATION_CODE[outcome.status] if outcome.stored else "AR"
    charset = read.message.charset if read.message else "utf-8"
    return Answer(acks_for(read.message, outcome, mode), code, charset)


def split_batch(raw: bytes) -> list[bytes]:
    """Messages of an HL7 batch file (FHS/BHS … BTS/FTS), or [raw] when it is not a batch."""
    stripped = raw.lstrip(b" \t\r\n\x00\x0b")
    lines = _LINE.split(stripped)
    if not stripped.startswith((b"FHS", b"BHS")) and sum(line.startswith(b"MSH") for line in lines) <= 1:
        return [raw]
    messages: list[list[bytes]] = []
    for line in lines:
        if not line.strip() or line[:3] in _BATCH_SEGMENTS:
            continue
        if line.startswith(b"MSH") or not messages:
            messages.append([])
        messages[-1].append(line)
    return [b"\r".join(lines) for lines in messages]


def batch_reply(answers: list[Answer]) -> str:
    """ACKs of a batch wrapped in BHS/BTS, in the order the messages came."""
    if len(answers) == 1:
        return "\r".join(answers[0].acks)
    body = [ack for a in answers for ack in a.acks]
    return "\r".join(["BHS|^~\\&", *body, f"BTS|{len(body)}"])
