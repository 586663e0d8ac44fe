"""The HL7 v2 ACK policy: which frames get AA / AE / AR, and what the ACK says.

`read_frame` gives the verdict; `acks_for` / `build_ack` turn it into ACK text. Each rule has
its own test asserting MSA-1, MSA-2, ERR-2 (location), ERR-3 (code^text^HL70357) and ERR-4,
and every error ACK is checked for patient data in its human-readable text.

All data is fictional. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from adapters.inbound.hl7v2.er7 import decode_frame
from adapters.inbound.hl7v2.reader import Hl7Frame, read_frame
from adapters.outbound.hl7v2.ack import AckMode, acks_for, build_ack
from hub.messages import Outcome, Problem, Status

# --- fictional patient ----------------------------------------------------------------------

FAMILY, GIVEN, MRN, DOB = "Quillfeather", "Ottoline", "QX4471902", "19800402"

# HL7 table 0357 (message error condition codes), as published: ERR-3.2 must carry these texts.
TABLE_0357 = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "203": "Unsupported version id",
    "207": "Application internal error",
}


# --- building messages ----------------------------------------------------------------------


def msh(
    msg_type: str = "ADT^A01^ADT_A01",
    *,
    version: str = "2.5.1",
    control_id: str = "CTL-0001",
    processing: str = "P",
    accept: str = "",
    app: str = "",
    charset: str = "",
) -> str:
    fields = [
        "MSH", "^~\\&", "NWADT", "NORTHWIND^2.999.1.1^ISO", "HUB", "HUBFAC", "20240301101500", "",
        msg_type, control_id, processing, version, "", "", accept, app, "", charset,
    ]
    while len(fields) > 12 and fields[-1] == "":
        fields.pop()
    return "|".join(fields)


def pid(*, cx: str = f"{MRN}^^^NORTHWIND^MR", dob: str = DOB, sex: str = "F", extra: str = "") -> str:
    return (
        f"PID|1||{cx}||{FAMILY}^{GIVEN}^^^^^L||{dob}|{sex}|||12 Elm St^^Springfield^IL^62701||(555)555-0142{extra}"
    )


PV1 = "PV1|1|I|W1^101^A"
MRG = "MRG|QX0000017^^^NORTHWIND^MR"

# The body of one supported message per type, without MSH; "{PID}" marks where the PID goes.
BODIES = {
    "ADT^A01^ADT_A01": ["EVN|A01|20240301101500", "{PID}", PV1],
    "ORU^R01^ORU_R01": ["{PID}", "OBR|1|PL100|FL100|GLU^Glucose^L", "OBX|1|NM|GLU^Glucose^L||5.4|mmol/L|||||F"],
    "ORM^O01^ORM_O01": ["{PID}", "ORC|NW|PL100", "OBR|1|PL100||GLU^Glucose^L"],
    "OML^O21^OML_O21": ["{PID}", "ORC|NW|PL100", "OBR|1|PL100||GLU^Glucose^L"],
    "DFT^P03^DFT_P03": ["EVN|P03|20240301101500", "{PID}", "FT1|1|||20240301||CG|99213^Office visit^CPT|||1"],
    "SIU^S12^SIU_S12": [
        "SCH|APT100|APT100F|||||||30|min|^^30^20240301100000^20240301103000|||||||||||||||Booked",
        "{PID}",
    ],
}


def hl7(*segments: str, sep: str = "\r") -> bytes:
    return (sep.join(segments) + sep).encode()


def adt(
    *, header: str | None = None, pid_segment: str | None = None, extra: tuple[str, ...] = (), sep: str = "\r"
) -> bytes:
    """A fictional ADT^A01; the header and PID can be bent for each test."""
    return hl7(header or msh(), "EVN|A01|20240301101500", pid_segment or pid(), PV1, *extra, sep=sep)


def typed(msg_type: str, *, with_pid: bool = True) -> bytes:
    body = [pid() if s == "{PID}" else s for s in BODIES[msg_type] if with_pid or s != "{PID}"]
    return hl7(msh(msg_type), *body)


# --- reading ACKs ---------------------------------------------------------------------------


def field(fields: list[str], n: int) -> str:
    return fields[n] if n < len(fields) else ""


@dataclass
class Ack:
    text: str
    segments: list[list[str]]

    def first(self, name: str) -> list[str]:
        return next(s for s in self.segments if s[0] == name)

    def all(self, name: str) -> list[list[str]]:
        return [s for s in self.segments if s[0] == name]

    def msh(self, n: int) -> str:
        return field(self.first("MSH"), n)

    def msa(self, n: int) -> str:
        return field(self.first("MSA"), n)


def parse_ack(text: str) -> Ack:
    """Split an ACK with its own field separator; MSH counted so that index n is MSH-n."""
    assert text.startswith("MSH")
    assert "\n" not in text, "ACK segments are separated by \\r only"
    sep = text[3]
    segments = []
    for line in text.split("\r"):
        fields = line.split(sep)
        if fields[0] == "MSH":
            fields.insert(1, sep)
        segments.append(fields)
    return Ack(text, segments)


def respond(raw: bytes, *, stored: bool = True, mode: AckMode = AckMode.ORIGINAL) -> tuple[Hl7Frame, list[Ack]]:
    """What the door does: read the frame, let the core answer with the verdict, build the ACKs."""
    read = read_frame(raw, "unit")
    outcome = Outcome(1, read.inbound.status, tuple(read.inbound.problems), stored=stored)
    return read, [parse_ack(a) for a in acks_for(read.message, outcome, mode)]


def one_ack(raw: bytes, **kwargs: object) -> Ack:
    _, acks = respond(raw, **kwargs)  # type: ignore[arg-type]
    assert len(acks) == 1
    return acks[0]


def assert_no_patient_data(ack: Ack, *secrets: str) -> None:
    """MSA (MSA-3 text in < 2.5) and ERR (ERR-8 text) never echo the patient's name, identifier or birth date."""
    for seg in [ack.first("MSA"), *ack.all("ERR")]:
        line = "|".join(seg)
        for secret in (FAMILY, GIVEN, MRN, DOB, *secrets):
            assert secret not in line, f"{secret!r} leaked into {seg[0]}"


