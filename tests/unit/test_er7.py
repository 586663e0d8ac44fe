"""ER7 reading: delimiters, segment separators, escapes, character sets, nulls and MSH numbering.

All data is fictional. No I/O.
"""

from __future__ import annotations

import codecs

import pytest

from adapters.inbound.hl7v2.er7 import Delimiters, Er7Error, decode_frame, read_delimiters

MSH = b"MSH|^~\\&|NWADT|NORTHWIND|HUB|HUBFAC|20240301101500||ADT^A01^ADT_A01|MSG00001|P|2.5.1"


def message(*segments: bytes, msh: bytes = MSH, sep: bytes = b"\r") -> bytes:
    return sep.join([msh, *segments]) + sep


def msh_with_charset(charset: bytes) -> bytes:
    """MSH with MSH-13..17 empty and MSH-18 set."""
    return MSH + b"|||||" + b"|" + charset if charset else MSH


def charset_of(name: str) -> str:
    return codecs.lookup(name).name


# --- delimiters (MSH-1 / MSH-2) -------------------------------------------------------------


def test_standard_delimiters_are_read_from_msh():
    assert decode_frame(message()).delimiters == Delimiters("|", "^", "~", "\\", "&", "")


def test_hash_as_field_separator_is_honoured():
    raw = (
        b"MSH#^~\\&#NWADT#NORTHWIND#HUB#HUBFAC#20240301101500##ADT^A01#MSG00002#P#2.5.1\r"
        b"PID#1##MRN4471^^^NORTHWIND^MR##Quillfeather^Ottoline\r"
    )
    msg = decode_frame(raw)
    pid = msg.first("PID")
    assert msg.delimiters.field == "#"
    assert msg.msh.get(10) == "MSG00002"
    assert pid.get(3) == "MRN4471"
    assert pid.get(5, 2) == "Ottoline"


def test_unusual_but_legal_encoding_characters_are_honoured():
    # Component '$', repetition '*', escape '/', subcomponent '@'.
    raw = (
        b"MSH|$*/@|NWADT|NORTHWIND|HUB|HUBFAC|20240301101500||ADT$A01|MSG00003|P|2.5.1\r"
        b"PID|1||A1$$$NW@2.999.1$MR*B2$$$NW||Quill/S/feather$Ottoline\r"
    )
    msg = decode_frame(raw)
    pid = msg.first("PID")
    assert msg.delimiters == Delimiters("|", "$", "*", "/", "@", "")
    assert msg.msh.get(9, 2) == "A01"
    assert pid.get(3, 4, 2) == "2.999.1"
    assert pid.get(3, repetition=1) == "B2"
    assert pid.get(5) == "Quill$feather"  # /S/ is the escaped component separator '$'


def test_v27_truncation_character_is_the_fifth_encoding_character():
    raw = message(b"PID|1||MRN#4471^^^NORTHWIND^MR", msh=MSH.replace(b"^~\\&", b"^~\\&#").replace(b"2.5.1", b"2.7"))
    msg = decode_frame(raw)
    assert msg.delimiters == Delimiters("|", "^", "~", "\\", "&", "#")
    assert msg.delimiters.encoding_characters == "^~\\&#"
    assert msg.msh.raw(2) == "^~\\&#"
    # '#' is not a separator: the value is read whole, and the following fields keep their numbers.
    assert msg.first("PID").get(3) == "MRN#4471"
    assert msg.msh.get(12) == "2.7"


def test_missing_trailing_encoding_characters_take_the_defaults():
    assert read_delimiters(b"MSH|^~|NWADT|") == Delimiters("|", "^", "~", "\\", "&", "")


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"MSHA^~\\&A", id="alphanumeric-field-separator"),
        pytest.param(b"MSH ^~\\& ", id="space-field-separator"),
        pytest.param(b"MSH|^^\\&|NWADT|", id="repeated-encoding-character"),
        pytest.param(b"MSH|^|NWADT|", id="one-encoding-character"),
        pytest.param(b"MSH|^~\\&#$%|NWADT|", id="more-than-five-encoding-characters"),
    ],
)
def test_unusable_delimiters_are_an_error(head):
    with pytest.raises(Er7Error):
        read_delimiters(head)


