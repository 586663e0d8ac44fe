"""Outbound transports: MLLP (optionally TLS), HTTP and file drop, each answering a `DeliveryAnswer`.

The delivery engine (hub/delivery/engine.py) only reads `ok` and `retry`; the policy per answer
lives here, where the protocol is known:
- MLLP: MSA-1 AA/CA delivered; AE/CE retried or dead-lettered per `RetryPolicy.on_error`; AR/CR
  permanent; a reply that is not an ACK, a timeout, a refused or broken connection: retried.
- HTTP: 2xx delivered; 408/425/429 and 5xx retried; any other 4xx permanent; timeouts and
  connection errors retried. `X-Request-Id` carries the idempotency key.
- File: written under a temporary name, flushed to disk and renamed into place (a reader of the
  directory never sees half a file); named after the idempotency key, so a re-delivery overwrites.

Answers carry the receiver's code and a short detail (stored with the attempt, never logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
from pathlib import Path

import httpx

from adapters.transport.mllp import MllpClient
from hub.delivery.engine import Transport
from hub.outbound import DeliveryAnswer, Destination, Outbound

DETAIL_CHARS = 200


def make_transport(destination: Destination) -> Transport:
    """The transport for a destination's configuration (routes are validated before this)."""
    if destination.transport == "mllp":
        return MllpTransport(destination)
    if destination.transport == "http":
        return HttpTransport(destination)
    if destination.transport == "file":
        return FileTransport(destination)
    raise ValueError(f"unknown transport {destination.transport!r} for destination {destination.name}")


# --- MLLP ----------------------------------------------------------------------------------------


def ack_answer(reply: bytes, sent: bytes, on_error: str = "retry") -> DeliveryAnswer:
    """Judge an HL7 v2 reply by MSA-1 (and check MSA-2 names the message we sent)."""
    text = reply.decode("latin-1")
    separator = text[3] if text.startswith("MSH") and len(text) > 3 else "|"
    msa = next((s for s in re.split("[\r\n]+", text) if s.startswith("MSA")), None)
    if msa is None:
        return DeliveryAnswer(False, True, "no-ack", "the reply has no MSA segment")
    fields = msa.split(separator)
    code = fields[1].strip() if len(fields) > 1 else ""
    acked = fields[2].strip() if len(fields) > 2 else ""
    detail = (fields[3] if len(fields) > 3 else "")[:DETAIL_CHARS]
    control_id = _control_id(sent)
    if acked and control_id and acked != control_id:
        return DeliveryAnswer(False, True, "ack-mismatch", "MSA-2 does not name the message sent")
    if code in ("AA", "CA"):
        return DeliveryAnswer(True, False, code)
    if code in ("AE", "CE"):
        return DeliveryAnswer(False, on_error == "retry", code, detail)
    if code in ("AR", "CR"):
        return DeliveryAnswer(False, False, code, detail)
    return DeliveryAnswer(False, True, "no-ack", f"unknown MSA-1 {code[:8]!r}")


def _control_id(message: bytes) -> str:
    """MSH-10 of an outbound message."""
    head = message.split(b"\r", 1)[0].decode("latin-1")
    if not head.startswith("MSH") or len(head) < 4:
        return ""
    fields = head.split(head[3])
    return fields[9].strip() if len(fields) > 9 else ""


def _ssl_context(destination: Destination) -> ssl.SSLContext | None:
    if not destination.tls:
        return None
    return ssl.create_default_context(cafile=destination.tls_ca)


