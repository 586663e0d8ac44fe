"""The queue layer with Redis (`HUB_REDIS_URL`): dramatiq actors that empty the outbox.

Granularity, chosen from the measured costs (docs: ~520 dramatiq messages/s per 1×2 worker at
default prefetch): a dramatiq message does not carry a delivery, it says "destination D has work".
Processing sends one nudge per destination per committed batch (tens per second at full load, not
one per message); the `deliver` actor then claims and sends rows from the outbox in rounds of up to
hundreds, for up to `ROUND_BUDGET` seconds, and nudges itself again if work is left. Any number of
worker processes and threads can run it for the same destination: claims lock rows (PostgreSQL
`FOR UPDATE SKIP LOCKED`) and keep per-patient order. Prefetch stays at dramatiq's default, since
nudges are few and each is long work.

Durability never depends on Redis: the rows are in the database. A nudge lost with Redis (or never
sent because Redis was down) is made up by the sweep every worker process runs: every
`SWEEP_EVERY` seconds it nudges each destination that has due rows (retries whose backoff passed,
rows of a killed worker whose lease expired). dramatiq's own retries are off (`max_retries=0`): the
outbox keeps the attempt count, the backoff and the dead-letter state.

`hub worker` runs `dramatiq hub.jobs`; importing this module with `HUB_REDIS_URL` set configures
the broker. (There is no top-level package named `queue`: see queue/README.md.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from hub.delivery.engine import DeliveryEngine, Destinations, TransportFactory
from hub.store.uow import UnitOfWork, utcnow

log = logging.getLogger("hub.jobs")

QUEUE = "hub-delivery"
ROUND_BUDGET = 10.0
SWEEP_EVERY = float(os.environ.get("HUB_SWEEP_EVERY", "2.0"))


@dataclass(frozen=True)
class WorkerContext:
    """What a worker process needs to deliver: the database and the current destinations."""

    uow_factory: Callable[[], UnitOfWork]
    destinations: Destinations
    transports: TransportFactory


ContextFactory = Callable[[], WorkerContext]


def context_from_settings() -> WorkerContext:
    """The default: `HUB_DATABASE_URL` and the routes file `HUB_ROUTES`."""
    from adapters.transport.delivery import make_transport
    from hub.routing.reload import FollowedDestinations
    from hub.settings import Settings
    from hub.store.engine import make_engine

    settings = Settings()
    delivery_bookkeeping = partial(UnitOfWork, make_engine(settings.database), durable=False)
    if not settings.routes.exists():
        return WorkerContext(delivery_bookkeeping, dict, make_transport)
    # Followed: when `hub routes reload` gives the hub new destinations, the workers see them too.
    return WorkerContext(delivery_bookkeeping, FollowedDestinations(settings.routes), make_transport)


class _State:
    broker: RedisBroker | None = None
    actor: dramatiq.Actor[[str], None] | None = None
    context_factory: ContextFactory = context_from_settings
    context: WorkerContext | None = None
    lock = threading.Lock()
    local = threading.local()


def configure(redis_url: str, namespace: str = "hub", context: ContextFactory | None = None) -> dramatiq.Actor[[str], None]:
    """Set up the Redis broker and the `deliver` actor (once per process; again with a new URL)."""
    with _State.lock:
        if context is not None:
            _State.context_factory = context
            _State.context = None
        if _State.actor is not None and getattr(_State.broker, "_hub_key", None) == (redis_url, namespace):
            return _State.actor
        broker = RedisBroker(url=redis_url, namespace=namespace)
        broker._hub_key = (redis_url, namespace)  # type: ignore[attr-defined]
        broker.add_middleware(Sweeper())
        dramatiq.set_broker(broker)
        _State.broker = broker
        _State.actor = dramatiq.Actor(
            deliver, broker=broker, actor_name="deliver", queue_name=QUEUE, priority=0,
            options={"max_retries": 0, "time_limit": 10 * 60 * 1000},
        )
        return _State.actor


def nudge(destinations: Collection[str]) -> None:
    """Tell the workers these destinations have work (called after a processing commit)."""
    actor = _State.actor
    assert actor is not None, "hub.jobs.configure() first"
    for name in destinations:
        actor.send(name)


def deliver(destination: str) -> None:
    """The actor: rounds for one destination until it has nothing due, for at most ROUND_BUDGET s."""
    loop, engine = _thread_engine()
    try:
        more = loop.run_until_complete(_rounds(engine, destination))
    except Exception as exc:  # noqa: BLE001 — logged without its text (SQL errors quote values); the sweep retries
        log.error("delivering to %s failed (%s)", destination, type(exc).__name__)
        return
    if more:
        nudge([destination])  # more work: let it take turns with other destinations


async def _rounds(engine: DeliveryEngine, destination: str) -> bool:
    started = time.monotonic()
    while time.monotonic() - started < ROUND_BUDGET:
        result = await engine.deliver_round(destination)
        if result.claimed == 0:
            return False
    return True


def _context() -> WorkerContext:
    with _State.lock:
        if _State.context is None:
            _State.context = _State.context_factory()
        return _State.context


def _thread_engine() -> tuple[asyncio.AbstractEventLoop, DeliveryEngine]:
    """Each worker thread keeps its own event loop and engine: connections to receivers stay open
    from one message to the next, and asyncio objects never cross threads."""
    local = _State.local
    if getattr(local, "engine", None) is None:
        context = _context()
        local.loop = asyncio.new_event_loop()
        local.engine = DeliveryEngine(context.uow_factory, context.destinations, context.transports)
    return local.loop, local.engine


class Sweeper(dramatiq.Middleware):
    """In every worker process: nudge destinations that have due rows, every SWEEP_EVERY seconds."""

    def __init__(self) -> None:
        self._stop = threading.Event()

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self._stop.clear()
        threading.Thread(target=self._run, name="hub-delivery-sweep", daemon=True).start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(SWEEP_EVERY):
            try:
                context = _context()
                with context.uow_factory() as uow:
                    due = uow.outbox.due_destinations(utcnow(), list(context.destinations()))
                nudge(due)
            except Exception as exc:  # noqa: BLE001 — Redis or the database away: try again next time
                log.warning("delivery sweep failed (%s)", type(exc).__name__)


if os.environ.get("HUB_REDIS_URL"):  # `dramatiq hub.jobs` (hub worker): configure on import
    configure(os.environ["HUB_REDIS_URL"], os.environ.get("HUB_REDIS_NAMESPACE", "hub"))
