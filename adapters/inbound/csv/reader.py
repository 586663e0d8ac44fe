"""CSV bytes → rows → canonical `PatientEvent`s, streaming (memory stays flat whatever the file size).

- Encoding: UTF-8 by default (a BOM is recognised and skipped), or the one given (`latin-1` …).
  Bytes that are not valid in that encoding make their row a reject, never the file.
- Delimiter: `,`, `;`, `|` or tab, detected from the header line (the one that occurs most),
  unless given.
- Quoted fields may hold delimiters, quotes (`""`) and newlines; a row's line number is the
  physical line it starts on (the header is line 1).
- Each row keeps its raw bytes: a chunk stored by the hub is the header line plus its rows, verbatim,
  and `read_chunk` maps it again, identically, when the pipeline processes it.

Reject reasons and warnings name the column and the rule, never the value.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from itertools import chain
from typing import BinaryIO

from adapters.inbound.csv.mapping import Column, Mapping, find_by_feed
from hub.messages import InboundMessage, Status
from hub.model import Charge, CodeableConcept, Encounter, Identifier, PatientEvent

BOM = b"\xef\xbb\xbf"
CANDIDATE_DELIMITERS = (",", ";", "\t", "|")
MAX_FIELD = 131_072


class CsvFileError(ValueError):
    """The file cannot be processed at all (no header, a mapped column missing …). Names no values."""


@dataclass(slots=True)
class RawRow:
    line: int
    fields: list[str] | None
    raw: bytes
    error: str | None = None


@dataclass(slots=True)
class Issue:
    line: int
    column: str | None
    reason: str


@dataclass(slots=True)
class MappedRow:
    line: int
    raw: bytes
    event: PatientEvent | None
    reject: Issue | None = None
    warnings: list[Issue] = field(default_factory=list)


class _Lines:
    """Physical lines of a binary stream, decoded; keeps the raw bytes of the row being read."""

    __slots__ = ("_it", "_buf", "_bad", "_encoding")

    def __init__(self, lines: Iterator[bytes], encoding: str) -> None:
        self._it = lines
        self._buf: list[bytes] = []
        self._bad = False
        self._encoding = encoding

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self._it)
        self._buf.append(line)
        try:
            return line.decode(self._encoding)
        except UnicodeDecodeError:
            self._bad = True
            return line.decode(self._encoding, errors="replace")

    def take(self) -> tuple[bytes, bool]:
        raw, bad = b"".join(self._buf), self._bad
        self._buf.clear()
        self._bad = False
        return raw, bad


def detect_delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in CANDIDATE_DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


@dataclass(slots=True)
class CsvStream:
    """An open CSV file: its header (names and raw bytes), dialect, and an iterator over its rows."""

    header: list[str]
    header_raw: bytes
    delimiter: str
    encoding: str
    rows: Iterator[RawRow]


def open_csv(stream: BinaryIO, encoding: str | None = None, delimiter: str | None = None) -> CsvStream:
    first = stream.readline()
    if first.startswith(BOM):
        encoding = "utf-8"
    encoding = encoding or "utf-8"
    if not first.strip(b"\r\n\t ,;|" + BOM):
        raise CsvFileError("the file is empty or its first line is not a header")
    try:
        first_text = first.decode(encoding)
    except UnicodeDecodeError:
        raise CsvFileError(f"the header line is not valid {encoding} (give the file's encoding)") from None
    delimiter = delimiter or detect_delimiter(first_text)
    lines = _Lines(chain([first], stream), encoding)
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = next(reader)
    except (csv.Error, StopIteration):
        raise CsvFileError("the header line is malformed") from None
    header_raw, _ = lines.take()
    header = [h.replace("\ufeff", "").strip() for h in header]
    return CsvStream(header, header_raw, delimiter, encoding, _rows(reader, lines, len(header)))


def _csv_error_reason(exc: csv.Error) -> str:
    text = str(exc)
    if "NUL" in text:
        return "malformed row: it contains a NUL byte"
    if "field larger" in text:
        return f"malformed row: a field is longer than {MAX_FIELD} characters (unbalanced quotes?)"
    return "malformed row: the CSV quoting is broken"


def _rows(reader: Iterator[list[str]], lines: _Lines, width: int) -> Iterator[RawRow]:
    previous = reader.line_num  # type: ignore[attr-defined]
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raw, _ = lines.take()
            yield RawRow(previous + 1, None, raw, _csv_error_reason(exc))
            previous = reader.line_num  # type: ignore[attr-defined]
            continue
        raw, bad = lines.take()
        start, previous = previous + 1, reader.line_num  # type: ignore[attr-defined]
        if not any(f.strip() for f in fields):
            continue  # a blank line (or one of empty cells only, as spreadsheets export) is not a row
        if b"\x00" in raw:  # PostgreSQL cannot store NUL in text or JSON
            yield RawRow(start, None, raw, "malformed row: it contains a NUL byte")
        elif bad:
            yield RawRow(start, None, raw, "malformed row: bytes not valid in the file's encoding (give --encoding)")
        elif len(fields) != width:
            yield RawRow(start, None, raw, f"malformed row: {len(fields)} fields where the header has {width}")
        else:
            yield RawRow(start, fields, raw)


# ---- row → canonical ------------------------------------------------------------------------

class _Invalid(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


_FAST = {"%Y": r"(?P<Y>\d{4})", "%m": r"(?P<m>\d{1,2})", "%d": r"(?P<d>\d{1,2})",
         "%H": r"(?P<H>\d{1,2})", "%M": r"(?P<M>\d{1,2})", "%S": r"(?P<S>\d{1,2})"}


@lru_cache(maxsize=64)
def _fast_pattern(fmt: str) -> re.Pattern[str] | None:
    """A regex equivalent to strptime for formats made only of %Y %m %d %H %M %S and literals
    (strptime costs ~10 µs a call); None for any other format (then strptime is used)."""
    out, i = [], 0
    while i < len(fmt):
        if fmt[i] == "%":
            part = _FAST.get(fmt[i:i + 2])
            if part is None or part in out:
                return None
            out.append(part)
            i += 2
        else:
            out.append(re.escape(fmt[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _strptime(value: str, fmt: str) -> datetime:
    pattern = _fast_pattern(fmt)
    if pattern is None:
        return datetime.strptime(value, fmt)
    match = pattern.match(value)
    if match is None:
        raise ValueError(fmt)
    g = match.groupdict()
    return datetime(int(g["Y"]), int(g.get("m") or 1), int(g.get("d") or 1), int(g.get("H") or 0), int(g.get("M") or 0), int(g.get("S") or 0))


def _parse_date(value: str, formats: tuple[str, ...]) -> date:
    for fmt in formats:
        try:
            return _strptime(value, fmt).date()
        except ValueError:
            continue
    raise _Invalid("is not a valid date in the mapping's formats")


def _parse_datetime(value: str, formats: tuple[str, ...]) -> datetime:
    for fmt in formats:
        try:
            return _strptime(value, fmt)
        except ValueError:
            continue
    raise _Invalid("is not a valid date/time in the mapping's formats")


def _code(value: str, col: Column, allowed: tuple[str, ...] | None = None) -> str:
    if col.codes is not None:
        mapped = col.codes.get(value)
        if mapped is None:
            folded = {k.casefold(): v for k, v in col.codes.items()}
            mapped = folded.get(value.casefold())
        if mapped is None:
            raise _Invalid("holds a code that is not in the mapping's map")
        return mapped
    if allowed is not None:
        if value.lower() not in allowed:
            raise _Invalid(f"holds a code outside {'/'.join(allowed)}")
        return value.lower()
    return value


class RowMapper:
    """A mapping bound to one header: column positions resolved once, then row after row."""

    def __init__(self, mapping: Mapping, header: list[str]) -> None:
        self.mapping = mapping
        positions = {name: i for i, name in reversed(list(enumerate(header)))}
        missing = sorted({f"{c.key} → {c.column}" for c in mapping.columns() if c.column not in positions})
        if missing:
            raise CsvFileError("mapped column(s) missing from the header: " + ", ".join(missing))
        self.pos = positions
        self.today = date.today()

    def map(self, row: RawRow) -> MappedRow:
        if row.fields is None:
            return MappedRow(row.line, row.raw, None, Issue(row.line, None, row.error or "malformed row"))
        mapping = self.mapping
        cells = row.fields
        warnings: list[Issue] = []

        def cell(col: Column) -> str | None:
            value = cells[self.pos[col.column]].strip()
            return value or None

        def parsed(col: Column | None, parse):  # type: ignore[no-untyped-def]
            if col is None:
                return None
            value = cell(col)
            if value is None:
                return None
            try:
                return parse(value, col)
            except _Invalid as exc:
                warnings.append(Issue(row.line, col.column, f"{col.column} ({col.key}) {exc.reason}"))
                return None

        ident = mapping.identifier
        value = cell(ident)
        if value is None:
            return MappedRow(row.line, row.raw, None, Issue(row.line, ident.column, f"{ident.column} (identifier) is empty"))
        if len(value) > 200:
            return MappedRow(row.line, row.raw, None, Issue(row.line, ident.column, f"{ident.column} (identifier) is longer than 200 characters"))

        p = mapping.patient
        text = lambda v, c: v  # noqa: E731
        identifiers = [{"system": ident.system, "value": value, "type": ident.type}]
        national = parsed(p.get("national_id"), text)
        if national:
            identifiers.append({"system": p["national_id"].system, "value": national, "type": p["national_id"].type or "SS"})
        names = []
        family, given, middle = parsed(p.get("family"), text), parsed(p.get("given"), text), parsed(p.get("middle"), text)
        prefix, suffix = parsed(p.get("prefix"), text), parsed(p.get("suffix"), text)
        if family or given or middle:
            names.append({
                "use": "official", "family": family, "given": [g for g in (given, middle) if g],
                "prefix": [prefix] if prefix else [], "suffix": [suffix] if suffix else [],
            })
        birth = parsed(p.get("birth_date"), self._birth_date)
        gender = parsed(p.get("gender"), lambda v, c: _code(v, c, ("male", "female", "other", "unknown")))
        telecoms = []
        for key, system, use in (("phone", "phone", "home"), ("mobile", "phone", "mobile"), ("work_phone", "phone", "work"), ("email", "email", None)):
            col = p.get(key)
            v = parsed(col, self._email if system == "email" else text)
            if v:
                telecoms.append({"system": system, "value": v, "use": col.use if col and col.use else use})
        addresses = []
        joined = " ".join(v for c in mapping.address_lines if (v := cell(c)))
        lines = [joined] if joined else []
        parts = {k: parsed(c, text) for k, c in mapping.address.items()}
        if lines or any(parts.values()):
            addresses.append({"line": lines, **{k: v for k, v in parts.items() if v}})
        patient = {
            "identifiers": identifiers, "names": names, "birth_date": birth.isoformat() if birth else None, "gender": gender,
            "addresses": addresses, "telecoms": telecoms,
            "marital_status": parsed(p.get("marital_status"), _code), "language": parsed(p.get("language"), _code),
        }
        # One validation of the whole event (nested dicts) costs a fraction of one per model.
        event = PatientEvent.model_validate({"event": f"CSV^{mapping.resource}", "patient": patient})
        if mapping.encounter:
            event.encounter = self._encounter(parsed)
        if mapping.charge:
            charge = self._charge(parsed, event.encounter)
            if charge is None:
                col = mapping.charge["code"]
                if mapping.resource == "charge":
                    return MappedRow(row.line, row.raw, None, Issue(row.line, col.column, f"{col.column} (charge.code) is empty"), warnings)
            else:
                event.charges = [charge]
        if warnings and mapping.on_invalid == "reject_row":
            first = warnings[0]
            return MappedRow(row.line, row.raw, None, Issue(row.line, first.column, first.reason + " (on_invalid: reject_row)"))
        return MappedRow(row.line, row.raw, event, None, warnings)

    def _birth_date(self, value: str, col: Column) -> date:
        parsed = _parse_date(value, col.formats)
        if parsed > self.today:
            raise _Invalid("is a date in the future")
        if parsed.year < 1850:
            raise _Invalid("is a date before 1850")
        return parsed

    @staticmethod
    def _email(value: str, col: Column) -> str:
        if "@" not in value or " " in value:
            raise _Invalid("is not an e-mail address")
        return value

    def _encounter(self, parsed) -> Encounter:  # type: ignore[no-untyped-def]
        e = self.mapping.encounter
        text = lambda v, c: v  # noqa: E731
        visit = parsed(e.get("visit_number"), text)
        return Encounter(
            visit_number=Identifier(system=e["visit_number"].system, value=visit, type=e["visit_number"].type or "VN") if visit else None,
            patient_class=parsed(e.get("patient_class"), _code),
            status=parsed(e.get("status"), lambda v, c: _code(v, c, ("planned", "arrived", "in-progress", "finished", "cancelled", "unknown"))) or "unknown",
            location=parsed(e.get("location"), text),
            attending=parsed(e.get("attending"), text),
            admitted_at=parsed(e.get("admitted_at"), lambda v, c: _parse_datetime(v, c.formats)),
            discharged_at=parsed(e.get("discharged_at"), lambda v, c: _parse_datetime(v, c.formats)),
        )

    def _charge(self, parsed, encounter: Encounter | None) -> Charge | None:  # type: ignore[no-untyped-def]
        c = self.mapping.charge
        text = lambda v, col: v  # noqa: E731
        code = parsed(c.get("code"), text)
        if code is None:
            return None
        return Charge(
            transaction_id=parsed(c.get("transaction_id"), text),
            code=CodeableConcept(code=code, system=c["code"].system, display=parsed(c.get("display"), text)),
            quantity=parsed(c.get("quantity"), _decimal),
            amount=parsed(c.get("amount"), _decimal),
            date=parsed(c.get("date"), lambda v, col: _parse_datetime(v, col.formats)),
            visit_number=encounter.visit_number.value if encounter and encounter.visit_number else None,
        )


def _decimal(value: str, col: Column) -> Decimal:
    try:
        number = Decimal(value.replace(" ", ""))
    except InvalidOperation:
        raise _Invalid("is not a number") from None
    if not number.is_finite():
        raise _Invalid("is not a number")
    return number


# ---- the pipeline's reader: a stored chunk → its events ---------------------------------------

def read_chunk(raw: bytes, feed: str) -> InboundMessage:
    """Re-read a stored chunk (header line + rows, verbatim) with the mapping of its feed.

    Raises LookupError when no mapping has this feed (registered in-process or in
    `mappings/csv/`): the pipeline then marks the chunk failed, and it is not retried."""
    mapping = find_by_feed(feed)
    if mapping is None:
        raise LookupError("no CSV mapping has this feed")
    opened = open_csv(io.BytesIO(raw), mapping.encoding, mapping.delimiter)
    mapper = RowMapper(mapping, opened.header)
    events = [m.event for row in opened.rows if (m := mapper.map(row)).event is not None]
    return InboundMessage(raw, feed, "csv", Status.ACCEPTED, sender=feed, message_type=f"CSV^{mapping.resource}", events=events)
