"""Fake receivers for delivery tests (real sockets): an MLLP receiver that ACKs or NAKs as told, and
an HTTP receiver; plus outbound messages and a tiny planner standing in for the routes."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from adapters.transport.mllp import FrameReader, frame
from hub.outbound import Outbound, RoutedEvent

Decide = Callable[[str, int], str | None]
"""(MSH-10, how many times this id was received) → MSA-1 to answer, or None to stay silent."""


def hl7(control_id: str, patient: str = "P1", n: int = 0) -> bytes:
    """A fictional outbound ADT^A08 whose MSH-10 is the idempotency key."""
    return (
        f"MSH|^~\\&|HUB|HUB|EHR|EHR|20240101120000||ADT^A08^ADT_A01|{control_id}|P|2.5.1\r"
        f"EVN|A08|20240101120000\rPID|1||{patient}^^^NORTHWIND^MR||Testperson^Alma||19800402|F\rZSQ|{n}\r"
    ).encode()


def outbound(destination: str, key: str, patient: str, n: int = 0, *, strict: bool = False) -> Outbound:
    return Outbound(
        destination=destination, route="test-route", ordering_key=destination if strict else f"2.999.1|{patient}",
        idempotency_key=key, content_type="application/hl7-v2", payload=hl7(key, patient, n), summary="ADT^A08",
    )


def control_id(payload: bytes) -> str:
    return payload.split(b"\r", 1)[0].decode().split("|")[9]


@dataclass
class Received:
    control_id: str
    at: float
    connection: int
    payload: bytes = b""


@dataclass
class FakeMllpReceiver:
    """An MLLP receiver on its own thread and event loop. `decide` picks the answer per message;
    `delay` holds each answer (to show parallel connections); it can be stopped and started again
    on the same port (a destination that goes down and comes back)."""

    decide: Decide = lambda _id, _n: "AA"
    delay: float | Callable[[str], float] = 0.0
    tls: ssl.SSLContext | None = None
    port: int = 0
    received: list[Received] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.base_events.Server | None = None
    _thread: threading.Thread | None = None
    _connections: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    def start(self) -> FakeMllpReceiver:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._connection, "127.0.0.1", self.port, ssl=self.tls, reuse_address=True)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(5)
        self._loop = None

    def ids(self) -> list[str]:
        with self._lock:
            return [r.control_id for r in self.received]

    def wait_for(self, count: int, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(set(self.ids())) >= count:
                return True
            time.sleep(0.02)
        return False

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        self._writers.add(writer)
        number = self._connections
        deframer = FrameReader(1 << 20)
        try:
            while data := await reader.read(65536):
                for kind, payload in deframer.feed(data):
                    if kind != "frame":
                        continue
                    key = control_id(payload)
                    with self._lock:
                        self.counts[key] = self.counts.get(key, 0) + 1
                        seen = self.counts[key]
                        self.in_flight += 1
                        self.max_in_flight = max(self.max_in_flight, self.in_flight)
                    delay = self.delay(key) if callable(self.delay) else self.delay
                    if delay:
                        await asyncio.sleep(delay)
                    code = self.decide(key, seen)
                    with self._lock:
                        self.in_flight -= 1
                        if code in ("AA", "CA"):
                            self.received.append(Received(key, time.monotonic(), number, payload))
                    if code is None:
                        continue  # silent: the sender times out
                    ack = f"MSH|^~\\&|EHR|EHR|HUB|HUB|20240101120000||ACK^A08|A{key}|P|2.5.1\rMSA|{code}|{key}|test answer\r"
                    writer.write(frame(ack.encode()))
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


def echo_planner(destination: str, *, strict: bool = False) -> Callable[[RoutedEvent], list[Outbound]]:
    """A tiny stand-in for the routes: every event with a patient goes to `destination`, as an HL7
    message whose MSH-10 is the idempotency key (message id, event index, destination)."""

    def plan(event: RoutedEvent) -> list[Outbound]:
        key = f"{event.message_id}.{event.event_index}.{destination}"
        patient = event.patient_key.split("|", 1)[1]
        built = outbound(destination, key, patient, strict=strict)
        return [Outbound(built.destination, built.route, destination if strict else event.patient_key,
                         built.idempotency_key, built.content_type, built.payload, built.summary)]

    return plan


def assert_per_patient_order(rows: Sequence[Any], arrivals: Sequence[str]) -> None:
    """Each message's first arrival, grouped by patient, is in outbox (acceptance) order: `rows` carry
    `ordering_key` and `idempotency_key`, oldest first; `arrivals` are the receiver's control ids."""
    key_of = {r.idempotency_key: r.ordering_key for r in rows}
    first_seen: dict[str, list[str]] = {}
    for key in dict.fromkeys(arrivals):  # first arrival of each message, in arrival order
        first_seen.setdefault(key_of[key], []).append(key)
    expected: dict[str, list[str]] = {}
    for r in rows:
        expected.setdefault(r.ordering_key, []).append(r.idempotency_key)
    assert first_seen == expected, "per-patient order kept"
