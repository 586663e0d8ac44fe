"""Each transport's answers against real receivers: MLLP (plain and TLS), HTTP, file drop."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from adapters.transport.delivery import FileTransport, HttpTransport, MllpTransport, ack_answer
from hub.delivery.engine import backoff
from hub.outbound import DeliveryAnswer, Destination, Outbound, RetryPolicy
from tests.conftest import free_port
from tests.integration.delivery_fakes import FakeMllpReceiver, hl7, outbound


def mllp(port: int, **changes: object) -> Destination:
    return Destination("ehr", "mllp", "ehr", host="127.0.0.1", port=port, timeout=0.5, connect_timeout=0.5,
                       **changes)  # type: ignore[arg-type]


def answers(transport: object, messages: list[Outbound]) -> list[DeliveryAnswer]:
    async def run() -> list[DeliveryAnswer]:
        try:
            return [await transport.send(m) for m in messages]  # type: ignore[attr-defined]
        finally:
            await transport.close()  # type: ignore[attr-defined]

    return asyncio.run(run())


def test_mllp_answers_by_msa_code_timeout_and_refusal() -> None:
    codes = {"ok": "AA", "commit": "CA", "error": "AE", "reject": "AR", "commit-reject": "CR", "silent": None}
    receiver = FakeMllpReceiver(decide=lambda key, _n: codes[key]).start()
    try:
        got = answers(MllpTransport(mllp(receiver.port)), [outbound("ehr", key, "P") for key in codes])
        assert [(a.ok, a.retry, a.code) for a in got] == [
            (True, False, "AA"), (True, False, "CA"), (False, True, "AE"), (False, False, "AR"),
            (False, False, "CR"), (False, True, "timeout"),
        ]
        assert got[2].detail == "test answer"
        [dead] = answers(MllpTransport(mllp(receiver.port, retry=RetryPolicy(on_error="dead"))), [outbound("ehr", "error", "P")])
        assert (dead.ok, dead.retry, dead.code) == (False, False, "AE")
    finally:
        receiver.stop()
    [refused] = answers(MllpTransport(mllp(free_port())), [outbound("ehr", "ok", "P")])
    assert (refused.ok, refused.retry, refused.code) == (False, True, "refused")


def test_mllp_reconnects_after_the_receiver_drops_an_idle_connection() -> None:
    port = free_port()
    receiver = FakeMllpReceiver(port=port).start()
    transport = MllpTransport(mllp(port))

    async def run() -> list[DeliveryAnswer]:
        first = await transport.send(outbound("ehr", "one", "P"))
        await asyncio.to_thread(receiver.stop)  # closes the open connection
        receiver.start()
        second = await transport.send(outbound("ehr", "two", "P"))
        await transport.close()
        return [first, second]

    try:
        assert [a.code for a in asyncio.run(run())] == ["AA", "AA"]
    finally:
        receiver.stop()


def test_ack_answer_checks_msa2_names_the_message_sent() -> None:
    sent = hl7("C1")
    assert ack_answer(b"MSH|^~\\&|X\rMSA|AA|C1\r", sent).ok
    wrong = ack_answer(b"MSH|^~\\&|X\rMSA|AA|C2\r", sent)
    assert (wrong.ok, wrong.retry, wrong.code) == (False, True, "ack-mismatch")
    assert ack_answer(b"MSH|^~\\&|X\r", sent).code == "no-ack"


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = RetryPolicy(initial_delay=1, multiplier=2, max_delay=10, jitter=0.2)
    assert [backoff(policy, n, lambda: 0.5) for n in (1, 2, 3, 4, 5, 6)] == [1, 2, 4, 8, 10, 10]
    assert backoff(policy, 3, lambda: 0.0) == pytest.approx(4 * 0.8)
    assert backoff(policy, 3, lambda: 1.0) == pytest.approx(4 * 1.2)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def test_mllp_over_tls_verifies_the_receiver(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    receiver = FakeMllpReceiver(tls=server).start()
    try:
        [ok] = answers(MllpTransport(mllp(receiver.port, tls=True, tls_ca=str(cert))), [outbound("ehr", "k1", "P")])
        assert (ok.ok, ok.code) == (True, "AA")
        [untrusted] = answers(MllpTransport(mllp(receiver.port, tls=True)), [outbound("ehr", "k2", "P")])
        assert (untrusted.ok, untrusted.retry, untrusted.code) == (False, True, "tls-error")
        assert receiver.ids() == ["k1"]
    finally:
        receiver.stop()


class _Receiver(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request_id = self.headers["X-Request-Id"]
        _Receiver.seen.append({"id": request_id, "type": self.headers["Content-Type"],
                               "auth": self.headers.get("Authorization", ""), "body": body.decode()})
        status = int(request_id.split("-")[0])
        if status == 0:
            time.sleep(1.0)
            status = 200
        self.send_response(status)
        payload = json.dumps({"resourceType": "OperationOutcome"}).encode()
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except BrokenPipeError:  # the client timed out first
            pass

    def log_message(self, *args: object) -> None:
        return None


def test_http_answers_2xx_ok_4xx_permanent_5xx_and_timeouts_retried() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dest = Destination("billing", "http", "billing", format="fhir", url=f"http://127.0.0.1:{server.server_port}/fhir",
                           headers={"Authorization": "Bearer test-token"}, timeout=0.3)
        sent = [Outbound("billing", "r", "k", key, "application/fhir+json", b'{"resourceType":"Bundle"}', "Bundle")
                for key in ("201-a", "400-b", "404-c", "429-d", "503-e", "0-f")]
        got = answers(HttpTransport(dest), sent)
        assert [(a.ok, a.retry, a.code) for a in got] == [
            (True, False, "201"), (False, False, "400"), (False, False, "404"), (False, True, "429"),
            (False, True, "503"), (False, True, "timeout"),
        ]
        assert "OperationOutcome" in got[1].detail
        first = _Receiver.seen[0]
        assert first == {"id": "201-a", "type": "application/fhir+json", "auth": "Bearer test-token",
                         "body": '{"resourceType":"Bundle"}'}
    finally:
        server.shutdown()
    dest = Destination("billing", "http", "billing", url=f"http://127.0.0.1:{free_port()}/", connect_timeout=0.5)
    [refused] = answers(HttpTransport(dest), [sent[0]])
    assert (refused.ok, refused.retry) == (False, True) and refused.code in ("refused", "io-error")


def test_file_drop_writes_atomically_under_the_idempotency_key(tmp_path: Path) -> None:
    dest = Destination("billing-csv", "file", "billing", format="csv", directory=str(tmp_path / "drop"))
    rows = [Outbound("billing-csv", "r", "k", "42.0.billing-csv", "text/csv", b"a,b\r\n1,2\r\n", "CSV"),
            Outbound("billing-csv", "r", "k", "42.0.billing-csv", "text/csv", b"a,b\r\n1,3\r\n", "CSV")]
    got = answers(FileTransport(dest), rows)
    assert [a.ok for a in got] == [True, True]
    files = sorted(p.name for p in (tmp_path / "drop").iterdir())
    assert files == ["42.0.billing-csv.csv"], "one file per idempotency key, no temporary left behind"
    assert (tmp_path / "drop" / files[0]).read_bytes() == b"a,b\r\n1,3\r\n"
    (tmp_path / "blocked").write_text("a file where the directory should be")
    bad = Destination("x", "file", "billing", directory=str(tmp_path / "blocked" / "sub"))
    [failed] = answers(FileTransport(bad), rows[:1])
    assert (failed.ok, failed.retry, failed.code) == (False, True, "io-error")
