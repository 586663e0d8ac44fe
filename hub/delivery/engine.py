"""The delivery engine: claim due outbox rows of a destination, send them, record the answers.

One *round* for one destination: claim (one transaction: due heads of each ordering key and the
rows right behind them, marked `sending` under a lease), send (rows of one key one after another,
different keys in parallel up to `Destination.connections`; a strict destination one at a time),
settle (one transaction: states, backoff, every attempt). The database is never held open across
the network. A row not sent before the round's deadline is released unsent, so a lease never
expires under a live worker; a killed worker's leases do expire and its rows are taken again
(at least once: the receiver may see a duplicate, with the same idempotency key).

The engine knows no protocol: a `Transport` per destination (adapters/transport) answers with a
`DeliveryAnswer`, and this module only reads `ok` and `retry`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from hub.outbound import DeliveryAnswer, Destination, Outbound, RetryPolicy
from hub.store.outbox import Attempt, OutboxRow, Settled
from hub.store.uow import UnitOfWork, utcnow

log = logging.getLogger("hub.delivery")

LEASE_MARGIN = 5.0
"""Seconds a lease outlives the longest send it covers (claim and settle are short transactions);
a killed worker's rows are taken again after 2 × (connect timeout + timeout) + this."""


class Transport(Protocol):
    """Moves one outbound message to its destination and reports the receiver's answer. Never raises
    for the receiver's failures (refused, timeout, NAK): those are answers."""

    async def send(self, outbound: Outbound) -> DeliveryAnswer: ...

    async def close(self) -> None: ...


TransportFactory = Callable[[Destination], Transport]
Destinations = Callable[[], Mapping[str, Destination]]
Blocking = Callable[..., Awaitable[Any]]
"""Runs a blocking call (a database transaction) off the event loop: `asyncio.to_thread`'s signature."""
"""The destinations as currently configured (routes can be reloaded)."""


