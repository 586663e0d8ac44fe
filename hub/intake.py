"""Group commit and background processing on one writer.

Listeners await `Intake.accept(message)`. One task drains whatever arrived while the previous
batch was committing and stores it in one transaction (one disk flush), then answers every
sender in it. The same task processes stored messages (map, match, route) in acceptance order,
in turns of about `turn_budget` seconds of work (sized by processing's measured cost per message),
and which goes first depends on the senders:
- A stream (senders send when they have something, and wait for nothing but the ACK of the last
  message): after each store batch, processing takes a turn while it is behind, so routing follows
  arrivals within a turn or two and no ACK waits more than one turn. A stream that keeps processing
  behind for half a second gets turns three times longer (`_turn`).
- A burst (senders backlogged: most messages arrive within `eager_gap` of the same sender's previous
  ACK, so a faster ACK is their throughput): storing goes first, as fast as the disk allows, and
  processing takes the pauses between arrivals, plus one turn a second (`probe_every`) so that the
  backlog moves; it drains once the burst ends. Past `max_backlog`, turns with every store batch
  (backpressure: ACKs slow down rather than the backlog growing without end). With `max_lag` set
  (HUB_PROCESSING_MAX_LAG), a burst behind by that long also gets turns, at most `lag_share` of the
  writer (measured: about a third fewer accepted msg/s): opt-in.
Telling the two apart by the senders, not by the arrival rate, matters: a backlogged sender slows down
to whatever the hub gives it, so turns taken during a burst would look like a stream that keeps up.

A batch holding messages whose door waits for the result (FHIR writes: the answer carries the new
resource) is stored and processed in one transaction (`store_and_process`), and those doors wait on
asyncio futures woken when processing passes their message (`accept_with_result`).

`wait_processed` gives readers read-your-writes: a FHIR read waits (briefly) until everything
acknowledged before it began has been processed.

With a processing process (`hub.processor`, HUB_PROCESSING_PROCESS, `process_elsewhere`) none of the
turns above are taken here: the intake stores, nudges that process, and learns from its reports how far
processing has come. FHIR writes are still stored and processed together here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import heapq
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from hub.messages import InboundMessage, Outcome, Status
from hub.pipeline import (
    Reader,
    UowFactory,
    process_pending,
    store_and_process,
    store_batch,
)

log = logging.getLogger("hub.intake")
T = TypeVar("T")

MAX_BATCH = 500
MAX_READ_AHEAD = 5_000
LEARN_FROM = 10
"""Slices of at least this many messages teach the intake processing's cost per message."""
"""Stored messages kept decoded in memory for processing; beyond, processing decodes their bytes again."""


class StillProcessing(Exception):
    """A stored message whose result a door waited for longer than it may (the door answers 503)."""

    def __init__(self, message_id: int) -> None:
        super().__init__(f"message {message_id} is stored but not processed yet")
        self.message_id = message_id


