"""Delivery inside `hub serve` (no Redis): the engine on the hub's own event loop.

One task per destination with work, so a slow or dead destination never holds up another. A task
wakes on a nudge (processing committed rows for it, `notify`, callable from any thread) or on the
sweep, which looks for due rows every `sweep_every` seconds: retries whose backoff has passed, rows
left by a previous run (a crash, a restart), rows a lost nudge did not announce. The outbox is the
only state, so stopping at any moment loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection

from hub.delivery.engine import DeliveryEngine

log = logging.getLogger("hub.delivery")


class EmbeddedDelivery:
    def __init__(self, engine: DeliveryEngine, sweep_every: float = 1.0) -> None:
        self.engine = engine
        self.sweep_every = sweep_every
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sweeper = asyncio.create_task(self._sweep(), name="hub-delivery-sweep")

    async def stop(self, grace: float = 10.0) -> None:
        """Let rounds in flight finish and record their answers (for up to `grace` seconds), so a
        restart does not wait for their leases; then stop."""
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for event in self._wake.values():
            event.set()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for task in [t for t in [self._sweeper, *tasks] if t is not None]:
            task.cancel()
        await asyncio.gather(*[t for t in [self._sweeper, *tasks] if t is not None], return_exceptions=True)
        self._tasks.clear()
        await self.engine.close()

    def notify(self, destinations: Collection[str]) -> None:
        """Thread-safe nudge (processing runs on the writer thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is shutting down: the sweep covers it
                loop.call_soon_threadsafe(self._nudge, list(destinations))

    def _nudge(self, destinations: Collection[str]) -> None:
        if self._stopping:
            return
        for name in destinations:
            event = self._wake.get(name)
            if event is None:
                event = self._wake[name] = asyncio.Event()
                self._tasks[name] = asyncio.create_task(self._destination(name), name=f"hub-delivery-{name}")
            event.set()

    async def _destination(self, name: str) -> None:
        event = self._wake[name]
        while True:
            await event.wait()
            event.clear()
            if self._stopping:
                return
            try:
                await self._drain(name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 — never let a destination's task die
                log.error("delivering to %s failed (%s); trying again shortly", name, type(exc).__name__)
                await asyncio.sleep(1)
                event.set()

    async def _drain(self, name: str) -> None:
        """Rounds while a claim stopped at a limit or rows were released unsent (due rows remain);
        stopping ends it between rounds. A round that took everything due ends it without one more
        (empty) claim: rows committed since come with their own nudge, retries with the sweep."""
        while not self._stopping:
            result = await self.engine.deliver_round(name)
            if result.claimed == 0 or not (result.limited or result.released):
                return

    async def _sweep(self) -> None:
        while True:
            try:
                due = await asyncio.to_thread(self.engine.due_destinations)
                self._nudge(due)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("delivery sweep failed (%s)", type(exc).__name__)
            await asyncio.sleep(self.sweep_every)
