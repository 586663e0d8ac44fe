"""Shared asyncio MLLP helpers for the bench scripts: framing, a load client, a bare server.

Why a module of its own: a throughput figure for the hub only means something next to
the figure of a server that does nothing, measured by the *same* client on the same
machine in the same run. Keeping the client and that bare server here makes sure every
bench script measures both the same way, so the difference is the hub, not the tooling.

The client behaves like a real MLLP sender: each connection sends one message and waits
for its ACK before sending the next, so throughput grows with connections, not with
pipelining. Frames are reassembled from arbitrarily split TCP reads.

Run as a script it is the bare baseline server (loopback only):

    python bench/_mllp_client.py bare-server PORT

It answers every frame with a fixed AA ACK; the only per-message work it does is to copy
MSH-10 into MSA-2, so the client can check ACKs against the bare server and the hub alike.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

VT = b"\x0b"
FS_CR = b"\x1c\x0d"
LOOPBACK = "127.0.0.1"
MAX_FRAME_BYTES = 16 * 1024 * 1024
READ_CHUNK = 64 * 1024


class FrameTooLarge(Exception):
    """The peer sent more than MAX_FRAME_BYTES without closing a frame."""


def frame(message: str) -> bytes:
    """Wrap an ER7 message (segments separated by \\r) in an MLLP block."""
    return VT + message.encode("utf-8") + FS_CR


class FrameBuffer:
    """Reassembles MLLP frames from TCP reads split anywhere (even between 0x1C and 0x0D).

    Bytes outside a frame are dropped, as MLLP receivers do.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_frame_bytes

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the payloads of all frames now complete."""
        self._buf += data
        frames: list[bytes] = []
        while True:
            start = self._buf.find(VT)
            if start < 0:
                self._buf.clear()
                return frames
            end = self._buf.find(FS_CR, start + 1)
            if end < 0:
                del self._buf[:start]
                if len(self._buf) > self._max:
                    raise FrameTooLarge(f"no frame end after {len(self._buf)} bytes")
                return frames
            frames.append(bytes(self._buf[start + 1 : end]))
            del self._buf[: end + 2]


def control_id(payload: bytes) -> str:
    """MSH-10 of a raw ER7 message, or '' if there is none (cheap: first segment only)."""
    first = payload.split(b"\r", 1)[0]
    if not first.startswith(b"MSH") or len(first) < 4:
        return ""
    fields = first.split(first[3:4])
    return fields[9].decode("utf-8", "replace") if len(fields) > 9 else ""


def parse_ack(payload: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK; MSA-1 is 'no-MSA' when the reply has no MSA segment."""
    text = payload.decode("utf-8", "replace").replace("\n", "\r")
    separator = text[3] if text.startswith("MSH") and len(text) > 3 else "|"
    for segment in text.split("\r"):
        if segment.startswith("MSA"):
            fields = segment.split(separator)
            code = fields[1] if len(fields) > 1 and fields[1] else "empty-MSA-1"
            return code, fields[2] if len(fields) > 2 else ""
    return "no-MSA", ""


