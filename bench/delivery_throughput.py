"""End-to-end delivery throughput: ADT and ORU in over MLLP, through processing, matching and routing,
out over MLLP to a local receiver that ACKs at once; messages/s fully delivered and latency from the
inbound ACK to the outbound message's arrival.

    python bench/delivery_throughput.py                 # 5000 messages, ADT^A08 and ORU^R01 alternately, 8 connections, SQLite, embedded delivery
    python bench/delivery_throughput.py --db postgres   # hub on PostgreSQL (database created and dropped)
    python bench/delivery_throughput.py --adt-only      # every message an ADT^A08 (the workload of the sessions before the tenth)

The hub runs as `python -m hub serve` with the issue's routes (ADT and ORU to one MLLP destination with
the built-in `ehr` profile: one destination each); the receiver is a subprocess (`receiver` mode of this
script). Patient n gets an ADT^A08 and an ORU^R01 (a basic metabolic panel, five results) under its own
fictional MRN (`BM` + 8 digits): the MRN and the message type are how an outbound message is matched to
its inbound ACK. Loopback only; temp files and databases are removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VT, END = b"\x0b", b"\x1c\x0d"
MRN = re.compile(rb"BM\d{8}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAMILY = ["Quillfeather", "Marrowby", "Tansley", "Brackwater", "Ostrander", "Velloway", "Pennick", "Harrowgate",
          "Lindqvast", "Corvale", "Dunmere", "Ashcombe", "Felwick", "Rookley", "Stenhaven", "Wimberlow"]
GIVEN = ["Maribel", "Orla", "Tessaly", "Junia", "Petrina", "Wren", "Calla", "Ysolde",
         "Anselm", "Dorian", "Fenwick", "Jarek", "Lucan", "Oswin", "Tobiah", "Corwin"]


def adt(n: int) -> bytes:
    """ADT^A08 for invented patient n: names, birth date, address and phone vary with n (distinct people,
    as a hospital's feed carries, so that matching does the work it does in production, not more)."""
    family, given = FAMILY[n % 16] + FAMILY[n // 16 % 16].lower(), GIVEN[n // 256 % 16]
    birth = f"{1930 + n % 80}{1 + n // 80 % 12:02d}{1 + n // 960 % 28:02d}"
    return (
        f"MSH|^~\\&|BENCH|NORTHWIND|HUB|HUB|20240101120000||ADT^A08^ADT_A01|BC{n:08d}|P|2.5.1\r"
        f"EVN|A08|20240101120000\r"
        f"PID|1||BM{n:08d}^^^NORTHWIND^MR||{family}^{given}^^^^^L||{birth}|{'FM'[n % 2]}|||"
        f"{n % 997 + 1} Elm St^^Springfield^IL^62701||(555)555-01{n % 100:02d}\r"
        f"PV1|1|I|W1^101^A\r"
    ).encode()


PANEL = [("2951-2", "Sodium", "mmol/L", "136-145", 134, 146), ("2823-3", "Potassium", "mmol/L", "3.5-5.1", 3.4, 5.2),
         ("2075-0", "Chloride", "mmol/L", "98-107", 97, 108), ("2160-0", "Creatinine", "mg/dL", "0.6-1.2", 0.5, 1.3),
         ("2345-7", "Glucose", "mg/dL", "70-99", 65, 140)]


def oru(n: int) -> bytes:
    """ORU^R01 for invented patient n (the same PID as `adt(n)`): a basic metabolic panel, five numeric OBX."""
    pid = adt(n).split(b"\r")[2].decode()
    results = ""
    for i, (code, name, unit, reference, low, high) in enumerate(PANEL, start=1):
        value = round(low + (high - low) * ((n * 7 + i) % 10) / 10, 1)
        below, above = (float(x) for x in reference.split("-"))
        flag = "L" if value < below else "H" if value > above else "N"
        results += f"OBX|{i}|NM|{code}^{name}^LN||{value:.1f}|{unit}^{unit}^UCUM|{reference}|{flag}|||F\r"
    return (
        f"MSH|^~\\&|LABSYS|NORTHWIND|HUB|HUB|20240101130000||ORU^R01^ORU_R01|BL{n:08d}|P|2.5.1\r"
        f"{pid}\r"
        f"ORC|RE|ORD{n:08d}^EHR|LAB{n:08d}^LABSYS\r"
        f"OBR|1|ORD{n:08d}^EHR|LAB{n:08d}^LABSYS|80048^Basic metabolic panel^CPT|||20240101080000|||||||||||||||20240101125500|||F\r"
        f"{results}"
    ).encode()


def message(i: int, adt_only: bool) -> tuple[str, bytes]:
    """Message i of a run and the key its delivery is known by (message type and MRN): patient i // 2's
    ADT^A08 then ORU^R01, or patient i's ADT^A08 alone."""
    if adt_only:
        return f"ADT BM{i:08d}", adt(i)
    n = i // 2
    return (f"ADT BM{n:08d}", adt(n)) if i % 2 == 0 else (f"ORU BM{n:08d}", oru(n))


# --- the receiver (a subprocess) ---------------------------------------------------------------


async def receive(port: int, out: Path) -> None:
    arrivals: list[tuple[str, float]] = []

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                buffer += data
                while (end := buffer.find(END)) != -1:
                    payload, buffer = buffer[buffer.find(VT) + 1 : end], buffer[end + 2 :]
                    found = MRN.search(payload)
                    header = payload.split(b"\r", 1)[0].split(b"|")
                    kind = header[8][:3].decode()
                    arrivals.append((f"{kind} {found.group().decode()}" if found else "?", time.time()))
                    control = header[9]
                    writer.write(VT + b"MSH|^~\\&|R|R|HUB|HUB|20240101||ACK|A|P|2.5.1\rMSA|AA|" + control + b"\r" + END)
        writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        while not stop.is_set():
            out.with_suffix(".count").write_text(str(len(arrivals)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
    out.write_text(json.dumps(arrivals))


# --- the sender --------------------------------------------------------------------------------


async def send(
    port: int, total: int, connections: int, rate: float | None = None, adt_only: bool = False
) -> tuple[dict[str, float], list[float]]:
    """Each connection sends a message and waits for its ACK; with `rate`, the whole sender is paced
    to that many messages/s (a steady feed rather than a burst). Returns when each message was ACKed and
    how long each ACK took (ms)."""
    acked: dict[str, float] = {}
    ack_ms: list[float] = []
    queue = list(range(total))
    begin = time.monotonic()

    async def one_connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        buffer = b""
        while queue:
            n = queue.pop()
            if rate:
                await asyncio.sleep(max(0.0, begin + (total - len(queue)) / rate - time.monotonic()))
            key, payload = message(n, adt_only)
            sent = time.monotonic()
            writer.write(VT + payload + END)
            await writer.drain()
            while END not in buffer:
                buffer += await reader.read(65536)
            ack, buffer = buffer[: buffer.find(END)], buffer[buffer.find(END) + 2 :]
            assert b"MSA|AA" in ack, ack
            acked[key] = time.time()
            ack_ms.append((time.monotonic() - sent) * 1000)
        writer.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return acked, sorted(ack_ms)


def wait_ready(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("hub not ready")


class _Progress(threading.Thread):
    """Once a second: processing backlog and deliveries so far (stderr), to see which stage lags."""

    def __init__(self, http: str, count_file: Path, started: float, verbose: bool) -> None:
        super().__init__(daemon=True)
        self.http, self.count_file, self.started, self.verbose, self.stop = http, count_file, started, verbose, False

    def run(self) -> None:
        import httpx

        while not self.stop and self.verbose:
            time.sleep(1)
            with contextlib.suppress(Exception):
                status = httpx.get(f"{self.http}/api/status", timeout=2).json()
                delivered = self.count_file.read_text()
                print(f"{time.time() - self.started:6.1f}s processed={status['messages']['processed']} "
                      f"backlog={status['backlog']} delivered={delivered}", file=sys.stderr)


def run(
    total: int, connections: int, db: str, verbose: bool = False, rate: float | None = None, redis: str | None = None,
    workers: int = 2, idle_poll_ms: int | None = None, adt_only: bool = False,
) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="hub-delivery-bench-"))
    stages: dict[str, float] = {}
    receiver_port, http_port, mllp_port = free_port(), free_port(), free_port()
    routes = work / "routes.yaml"
    routes.write_text(
        "destinations:\n"
        f"  ehr: {{transport: mllp, host: 127.0.0.1, port: {receiver_port}, profile: ehr, version: \"2.5.1\"}}\n"
        "routes:\n  - {name: adt-to-ehr, when: {message_type: ADT}, to: [ehr]}\n"
        "  - {name: results-to-ehr, when: {message_type: ORU}, to: [ehr]}\n"
    )
    database_url, dropper = _database(db, work)
    env = dict(os.environ, HUB_DATA_DIR=str(work), HUB_DATABASE_URL=database_url, HUB_ROUTES=str(routes),
               HUB_HTTP_PORT=str(http_port), HUB_MLLP_PORT=str(mllp_port), HUB_LOG_LEVEL="WARNING")
    env.pop("HUB_REDIS_URL", None)
    if redis:
        env.update(HUB_REDIS_URL=redis, HUB_REDIS_NAMESPACE=f"hub-bench-{uuid.uuid4().hex[:8]}")
    arrivals_file = work / "arrivals.json"
    receiver = subprocess.Popen([sys.executable, __file__, "receiver", str(receiver_port), str(arrivals_file)])
    hub = subprocess.Popen([sys.executable, "-m", "hub", "serve"], cwd=REPO, env=env,
                           stdout=open(work / "hub.log", "wb"), stderr=subprocess.STDOUT)
    worker = None
    try:
        wait_ready(f"http://127.0.0.1:{http_port}/health/ready")  # migrations applied
        if redis:
            poll = ["--idle-poll-ms", str(idle_poll_ms)] if idle_poll_ms else []
            worker = subprocess.Popen([sys.executable, "-m", "hub", "worker", "--processes", str(workers), "--threads", "4", *poll],
                                      cwd=REPO, env=env, stdout=open(work / "worker.log", "wb"), stderr=subprocess.STDOUT,
                                      start_new_session=True)
            time.sleep(3)  # dramatiq boots its processes
        hub_processes = [hub.pid] + ([worker.pid] if worker else [])
        started, cpu_at_start = time.time(), _tree_cpu(hub_processes)
        progress = _Progress(f"http://127.0.0.1:{http_port}", arrivals_file.with_suffix(".count"), started, verbose)
        progress.start()
        acked, ack_ms = asyncio.run(send(mllp_port, total, connections, rate, adt_only))
        accepted = time.time()
        count_file = arrivals_file.with_suffix(".count")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):
                if int(count_file.read_text()) >= total:
                    break
            time.sleep(0.05)
        progress.stop = True
        hub_cpu = _tree_cpu(hub_processes) - cpu_at_start
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(60)
        hub.send_signal(signal.SIGTERM)
        receiver.send_signal(signal.SIGTERM)
        hub.wait(30)
        receiver.wait(30)
        with contextlib.suppress(Exception):  # a run that failed early has no rows to time
            stages = _stages(database_url)
        dropper()
        if redis:
            import redis as redis_client

            client = redis_client.Redis.from_url(redis)
            for key in client.scan_iter(f"{env['HUB_REDIS_NAMESPACE']}*"):
                client.delete(key)
    arrivals = dict(json.loads(arrivals_file.read_text()))
    shutil.rmtree(work, ignore_errors=True)
    delivered = max(arrivals.values())
    latencies = sorted((arrivals[k] - acked[k]) * 1000 for k in acked if k in arrivals)
    return {
        "messages": total, "workload": "ADT^A08" if adt_only else "ADT^A08 and ORU^R01", "connections": connections, "db": db, "rate": rate,
        "mode": f"redis, {workers} worker processes x 4 threads" if redis else "embedded", "delivered": len(arrivals),
        "accepted_per_s": round(total / (accepted - started)),
        "delivered_per_s": round(len(arrivals) / (delivered - started)),
        "latency_ms_p50": round(statistics.median(latencies), 1),
        "latency_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1], 1),
        "ack_ms_p50": round(statistics.median(ack_ms), 1),
        "ack_ms_p99": round(ack_ms[int(len(ack_ms) * 0.99) - 1], 1),
        "hub_cpu_ms_per_message": round(hub_cpu * 1000 / total, 3),
        **stages,
    }


def _tree_cpu(pids: list[int]) -> float:
    """CPU seconds used so far by these processes and their descendants (the hub's processing process,
    dramatiq's worker processes); not PostgreSQL's backends."""
    total, ticks = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
            total += _tree_cpu(children)
    return total


def _stages(database_url: str) -> dict[str, float]:
    """Where the time went, from the hub's own timestamps: stored → outbox row written (waiting for and
    in processing), and outbox row written → delivered (commit, nudge, the queue, the send and its ACK)."""
    sys.path.insert(0, str(REPO))
    from sqlalchemy import create_engine, text

    from hub.store.driver import datetime_value

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT m.received_at, o.created_at, o.delivered_at FROM outbox o JOIN messages m ON m.id = o.message_id"
                " WHERE o.delivered_at IS NOT NULL"
            )).all()
    finally:
        engine.dispose()
    figures: dict[str, float] = {}
    for label, first, then in (("stored_to_routed", 0, 1), ("routed_to_delivered", 1, 2)):
        spans = sorted((datetime_value(row[then]) - datetime_value(row[first])).total_seconds() * 1000 for row in rows)
        figures[f"{label}_ms_p50"] = round(statistics.median(spans), 1)
        figures[f"{label}_ms_p99"] = round(spans[int(len(spans) * 0.99) - 1], 1)
    return figures


