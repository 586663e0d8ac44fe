"""The delivery engine against real receivers on real sockets, on SQLite and PostgreSQL:
retries and backoff, dead-letter with history, block vs skip, per-patient order under parallel
delivery, strict FIFO, a destination down then back, several workers, a killed worker's lease."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from functools import partial

from sqlalchemy import Engine

from adapters.transport.delivery import make_transport
from hub.delivery.engine import DeliveryEngine
from hub.outbound import Destination, Outbound, RetryPolicy
from hub.store.outbox import OutboxRow
from hub.store.uow import UnitOfWork, utcnow
from tests.conftest import free_port, unique
from tests.integration.delivery_fakes import FakeMllpReceiver, outbound

FAST = RetryPolicy(max_attempts=3, initial_delay=0.05, max_delay=0.2, multiplier=2.0, jitter=0.2)


def destination(port: int, **changes: object) -> Destination:
    base = Destination(name=unique("D"), transport="mllp", profile="ehr", host="127.0.0.1", port=port,
                       connect_timeout=0.5, timeout=1.0, retry=FAST)
    return replace(base, **changes)  # type: ignore[arg-type]


def add(db: Engine, rows: list[Outbound]) -> None:
    with UnitOfWork(db) as uow:
        uow.outbox.add([(None, n, o) for n, o in enumerate(rows)], utcnow())
        uow.commit()


def rows_of(db: Engine, name: str) -> list[OutboxRow]:
    with UnitOfWork(db) as uow:
        return uow.outbox.listing(destination=name, limit=10_000)


def engine_for(db: Engine, *destinations: Destination) -> DeliveryEngine:
    known = {d.name: d for d in destinations}
    return DeliveryEngine(partial(UnitOfWork, db), lambda: known, make_transport)


def run_until(engine: DeliveryEngine, name: str, done: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Rounds (as the embedded loop would run them) until `done()` or the timeout."""

    async def loop() -> bool:
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                await engine.drain(name)
                if done():
                    return True
                await asyncio.sleep(0.02)
            return False
        finally:
            await engine.close()

    return asyncio.run(loop())


def settled(db: Engine, name: str) -> Callable[[], bool]:
    return lambda: all(r.state in ("delivered", "dead", "skipped") for r in rows_of(db, name))


def by_patient(receiver: FakeMllpReceiver) -> dict[str, list[int]]:
    """Received control ids `<patient>-<n>` grouped by patient, in arrival order."""
    out: dict[str, list[int]] = {}
    for key in receiver.ids():
        patient, n = key.rsplit("-", 1)
        out.setdefault(patient, []).append(int(n))
    return out


def test_retries_with_backoff_then_delivered(db: Engine) -> None:
    receiver = FakeMllpReceiver(decide=lambda _k, seen: "AE" if seen < 3 else "AA").start()
    try:
        dest = destination(receiver.port)
        add(db, [outbound(dest.name, unique("K"), "P1")])
        assert run_until(engine_for(db, dest), dest.name, settled(db, dest.name))
        [row] = rows_of(db, dest.name)
        assert (row.state, row.attempts, row.last_code) == ("delivered", 3, "AA")
        with UnitOfWork(db) as uow:
            history = uow.outbox.attempts(row.id)
        assert [a.code for a in history] == ["AE", "AE", "AA"]
        gaps = [(b.at - a.at).total_seconds() for a, b in zip(history, history[1:])]
        # backoff: 0.05 s then 0.1 s, ± 20 % jitter
        assert gaps[0] >= 0.05 * 0.8 - 0.005 and gaps[1] >= 0.1 * 0.8 - 0.005, gaps
    finally:
        receiver.stop()


