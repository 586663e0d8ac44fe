"""Processing in a process of its own: `hub serve` stores and delivers, a child process maps, matches and routes.

One Python process is one core: storing (the ACKs), processing and embedded delivery shared one GIL, and
processing alone costs several times what storing does. A thread of its own was tried and starved
storing; a process is the way to use the second core. The pipeline already allows it: processing takes
the oldest pending messages in a transaction that holds the processing lock (PostgreSQL: an advisory
lock; SQLite: the write lock, taken first with BEGIN IMMEDIATE), so any process may run it and order is
kept. FHIR writes, whose answer needs their result, are still stored and processed together in
`hub serve` (`store_and_process`): the two processes take turns on the lock.

The parent (`ProcessorLink`) nudges the child after each store batch and learns from its reports how far
processing has come (every message below the oldest pending one is processed: the watermark readers
and waiting doors use) and which destinations have new outbox rows (delivery is nudged in the parent).
The child exits when the parent goes away (the pipe closes), even after a kill -9 of the parent; a child
that dies is started again. Route reloads are passed on: the child loads the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

log = logging.getLogger("hub.processor")

MAX_SLICE = 200
"""Messages per processing transaction at most (reached only while behind: slices double from the turn's
size): its fixed cost (the flush, a dozen statements; COPY from 50 rows on) is shared, and a FHIR write
waiting for the processing lock waits one slice (~0.4 s at most on a slow host). Measured on PostgreSQL,
500 msg/s offered, 10,000 messages, same session: 100 → 404 and 409 delivered/s (p99 4.9 and 4.5 s);
200 → 485 and 465 (p99 1.0 and 1.7 s); 300 → 468, 451, 459; 600 → 464; 1,000 → 451, 435."""
SQLITE_TURN = 0.025
"""On SQLite storing waits while a slice holds the write lock: slices of about this many seconds keep
an ACK from waiting longer (sized by the measured cost per message)."""
POSTGRES_TURN = 0.05
"""On PostgreSQL storing does not wait for processing; a message waits for the slice in progress and its
own, so slices of about this many seconds bound that wait (their fixed cost: a commit, a few round trips)."""
IDLE_CHECK = 0.5
"""With no nudge, look for pending messages this often (left by an earlier run, or stored by another process)."""


@dataclass(frozen=True)
class Report:
    """From the child after each slice: every message up to `processed_upto` is processed; `destinations`
    got outbox rows."""

    processed_upto: int
    destinations: tuple[str, ...] = ()


class ProcessorLink:
    """The parent's side: starts the child, nudges it, hands its reports to `on_report` on the event loop."""

    def __init__(self, settings: Any, on_report: Callable[[Report], None]) -> None:
        self._settings = settings
        self._on_report = on_report
        self._context = multiprocessing.get_context("spawn")  # never fork a process with threads and a loop
        self._process: Any = None
        self._conn: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn()

    def _spawn(self) -> None:
        parent_end, child_end = self._context.Pipe()
        self._process = self._context.Process(
            target=child_main, args=(child_end, self._settings.model_dump()), name="hub-processor", daemon=True,
        )
        self._process.start()
        child_end.close()
        self._conn = parent_end
        assert self._loop is not None
        self._loop.add_reader(parent_end.fileno(), self._receive)
        log.info("processing runs in process %d", self._process.pid)

    def nudge(self) -> None:
        """Something was stored: process it."""
        self._send(("nudge",))

    def reload_routes(self, path: Path) -> None:
        self._send(("reload", str(path)))

    def _send(self, message: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError, ValueError):  # the child is gone: _receive restarts it
            if self._conn is not None:
                self._conn.send(message)

    def _receive(self) -> None:
        conn = self._conn
        assert conn is not None
        try:
            while conn.poll():
                self._on_report(conn.recv())
        except (EOFError, OSError):
            self._lost()

    def _lost(self) -> None:
        assert self._loop is not None and self._conn is not None
        self._loop.remove_reader(self._conn.fileno())
        self._conn.close()
        self._conn = None
        if self._stopping:
            return
        log.error("the processing process ended (exit code %s); starting it again", self._process.exitcode)
        self._loop.call_later(1.0, self._spawn)

    async def stop(self, timeout: float = 10.0) -> None:
        """Close the pipe: the child finishes its slice and exits."""
        self._stopping = True
        if self._conn is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._conn.fileno())
            self._conn.close()
            self._conn = None
        if self._process is not None:
            await asyncio.to_thread(self._process.join, timeout)
            if self._process.is_alive():
                log.warning("the processing process did not stop in %.0f s; terminating it", timeout)
                self._process.terminate()
                await asyncio.to_thread(self._process.join, 5.0)


