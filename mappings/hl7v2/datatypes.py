"""HL7 v2 date/time (DT, TS, DTM) values → canonical partial dates and datetimes."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

_DTM = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?(?:\.\d{1,4})?"
    r"(?P<tz>[+-]\d{4})?$"
)


class InvalidDate(ValueError):
    pass


def _match(value: str) -> re.Match[str]:
    # TS is DTM^precision: only the first component carries the time.
    m = _DTM.match(value.strip())
    if not m:
        raise InvalidDate("not an HL7 date/time")
    return m


def partial_date(value: str) -> str:
    """`YYYY[MM[DD[HHMM…]]]` → `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, checked against the calendar."""
    m = _match(value)
    year, month, day = int(m["y"]), m["mo"], m["d"]
    if month is None:
        return f"{year:04d}"
    if not 1 <= int(month) <= 12:
        raise InvalidDate("month out of range")
    if day is None:
        return f"{year:04d}-{month}"
    try:
        date(year, int(month), int(day))
    except ValueError as exc:
        raise InvalidDate("day out of range") from exc
    if m["h"] is not None:
        timestamp(value)  # the time part must be a real time too (no hour 25)
    return f"{year:04d}-{month}-{day}"


def timestamp(value: str) -> datetime | None:
    """A DTM with at least a day → datetime (naive unless the sender gave an offset); else None."""
    m = _match(value)
    if m["d"] is None:
        return None
    try:
        tz = None
        if m["tz"]:
            sign = 1 if m["tz"][0] == "+" else -1
            tz = timezone(sign * timedelta(hours=int(m["tz"][1:3]), minutes=int(m["tz"][3:5])))
        return datetime(
            int(m["y"]), int(m["mo"]), int(m["d"]),
            int(m["h"] or 0), int(m["mi"] or 0), int(m["s"] or 0), tzinfo=tz,
        )
    except ValueError as exc:
        raise InvalidDate("date/time out of range") from exc


def optional_timestamp(value: str) -> datetime | None:
    """Like `timestamp`, but an unusable value in an optional field is dropped, not fatal."""
    if not value:
        return None
    try:
        return timestamp(value)
    except InvalidDate:
        return None