def test_dead_letter_after_max_attempts_keeps_history(db: Engine) -> None:
    receiver = FakeMllpReceiver(decide=lambda key, _n: "AR" if key.startswith("R") else "AE").start()
    try:
        retrying = destination(receiver.port)
        refused = destination(receiver.port)
        at_once = destination(receiver.port, retry=replace(FAST, on_error="dead"))
        add(db, [outbound(retrying.name, unique("E"), "P1")])
        add(db, [outbound(refused.name, unique("R"), "P1")])
        add(db, [outbound(at_once.name, unique("E"), "P1")])
        engine = engine_for(db, retrying, refused, at_once)
        for dest, attempts, code in ((retrying, 3, "AE"), (refused, 1, "AR"), (at_once, 1, "AE")):
            assert run_until(engine, dest.name, settled(db, dest.name))
            [row] = rows_of(db, dest.name)
            assert (row.state, row.attempts, row.last_code, row.blocking) == ("dead", attempts, code, False)
            assert row.last_detail == "test answer"
            with UnitOfWork(db) as uow:
                assert [a.code for a in uow.outbox.attempts(row.id)] == [code] * attempts
            with UnitOfWork(db) as uow:
                assert row.id in [r.id for r in uow.outbox.listing(state="dead", limit=10_000)]
    finally:
        receiver.stop()


def test_poison_skip_lets_the_patient_queue_go_on(db: Engine) -> None:
    receiver = FakeMllpReceiver(decide=lambda key, _n: "AR" if key.endswith("-0") else "AA").start()
    try:
        dest = destination(receiver.port, on_poison="skip")
        add(db, [outbound(dest.name, f"{dest.name}P-{n}", "P", n) for n in range(3)])
        assert run_until(engine_for(db, dest), dest.name, settled(db, dest.name))
        assert [r.state for r in rows_of(db, dest.name)] == ["dead", "delivered", "delivered"]
        assert by_patient(receiver) == {f"{dest.name}P": [1, 2]}
    finally:
        receiver.stop()


def test_poison_block_holds_the_patient_until_a_person_skips_it(db: Engine) -> None:
    receiver = FakeMllpReceiver(decide=lambda key, _n: "AR" if key.endswith("P-0") else "AA").start()
    try:
        dest = destination(receiver.port, on_poison="block")
        blocked = [outbound(dest.name, f"{dest.name}P-{n}", "P", n) for n in range(3)]
        other = [outbound(dest.name, f"{dest.name}Q-{n}", "Q", n) for n in range(2)]
        add(db, [blocked[0], other[0], blocked[1], other[1], blocked[2]])
        engine = engine_for(db, dest)
        q_done = lambda: len(by_patient(receiver).get(f"{dest.name}Q", [])) == 2  # noqa: E731
        assert run_until(engine, dest.name, q_done)
        run_until(engine, dest.name, lambda: False, timeout=0.5)  # more rounds: P stays blocked
        states = {r.idempotency_key: (r.state, r.blocking) for r in rows_of(db, dest.name)}
        assert states[f"{dest.name}P-0"] == ("dead", True)
        assert states[f"{dest.name}P-1"] == ("pending", False) and states[f"{dest.name}P-2"] == ("pending", False)
        assert f"{dest.name}P" not in by_patient(receiver)
        poison = next(r.id for r in rows_of(db, dest.name) if r.idempotency_key == f"{dest.name}P-0")
        with UnitOfWork(db) as uow:
            assert uow.outbox.skip(poison)
            uow.commit()
        assert run_until(engine_for(db, dest), dest.name, settled(db, dest.name))
        assert by_patient(receiver)[f"{dest.name}P"] == [1, 2]
    finally:
        receiver.stop()


def test_per_patient_order_under_parallel_delivery(db: Engine) -> None:
    delays = {}

    def delay(key: str) -> float:
        return delays.setdefault(key, (hash(key) % 7) / 1000)

    receiver = FakeMllpReceiver(delay=delay).start()
    try:
        dest = destination(receiver.port, connections=4)
        rows = [outbound(dest.name, f"{dest.name}P{p}-{n}", f"P{p}", n) for n in range(8) for p in range(25)]
        add(db, rows)
        assert run_until(engine_for(db, dest), dest.name, settled(db, dest.name))
        received = by_patient(receiver)
        assert len(received) == 25
        assert all(order == list(range(8)) for order in received.values()), received
        assert receiver.max_in_flight > 1, "different patients go in parallel"
        assert receiver.max_in_flight <= 4
    finally:
        receiver.stop()


