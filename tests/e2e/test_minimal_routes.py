"""The issue's minimal routes file, as shipped in `mappings/routes.yaml` and unchanged, end to end:
HL7 v2 in over MLLP, through processing and the master patient index, out to an EHR and a lab over
MLLP and to billing over FHIR REST, on the fixed local ports the file names (6661, 6662, 6663)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from adapters.transport.mllp import send_all
from tests.conftest import RunningHub, adt, hub_settings, start_hub, stop_hub, unique
from tests.integration.delivery_fakes import FakeMllpReceiver

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "corpus" / "hl7v2"


class FhirReceiver(ThreadingHTTPServer):
    """Billing's FHIR endpoint: records each request, answers a transaction-response."""

    def __init__(self, port: int) -> None:
        self.requests: list[tuple[str, dict[str, str], dict]] = []
        super().__init__(("127.0.0.1", port), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 — http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, dict(self.headers), body))  # type: ignore[attr-defined]
        answer = json.dumps({"resourceType": "Bundle", "type": "transaction-response", "entry": [
            {"response": {"status": "200 OK"}} for _ in body.get("entry", [])]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receivers() -> Iterator[tuple[FakeMllpReceiver, FakeMllpReceiver, FhirReceiver]]:
    ehr, lab = FakeMllpReceiver(port=6661).start(), FakeMllpReceiver(port=6662).start()
    billing = FhirReceiver(6663)
    yield ehr, lab, billing
    ehr.stop()
    lab.stop()
    billing.shutdown()
    billing.server_close()


@pytest.fixture(scope="module")
def routed_hub(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    settings = hub_settings(database_url, tmp_path_factory.mktemp("data"), routes=REPO / "mappings" / "routes.yaml")
    running, thread = start_hub(settings)
    yield running
    stop_hub(running, thread)


def _segments(payload: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in payload.decode().split("\r"):
        if line:
            fields = line.split("|")
            out.setdefault(fields[0], fields)
    return out


def _wait(condition: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_minimal_routes_file_delivers_to_ehr_lab_and_billing(
    receivers: tuple[FakeMllpReceiver, FakeMllpReceiver, FhirReceiver], routed_hub: RunningHub,
) -> None:
    ehr, lab, billing = receivers
    mrn = unique("M")
    frames = [
        adt(mrn=mrn, trigger="A01"),
        adt(mrn=mrn, trigger="A03"),
        *((CORPUS / name).read_bytes() for name in ("oru_r01_lab_251.hl7", "orm_o01_cerner_231.hl7",
                                                   "dft_p03_epic_24.hl7")),
    ]
    acks = asyncio.run(send_all("127.0.0.1", routed_hub.mllp_port, [f.replace(b"\n", b"\r") for f in frames]))
    assert all(b"MSA|AA" in a for a in acks)

    assert _wait(lambda: len(ehr.received) >= 3 and len(lab.received) >= 1 and len(billing.requests) >= 2), (
        f"ehr {len(ehr.received)}, lab {len(lab.received)}, billing {len(billing.requests)}"
    )
    to_ehr = [_segments(r.payload) for r in ehr.received]
    types = ["^".join(s["MSH"][8].split("^")[:2]) for s in to_ehr]
    assert sorted(types) == ["ADT^A01", "ADT^A03", "ORU^R01"]
    assert types.index("ADT^A01") < types.index("ADT^A03"), "one patient's messages leave in order"
    admitted = to_ehr[types.index("ADT^A01")]["PID"][3].split("~")
    assert f"{mrn}^^^NORTHWIND^MR" in admitted
    assert any(i.endswith("^^^HUB^PI") for i in admitted), "the enterprise identifier travels in PID-3"
    assert all(s["MSH"][11] == "2.5.1" for s in to_ehr)

    assert [_segments(r.payload)["MSH"][8].split("^")[:2] for r in lab.received] == [["ORM", "O01"]]

    paths = {path for path, _, _ in billing.requests}
    assert paths == {"/fhir"}
    kinds = [sorted({e["resource"]["resourceType"] for e in body["entry"]}) for _, _, body in billing.requests]
    assert any("Encounter" in k for k in kinds), kinds  # the A03: the finished encounter
    assert any("ChargeItem" in k for k in kinds), kinds  # the DFT: its charges
    for _, headers, body in billing.requests:
        assert body["type"] == "transaction"
        assert headers.get("X-Request-Id"), "every delivery carries its idempotency key"
        assert all(e["request"]["method"] == "PUT" and "?" in e["request"]["url"] for e in body["entry"]), (
            "conditional updates: a retried delivery never duplicates"
        )