# --- segment separators ---------------------------------------------------------------------


@pytest.mark.parametrize("sep", [b"\r", b"\n", b"\r\n"], ids=["CR", "LF", "CRLF"])
def test_segment_separators_cr_lf_and_crlf_give_the_same_segments(sep):
    msg = decode_frame(message(b"EVN|A01|20240301101500", b"PID|1||MRN4471", b"PV1|1|I", sep=sep))
    assert [s.name for s in msg.segments] == ["MSH", "EVN", "PID", "PV1"]
    assert msg.msh.get(12) == "2.5.1"  # no separator residue on the last MSH field
    assert msg.first("PV1").get(2) == "I"


def test_blank_lines_and_leading_whitespace_are_ignored():
    raw = b"\r\n\x00 " + MSH + b"\r\n\r\nPID|1||MRN4471\r\n\r\n"
    msg = decode_frame(raw)
    assert [s.name for s in msg.segments] == ["MSH", "PID"]


# --- escape sequences -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("escaped", "decoded"),
    [
        ("\\F\\", "|"),
        ("\\S\\", "^"),
        ("\\T\\", "&"),
        ("\\R\\", "~"),
        ("\\E\\", "\\"),
        ("A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\F", "A|B^C&D~E\\F"),
        ("\\E\\F\\E\\", "\\F\\"),  # an escaped escape sequence stays literal text
    ],
)
def test_delimiter_escapes_are_decoded(escaped, decoded):
    msg = decode_frame(message(f"NTE|1||{escaped}".encode()))
    assert msg.first("NTE").get(3) == decoded


def test_escaped_delimiters_do_not_split_the_value():
    msg = decode_frame(message(b"PID|1||MRN4471||Smith\\S\\Jones^Ada\\R\\Lou"))
    pid = msg.first("PID")
    assert pid.get(5, 1) == "Smith^Jones"
    assert pid.get(5, 2) == "Ada~Lou"
    assert len(pid.repetitions(5)) == 1


def test_hex_escape_is_utf8_bytes_when_the_charset_is_utf8():
    msg = decode_frame(message(b"PID|1||MRN4471||Z\\XC3A9\\ro^Ottoline", msh=msh_with_charset(b"UNICODE UTF-8")))
    assert msg.first("PID").get(5) == "Zéro"


def test_hex_escape_is_latin1_bytes_when_the_charset_is_8859_1():
    msg = decode_frame(message(b"PID|1||MRN4471||Caf\\XE9\\^Ottoline", msh=msh_with_charset(b"8859/1")))
    assert msg.first("PID").get(5) == "Café"


def test_hex_escape_follows_the_declared_charset_not_a_fixed_one():
    # The same bytes mean different characters in different charsets.
    utf8 = decode_frame(message(b"NTE|1||\\XC3A9\\", msh=msh_with_charset(b"UNICODE UTF-8")))
    latin1 = decode_frame(message(b"NTE|1||\\XC3A9\\", msh=msh_with_charset(b"8859/1")))
    assert utf8.first("NTE").get(3) == "é"
    assert latin1.first("NTE").get(3) == "Ã©"


@pytest.mark.parametrize(
    ("escaped", "decoded"),
    [
        ("first\\.br\\second", "first\nsecond"),
        ("\\H\\important\\N\\ note", "important note"),
        ("a\\.sp\\b", "a\nb"),
        ("\\.ce\\centred", "centred"),
        ("\\Zlocal\\kept", "kept"),  # locally defined escapes are dropped, not shown raw
    ],
)
def test_formatting_escapes(escaped, decoded):
    msg = decode_frame(message(f"NTE|1||{escaped}".encode()))
    assert msg.first("NTE").get(3) == decoded