def backoff(policy: RetryPolicy, attempts: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before attempt `attempts + 1`: exponential, capped, with ± jitter so that a
    destination coming back is not hit by every patient's retry in the same instant."""
    delay = min(policy.max_delay, policy.initial_delay * policy.multiplier ** max(0, attempts - 1))
    return max(0.0, delay * (1 + policy.jitter * (2 * rng() - 1)))


@dataclass
class RoundResult:
    claimed: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    released: int = 0
    limited: int = 0
    """Rounds whose claim stopped at a limit (`heads` keys, or a key's `run`): due rows may remain."""


@dataclass
class _Round:
    destination: Destination
    deadline: float
    settled: list[Settled] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    result: RoundResult = field(default_factory=RoundResult)


class DeliveryEngine:
    """Delivers outbox rows; one instance per event loop (transports hold connections bound to it)."""

    def __init__(
        self,
        uow_factory: Callable[[], UnitOfWork],
        destinations: Destinations,
        transports: TransportFactory,
        *,
        heads: int = 200,
        run: int = 20,
        rng: Callable[[], float] = random.random,
        worker: str | None = None,
        blocking: Blocking = asyncio.to_thread,
    ) -> None:
        """`blocking` runs the claim and settle transactions off the event loop: a thread of its own by
        default; in `hub serve` on SQLite, the intake's writer thread, so that delivery's writes queue
        behind processing's instead of sleeping in SQLite's busy handler (which backs off 25–100 ms)
        while processing holds the database's one write lock."""
        self._blocking = blocking
        self._uow_factory = uow_factory
        self._destinations = destinations
        self._make_transport = transports
        self._heads = heads
        self._run = run
        self._rng = rng
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self._transports: dict[str, tuple[Destination, Transport]] = {}

    def destination(self, name: str) -> Destination | None:
        return self._destinations().get(name)

    async def drain(self, name: str, budget: float | None = None) -> RoundResult:
        """Rounds until nothing is claimable (or `budget` seconds have passed)."""
        total = RoundResult()
        started = time.monotonic()
        while True:
            result = await self.deliver_round(name)
            for attribute in vars(total):
                setattr(total, attribute, getattr(total, attribute) + getattr(result, attribute))
            if result.claimed == 0 or (budget is not None and time.monotonic() - started > budget):
                return total

    async def deliver_round(self, name: str) -> RoundResult:
        destination = self.destination(name)
        if destination is None:
            return RoundResult()  # rows for a destination no longer configured wait for it to come back
        per_send = destination.connect_timeout + destination.timeout
        lease = timedelta(seconds=2 * per_send + LEASE_MARGIN)
        rows = await self._blocking(self._claim, destination, lease)
        if not rows:
            return RoundResult()
        # A row started before the deadline is answered (or timed out) before its lease ends.
        state = _Round(destination, time.monotonic() + per_send)
        state.result.claimed = len(rows)
        transport = self._transport(destination)
        groups: dict[str, list[OutboxRow]] = {}
        for row in rows:
            groups.setdefault("" if destination.ordering == "strict" else row.ordering_key, []).append(row)
        if len(groups) >= self._heads or any(len(group) >= self._run for group in groups.values()):
            state.result.limited = 1
        limit = asyncio.Semaphore(1 if destination.ordering == "strict" else max(1, destination.connections))
        await asyncio.gather(*(self._send_run(transport, group, state, limit) for group in groups.values()))
        await self._blocking(self._settle, state)
        return state.result

    async def close(self) -> None:
        for _, transport in self._transports.values():
            try:
                await transport.close()
            except Exception as exc:  # noqa: BLE001
                log.debug("closing a transport failed (%s)", type(exc).__name__)
        self._transports.clear()

    # --- the steps ---------------------------------------------------------------------------

    def _claim(self, destination: Destination, lease: timedelta) -> list[OutboxRow]:
        with self._uow_factory() as uow:
            rows = uow.outbox.claim(
                destination.name, utcnow(), lease, strict=destination.ordering == "strict",
                heads=self._heads, run=self._run,
            )
            uow.commit()
        return rows

    async def _send_run(
        self, transport: Transport, rows: list[OutboxRow], state: _Round, limit: asyncio.Semaphore
    ) -> None:
        """One key's rows, in order; the first that is not finished (delivered, or dead under
        `skip`) holds the rest back: they are released unsent."""
        async with limit:
            for n, row in enumerate(rows):
                if time.monotonic() > state.deadline:
                    _release(rows[n:], state)
                    return
                if not await self._send_one(transport, row, state):
                    _release(rows[n + 1:], state)
                    return

    async def _send_one(self, transport: Transport, row: OutboxRow, state: _Round) -> bool:
        """Send one row and decide what becomes of it; True when the rows behind it may go."""
        destination = state.destination
        outbound = Outbound(
            destination=row.destination, route=row.route, ordering_key=row.ordering_key,
            idempotency_key=row.idempotency_key, content_type=row.content_type, payload=row.payload,
            summary=row.summary,
        )
        started, at = time.monotonic(), utcnow()
        try:
            answer = await transport.send(outbound)
        except Exception as exc:  # noqa: BLE001 — a transport bug must not kill the round
            answer = DeliveryAnswer(False, True, "io-error", type(exc).__name__)
        duration = time.monotonic() - started
        attempt = row.attempts  # counted by the claim
        state.attempts.append(Attempt(row.id, attempt, at, answer.ok, answer.code, answer.detail, duration, self.worker))
        now = utcnow()
        if answer.ok:
            state.settled.append(Settled(row.id, "delivered", attempt, row.next_attempt_at, code=answer.code,
                                         detail=None, delivered_at=now))
            state.result.delivered += 1
            return True
        policy = destination.retry
        if answer.retry and attempt < policy.max_attempts:
            delay = backoff(policy, attempt, self._rng)
            state.settled.append(Settled(
                row.id, "pending", attempt, next_attempt_at=now + timedelta(seconds=delay),
                code=answer.code, detail=answer.detail,
            ))
            state.result.failed += 1
            log.info("delivery %d to %s failed (%s), attempt %d, retry in %.1fs",
                     row.id, destination.name, answer.code, attempt, delay)
            return False
        blocking = destination.on_poison == "block"
        state.settled.append(Settled(row.id, "dead", attempt, row.next_attempt_at, blocking=blocking, code=answer.code,
                                     detail=answer.detail))
        state.result.dead += 1
        log.warning("delivery %d to %s dead-lettered after %d attempt(s) (%s)%s",
                    row.id, destination.name, attempt, answer.code, "; its key is blocked" if blocking else "")
        return not blocking

    def _settle(self, state: _Round) -> None:
        with self._uow_factory() as uow:
            uow.outbox.settle(state.settled, state.attempts)
            uow.commit()

    def _transport(self, destination: Destination) -> Transport:
        """One transport per destination, made again when its configuration changes (reload)."""
        known = self._transports.get(destination.name)
        if known is not None and known[0] == destination:
            return known[1]
        if known is not None:
            asyncio.ensure_future(known[1].close())
        transport = self._make_transport(destination)
        self._transports[destination.name] = (destination, transport)
        return transport

    def due_destinations(self) -> list[str]:
        with self._uow_factory() as uow:
            return uow.outbox.due_destinations(utcnow(), list(self._destinations()))

    def next_due(self, name: str) -> datetime | None:
        with self._uow_factory() as uow:
            return uow.outbox.next_due(name)


def _release(rows: list[OutboxRow], state: _Round) -> None:
    """Give claimed rows back unsent (their attempt count and due time unchanged)."""
    for row in rows:
        state.settled.append(Settled(row.id, "pending", row.attempts - 1, row.next_attempt_at, code=row.last_code,
                                     detail=row.last_detail))
        state.result.released += 1