def assert_accepted(raw: bytes, control_id: str = "CTL-0001") -> Ack:
    read, acks = respond(raw)
    assert len(acks) == 1
    ack = acks[0]
    assert ack.msa(1) == "AA"
    assert ack.msa(2) == control_id
    assert ack.all("ERR") == []
    assert read.inbound.status is Status.ACCEPTED
    assert len(read.inbound.events) == 1
    return ack


def assert_error(
    raw: bytes, msa1: str, code: str, location: str, control_id: str = "CTL-0001", *, secrets: tuple[str, ...] = ()
) -> Ack:
    ack = one_ack(raw)
    assert ack.msa(1) == msa1
    assert ack.msa(2) == control_id
    errs = ack.all("ERR")
    assert len(errs) == 1
    err = errs[0]
    assert field(err, 2) == location
    assert field(err, 3) == f"{code}^{TABLE_0357[code]}^HL70357"
    assert field(err, 4) == "E"
    assert field(err, 8), "ERR-8 explains the error in words"
    assert_no_patient_data(ack, *secrets)
    return ack


# =============================================================================================
# AA
# =============================================================================================


def test_a_clean_adt_is_accepted():
    assert_accepted(adt())


@pytest.mark.parametrize("msg_type", list(BODIES))
def test_every_supported_message_type_with_a_pid_is_accepted(msg_type):
    assert_accepted(typed(msg_type))


@pytest.mark.parametrize(
    "extra_segments, where",
    [
        (("ZPI|1|VIP^Y",), "end"),
        (("ZXA|first",), "after-msh"),
        (("ZPD|1|custom",), "between-pid-and-pv1"),
    ],
)
def test_unknown_z_segments_anywhere_are_accepted(extra_segments, where):
    segments = [msh(), "EVN|A01|20240301101500", pid(), PV1]
    position = {"end": len(segments), "after-msh": 1, "between-pid-and-pv1": 3}[where]
    segments[position:position] = list(extra_segments)
    assert_accepted(hl7(*segments))


def test_extra_trailing_fields_and_components_are_accepted():
    header = msh() + "|||||||||||||||EXTRA1|EXTRA2"  # past MSH-21
    wide_pid = pid(extra="|" * 30 + "UNEXPECTED^FIELD")  # past PID-39
    rich = wide_pid.replace(f"{FAMILY}^{GIVEN}^^^^^L", f"{FAMILY}^{GIVEN}^^^^^L^^^^^^^^EXTRA^COMPONENTS")
    rich = rich.replace("|F|", "|F^Female^HL70001^EXTRA|")
    wide_pv1 = "PV1|1|I|W1^101^A^^^^^^EXTRA" + "|" * 60 + "X"  # past PV1-52
    assert_accepted(hl7(header, "EVN|A01|20240301101500", rich, wide_pv1))


def test_empty_optional_fields_and_segments_are_accepted():
    bare = f"PID|1||{MRN}^^^NORTHWIND^MR"  # no name, birth date, sex, address, phone
    assert_accepted(hl7(msh(), bare))


