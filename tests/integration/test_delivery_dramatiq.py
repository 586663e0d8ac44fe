"""Dramatiq mode with the real Redis: processing nudges, workers deliver from the outbox; a Redis
that lost every nudge loses no delivery (the sweep finds the due rows)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from functools import partial

import dramatiq
import pytest
import redis
from sqlalchemy import Engine, select

from adapters.inbound.hl7v2.reader import read_frame, read_message
from adapters.transport.delivery import make_transport
from hub import jobs
from hub.delivery.outbox import Routing, RoutingUnitOfWork
from hub.outbound import Destination, RetryPolicy
from hub.pipeline import process_pending, store_batch
from hub.store.outbox import outbox
from hub.store.uow import UnitOfWork
from tests.conftest import adt, unique
from tests.integration.delivery_fakes import FakeMllpReceiver, echo_planner

REDIS_URL = os.environ.get("HUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
pytestmark = pytest.mark.redis


@pytest.fixture
def namespace() -> Iterator[str]:
    name = unique("hubtest")
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{name}*"):
        client.delete(key)


def _setup(db: Engine, namespace: str, receiver: FakeMllpReceiver) -> tuple[str, dramatiq.Actor]:  # type: ignore[type-arg]
    name = unique("ehr")
    dest = Destination(name, "mllp", "ehr", host="127.0.0.1", port=receiver.port, timeout=2, connect_timeout=1,
                       retry=RetryPolicy(initial_delay=0.05, max_delay=0.2))
    context = jobs.WorkerContext(partial(UnitOfWork, db), lambda: {name: dest}, make_transport)
    actor = jobs.configure(REDIS_URL, namespace=namespace, context=lambda: context)
    return name, actor


def _process(db: Engine, name: str, frames: list[bytes]) -> None:
    store_batch(partial(UnitOfWork, db), [read_frame(f, "mllp", with_content=False).inbound for f in frames])
    uow = partial(RoutingUnitOfWork, db, Routing(echo_planner(name), jobs.nudge))
    while process_pending(uow, {"hl7v2": read_message}, limit=10) is not None:
        pass


def _states(db: Engine, name: str) -> list[str]:
    with db.connect() as conn:
        return list(conn.execute(select(outbox.c.state).where(outbox.c.destination == name)).scalars())


def _wait_delivered(db: Engine, name: str, count: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = _states(db, name)
        if len(states) == count and set(states) == {"delivered"}:
            return True
        time.sleep(0.05)
    return False


def _in_patient_order(receiver: FakeMllpReceiver, db: Engine, name: str) -> bool:
    with db.connect() as conn:
        rows = conn.execute(select(outbox.c.ordering_key, outbox.c.idempotency_key)
                            .where(outbox.c.destination == name).order_by(outbox.c.id)).all()
    expected: dict[str, list[str]] = {}
    for r in rows:
        expected.setdefault(r.ordering_key, []).append(r.idempotency_key)
    keys = {r.idempotency_key: r.ordering_key for r in rows}
    arrived: dict[str, list[str]] = {}
    for key in receiver.ids():
        arrived.setdefault(keys[key], []).append(key)
    return arrived == expected


def test_processing_nudges_and_workers_deliver_in_order(db: Engine, namespace: str) -> None:
    receiver = FakeMllpReceiver(delay=lambda key: (hash(key) % 3) / 1000).start()
    name, actor = _setup(db, namespace, receiver)
    worker = dramatiq.Worker(actor.broker, worker_threads=3, queues={jobs.QUEUE})
    worker.start()
    try:
        mrns = [unique("M") for _ in range(6)]
        _process(db, name, [adt(mrn=mrns[n % 6], trigger="A08") for n in range(60)])
        assert _wait_delivered(db, name, 60), _states(db, name)
        assert sorted(receiver.counts.values()) == [1] * 60
        assert _in_patient_order(receiver, db, name)
    finally:
        worker.stop()
        receiver.stop()


def test_nudges_lost_with_redis_lose_no_delivery(db: Engine, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "SWEEP_EVERY", 0.2)
    receiver = FakeMllpReceiver().start()
    name, actor = _setup(db, namespace, receiver)
    mrns = [unique("M") for _ in range(3)]
    _process(db, name, [adt(mrn=mrns[n % 3], trigger="A08") for n in range(15)])  # nudged, no worker yet
    client = redis.Redis.from_url(REDIS_URL)
    lost = [key for key in client.scan_iter(f"{namespace}*")]
    assert lost, "the nudges were in Redis"
    client.delete(*lost)  # Redis lost everything (restart without persistence)
    worker = dramatiq.Worker(actor.broker, worker_threads=2, queues={jobs.QUEUE})
    worker.start()
    try:
        assert _wait_delivered(db, name, 15), _states(db, name)
        assert _in_patient_order(receiver, db, name)
    finally:
        worker.stop()
        receiver.stop()