def test_unterminated_escape_keeps_the_text():
    msg = decode_frame(message(b"NTE|1||50\\ percent"))
    assert msg.first("NTE").get(3) == "50\\ percent"


# --- character sets (MSH-18) ----------------------------------------------------------------


def test_utf8_bytes_with_unicode_utf8_declared():
    msg = decode_frame(message("PID|1||MRN4471||Brontë^Zoë".encode(), msh=msh_with_charset(b"UNICODE UTF-8")))
    assert charset_of(msg.charset) == "utf-8"
    assert msg.charset_fallback is False
    assert msg.first("PID").get(5) == "Brontë"
    assert msg.first("PID").get(5, 2) == "Zoë"


def test_latin1_bytes_with_8859_1_declared():
    msg = decode_frame(message("PID|1||MRN4471||Müller^René".encode("latin-1"), msh=msh_with_charset(b"8859/1")))
    assert charset_of(msg.charset) == "iso8859-1"
    assert msg.charset_fallback is False
    assert msg.first("PID").get(5) == "Müller"


def test_empty_msh18_means_utf8():
    msg = decode_frame(message("PID|1||MRN4471||Brontë^Zoë".encode()))
    assert charset_of(msg.charset) == "utf-8"
    assert msg.charset_fallback is False
    assert msg.first("PID").get(5, 2) == "Zoë"


def test_undeclared_latin1_bytes_fall_back_to_latin1_without_loss():
    msg = decode_frame(message("PID|1||MRN4471||Müller^René".encode("latin-1")))
    assert msg.charset_fallback is True
    assert charset_of(msg.charset) == "iso8859-1"
    assert msg.first("PID").get(5) == "Müller"
    assert msg.first("PID").get(5, 2) == "René"


def test_repeated_msh18_uses_the_first_charset():
    msg = decode_frame(message("PID|1||MRN4471||Müller".encode("latin-1"), msh=msh_with_charset(b"8859/1~ISO IR87")))
    assert charset_of(msg.charset) == "iso8859-1"
    assert msg.charset_fallback is False


# --- values: null, trimming, components, repetitions ------------------------------------------


def test_explicit_null_is_recognised_and_reads_empty():
    msg = decode_frame(message(b'PID|1||MRN4471||Quillfeather^Ottoline||""|F'))
    pid = msg.first("PID")
    assert pid.is_null(7) is True
    assert pid.get(7) == ""
    assert pid.is_null(8) is False
    assert pid.is_null(6) is False  # empty is "not sent", not "delete"


def test_explicit_null_in_a_component_reads_empty():
    msg = decode_frame(message(b'PID|1||MRN4471||Quillfeather^""'))
    assert msg.first("PID").get(5, 2) == ""
    assert msg.first("PID").get(5, 1) == "Quillfeather"


def test_padded_values_are_trimmed_by_default_and_kept_on_request():
    msg = decode_frame(message(b"PID|1||  MRN4471  ||  Quillfeather ^ Ottoline  "))
    pid = msg.first("PID")
    assert pid.get(3) == "MRN4471"
    assert pid.get(5, 2) == "Ottoline"
    assert pid.part(pid.repetitions(3)[0], 1, trim=False) == "  MRN4471  "
    assert pid.raw(5) == "  Quillfeather ^ Ottoline  "


def test_components_subcomponents_and_repetitions():
    msg = decode_frame(message(b"PID|1||MRN4471^^^NORTHWIND&2.999.1.1&ISO^MR~SSN555^^^SSA^SS"))
    pid = msg.first("PID")
    assert pid.repetitions(3) == ["MRN4471^^^NORTHWIND&2.999.1.1&ISO^MR", "SSN555^^^SSA^SS"]
    assert pid.get(3, 4, 1) == "NORTHWIND"
    assert pid.get(3, 4, 2) == "2.999.1.1"
    assert pid.get(3, 5, repetition=1) == "SS"