@pytest.mark.parametrize("dob", ["1980", "198004", "19800402", "198004021230", "20240229", "19800402123045+0100"])
def test_partial_and_leap_day_birth_dates_are_accepted(dob):
    assert_accepted(adt(pid_segment=pid(dob=dob)))


@pytest.mark.parametrize("sex", ["F", "M", "O", "U", "A", "N"])
def test_every_table_0001_sex_is_accepted(sex):
    assert_accepted(adt(pid_segment=pid(sex=sex)))


@pytest.mark.parametrize(
    "version", ["2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.2", "2.5^DEU"]
)
def test_versions_2_2_to_2_8_are_accepted(version):
    ack = assert_accepted(adt(header=msh(version=version)))
    assert ack.msh(12) == version


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"], ids=["CR", "LF", "CRLF"])
def test_any_segment_separator_is_accepted(sep):
    ack = assert_accepted(adt(sep=sep))
    assert ack.msh(12) == "2.5.1"


def test_a40_with_mrg1_is_accepted():
    assert_accepted(hl7(msh("ADT^A40^ADT_A39"), "EVN|A40|20240301101500", pid(), MRG))


def pv1_admitted_at(value: str) -> str:
    return "PV1|1|I|W1^101^A" + "|" * 41 + value  # PV1-44 admit date/time (optional)


def test_the_admit_time_helper_fills_pv1_44():
    # Guards the two tests below: they must really put the value into PV1-44.
    message = decode_frame(hl7(msh(), pid(), pv1_admitted_at("20240301101500")))
    assert message.first("PV1").get(44) == "20240301101500"


@pytest.mark.parametrize("admitted", ["2024030125", "20240230", "soon"])
def test_unusable_optional_timestamp_is_dropped_and_the_message_accepted(admitted):
    assert_accepted(hl7(msh(), "EVN|A01|20240301101500", pid(), pv1_admitted_at(admitted)))


@pytest.mark.parametrize("admitted", ["20240301101500+2400", "20240301101500-2500"])
def test_optional_timestamp_with_an_impossible_utc_offset_is_dropped_and_the_message_accepted(admitted):
    # Regression: read_frame used to raise ValueError (from datatypes.timestamp), so no ACK was sent.
    assert_accepted(hl7(msh(), "EVN|A01|20240301101500", pid(), pv1_admitted_at(admitted)))


def test_original_mode_answers_aa_whatever_msh15_and_msh16_say():
    ack = one_ack(adt(header=msh(accept="NE", app="NE")))
    assert ack.msa(1) == "AA"


# =============================================================================================
# AE: a message the hub takes, but the patient content is unusable
# =============================================================================================


@pytest.mark.parametrize("msg_type", list(BODIES))
def test_missing_pid_is_ae_100(msg_type):
    assert_error(typed(msg_type, with_pid=False), "AE", "100", "PID")


@pytest.mark.parametrize(
    "cx",
    [
        pytest.param("", id="empty"),
        pytest.param("^^^NORTHWIND^MR", id="authority-but-no-value"),
        pytest.param("   ^^^NORTHWIND^MR", id="blank-value"),
        pytest.param('""', id="explicit-null"),
        pytest.param("^^^NORTHWIND^MR~^^^SSA^SS", id="no-value-in-any-repetition"),
    ],
)
def test_pid3_without_identifier_value_is_ae_101(cx):
    assert_error(adt(pid_segment=pid(cx=cx)), "AE", "101", "PID^1^3")


def test_pid3_with_a_value_in_a_later_repetition_is_accepted():
    assert_accepted(adt(pid_segment=pid(cx=f"^^^SSA^SS~{MRN}^^^NORTHWIND^MR")))


@pytest.mark.parametrize(
    "dob",
    [
        pytest.param("20231301", id="month-13"),
        pytest.param("19800231", id="february-31"),
        pytest.param("20230229", id="february-29-non-leap-year"),
        pytest.param("19800400", id="day-0"),
        pytest.param("1980-04-02", id="iso-format"),
        pytest.param("02.04.1980", id="german-format"),
        pytest.param("unknown", id="text"),
    ],
)
def test_invalid_birth_date_is_ae_102(dob):
    assert_error(adt(pid_segment=pid(dob=dob)), "AE", "102", "PID^1^7", secrets=(dob,))


@pytest.mark.parametrize("sex", ["X", "Z", "f", "Female", "W"])
def test_sex_outside_table_0001_is_ae_103(sex):
    assert_error(adt(pid_segment=pid(sex=sex)), "AE", "103", "PID^1^8")