class MLLPConnection:
    """One client connection: send a frame, wait for exactly one frame back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._frames = FrameBuffer()
        self._pending: list[bytes] = []

    @classmethod
    async def open(cls, host: str, port: int, timeout: float) -> MLLPConnection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        return cls(reader, writer)

    async def request(self, block: bytes, timeout: float) -> bytes:
        """Send one MLLP block and return the payload of the next frame received."""
        self._writer.write(block)
        await asyncio.wait_for(self._writer.drain(), timeout)
        return await asyncio.wait_for(self._next_frame(), timeout)

    async def _next_frame(self) -> bytes:
        while not self._pending:
            data = await self._reader.read(READ_CHUNK)
            if not data:
                raise ConnectionResetError("peer closed the connection")
            self._pending.extend(self._frames.feed(data))
        return self._pending.pop(0)

    async def close(self) -> None:
        self._writer.close()
        try:
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        except (OSError, asyncio.TimeoutError):
            pass


@dataclass
class LoadResult:
    """What one timed load run observed. Latencies are send→ACK, in milliseconds."""

    messages: int
    connections: int
    elapsed_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)
    """MSA-1 of every ACK received in the timed phase (AA, AE, AR, CA, CE, CR, no-MSA …)."""
    failures: Counter[str] = field(default_factory=Counter)
    """Messages without an ACK: timeout, connection errors, unsent after a failure/deadline."""
    id_mismatches: int = 0
    """ACKs whose MSA-2 is not the MSH-10 just sent."""

    @property
    def accepted(self) -> int:
        return self.codes.get("AA", 0)

    @property
    def accepted_per_s(self) -> float:
        return self.accepted / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def not_accepted(self) -> Counter[str]:
        """Every outcome other than AA, ACK codes and failures together."""
        out = Counter({code: n for code, n in self.codes.items() if code != "AA"})
        out.update(self.failures)
        return out

    def percentile_ms(self, p: float) -> float:
        """Nearest-rank percentile of the latencies (nan when there are none)."""
        if not self.latencies_ms:
            return math.nan
        ordered = sorted(self.latencies_ms)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[rank - 1]


Message = tuple[str, bytes]
"""(MSH-10, MLLP block ready to send)."""


async def _drive(
    conn: MLLPConnection,
    batch: Sequence[Message],
    result: LoadResult,
    ack_timeout: float,
    deadline: float,
) -> bool:
    """Send a batch one at a time over one connection, recording into result.

    Returns False if the connection was lost or the deadline passed.
    """
    for index, (sent_id, block) in enumerate(batch):
        if time.monotonic() > deadline:
            result.failures["unsent (deadline)"] += len(batch) - index
            return False
        started = time.perf_counter()
        try:
            reply = await conn.request(block, ack_timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, FrameTooLarge) as exc:
            kind = "ack timeout" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__
            result.failures[kind] += 1
            result.failures["unsent (connection lost)"] += len(batch) - index - 1
            return False
        result.latencies_ms.append((time.perf_counter() - started) * 1000)
        code, acked_id = parse_ack(reply)
        result.codes[code] += 1
        if acked_id != sent_id:
            result.id_mismatches += 1
    return True


def split_round_robin(messages: Sequence[Message], parts: int) -> list[Sequence[Message]]:
    return [messages[i::parts] for i in range(parts)]


async def run_load(
    host: str,
    port: int,
    messages: Sequence[Message],
    connections: int,
    warmup: Sequence[Message] = (),
    ack_timeout: float = 30.0,
    connect_timeout: float = 10.0,
    max_seconds: float = 900.0,
) -> LoadResult:
    """Open K connections, send the warm-up (not counted), then time the real messages.

    Every wait is bounded: connect_timeout per connect, ack_timeout per ACK, and no new
    message is sent after max_seconds (what was not sent is counted as a failure).
    """
    result = LoadResult(messages=len(messages), connections=connections)
    conns: list[MLLPConnection] = []
    try:
        for _ in range(connections):
            conns.append(await MLLPConnection.open(host, port, connect_timeout))
        deadline = time.monotonic() + max_seconds
        warm = LoadResult(messages=len(warmup), connections=connections)
        warm_ok = await asyncio.gather(
            *(_drive(c, b, warm, ack_timeout, deadline)
              for c, b in zip(conns, split_round_robin(warmup, connections)))
        )
        for kind, count in warm.failures.items():
            result.failures[f"warm-up: {kind}"] += count
        batches = split_round_robin(messages, connections)
        for ok, batch in zip(warm_ok, batches):
            if not ok:
                result.failures["unsent (connection lost in warm-up)"] += len(batch)
        live = [(c, b) for ok, c, b in zip(warm_ok, conns, batches) if ok]
        started = time.perf_counter()
        await asyncio.gather(*(_drive(c, b, result, ack_timeout, deadline) for c, b in live))
        result.elapsed_s = time.perf_counter() - started
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    return result


# --- bare baseline server -------------------------------------------------------------

BARE_ACK = (
    "MSH|^~\\&|BARE|BENCH|||20250101000000||ACK^A01^ACK|BAREACK|P|2.5.1\r"
    "MSA|AA|{control_id}\r"
)


async def _serve_bare_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    frames = FrameBuffer()
    try:
        while data := await reader.read(READ_CHUNK):
            for payload in frames.feed(data):
                writer.write(frame(BARE_ACK.format(control_id=control_id(payload))))
            await writer.drain()
    except (OSError, FrameTooLarge):
        pass
    finally:
        writer.close()


async def serve_bare(host: str, port: int) -> None:
    """Answer every frame with a fixed AA ACK until SIGTERM/SIGINT."""
    server = await asyncio.start_server(_serve_bare_connection, host, port, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()
    print(f"bare-server listening on {bound[0]}:{bound[1]}", flush=True)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    bare = sub.add_parser("bare-server", help="MLLP server that only returns a fixed AA ACK")
    bare.add_argument("port", type=int, help="port on 127.0.0.1 (0: any free port, printed)")
    args = parser.parse_args(argv)
    if args.command == "bare-server":
        asyncio.run(serve_bare(LOOPBACK, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