def engine_only(total: int, db: str) -> dict[str, object]:
    """The delivery engine alone (as `hub serve` runs it): `total` rows already in the outbox, one
    MLLP destination (a receiver subprocess that ACKs at once), drained by one engine."""
    sys.path.insert(0, str(REPO))
    from functools import partial

    from adapters.transport.delivery import make_transport
    from hub.delivery.engine import DeliveryEngine
    from hub.outbound import Destination, Outbound
    from hub.store.engine import make_engine
    from hub.store.migrate import upgrade
    from hub.store.uow import UnitOfWork, utcnow

    work = Path(tempfile.mkdtemp(prefix="hub-delivery-bench-"))
    port = free_port()
    arrivals_file = work / "arrivals.json"
    receiver = subprocess.Popen([sys.executable, __file__, "receiver", str(port), str(arrivals_file)])
    database_url, dropper = _database(db, work)
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        rows = [(None, 0, Outbound("ehr", "bench", f"2.999|BM{n:08d}", f"K{n}", "application/hl7-v2",
                                   adt(n).replace(b"|BC", b"|K", 1), "ADT^A08")) for n in range(total)]
        with UnitOfWork(engine) as uow:
            uow.outbox.add(rows, utcnow())
            uow.commit()
        destination = Destination("ehr", "mllp", "ehr", host="127.0.0.1", port=port)
        delivery = DeliveryEngine(partial(UnitOfWork, engine), lambda: {"ehr": destination}, make_transport)
        while not arrivals_file.with_suffix(".count").exists():
            time.sleep(0.05)

        async def drain() -> object:
            try:
                return await delivery.drain("ehr")
            finally:
                await delivery.close()

        started = time.perf_counter()
        result = asyncio.run(drain())
        elapsed = time.perf_counter() - started
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(30)
        engine.dispose()
        dropper()
        shutil.rmtree(work, ignore_errors=True)
    return {"mode": "engine only", "db": db, "rows": total, "result": str(result),
            "delivered_per_s": round(total / elapsed)}