@pytest.mark.parametrize(
    "mrg",
    [
        pytest.param(None, id="no-mrg"),
        pytest.param("MRG|", id="empty-mrg1"),
        pytest.param("MRG|^^^NORTHWIND^MR", id="mrg1-no-value"),
    ],
)
def test_a40_without_mrg1_is_ae_101(mrg):
    segments = [msh("ADT^A40^ADT_A39"), "EVN|A40|20240301101500", pid()] + ([mrg] if mrg else [])
    assert_error(hl7(*segments), "AE", "101", "MRG^1^1")


def test_several_content_problems_give_one_err_each_in_field_order():
    bad = pid(cx="^^^NORTHWIND^MR", dob="20231301", sex="X")
    ack = one_ack(adt(pid_segment=bad))
    assert ack.msa(1) == "AE"
    errs = ack.all("ERR")
    assert [(field(e, 2), field(e, 3).split("^")[0]) for e in errs] == [
        ("PID^1^3", "101"), ("PID^1^7", "102"), ("PID^1^8", "103"),
    ]
    assert all(field(e, 4) == "E" for e in errs)
    assert_no_patient_data(ack, "20231301")


# =============================================================================================
# AR: not a message the hub takes
# =============================================================================================


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(hl7(pid(), msh(), PV1), id="pid-before-msh"),
        pytest.param(hl7("EVN|A01|20240301101500", pid()), id="no-msh"),
        pytest.param(b"\x00\x01\x02\xff\xfe\x80\x81garbage\x1c", id="garbage-bytes"),
        pytest.param(f'{{"resourceType":"Patient","name":[{{"family":"{FAMILY}"}}]}}'.encode(), id="json"),
        pytest.param(f"Please admit {GIVEN} {FAMILY}, MRN {MRN}".encode(), id="plain-text"),
    ],
)
def test_frame_without_msh_at_start_is_ar_100(raw):
    # Nothing readable: no control id to echo (MSA-2 empty).
    assert_error(raw, "AR", "100", "MSH", control_id="")


def test_empty_msh9_is_ar_101():
    assert_error(adt(header=msh("")), "AR", "101", "MSH^1^9")


def test_msh9_with_trigger_but_no_type_is_ar_101():
    assert_error(adt(header=msh("^A01")), "AR", "101", "MSH^1^9")


@pytest.mark.parametrize("msg_type", ["QRY^A19^QRY_A19", "MFN^M02^MFN_M02", "VXU^V04^VXU_V04", "ACK^A01^ACK"])
def test_unsupported_message_type_is_ar_200(msg_type):
    assert_error(adt(header=msh(msg_type)), "AR", "200", "MSH^1^9")


@pytest.mark.parametrize("msg_type", ["ADT^A17^ADT_A17", "ORU^R30^ORU_R30", "ADT^A99", "ADT"])
def test_unsupported_trigger_event_is_ar_201(msg_type):
    assert_error(adt(header=msh(msg_type)), "AR", "201", "MSH^1^9^1^2")


@pytest.mark.parametrize("version", ["2.1", "2.0", "2.9", "2.10", "3.0", "2", "2.x", "v2.5"])
def test_version_outside_2_2_to_2_8_is_ar_203(version):
    assert_error(adt(header=msh(version=version)), "AR", "203", "MSH^1^12")


def test_empty_msh10_is_ar_101():
    assert_error(adt(header=msh(control_id="")), "AR", "101", "MSH^1^10", control_id="")


def test_empty_msh12_is_ar_101():
    assert_error(adt(header=msh(version="")), "AR", "101", "MSH^1^12")


def test_envelope_rejection_wins_over_content_errors():
    # Unsupported type and no PID: AR for the type, the content is not looked at.
    assert_error(hl7(msh("MFN^M02^MFN_M02"), "MFI|LOC"), "AR", "200", "MSH^1^9")


# =============================================================================================
# Patient data never appears in the error text (ERR-8; MSA-3 before v2.5)
# =============================================================================================

ERROR_CASES = {
    "no-pid": lambda v: hl7(msh(version=v), "EVN|A01|20240301101500", PV1, f"ZPD|{FAMILY}^{GIVEN}|{MRN}|{DOB}"),
    "pid3-empty": lambda v: adt(header=msh(version=v), pid_segment=pid(cx="^^^NORTHWIND^MR")),
    "dob-invalid": lambda v: adt(header=msh(version=v), pid_segment=pid(dob="19800231")),
    "sex-invalid": lambda v: adt(header=msh(version=v), pid_segment=pid(sex="X")),
    "a40-no-mrg": lambda v: hl7(msh("ADT^A40^ADT_A39", version=v), "EVN|A40|20240301101500", pid()),
    "unsupported-type": lambda v: adt(header=msh("VXU^V04^VXU_V04", version=v)),
    "unsupported-trigger": lambda v: adt(header=msh("ADT^A17^ADT_A17", version=v)),
    "no-msh": lambda v: hl7(pid(), msh(version=v)),
}