class MllpTransport:
    """Keeps a few open connections (up to `Destination.connections` in use at once, by the engine)."""

    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        self._ssl = _ssl_context(destination)
        self._idle: list[MllpClient] = []

    async def send(self, outbound: Outbound) -> DeliveryAnswer:
        d = self.destination
        try:
            client, reply = await self._exchange(outbound.payload)
        except TimeoutError:
            return DeliveryAnswer(False, True, "timeout", f"no reply within {d.timeout:g}s")
        except ConnectionRefusedError:
            return DeliveryAnswer(False, True, "refused", "connection refused")
        except ssl.SSLError as exc:
            return DeliveryAnswer(False, True, "tls-error", type(exc).__name__)
        except (OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
            return DeliveryAnswer(False, True, "io-error", type(exc).__name__)
        self._idle.append(client)
        return ack_answer(reply, outbound.payload, d.retry.on_error)

    async def _exchange(self, payload: bytes) -> tuple[MllpClient, bytes]:
        """Send on an idle connection if there is one, else on a new one; a failed connection is closed."""
        if self._idle:
            client = self._idle.pop()
            try:
                return client, await client.send(payload)
            except (ConnectionError, asyncio.IncompleteReadError):
                await _close(client)  # the receiver closed it while idle: once more on a fresh one
            except BaseException:
                await _close(client)
                raise
        client = await self._connect()
        try:
            return client, await client.send(payload)
        except BaseException:
            await _close(client)
            raise

    async def _connect(self) -> MllpClient:
        d = self.destination
        assert d.host and d.port, "an MLLP destination has host and port"
        client = MllpClient(d.host, d.port, d.timeout, ssl=self._ssl, connect_timeout=d.connect_timeout)
        await client.__aenter__()
        return client

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            await _close(client)


async def _close(client: MllpClient | None) -> None:
    if client is not None:
        with contextlib.suppress(Exception):
            await client.__aexit__(None, None, None)


# --- HTTP ----------------------------------------------------------------------------------------

RETRIED_4XX = {408, 425, 429}


class HttpTransport:
    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(destination.timeout, connect=destination.connect_timeout),
            headers=destination.headers,
            verify=_ssl_context(destination) or True,
            limits=httpx.Limits(max_connections=max(1, destination.connections)),
        )

    async def send(self, outbound: Outbound) -> DeliveryAnswer:
        assert self.destination.url, "an HTTP destination has a URL"
        headers = {"Content-Type": outbound.content_type, "X-Request-Id": outbound.idempotency_key}
        try:
            response = await self._client.post(self.destination.url, content=outbound.payload, headers=headers)
        except httpx.TimeoutException:
            return DeliveryAnswer(False, True, "timeout", f"no answer within {self.destination.timeout:g}s")
        except httpx.ConnectError as exc:
            code = "refused" if isinstance(exc.__cause__, ConnectionRefusedError) or "refused" in str(exc).lower() else "io-error"
            return DeliveryAnswer(False, True, code, type(exc).__name__)
        except httpx.HTTPError as exc:
            return DeliveryAnswer(False, True, "io-error", type(exc).__name__)
        status = response.status_code
        if 200 <= status < 300:
            return DeliveryAnswer(True, False, str(status))
        detail = response.text[:DETAIL_CHARS]
        if status >= 500 or status in RETRIED_4XX:
            return DeliveryAnswer(False, True, str(status), detail)
        return DeliveryAnswer(False, False, str(status), detail)

    async def close(self) -> None:
        await self._client.aclose()


# --- file drop -----------------------------------------------------------------------------------

EXTENSIONS = {"application/hl7-v2": ".hl7", "x-application/hl7-v2+er7": ".hl7", "text/csv": ".csv",
              "application/fhir+json": ".json", "application/json": ".json"}


class FileTransport:
    def __init__(self, destination: Destination) -> None:
        assert destination.directory, "a file destination has a directory"
        self.directory = Path(destination.directory)

    async def send(self, outbound: Outbound) -> DeliveryAnswer:
        try:
            name = await asyncio.to_thread(self._write, outbound)
        except OSError as exc:
            return DeliveryAnswer(False, True, "io-error", type(exc).__name__)
        return DeliveryAnswer(True, False, "written", name)

    def _write(self, outbound: Outbound) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        extension = EXTENSIONS.get(outbound.content_type.split(";")[0].strip(), ".dat")
        name = re.sub(r"[^A-Za-z0-9._-]", "_", outbound.idempotency_key) + extension
        temporary = self.directory / f".{name}.part"
        with open(temporary, "wb") as out:
            out.write(outbound.payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.directory / name)
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash
        finally:
            os.close(directory)
        return name

    async def close(self) -> None:
        return None