class Senders:
    """Whether the senders are backlogged: a sender (a connection's task) that sends its next message
    within `eager_gap` of its previous ACK had it waiting. A moving share over recent arrivals."""

    def __init__(self, eager_gap: float, weight: float = 0.1) -> None:
        self._eager_gap = eager_gap
        self._weight = weight
        self._answered: weakref.WeakKeyDictionary[asyncio.Task[Any], float] = weakref.WeakKeyDictionary()
        self.eager_share = 0.0

    def arrived(self) -> None:
        task = asyncio.current_task()
        answered = self._answered.get(task) if task is not None else None
        if answered is not None:  # a sender's first message (or an HTTP request) says nothing
            eager = time.monotonic() - answered < self._eager_gap
            self.eager_share += self._weight * (eager - self.eager_share)

    def answered(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._answered[task] = time.monotonic()


class WriterCalls:
    """Blocking calls for the one writer thread, run in order, in batches that take the database turn once:
    a batch runs every call that queued while it ran, for at most `hold` seconds, then gives the turn back
    (the other process's turn) and goes on. With SQLite and a processing process, storing, delivery's claims
    and its answers each waited a whole processing turn when each took the turn on its own (3 ms a call,
    the writer thread ~90 % waiting at 500 msg/s, ACKs of ~16 ms). The turn is always given back when the
    queue is empty: a caller that stops waiting (cancelled) cannot leave it held."""

    def __init__(
        self, executor: ThreadPoolExecutor, turn: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        hold: float = 0.01,
    ) -> None:
        self._executor = executor
        self.turn = turn
        self._hold = hold
        self._queue: collections.deque[tuple[Callable[[], Any], asyncio.Future[Any]]] = collections.deque()
        self._lock = threading.Lock()
        self._draining = False

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._queue.append((functools.partial(call, *args), future))
            start, self._draining = not self._draining, True
        if start:
            try:
                self._executor.submit(self._drain)
            except RuntimeError:  # shut down: nothing will run it
                with self._lock:
                    self._queue.clear()
                    self._draining = False
                raise
        return await future

    def _drain(self) -> None:
        """On the writer thread, until the queue is empty."""
        while True:
            try:
                with self.turn():
                    if self._run_for(self._hold):
                        return
            except Exception as exc:  # noqa: BLE001 — the turn could not be taken: its callers hear why
                self._fail_all(exc)
                return

    def _run_for(self, seconds: float) -> bool:
        """Run queued calls (one at least) for about `seconds`; True once the queue is empty (and marked so)."""
        until, first = time.monotonic() + seconds, True
        while True:
            with self._lock:
                if not self._queue:
                    self._draining = False
                    return True
                if not first and time.monotonic() > until:
                    return False
                call, future = self._queue.popleft()
            first = False
            try:
                _answer(future, call(), None)
            except Exception as exc:  # noqa: BLE001 — the caller's to handle
                _answer(future, None, exc)

    def _fail_all(self, exc: Exception) -> None:
        with self._lock:
            failed, self._draining = list(self._queue), False
            self._queue.clear()
        for _, future in failed:
            _answer(future, None, exc)


def _answer(future: asyncio.Future[Any], result: Any, exc: Exception | None) -> None:
    """From the writer thread: the result (or the exception) to the caller awaiting on its event loop."""

    def settle() -> None:
        if future.done():  # the caller stopped waiting
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)

    future.get_loop().call_soon_threadsafe(settle)