@pytest.mark.parametrize("version", ["2.3", "2.4", "2.5.1"])
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_text_never_contains_patient_name_identifier_or_birth_date(case, version):
    ack = one_ack(ERROR_CASES[case](version))
    assert ack.msa(1) in ("AE", "AR")
    assert ack.all("ERR")
    assert_no_patient_data(ack, "19800231")


# =============================================================================================
# ACK structure
# =============================================================================================


def test_ack_swaps_sender_and_receiver():
    ack = one_ack(adt())
    assert (ack.msh(3), ack.msh(4)) == ("HUB", "HUBFAC")
    assert (ack.msh(5), ack.msh(6)) == ("NWADT", "NORTHWIND^2.999.1.1^ISO")


@pytest.mark.parametrize("version", ["2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8", "2.5^DEU"])
def test_ack_keeps_the_message_version(version):
    assert one_ack(adt(header=msh(version=version))).msh(12) == version


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("2.2", "ACK^A01"),
        ("2.3", "ACK^A01"),  # MSH-9.3 (message structure) exists from 2.3.1 on
        ("2.3.1", "ACK^A01^ACK"),
        ("2.4", "ACK^A01^ACK"),
        ("2.5.1", "ACK^A01^ACK"),
        ("2.8", "ACK^A01^ACK"),
    ],
)
def test_ack_message_type_echoes_the_trigger(version, expected):
    assert one_ack(adt(header=msh(version=version))).msh(9) == expected


@pytest.mark.parametrize("msg_type", ["ORU^R01^ORU_R01", "SIU^S12^SIU_S12", "ADT^A17^ADT_A17"])
def test_ack_message_type_follows_the_acknowledged_trigger(msg_type):
    trigger = msg_type.split("^")[1]
    assert one_ack(adt(header=msh(msg_type))).msh(9) == f"ACK^{trigger}^ACK"


@pytest.mark.parametrize("control_id", ["CTL-0001", "20240301101500123456", "X"])
def test_msa2_is_the_original_control_id(control_id):
    assert one_ack(adt(header=msh(control_id=control_id))).msa(2) == control_id
    assert one_ack(adt(header=msh("VXU^V04^VXU_V04", control_id=control_id))).msa(2) == control_id


def test_ack_has_its_own_short_unique_control_id():
    first, second = one_ack(adt()), one_ack(adt())
    assert first.msh(10) and second.msh(10)
    assert first.msh(10) != second.msh(10)
    assert first.msh(10) != "CTL-0001"
    assert len(first.msh(10)) <= 20


def test_ack_timestamp_and_processing_id():
    ack = one_ack(adt(header=msh(processing="T")))
    assert len(ack.msh(7)) == 14 and ack.msh(7).isdigit()
    assert ack.msh(11) == "T"


def test_ack_processing_id_defaults_to_production():
    assert one_ack(adt(header=msh(processing=""))).msh(11) == "P"


def test_ack_echoes_the_character_set_in_msh18():
    ack = one_ack(adt(header=msh(charset="8859/1")))
    assert ack.msh(18) == "8859/1"
    assert [ack.msh(n) for n in range(13, 18)] == ["", "", "", "", ""]


def test_ack_reuses_the_messages_own_delimiters():
    # Field '#', component '$', repetition '*', escape '/', subcomponent '@'.
    raw = (
        "MSH#$*/@#NWADT#NORTHWIND#HUB#HUBFAC#20240301101500##ADT$A01$ADT_A01#CTL-0042#P#2.4\r"
        f"PID#1##{MRN}$$$NORTHWIND$MR##{FAMILY}${GIVEN}##20231301#F\r"
    ).encode()
    ack = one_ack(raw)
    assert ack.text.startswith("MSH#$*/@#HUB#HUBFAC#NWADT#NORTHWIND#")
    assert "|" not in ack.text
    assert ack.msh(9) == "ACK$A01$ACK"
    assert ack.msa(1) == "AE"
    assert ack.msa(2) == "CTL-0042"
    err = ack.first("ERR")
    assert field(err, 1) == "PID$1$7$102@Data type error@HL70357"
    assert field(err, 2) == "PID$1$7"
    assert field(err, 3) == "102$Data type error$HL70357"
    assert_no_patient_data(ack, "20231301")