def test_absent_fields_components_and_repetitions_read_empty():
    msg = decode_frame(message(b"PID|1||MRN4471"))
    pid = msg.first("PID")
    assert pid.get(30) == ""
    assert pid.get(3, 9) == ""
    assert pid.get(3, 1, 5) == ""
    assert pid.get(3, repetition=3) == ""
    assert pid.repetitions(11) == []


def test_nul_bytes_are_dropped_from_decoded_values():
    # NUL is never valid HL7 text (and PostgreSQL refuses it in text columns).
    msg = decode_frame(message(b"PID|1||MRN\x004471||Quill\x00feather^Ottoline"))
    pid = msg.first("PID")
    assert pid.get(3) == "MRN4471"
    assert pid.get(5) == "Quillfeather"


# --- segments -----------------------------------------------------------------------------


def test_z_segments_are_kept_in_order():
    msg = decode_frame(message(b"ZXA|before", b"PID|1||MRN4471", b"ZPI|1|custom^value", b"PV1|1|I", b"ZPI|2|other"))
    assert [s.name for s in msg.segments] == ["MSH", "ZXA", "PID", "ZPI", "PV1", "ZPI"]
    assert msg.first("ZPI").get(2, 2) == "value"
    assert [z.get(1) for z in msg.all("ZPI")] == ["1", "2"]


def test_first_returns_none_for_a_missing_segment():
    assert decode_frame(message(b"PID|1||MRN4471")).first("MRG") is None


# --- MSH numbering --------------------------------------------------------------------------


def test_msh1_is_the_field_separator_and_msh2_the_encoding_characters():
    msh = decode_frame(message()).msh
    assert msh.raw(1) == "|"
    assert msh.raw(2) == "^~\\&"
    assert msh.get(1) == "|"
    assert msh.get(3) == "NWADT"
    assert msh.get(7) == "20240301101500"
    assert msh.get(9, 1) == "ADT"
    assert msh.get(9, 2) == "A01"
    assert msh.get(9, 3) == "ADT_A01"
    assert msh.get(10) == "MSG00001"
    assert msh.get(12) == "2.5.1"
    assert msh.field_count() == 12


def test_msh2_is_not_split_on_its_own_repetition_character():
    msh = decode_frame(message()).msh
    assert msh.repetitions(2) == ["^~\\&"]


def test_msh2_read_with_get_returns_the_encoding_characters():
    # Regression: Segment.get(2) on MSH used to split MSH-2 at its own component character and return "".
    assert decode_frame(message()).msh.get(2) == "^~\\&"


def test_field_numbering_of_other_segments_starts_after_the_name():
    pid = decode_frame(message(b"PID|1|EXT|MRN4471")).first("PID")
    assert pid.raw(0) == "PID"
    assert pid.get(1) == "1"
    assert pid.get(2) == "EXT"
    assert pid.get(3) == "MRN4471"


# --- not ER7 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"PID|1||MRN4471||Quillfeather^Ottoline\r" + MSH + b"\r", id="pid-before-msh"),
        pytest.param(b"EVN|A01|20240301\r", id="no-msh"),
        pytest.param(b'{"resourceType": "Patient", "name": [{"family": "Quillfeather"}]}', id="json"),
        pytest.param(b"\x00\x01\x02\xff\xfe\x80garbage", id="binary"),
        pytest.param(b"MSH", id="truncated-msh"),
        pytest.param(b"msh|^~\\&|NWADT|", id="lowercase-msh"),
    ],
)
def test_frames_not_starting_with_msh_raise_er7error(raw):
    with pytest.raises(Er7Error):
        decode_frame(raw)


def test_er7error_message_carries_no_frame_content():
    with pytest.raises(Er7Error) as caught:
        decode_frame(b"PID|1||MRN4471^^^NORTHWIND^MR||Quillfeather^Ottoline||19800402|F\r")
    text = str(caught.value)
    for secret in ("Quillfeather", "Ottoline", "MRN4471", "19800402"):
        assert secret not in text


def test_er7error_is_a_value_error():
    assert issubclass(Er7Error, ValueError)