def _database(db: str, work: Path) -> tuple[str, object]:
    if db == "sqlite":
        return f"sqlite:///{work / 'hub.db'}", lambda: None
    import psycopg

    admin = os.environ.get("HUB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    name = f"hub_bench_{uuid.uuid4().hex[:10]}"
    dsn = admin.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return admin.rsplit("/", 1)[0] + f"/{name}", drop


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "receiver":
        asyncio.run(receive(int(sys.argv[2]), Path(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--progress", action="store_true", help="print backlog and deliveries every second")
    parser.add_argument("--redis", nargs="?", const="redis://127.0.0.1:6379/0", help="dramatiq mode: HUB_REDIS_URL and `hub worker`")
    parser.add_argument("--workers", type=int, default=2, help="worker processes with --redis")
    parser.add_argument("--idle-poll-ms", type=int, help="`hub worker --idle-poll-ms` (default: hub worker's)")
    parser.add_argument("--engine-only", action="store_true", help="the delivery engine alone, on a preloaded outbox")
    parser.add_argument("--adt-only", action="store_true", help="every message an ADT^A08 (no ORU^R01)")
    parser.add_argument("--rate", type=float, help="pace the sender to this many messages/s (default: as fast as ACKs come)")
    args = parser.parse_args()
    if args.engine_only:
        print(json.dumps(engine_only(args.n, args.db), indent=2))
        return
    print(json.dumps(run(args.n, args.connections, args.db, args.progress, args.rate, args.redis, args.workers,
                         args.idle_poll_ms, args.adt_only), indent=2))


if __name__ == "__main__":
    main()