def test_ack_keeps_the_v27_truncation_character_in_msh2():
    header = msh(version="2.7").replace("^~\\&", "^~\\&#", 1)
    ack = one_ack(adt(header=header))
    assert ack.msh(2) == "^~\\&#"
    assert ack.msa(1) == "AA"


def test_delimiters_inside_the_error_text_are_escaped():
    ack = one_ack(adt(header=msh("ADT^A17^ADT_A17")))
    text = field(ack.first("ERR"), 8)
    assert "ADT\\S\\A17" in text
    assert "^" not in text
    assert len(ack.first("ERR")) == 9  # nothing split off the end


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4"])
def test_before_v25_err1_carries_the_eld_and_msa3_the_text(version):
    ack = one_ack(adt(header=msh(version=version), pid_segment=pid(dob="20231301")))
    err = ack.first("ERR")
    assert field(err, 1) == "PID^1^7^102&Data type error&HL70357"
    assert ack.msa(3) == field(err, 8)
    assert ack.msa(3)
    assert_no_patient_data(ack, "20231301")


@pytest.mark.parametrize(
    ("raw", "eld"),
    [
        pytest.param(
            adt(header=msh("ADT^A17^ADT_A17", version="2.4")),
            "MSH^1^9^201&Unsupported event code&HL70357",
            id="longer-location-cut-to-eld",
        ),
        pytest.param(
            hl7(msh(version="2.4"), "EVN|A01"),
            "PID^^^100&Segment sequence error&HL70357",
            id="segment-only-location",
        ),
    ],
)
def test_eld_fits_segment_sequence_field_and_code(raw, eld):
    assert field(one_ack(raw).first("ERR"), 1) == eld


@pytest.mark.parametrize("version", ["2.5", "2.5.1", "2.6", "2.8"])
def test_from_v25_err1_and_msa3_are_empty(version):
    ack = one_ack(adt(header=msh(version=version), pid_segment=pid(dob="20231301")))
    assert field(ack.first("ERR"), 1) == ""
    assert ack.msa(3) == ""


def test_accepted_ack_has_exactly_msh_and_msa():
    ack = one_ack(adt())
    assert [s[0] for s in ack.segments] == ["MSH", "MSA"]


def test_ack_for_an_unreadable_frame_uses_standard_delimiters_and_the_default_version():
    ack = one_ack(b"\x00\xffnot hl7")
    assert ack.text.startswith("MSH|^~\\&|")
    assert ack.msh(12) == "2.5.1"
    assert ack.msa(1) == "AR"


@pytest.mark.parametrize(
    "raw", [pytest.param(adt(header=msh("")), id="msh9-empty"), pytest.param(b"\x00\xffnot hl7", id="unreadable")]
)
def test_ack_without_a_trigger_still_names_the_ack_structure(raw):
    # For v2.3.1+ MSG-3 (message structure) is required: receivers (hl7apy among them) need it.
    assert one_ack(raw).msh(9) == "ACK^^ACK"


# =============================================================================================
# Not stored: AR 207
# =============================================================================================


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(adt(), id="would-be-AA"),
        pytest.param(adt(pid_segment=pid(sex="X")), id="would-be-AE"),
        pytest.param(adt(header=msh("VXU^V04^VXU_V04")), id="would-be-AR-200"),
    ],
)
def test_unstored_message_is_ar_207_whatever_the_verdict(raw):
    ack = one_ack(raw, stored=False)
    assert ack.msa(1) == "AR"
    assert ack.msa(2) == "CTL-0001"
    errs = ack.all("ERR")
    assert len(errs) == 1  # the content problems are replaced, not added to
    assert field(errs[0], 2) == ""
    assert field(errs[0], 3) == "207^Application internal error^HL70357"
    assert field(errs[0], 4) == "E"
    assert field(errs[0], 8)
    assert_no_patient_data(ack)


def test_unstored_unreadable_frame_is_ar_207():
    ack = one_ack(b"garbage", stored=False)
    assert ack.msa(1) == "AR"
    assert field(ack.first("ERR"), 3) == "207^Application internal error^HL70357"


# =============================================================================================
# Enhanced mode (MSH-15 accept ACK, MSH-16 application ACK; HL7 table 0155)
# =============================================================================================



def aa_msg(**header: str) -> bytes:
    return adt(header=msh(**header))


def ae_msg(**header: str) -> bytes:
    """AE 103: PID-8 outside table 0001."""
    return adt(header=msh(**header), pid_segment=pid(sex="X"))


