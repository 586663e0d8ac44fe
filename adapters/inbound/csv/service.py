"""The CSV door: a file (or an upload) in, chunks to the core, a summary and a report out.

Each chunk of rows (1,000 by default) becomes ONE stored message: `format="csv"`,
`feed=<mapping feed>`, `raw=<header line + the chunk's rows, verbatim>`, one `PatientEvent`
per accepted row. Its dedupe key is (feed, sha256 of the chunk's bytes + chunk index), so a
file imported twice is a re-send: the hub stores the second copy as a duplicate and processes
nothing again. The core is reached only through `accept`.

Backpressure: the importer never runs more than `max_ahead` chunks ahead of processing, so
neither the import nor the hub holds more than a few chunks in memory whatever the file size.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from adapters.inbound.csv.mapping import Mapping, register
from adapters.inbound.csv.reader import Issue, MappedRow, RowMapper, open_csv
from hub.messages import InboundMessage, Outcome, Status

Accept = Callable[[InboundMessage], Awaitable[Outcome]]
WaitProcessed = Callable[[int, float], bool]
"""(message id, timeout) → True once everything up to that message has been processed."""

CHUNK_ROWS = 1000


@dataclass(slots=True)
class Summary:
    rows_read: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0
    """Rows of chunks the hub already had (a re-imported file): nothing is processed again."""
    warnings: int = 0
    chunks: int = 0
    not_stored: int = 0
    delimiter: str = ","
    encoding: str = "utf-8"
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "rows_read": self.rows_read, "accepted": self.accepted, "rejected": self.rejected,
            "duplicates": self.duplicates, "warnings": self.warnings, "chunks": self.chunks,
            "not_stored": self.not_stored, "delimiter": self.delimiter, "encoding": self.encoding,
            "seconds": round(self.seconds, 3),
        }

    def line(self) -> str:
        rate = self.rows_read / self.seconds if self.seconds else 0.0
        return (
            f"rows read: {self.rows_read}, accepted: {self.accepted}, rejected: {self.rejected}, "
            f"duplicates: {self.duplicates}, warnings: {self.warnings} ({self.seconds:.1f} s, {rate:,.0f} rows/s)"
        )


@dataclass(slots=True)
class ReportEntry:
    line: int
    kind: str
    """`rejected` or `warning`."""
    column: str | None
    reason: str
    raw: bytes = b""


@dataclass(slots=True)
class Chunk:
    index: int
    raw: bytes
    rows: list[MappedRow] = field(default_factory=list)


def chunks(mapping: Mapping, stream: BinaryIO, encoding: str | None, delimiter: str | None, size: int) -> tuple[dict[str, str], Iterator[Chunk]]:
    """Open the file (raises CsvFileError when it cannot be processed) and iterate its chunks."""
    opened = open_csv(stream, encoding or mapping.encoding, delimiter or mapping.delimiter)
    mapper = RowMapper(mapping, opened.header)

    def generate() -> Iterator[Chunk]:
        rows: list[MappedRow] = []
        index = 0
        for row in opened.rows:
            rows.append(mapper.map(row))
            if len(rows) >= size:
                yield Chunk(index, opened.header_raw + b"".join(r.raw for r in rows), rows)
                rows, index = [], index + 1
        if rows:
            yield Chunk(index, opened.header_raw + b"".join(r.raw for r in rows), rows)

    return {"encoding": opened.encoding, "delimiter": opened.delimiter}, generate()


def to_message(mapping: Mapping, chunk: Chunk) -> InboundMessage:
    digest = hashlib.sha256(chunk.raw).hexdigest()
    return InboundMessage(
        raw=chunk.raw, feed=mapping.feed, format="csv", status=Status.ACCEPTED,
        sender=mapping.feed, control_id=f"{digest}:{chunk.index}", message_type=f"CSV^{mapping.resource}",
        events=[r.event for r in chunk.rows if r.event is not None],
    )


async def import_csv(
    stream: BinaryIO,
    mapping: Mapping,
    accept: Accept,
    *,
    encoding: str | None = None,
    delimiter: str | None = None,
    chunk_rows: int = CHUNK_ROWS,
    report: Callable[[ReportEntry], None] | None = None,
    progress: Callable[[Summary], None] | None = None,
    wait_processed: WaitProcessed | None = None,
    max_ahead: int = 8,
) -> Summary:
    """Import one CSV stream. Raises CsvFileError (before anything is stored) when the file cannot
    be processed; bad rows only go to `report`. Parsing runs on a worker thread (the event loop
    stays free for the hub's other doors)."""
    started = time.monotonic()
    effective = mapping.with_overrides(encoding, delimiter)
    dialect, iterator = await asyncio.to_thread(chunks, effective, stream, None, None, chunk_rows)
    # The processing stage re-reads stored chunks with the mapping of their feed: this one,
    # with the encoding and delimiter actually used.
    register(effective.with_overrides(dialect["encoding"], dialect["delimiter"]))
    summary = Summary(delimiter=dialect["delimiter"], encoding=dialect["encoding"])
    stored_ids: list[int] = []
    done = object()
    while True:
        chunk = await asyncio.to_thread(next, iterator, done)
        if chunk is done:
            break
        assert isinstance(chunk, Chunk)
        summary.chunks += 1
        ok = 0
        for row in chunk.rows:
            summary.rows_read += 1
            if row.reject is not None:
                summary.rejected += 1
                if report:
                    report(ReportEntry(row.line, "rejected", row.reject.column, row.reject.reason, row.raw))
            else:
                ok += 1
            summary.warnings += len(row.warnings)
            if report:
                for w in row.warnings:
                    report(ReportEntry(w.line, "warning", w.column, w.reason))
        outcome = await accept(to_message(effective, chunk))
        if not outcome.stored:
            summary.not_stored += ok
        elif outcome.duplicate_of is not None:
            summary.duplicates += ok
        else:
            summary.accepted += ok
            if outcome.message_id is not None:
                stored_ids.append(outcome.message_id)
        if wait_processed and len(stored_ids) > max_ahead:
            await _wait(wait_processed, stored_ids[-max_ahead - 1])
            del stored_ids[: -max_ahead]
        summary.seconds = time.monotonic() - started
        if progress:
            progress(summary)
    if wait_processed and stored_ids:
        await _wait(wait_processed, stored_ids[-1])
    summary.seconds = time.monotonic() - started
    return summary


async def _wait(wait_processed: WaitProcessed, message_id: int) -> None:
    while not await asyncio.to_thread(wait_processed, message_id, 1.0):
        pass


def issue_dict(issue: Issue | ReportEntry) -> dict[str, object]:
    return {"line": issue.line, "column": issue.column, "reason": issue.reason}
