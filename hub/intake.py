"""Group commit: many concurrent senders, one writer, one disk flush per batch.

Each listener awaits `Intake.accept(message)`; a single task drains whatever arrived
while the previous batch was committing and hands it to `accept_batch` on one writer
thread. Nobody is answered before their batch is committed.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from hub.messages import InboundMessage, Outcome
from hub.pipeline import UowFactory, accept_batch

log = logging.getLogger("hub.intake")

MAX_BATCH = 500


class Intake:
    def __init__(self, uow_factory: UowFactory) -> None:
        self._uow_factory = uow_factory
        self._queue: asyncio.Queue[tuple[InboundMessage, asyncio.Future[Outcome]]] = asyncio.Queue()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-writer")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hub-intake")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._writer.shutdown(wait=True)

    async def accept(self, message: InboundMessage) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        await self._queue.put((message, future))
        return await future

    def accept_now(self, batch: list[InboundMessage]) -> list[Outcome]:
        """Synchronous path for CLI ingestion (no event loop)."""
        return accept_batch(self._uow_factory, batch)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            while len(items) < MAX_BATCH and not self._queue.empty():
                items.append(self._queue.get_nowait())
            batch = [message for message, _ in items]
            outcomes = await loop.run_in_executor(self._writer, accept_batch, self._uow_factory, batch)
            for (_, future), outcome in zip(items, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