def ar_msg(**header: str) -> bytes:
    """AR 200: unsupported message type."""
    return adt(header=msh("VXU^V04^VXU_V04", **header))


BY_VERDICT = {"AA": aa_msg, "AE": ae_msg, "AR": ar_msg}


@pytest.mark.parametrize(
    ("accept", "app", "kind", "stored", "expected"),
    [
        # AL: always
        ("AL", "AL", "AA", True, ["CA", "AA"]),
        ("AL", "AL", "AE", True, ["CA", "AE"]),
        ("AL", "AL", "AR", True, ["CR"]),  # the commit reject says it all
        ("AL", "AL", "AA", False, ["CE"]),  # resend: no final-looking application ACK
        # NE: never
        ("NE", "NE", "AA", True, []),
        ("NE", "NE", "AE", True, []),
        ("AL", "NE", "AA", True, ["CA"]),
        ("AL", "NE", "AE", True, ["CA"]),
        ("AL", "NE", "AR", True, ["CR"]),
        ("NE", "AL", "AA", True, ["AA"]),
        ("NE", "AL", "AE", True, ["AE"]),
        # ER: on error/reject only
        ("ER", "NE", "AA", True, []),
        ("ER", "NE", "AE", True, []),  # commit succeeded (CA): no accept ACK
        ("ER", "NE", "AR", True, ["CR"]),
        ("ER", "NE", "AA", False, ["CE"]),
        ("NE", "ER", "AA", True, []),
        ("NE", "ER", "AE", True, ["AE"]),
        ("NE", "ER", "AR", True, ["AR"]),
        # SU: on success only
        ("SU", "NE", "AA", True, ["CA"]),
        ("SU", "NE", "AE", True, ["CA"]),
        ("SU", "NE", "AR", True, []),
        ("SU", "NE", "AA", False, []),
        ("NE", "SU", "AA", True, ["AA"]),
        ("NE", "SU", "AE", True, []),
        # one of the two empty: MSH-15 defaults to AL, MSH-16 to NE
        ("", "AL", "AA", True, ["CA", "AA"]),
        ("AL", "", "AE", True, ["CA"]),
        ("", "ER", "AE", True, ["CA", "AE"]),
    ],
)
def test_enhanced_mode_sends_the_acks_msh15_and_msh16_ask_for(accept, app, kind, stored, expected):
    raw = BY_VERDICT[kind](accept=accept, app=app)
    _, acks = respond(raw, stored=stored, mode=AckMode.ENHANCED)
    assert [a.msa(1) for a in acks] == expected
    for ack in acks:
        assert ack.msa(2) == "CTL-0001"
        assert ack.msh(9).startswith("ACK^")
        assert_no_patient_data(ack)


@pytest.mark.parametrize("kind", ["AA", "AE"])
def test_commit_accept_carries_no_err(kind):
    _, acks = respond(BY_VERDICT[kind](accept="AL", app="AL"), mode=AckMode.ENHANCED)
    commit = acks[0]
    assert commit.msa(1) == "CA"
    assert commit.all("ERR") == []


def test_commit_reject_carries_the_rejection_err():
    _, acks = respond(ar_msg(accept="AL", app="NE"), mode=AckMode.ENHANCED)
    (commit,) = acks
    assert commit.msa(1) == "CR"
    assert field(commit.first("ERR"), 3) == "200^Unsupported message type^HL70357"
    assert field(commit.first("ERR"), 2) == "MSH^1^9"


def test_commit_error_for_an_unstored_message_carries_207():
    _, acks = respond(adt(header=msh(accept="AL", app="NE")), stored=False, mode=AckMode.ENHANCED)
    (commit,) = acks
    assert commit.msa(1) == "CE"
    assert field(commit.first("ERR"), 3) == "207^Application internal error^HL70357"


def test_application_ack_in_enhanced_mode_carries_the_content_errors():
    _, acks = respond(ae_msg(accept="NE", app="AL"), mode=AckMode.ENHANCED)
    (app,) = acks
    assert app.msa(1) == "AE"
    assert field(app.first("ERR"), 2) == "PID^1^8"
    assert field(app.first("ERR"), 3) == "103^Table value not found^HL70357"


@pytest.mark.parametrize("kind", ["AA", "AE", "AR"])
def test_enhanced_mode_with_msh15_and_msh16_empty_is_original_mode(kind):
    _, acks = respond(BY_VERDICT[kind](), mode=AckMode.ENHANCED)
    assert [a.msa(1) for a in acks] == [kind]


def test_enhanced_mode_answers_an_unreadable_frame_with_one_ar():
    _, acks = respond(b"\x00\xff garbage", mode=AckMode.ENHANCED)
    assert [a.msa(1) for a in acks] == ["AR"]


