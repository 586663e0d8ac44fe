"""MLLP (HL7 v2 minimal lower layer protocol) over asyncio: framing only, bytes in and out.

A frame is 0x0B, the message, 0x1C 0x0D. This module never decodes text: character sets
are the HL7 adapter's business (after it has read MSH-18). It handles many connections,
many frames per connection, frames split across reads, noise before 0x0B, oversize
frames (answered, connection kept), and idle connections (closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from ssl import SSLContext

log = logging.getLogger("hub.mllp")

START, END = b"\x0b", b"\x1c\x0d"

FrameHandler = Callable[[bytes], Awaitable[list[bytes]]]
"""Takes one message's bytes, returns the reply messages' bytes (usually one ACK)."""
OversizeHandler = Callable[[bytes], Awaitable[list[bytes]]]
"""Takes the first bytes of a frame that exceeded the limit, returns the replies (an AR)."""


def frame(payload: bytes) -> bytes:
    return START + payload + END


@dataclass
class MllpConfig:
    host: str = "127.0.0.1"
    port: int = 2575
    max_frame_bytes: int = 16 * 1024 * 1024
    idle_timeout: float = 300.0
    read_size: int = 64 * 1024


class FrameReader:
    """Incremental deframer: feed it bytes, take complete frames out."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max = max_frame_bytes
        self.buffer = bytearray()
        self.discarding = False

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        """Returns ("frame", payload) and ("oversize", head) events in arrival order."""
        self.buffer += data
        events: list[tuple[str, bytes]] = []
        while True:
            if self.discarding:
                end = self.buffer.find(END)
                if end == -1:
                    del self.buffer[: max(0, len(self.buffer) - 1)]  # keep a possible split 0x1C
                    return events
                del self.buffer[: end + 2]
                self.discarding = False
            start = self.buffer.find(START)
            if start == -1:
                self.buffer.clear()  # noise between frames
                return events
            if start:
                del self.buffer[:start]
            end = self.buffer.find(END, 1)
            if end == -1:
                split_end = self.buffer.endswith(b"\x1c")  # END may be split across reads
                if len(self.buffer) - 1 - split_end > self.max:
                    events.append(("oversize", bytes(self.buffer[1 : 1 + 65536])))
                    self.discarding = True
                    del self.buffer[: len(self.buffer) - split_end]
                    continue
                return events
            # A 0x0B inside a frame means the sender abandoned the frame before it: restart there.
            restart = self.buffer.rfind(START, 0, end)
            payload = bytes(self.buffer[restart + 1 : end])
            del self.buffer[: end + 2]
            if len(payload) > self.max:
                events.append(("oversize", payload[:65536]))
            else:
                events.append(("frame", payload))


class MllpServer:
    def __init__(self, config: MllpConfig, on_frame: FrameHandler, on_oversize: OversizeHandler) -> None:
        self.config = config
        self.on_frame = on_frame
        self.on_oversize = on_oversize
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.config.host, self.config.port, limit=self.config.read_size)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        deframer = FrameReader(self.config.max_frame_bytes)
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(self.config.read_size), self.config.idle_timeout)
                except TimeoutError:
                    break
                if not data:
                    break
                for kind, payload in deframer.feed(data):
                    handler = self.on_frame if kind == "frame" else self.on_oversize
                    replies = await handler(payload)
                    writer.write(b"".join(frame(r) for r in replies))
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class MllpClient:
    """A small MLLP sender: one connection, send a message, wait for the reply frame."""

    def __init__(
        self, host: str, port: int, timeout: float = 30.0, *, ssl: SSLContext | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.ssl = ssl
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._deframer = FrameReader(64 * 1024 * 1024)
        self._pending: list[bytes] = []

    async def __aenter__(self) -> MllpClient:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self.ssl), self.connect_timeout
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._writer:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()

    async def send(self, payload: bytes) -> bytes:
        """Send one message and return the first reply frame's payload."""
        assert self._writer is not None
        self._writer.write(frame(payload))
        await self._writer.drain()
        return await self.receive()

    async def receive(self) -> bytes:
        assert self._reader is not None
        while not self._pending:
            data = await asyncio.wait_for(self._reader.read(65536), self.timeout)
            if not data:
                raise ConnectionError("connection closed before a reply")
            self._pending += [p for kind, p in self._deframer.feed(data) if kind == "frame"]
        return self._pending.pop(0)


async def send_all(host: str, port: int, payloads: Iterable[bytes], timeout: float = 30.0) -> list[bytes]:
    async with MllpClient(host, port, timeout) as client:
        return [await client.send(p) for p in payloads]