class Intake:
    def __init__(
        self,
        uow_factory: UowFactory,
        readers: Mapping[str, Reader],
        *,
        process_batch: int = 200,
        busy_max_events: int = 200,
        turn_budget: float = 0.02,
        long_turn_budget: float = 0.06,
        long_turn_after: float = 0.5,
        eager_gap: float = 0.003,
        probe_every: float = 1.0,
        max_backlog: int = 50_000,
        max_lag: float | None = None,
        lag_share: float = 0.3,
        lag_batch: int = 5,
        idle_before_processing: float = 0.003,
        idle_when_busy: float = 0.025,
        idle_poll: float = 1.0,
    ) -> None:
        self._uow_factory = uow_factory
        self._readers = readers
        self._process_batch = process_batch
        self._busy_max_events = busy_max_events
        self._turn_budget = turn_budget
        self._long_turn_budget = long_turn_budget
        self._long_turn_after = long_turn_after
        self._senders = Senders(eager_gap)
        self._probe_every = probe_every
        self._seconds_per_message = 0.0025
        """Processing's recent cost per message (moving average): turns are sized in time, not in messages."""
        self._last_slice = 0.0
        self._last_store = 0.0
        self._max_backlog = max_backlog
        self._max_lag = max_lag
        self._behind_since: float | None = None
        """When processing last fell behind storing (None: caught up)."""
        self._lag_share = lag_share
        self._lag_batch = lag_batch
        self._next_turn = 0.0
        """Taking turns, processing gets at most `lag_share` of the writer: storing (the ACKs) keeps the rest."""
        self._idle_before_processing = idle_before_processing
        self._idle_when_busy = idle_when_busy
        self._idle_poll = idle_poll
        self._queue: asyncio.Queue[tuple[InboundMessage, asyncio.Future[Outcome]]] = asyncio.Queue()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-writer")
        self._writer_calls = WriterCalls(self._writer)
        """Every call on the writer thread goes through here (SQLite with a processing process: in the
        turns both processes take)."""
        self._task: asyncio.Task[None] | None = None
        self._watermark = threading.Condition()
        self._stored_upto = 0
        self._processed_upto = 0
        self._results: dict[int, Any] = {}
        self._read: dict[int, InboundMessage] = {}
        """Messages stored with their events already read by the door (FHIR): processing need not read them again."""
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._work_to_do = True  # messages left pending by an earlier run are processed first
        self._elsewhere: Any = None
        """The processing process's link (`hub.processor.ProcessorLink`), when processing runs there."""
        self._recovered = threading.Event()
        """Set once processing first found nothing pending: until then reads also wait for messages an
        earlier run stored (the watermarks only know this run's)."""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hub-intake")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._writer.shutdown(wait=True)

    def process_elsewhere(self, link: Any, turn: Callable[[], contextlib.AbstractContextManager[Any]] | None) -> None:
        """From now on another process processes (`link.nudge()` after each store batch); its reports come
        to `processed_elsewhere`. `turn`: what the writer holds around each call when the two processes
        must take turns writing (SQLite, `hub.store.engine.WriterTurns`)."""
        self._elsewhere = link
        if turn is not None:
            self._writer_calls.turn = turn

    @property
    def processing_ready(self) -> bool:
        """Processing runs: here, or in a processing process that has reported (it is up and reads the database)."""
        return self._elsewhere is None or self._recovered.is_set()

    def processed_elsewhere(self, upto: int) -> None:
        """The processing process has processed every message up to `upto` (exactly: no guess about
        messages an earlier run left, so readers may rely on it from the first report)."""
        with self._watermark:
            self._processed_upto = max(self._processed_upto, upto)
            self._recovered.set()
            self._watermark.notify_all()
        self._wake_waiters()

    async def accept(self, message: InboundMessage) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._senders.arrived()
        await self._queue.put((message, future))
        try:
            return await future
        finally:
            self._senders.answered()

    async def on_writer(self, call: Callable[..., T], *args: Any) -> T:
        """Run a blocking call on the writer thread, between storing and processing slices (one
        SQLite writer: other writes queue here rather than wait on the database's lock)."""
        return await self._writer_calls.run(call, *args)

    async def drain(self) -> None:
        """Wait until everything stored so far has been processed (CLI ingestion, tests)."""
        while not await asyncio.to_thread(self.wait_processed, 1.0):
            pass

    @property
    def backlog(self) -> int:
        return max(0, self._stored_upto - self._processed_upto)

    def wait_processed(self, timeout: float = 5.0) -> bool:
        """Block until every message stored so far is processed (or the timeout passes)."""
        return self.wait_until_processed(self._stored_upto, timeout)

    def wait_until_processed(self, message_id: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self._recovered.wait(timeout):
            return False
        with self._watermark:
            return self._watermark.wait_for(
                lambda: self._processed_upto >= message_id, max(0.0, deadline - time.monotonic())
            )

    async def accept_with_result(self, message: InboundMessage, timeout: float = 30.0) -> tuple[Outcome, Any]:
        """Accept, wait for processing, and return what processing made of the message (its stored
        result: for FHIR, per entry the status and the record written). None when processing failed.

        With several hub processes on one PostgreSQL database, the one that stored the message may
        not get the processing lock: then it tries again until the message is processed (by itself or
        by the process holding the lock, whose stored result it reads). Raises `StillProcessing` when
        that takes longer than `timeout`: the message stays stored and will be processed."""
        outcome = await self.accept(message)
        if outcome.message_id is None or outcome.duplicate_of is not None or message.status is not Status.ACCEPTED:
            return outcome, None
        message_id = outcome.message_id
        deadline = time.monotonic() + timeout
        pause = 0.25
        while True:
            await self._processed(message_id, max(0.0, min(pause, deadline - time.monotonic())))
            result = self._results.pop(message_id, None)
            if result is not None:
                return outcome, result
            # Not processed here (yet): another process may have done it, or may hold the lock.
            state, stored = await asyncio.to_thread(self._state, message_id)
            if state != "pending":  # processed by another process, or after a restart: the stored result
                return outcome, stored
            if time.monotonic() >= deadline:
                raise StillProcessing(message_id)
            if self._processed_upto >= message_id:  # the watermark will not wake us: poll
                await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    async def _processed(self, message_id: int, timeout: float) -> None:
        """Wait on the event loop (no thread per waiter) until processing has passed message_id."""
        if self._processed_upto >= message_id:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (message_id, id(future), future))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(future), timeout)

    def _wake_waiters(self) -> None:
        while self._waiters and self._waiters[0][0] <= self._processed_upto:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)

    def _oldest_pending(self) -> int | None:
        with self._uow_factory() as uow:
            pending = uow.messages.pending(1)
        return pending[0].id if pending else None

    def _state(self, message_id: int) -> tuple[str | None, Any]:
        with self._uow_factory() as uow:
            return uow.messages.processing_state(message_id)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._elsewhere is not None:
                items = [await self._queue.get()]
            elif self._work_to_do and self._queue.empty():
                # A pause in arrivals is the moment to process, not before; while senders are
                # active the pause must be longer, so that processing never slows their ACKs.
                busy = time.monotonic() - self._last_store < 0.5
                pause = self._idle_when_busy if busy and self._burst() else self._idle_before_processing
                try:
                    first = await asyncio.wait_for(self._queue.get(), pause)
                except TimeoutError:
                    await self._process(loop)
                    continue
                items = [first]
            else:
                try:
                    items = [await asyncio.wait_for(self._queue.get(), self._idle_poll)]
                except TimeoutError:
                    # Idle: look for pending messages now and then. Another hub process may have stored
                    # some while this one held the processing lock (or this one while it could not).
                    self._work_to_do = True
                    continue
            while len(items) < MAX_BATCH and not self._queue.empty():
                items.append(self._queue.get_nowait())
            batch = [m for m, _ in items]
            awaited = any(m.events for m in batch)
            if awaited:  # a door waits for the processing of these (FHIR): store and process in one go
                outcomes, last, drained = await self.on_writer(
                    store_and_process, self._uow_factory, self._readers, batch,
                    max(self._process_batch, len(batch)), self._results, self._read,
                )
            else:
                outcomes, last, drained = await self.on_writer(store_batch, self._uow_factory, batch), None, False
            self._last_store = time.monotonic()
            stored = [o.message_id for o in outcomes if o.message_id is not None]
            if stored:
                with self._watermark:
                    self._stored_upto = max(self._stored_upto, *stored)
                self._work_to_do = True
                if self._behind_since is None:
                    self._behind_since = self._last_store
            if awaited:
                with self._watermark:
                    if last is not None:
                        self._processed_upto = max(self._processed_upto, last)
                    if drained:
                        self._work_to_do = False
                        self._behind_since = None
                        self._processed_upto = max(self._processed_upto, self._stored_upto)
                        self._recovered.set()
                    self._watermark.notify_all()
                self._wake_waiters()
            elif self._elsewhere is None:  # kept decoded for processing here (another process reads the bytes)
                for message, outcome in zip(batch, outcomes, strict=True):
                    if (message.events or message.content) and message.status is Status.ACCEPTED \
                            and outcome.message_id is not None and outcome.duplicate_of is None \
                            and len(self._read) < MAX_READ_AHEAD:
                        self._read[outcome.message_id] = message
            for (_, future), outcome in zip(items, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
            if self._elsewhere is not None:
                if stored and not drained:  # (stored and processed here with nothing left: nothing to say)
                    self._elsewhere.nudge()
                continue
            behind = self._behind_since is not None
            if self.backlog > self._max_backlog or (behind and (not self._burst() or self._due_probe())):
                await self._process(loop)  # backpressure, a stream's turn, or a burst's probe turn
            elif self._lagging():  # a turn between two store batches: a few messages, not a slice
                started = time.monotonic()
                await self._process(loop, self._lag_batch)
                spent = time.monotonic() - started
                self._next_turn = time.monotonic() + spent * (1 - self._lag_share) / self._lag_share

    def _burst(self) -> bool:
        """Most recent arrivals were waiting at their sender: storing goes first."""
        return self._senders.eager_share > 0.5

    def _turn(self) -> int:
        """Messages that make one turn of about `turn_budget` seconds at processing's recent cost, or
        `long_turn_budget` once a stream has kept processing behind for `long_turn_after`: near capacity,
        short turns never catch up (each transaction's fixed cost — a dozen statements, the commit's page
        writes — is paid per turn), the backlog grows and deliveries wait seconds; three times longer turns
        cost the ACKs ~40 ms at p99 and keep up (docs/benchmarks.md, tenth session). Not in a burst: its
        probe turns stay short, its ACKs are its throughput."""
        budget = self._turn_budget
        if self._behind_since is not None and not self._burst() \
                and time.monotonic() - self._behind_since > self._long_turn_after:
            budget = self._long_turn_budget
        return max(1, min(self._process_batch, int(budget / self._seconds_per_message)))

    def _took(self, seconds: float, before: int, last: int | None) -> None:
        """Learn processing's cost per message from slices large enough for the transaction's fixed
        cost (the flush, a dozen statements: ~4 ms) not to count: the small slices of a slow stream
        amortise it over bigger batches as the stream speeds up (group commit), so only the cost per
        message decides whether processing can follow. (Message ids are consecutive: the ids passed
        approximate the messages processed.)"""
        self._last_slice = time.monotonic()
        processed = 0 if last is None else min(last - before, self._process_batch)
        if processed >= LEARN_FROM:
            self._seconds_per_message += 0.2 * (seconds / processed - self._seconds_per_message)

    def _due_probe(self) -> bool:
        """During a burst, one turn a second: the backlog moves, and the cost per message stays measured
        (a cold start's slow first slices would otherwise keep the intake from ever trying again)."""
        return time.monotonic() - self._last_slice > self._probe_every

    def _lagging(self) -> bool:
        """Processing has been behind for `max_lag` and its last turn has been paid for (see `lag_share`)."""
        if self._max_lag is None or self._behind_since is None:
            return False
        now = time.monotonic()
        return now - self._behind_since > self._max_lag and now >= self._next_turn

    async def _process(self, loop: asyncio.AbstractEventLoop, limit: int | None = None) -> None:
        # While senders are active, process in slices short enough not to hold their ACKs back.
        busy = time.monotonic() - self._last_store < 0.5
        limit = limit or (self._turn() if busy else self._process_batch)
        if self._waiters:  # doors wait for these (FHIR): take every awaited message in this slice
            awaited = max(message_id for message_id, _, _ in self._waiters)
            limit = max(limit, min(self._process_batch, awaited - self._processed_upto))
        max_events = self._busy_max_events if busy and not self._waiters else None
        started, before, stored_before = time.monotonic(), self._processed_upto, self._stored_upto
        try:
            last = await self.on_writer(
                process_pending, self._uow_factory, self._readers, limit, self._results, self._read,
                max_events,
            )
        except Exception as exc:  # noqa: BLE001 — never let the intake task die
            log.error("processing failed (%s)", type(exc).__name__)
            await asyncio.sleep(1)
            return
        self._took(time.monotonic() - started, before, last)
        oldest = await self.on_writer(self._oldest_pending) if last is None else None
        if oldest is not None:
            # Another process holds the processing lock: not drained, but everything before its oldest
            # pending message is processed (readers and doors waiting for those may go on). Look again shortly.
            with self._watermark:
                self._processed_upto = max(self._processed_upto, oldest - 1)
                self._watermark.notify_all()
            self._wake_waiters()
            self._behind_since = time.monotonic()  # not ours to catch up: do not take turns for it
            await asyncio.sleep(0.05)
            return
        with self._watermark:
            if last is None:  # drained: what was stored when the slice began (never more than that)
                self._processed_upto = max(self._processed_upto, stored_before)
                if self._stored_upto == stored_before:
                    self._work_to_do = False
                    self._behind_since = None
                self._recovered.set()
            else:
                self._processed_upto = max(self._processed_upto, last)
            self._watermark.notify_all()
        self._wake_waiters()