# =============================================================================================
# build_ack directly
# =============================================================================================


def test_build_ack_without_a_message_is_a_bare_ar():
    ack = parse_ack(build_ack(None, "AR", [Problem("100", "the frame does not start with an MSH segment", "MSH")]))
    assert ack.msa(1) == "AR"
    assert ack.msa(2) == ""
    assert ack.msh(12) == "2.5.1"
    assert field(ack.first("ERR"), 3) == "100^Segment sequence error^HL70357"


def test_build_ack_escapes_every_delimiter_in_problem_text():
    read = read_frame(adt(), "unit")
    text = build_ack(read.message, "AE", [Problem("102", "a|b^c&d~e\\f", "PID^1^7")])
    ack = parse_ack(text)
    assert field(ack.first("ERR"), 8) == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    assert len(ack.first("ERR")) == 9


# =============================================================================================
# The ACK is valid HL7 (hl7apy, strict validation)
# =============================================================================================

STRICT_CASES = {
    "AA": lambda v: adt(header=msh(version=v)),
    "AE-102": lambda v: adt(header=msh(version=v), pid_segment=pid(dob="20231301")),
    "AE-100": lambda v: hl7(msh(version=v), "EVN|A01|20240301101500", PV1),
    "AE-three-errors": lambda v: adt(header=msh(version=v), pid_segment=pid(cx="", dob="20230229", sex="X")),
    "AR-200": lambda v: adt(header=msh("QRY^A19^QRY_A19", version=v)),
    "AR-201": lambda v: adt(header=msh("ADT^A17^ADT_A17", version=v)),
    "with-msh18": lambda v: adt(header=msh(version=v, charset="8859/1")),
}


def strict(ack_text: str):
    message = parse_message(ack_text, validation_level=VALIDATION_LEVEL.STRICT)
    assert message.name == "ACK"
    assert message.validate() is True
    return message


@pytest.mark.parametrize("version", ["2.5", "2.5.1"])
@pytest.mark.parametrize("case", list(STRICT_CASES))
def test_ack_is_valid_hl7_under_strict_validation(case, version):
    read = read_frame(STRICT_CASES[case](version), "unit")
    outcome = Outcome(1, read.inbound.status, tuple(read.inbound.problems))
    (text,) = acks_for(read.message, outcome)
    message = strict(text)
    assert message.msh.msh_12.to_er7() == version
    assert message.msa.msa_2.to_er7() == "CTL-0001"


@pytest.mark.parametrize("version", ["2.5", "2.5.1"])
def test_unstored_ar_207_is_valid_hl7_under_strict_validation(version):
    read = read_frame(adt(header=msh(version=version)), "unit")
    (text,) = acks_for(read.message, Outcome(None, Status.ACCEPTED, stored=False))
    strict(text)


@pytest.mark.parametrize("version", ["2.5", "2.5.1"])
def test_enhanced_mode_acks_are_valid_hl7_under_strict_validation(version):
    read = read_frame(ae_msg(version=version, accept="AL", app="AL"), "unit")
    acks = acks_for(read.message, Outcome(1, read.inbound.status, tuple(read.inbound.problems)), AckMode.ENHANCED)
    assert [strict(a).msa.msa_1.to_er7() for a in acks] == ["CA", "AE"]


def test_ack_for_empty_msh12_is_valid_251_under_strict_validation():
    read = read_frame(adt(header=msh(version="")), "unit")
    (text,) = acks_for(read.message, Outcome(1, read.inbound.status, tuple(read.inbound.problems)))
    assert strict(text).msh.msh_12.to_er7() == "2.5.1"


def test_ack_for_empty_msh9_is_valid_hl7_under_strict_validation():
    read = read_frame(adt(header=msh("")), "unit")
    (text,) = acks_for(read.message, Outcome(1, read.inbound.status, tuple(read.inbound.problems)))
    strict(text)


def test_a_reader_defect_still_gets_an_ar_and_logs_no_content(monkeypatch, caplog):
    """The ACK path answers every frame: an unexpected failure inside the reader becomes AR 207."""
    import adapters.inbound.hl7v2.reader as reader

    def broken(message):
        raise RuntimeError("Quintavalle 19800402")  # an exception whose text carries content

    monkeypatch.setattr(reader, "_content_problems", broken)
    read = reader.read_frame(adt(), "unit", with_content=False)
    assert read.inbound.status == "rejected"
    assert read.inbound.problems[0].code == "207"
    assert "Quintavalle" not in caplog.text and "RuntimeError" in caplog.text