class SliceSize:
    """Messages per slice: as many as fit in `turn` seconds at the recent cost per message while processing
    keeps up; doubled (up to `MAX_SLICE`) after each slice that left more pending, since a behind
    processing needs the throughput of big slices more than short waits (learnt from full slices only:
    one that drained the backlog says little about the cost)."""

    def __init__(self, turn: float, seconds_per_message: float = 0.002) -> None:
        self._turn = turn
        self._seconds_per_message = seconds_per_message
        self._limit = self._base()

    def _base(self) -> int:
        return max(5, min(MAX_SLICE, int(self._turn / self._seconds_per_message)))

    def next(self) -> int:
        return self._limit

    def took(self, seconds: float, processed: int) -> None:
        full = processed >= self._limit
        if full:
            self._seconds_per_message += 0.2 * (seconds / processed - self._seconds_per_message)
        self._limit = min(MAX_SLICE, max(self._base(), self._limit * 2)) if full else self._base()


# ----------------------------------------------------------------------------------------- the child

def child_main(conn: Connection, settings_values: dict[str, Any]) -> None:
    """The processing process: until the parent closes the pipe, process whatever is pending."""
    from hub.settings import Settings

    import hub.bootstrap  # noqa: F401 — imported before logging is set up: its imports log nothing worth reading

    settings = Settings(**settings_values)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the server's to do; it tells us through the pipe
    try:
        _process_until_parent_leaves(conn, settings)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent stops us
        pass


def _process_until_parent_leaves(conn: Connection, settings: Any) -> None:
    from hub.bootstrap import inbound_readers, load_route_table
    from hub.delivery.outbox import Routing, RoutingUnitOfWork
    from hub.heap import freeze_startup_objects
    from hub.mpi.service import use_model_file
    from hub.pipeline import process_pending
    from hub.routing.reload import swap_routes
    from hub.store.engine import make_engine, writer_turns

    engine = make_engine(settings.database)
    use_model_file(settings.mpi_model)
    touched: set[str] = set()
    routing = Routing(notify=touched.update)
    swap_routes(routing, load_route_table(settings))
    uow_factory = partial(RoutingUnitOfWork, engine, routing)
    readers = inbound_readers()
    turns = writer_turns(engine)
    turn = turns.turn if turns is not None else contextlib.nullcontext
    reported = upto = -1
    more = True
    slices = SliceSize(SQLITE_TURN if turns is not None else POSTGRES_TURN)
    freeze_startup_objects()
    try:
        while True:
            if not more:
                conn.poll(IDLE_CHECK)  # until the parent says something (or look anyway)
            if not _take_requests(conn, routing, settings):
                return
            try:
                started, before = time.monotonic(), upto
                with turn():
                    last = process_pending(uow_factory, readers, slices.next())
                seconds = time.monotonic() - started
                more = last is not None
                upto = _processed_upto(uow_factory)
                # ids are consecutive: about the messages processed (nothing learnt before the first watermark)
                slices.took(seconds, last - before if last is not None and before >= 0 else 0)
            except Exception as exc:  # noqa: BLE001 — the database may be down a while: try again
                log.error("processing failed (%s); trying again in a second", type(exc).__name__)
                more = False
                time.sleep(1.0)
                continue
            if touched or upto != reported:
                conn.send(Report(upto, tuple(sorted(touched))))
                touched.clear()
                reported = upto
    except (EOFError, OSError):  # the parent has gone
        return
    finally:
        engine.dispose()


def _take_requests(conn: Connection, routing: Any, settings: Any) -> bool:
    """Take every request the parent sent (nudges, route reloads); False when it has gone."""
    from hub.bootstrap import load_route_table
    from hub.routing.reload import swap_routes

    try:
        while conn.poll():
            request = conn.recv()
            if request[0] == "reload":
                settings.routes = Path(request[1])
                try:
                    swap_routes(routing, load_route_table(settings))
                except Exception as exc:  # noqa: BLE001 — the parent checked the file; it changed since
                    log.error("routes not reloaded in the processing process (%s); its current routes stay",
                              type(exc).__name__)
    except (EOFError, OSError):
        return False
    return True


def _processed_upto(uow_factory: Callable[[], Any]) -> int:
    with uow_factory() as uow:
        return uow.messages.processed_upto()