def test_strict_fifo_destination_sends_one_at_a_time_in_order(db: Engine) -> None:
    receiver = FakeMllpReceiver(delay=0.002).start()
    try:
        dest = destination(receiver.port, ordering="strict", connections=4)
        rows = [outbound(dest.name, f"{dest.name}P{n % 5}-{n}", f"P{n % 5}", n, strict=True) for n in range(30)]
        add(db, rows)
        assert run_until(engine_for(db, dest), dest.name, settled(db, dest.name))
        assert receiver.ids() == [o.idempotency_key for o in rows]
        assert receiver.max_in_flight == 1
    finally:
        receiver.stop()


def test_destination_down_then_back_drains_backlog_in_order(db: Engine) -> None:
    port = free_port()
    dest = destination(port, retry=RetryPolicy(max_attempts=50, initial_delay=0.05, max_delay=0.2, jitter=0.2))
    rows = [outbound(dest.name, f"{dest.name}P{p}-{n}", f"P{p}", n) for n in range(6) for p in range(4)]
    add(db, rows)
    engine = engine_for(db, dest)
    run_until(engine, dest.name, lambda: False, timeout=1.0)  # the destination is down
    assert all(r.state == "pending" for r in rows_of(db, dest.name))
    heads = [r for r in rows_of(db, dest.name) if r.attempts]
    assert heads and {r.last_code for r in heads} == {"refused"}
    assert all(r.idempotency_key.endswith("-0") for r in heads), "only each patient's first row was tried"
    receiver = FakeMllpReceiver(port=port).start()
    try:
        assert run_until(engine_for(db, dest), dest.name, settled(db, dest.name))
        assert {r.state for r in rows_of(db, dest.name)} == {"delivered"}
        assert all(order == list(range(6)) for order in by_patient(receiver).values())
        assert len(receiver.ids()) == len(rows), "no duplicates: nothing was received while it was down"
    finally:
        receiver.stop()


def test_several_workers_never_send_a_row_twice_and_keep_order(db: Engine) -> None:
    receiver = FakeMllpReceiver(delay=lambda key: (hash(key) % 3) / 1000).start()
    try:
        dest = destination(receiver.port, connections=3)
        rows = [outbound(dest.name, f"{dest.name}P{p}-{n}", f"P{p}", n) for n in range(10) for p in range(12)]
        add(db, rows)
        done = settled(db, dest.name)
        results: list[bool] = []
        workers = [
            threading.Thread(target=lambda: results.append(run_until(engine_for(db, dest), dest.name, done)))
            for _ in range(3)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert results == [True, True, True]
        assert sorted(receiver.counts.values()) == [1] * len(rows), "each row sent exactly once"
        assert all(order == list(range(10)) for order in by_patient(receiver).values())
    finally:
        receiver.stop()


def test_a_killed_workers_rows_are_taken_again_when_its_lease_expires(db: Engine) -> None:
    receiver = FakeMllpReceiver().start()
    try:
        dest = destination(receiver.port)
        add(db, [outbound(dest.name, f"{dest.name}P-{n}", "P", n) for n in range(3)])
        with UnitOfWork(db) as uow:  # a worker claims, then dies without settling
            claimed = uow.outbox.claim(dest.name, utcnow(), timedelta(seconds=0.3), strict=False, heads=10, run=10)
            uow.commit()
        assert len(claimed) == 3
        engine = engine_for(db, dest)
        run_until(engine, dest.name, lambda: False, timeout=0.1)
        assert receiver.ids() == [], "rows under a live lease are left alone"
        time.sleep(0.3)
        assert run_until(engine_for(db, dest), dest.name, settled(db, dest.name))
        assert receiver.ids() == [f"{dest.name}P-{n}" for n in range(3)]
    finally:
        receiver.stop()


def test_delivery_bookkeeping_leaves_pooled_connections_durable(db: Engine) -> None:
    """`UnitOfWork(durable=False)` (delivery's claims and answers) must not hand a connection that
    skips the disk flush to the next transaction, which may be storing a message before its ACK."""
    with UnitOfWork(db, durable=False) as uow:
        uow.outbox.due_destinations(utcnow(), ["nowhere"])
        uow.commit()
    for _ in range(db.pool.size() + 1):  # whichever pooled connection comes next
        with UnitOfWork(db) as uow:
            if db.dialect.name == "sqlite":
                assert uow.conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            else:
                assert uow.conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
