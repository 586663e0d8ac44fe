"""Every message of the HL7 v2 corpus (several versions and vendor styles) read to its expected
ACK code and canonical values (tests/corpus/hl7v2/expected.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.inbound.hl7v2.reader import read_frame
from adapters.outbound.hl7v2.ack import acks_for
from hub.messages import Outcome
from hub.model import source_identifier

CORPUS = Path(__file__).parent.parent / "corpus" / "hl7v2"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load((CORPUS / "expected.yaml").read_text(encoding="utf-8"))


def test_every_corpus_file_has_an_expectation() -> None:
    assert sorted(p.name for p in CORPUS.glob("*.hl7")) == sorted(EXPECTED)


def assert_subset(expected: Any, actual: Any, path: str = "patient") -> None:
    """Every key the expectation names must match; lists must match item by item and in length."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), path
        for key, value in expected.items():
            assert key in actual, f"{path}.{key} missing"
            assert_subset(value, actual[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r}"
        for n, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_subset(e, a, f"{path}[{n}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_message(name: str) -> None:
    expected = EXPECTED[name]
    frame = read_frame((CORPUS / name).read_bytes(), feed="test")
    inbound = frame.inbound
    codes = {"accepted": "AA", "error": "AE", "rejected": "AR"}
    assert codes[inbound.status] == expected["ack"], [p.text for p in inbound.problems]
    if "message_type" in expected:
        assert inbound.message_type == expected["message_type"]
    if "control_id" in expected:
        assert inbound.control_id == expected["control_id"]
    if "error_code" in expected:
        assert inbound.problems[0].code == str(expected["error_code"])
        if "error_location" in expected:
            assert inbound.problems[0].location.startswith(expected["error_location"])
    [ack] = acks_for(frame.message, Outcome(1, inbound.status, tuple(inbound.problems)))
    assert f"|{expected['ack']}|" in ack.split("\r")[1] + "|"
    if "patient" in expected:
        [event] = inbound.events
        assert event.patient is not None
        patient = event.patient
        actual = patient.model_dump(mode="json", exclude_none=True)
        source = source_identifier(patient)
        assert source is not None
        actual["source"] = {"system": source.system, "value": source.value}
        assert_subset(expected["patient"], actual)
