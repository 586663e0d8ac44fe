"""HL7 v2 DT / TS / DTM values → partial dates and datetimes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mappings.hl7v2.datatypes import InvalidDate, optional_timestamp, partial_date, timestamp

# --- partial_date -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1980", "1980"),
        ("198004", "1980-04"),
        ("19800402", "1980-04-02"),
        ("198004021230", "1980-04-02"),
        ("19800402123045", "1980-04-02"),
        ("19800402123045.1234", "1980-04-02"),
        ("19800402123045+0100", "1980-04-02"),
        ("19800402-0500", "1980-04-02"),
        ("  19800402  ", "1980-04-02"),
        ("0001", "0001"),
    ],
)
def test_partial_date_keeps_the_precision_sent_down_to_the_day(value, expected):
    assert partial_date(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("20240229", id="leap-year"),
        pytest.param("20000229", id="leap-year-divisible-by-400"),
        pytest.param("20231231", id="last-day-of-year"),
        pytest.param("20230131", id="january-31"),
        pytest.param("20230430", id="april-30"),
    ],
)
def test_partial_date_accepts_real_calendar_days(value):
    assert partial_date(value) == f"{value[:4]}-{value[4:6]}-{value[6:]}"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("20231301", id="month-13"),
        pytest.param("202313", id="month-13-without-day"),
        pytest.param("202300", id="month-0"),
        pytest.param("19800231", id="february-31"),
        pytest.param("20230229", id="february-29-non-leap-year"),
        pytest.param("19000229", id="february-29-century-non-leap"),
        pytest.param("20230431", id="april-31"),
        pytest.param("20230100", id="day-0"),
        pytest.param("20230132", id="day-32"),
    ],
)
def test_partial_date_rejects_dates_not_in_the_calendar(value):
    with pytest.raises(InvalidDate):
        partial_date(value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("80", id="two-digit-year"),
        pytest.param("1980-04-02", id="iso-format"),
        pytest.param("02.04.1980", id="german-format"),
        pytest.param("1980040", id="odd-length"),
        pytest.param("1980O402", id="letter-o"),
        pytest.param("19800402^D", id="ts-with-precision-component"),
        pytest.param("19800402+01", id="short-offset"),
    ],
)
def test_partial_date_rejects_values_that_are_not_hl7_dates(value):
    with pytest.raises(InvalidDate):
        partial_date(value)


def test_invalid_date_is_a_value_error():
    assert issubclass(InvalidDate, ValueError)


# --- timestamp ----------------------------------------------------------------------------------


def test_timestamp_without_offset_is_naive():
    assert timestamp("20240301101530") == datetime(2024, 3, 1, 10, 15, 30)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240301", datetime(2024, 3, 1)),
        ("2024030110", datetime(2024, 3, 1, 10)),
        ("202403011015", datetime(2024, 3, 1, 10, 15)),
        ("20240301101530.1234", datetime(2024, 3, 1, 10, 15, 30)),
    ],
)
def test_timestamp_fills_missing_time_parts_with_zero(value, expected):
    assert timestamp(value) == expected


@pytest.mark.parametrize(
    ("value", "local", "offset"),
    [
        ("20240301101530+0100", datetime(2024, 3, 1, 10, 15, 30), timedelta(hours=1)),
        ("20240301101530-0500", datetime(2024, 3, 1, 10, 15, 30), timedelta(hours=-5)),
        ("20240301101530+0530", datetime(2024, 3, 1, 10, 15, 30), timedelta(hours=5, minutes=30)),
        ("20240301101530-0930", datetime(2024, 3, 1, 10, 15, 30), -timedelta(hours=9, minutes=30)),
        ("20240301101530+0000", datetime(2024, 3, 1, 10, 15, 30), timedelta(0)),
        ("202403011015+0200", datetime(2024, 3, 1, 10, 15), timedelta(hours=2)),
        ("20240301+0100", datetime(2024, 3, 1), timedelta(hours=1)),
    ],
)
def test_timestamp_keeps_the_senders_utc_offset(value, local, offset):
    result = timestamp(value)
    assert result.utcoffset() == offset
    assert result.replace(tzinfo=None) == local


def test_timestamps_with_offsets_compare_as_instants():
    assert timestamp("20240301101530+0100") == timestamp("20240301091530+0000")
    utc = datetime(2024, 3, 1, 15, 15, 30, tzinfo=timezone.utc)
    assert timestamp("20240301101530-0500").astimezone(timezone.utc) == utc


@pytest.mark.parametrize("value", ["2024", "202403", "2024+0100"])
def test_timestamp_without_a_day_is_none(value):
    assert timestamp(value) is None


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("20240230", id="february-30"),
        pytest.param("20241301", id="month-13"),
        pytest.param("2024030125", id="hour-25"),
        pytest.param("202403011060", id="minute-60"),
        pytest.param("20240301101561", id="second-61"),
        pytest.param("2024-03-01T10:15:30", id="iso-format"),
    ],
)
def test_timestamp_rejects_impossible_or_foreign_values(value):
    with pytest.raises(InvalidDate):
        timestamp(value)


# --- optional_timestamp -------------------------------------------------------------------------


def test_optional_timestamp_reads_a_good_value():
    eastern = timezone(timedelta(hours=-5))
    assert optional_timestamp("20240301101530-0500") == datetime(2024, 3, 1, 10, 15, 30, tzinfo=eastern)


@pytest.mark.parametrize("value", ["", "20240230", "2024030125", "yesterday", "2024"])
def test_optional_timestamp_drops_unusable_values(value):
    assert optional_timestamp(value) is None


@pytest.mark.parametrize("value", ["20240301101530+2400", "20240301101530-2500", "20240301101530+9999"])
def test_optional_timestamp_drops_an_impossible_utc_offset(value):
    # Regression: the offset used to be turned into a timezone outside the try, so datetime.timezone's
    # plain ValueError escapes instead of InvalidDate, and optional fields (PV1-44, PID-29, OBX-14 …)
    # crash the whole message instead of being dropped.
    assert optional_timestamp(value) is None
