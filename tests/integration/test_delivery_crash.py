"""kill -9 of `hub serve` in the middle of a burst: after a restart every accepted message is
delivered, none lost, per-patient order kept, and a duplicate only where the log shows a retry."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from adapters.transport.mllp import send_all
from hub.store.engine import make_engine
from hub.store.outbox import outbox
from hub.store.tables import messages
from tests.conftest import adt, free_port, unique
from tests.integration.delivery_fakes import FakeMllpReceiver, assert_per_patient_order

REPO = Path(__file__).resolve().parents[2]

ROUTES = """\
destinations:
  ehr:
    transport: mllp
    host: 127.0.0.1
    port: {port}
    profile: ehr
    connect_timeout: 1
    timeout: 1
    retry: {{initial_delay: 0.2, max_delay: 1, max_attempts: 100}}
routes:
  - {{name: adt-to-ehr, when: {{message_type: ADT}}, to: [ehr]}}
"""


def _last_id(engine: object) -> int:
    """Rows of earlier tests in this module's database are left out of every count."""
    with engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(select(func.coalesce(func.max(outbox.c.id), 0))).scalar_one())


def _outbox_states(engine: object, since: int, delivered: int, timeout: float) -> dict[str, int]:
    """Outbox rows after `since` by state, once `delivered` of them are delivered (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:  # type: ignore[attr-defined]
            states = dict(conn.execute(select(outbox.c.state, func.count()).where(outbox.c.id > since)
                                       .group_by(outbox.c.state)).all())
        if states.get("delivered", 0) == delivered or time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def _hub_env(database_url: str, routes: Path, data_dir: Path, **settings: str) -> dict[str, str]:
    """`hub serve`'s environment: this database and routes file, free ports, embedded unless told otherwise."""
    env = dict(os.environ, HUB_DATABASE_URL=database_url, HUB_ROUTES=str(routes), HUB_DATA_DIR=str(data_dir),
               HUB_HTTP_PORT=str(free_port()), HUB_MLLP_PORT=str(free_port()), HUB_LOG_LEVEL="WARNING")
    env.pop("HUB_REDIS_URL", None)
    return env | settings


def _serve(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "hub", "serve"], cwd=REPO, env=env,
                               stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{env['HUB_HTTP_PORT']}/health/ready", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
    raise AssertionError("hub did not start")


def _stop(hub: subprocess.Popen[bytes], *workers: subprocess.Popen[bytes]) -> None:
    """Stop `hub worker` process groups still running, then `hub serve`."""
    for worker in workers:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(60)
    hub.send_signal(signal.SIGTERM)
    hub.wait(30)


def _forget(redis_url: str, namespace: str) -> None:
    """Delete a test's Redis keys (its namespace)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{namespace}*"):
        client.delete(key)


@pytest.mark.slow
def test_kill_9_mid_burst_then_restart_delivers_everything_in_order(database_url: str, tmp_path: Path) -> None:
    receiver = FakeMllpReceiver(delay=0.003).start()
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.format(port=receiver.port))
    env = _hub_env(database_url, routes, tmp_path)
    log = tmp_path / "hub.log"
    hub = _serve(env, log)
    engine = make_engine(database_url)
    since = _last_id(engine)
    try:
        patients = [unique("M") for _ in range(10)]
        frames = [adt(mrn=patients[n % 10], trigger="A08") for n in range(300)]
        acks = asyncio.run(send_all("127.0.0.1", int(env["HUB_MLLP_PORT"]), frames))
        assert all(b"MSA|AA" in a for a in acks)
        deadline = time.monotonic() + 30
        while len(receiver.ids()) < 40 and time.monotonic() < deadline:
            time.sleep(0.005)
        hub.send_signal(signal.SIGKILL)  # mid-delivery (and, most likely, mid-processing)
        hub.wait(10)
        delivered_before = len(receiver.ids())
        assert 40 <= delivered_before < 300, delivered_before

        hub = _serve(env, log)
        states = _outbox_states(engine, since, delivered=300, timeout=60)
        assert states == {"delivered": 300}, states
        with engine.connect() as conn:
            rows = conn.execute(select(outbox.c.id, outbox.c.ordering_key, outbox.c.idempotency_key,
                                       outbox.c.attempts).where(outbox.c.id > since).order_by(outbox.c.id)).all()
            accepted = conn.execute(select(func.count()).select_from(messages).where(
                messages.c.state == "processed", messages.c.id.in_(select(outbox.c.message_id).where(outbox.c.id > since))
            )).scalar_one()
        assert accepted == 300 and len({r.idempotency_key for r in rows}) == 300, "one row per accepted message"
        arrivals = receiver.ids()
        assert set(arrivals) == {r.idempotency_key for r in rows}, "nothing lost"
        assert_per_patient_order(rows, arrivals)
        retried = {r.idempotency_key for r in rows if r.attempts > 1}
        duplicates = {key for key, n in receiver.counts.items() if n > 1}
        assert duplicates <= retried, "a duplicate only where the attempts show a retry"
    finally:
        if hub.poll() is None:
            hub.send_signal(signal.SIGTERM)
            hub.wait(30)
        engine.dispose()
        receiver.stop()


@pytest.mark.slow
@pytest.mark.redis
def test_hub_worker_delivers_what_hub_serve_routes_over_redis(database_url: str, tmp_path: Path) -> None:
    """The deployment shape: `hub serve` with HUB_REDIS_URL only nudges; `hub worker` (dramatiq,
    2 processes) delivers; a worker killed with -9 mid-burst is made up by the others."""
    receiver = FakeMllpReceiver(delay=0.002).start()
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.format(port=receiver.port))
    namespace = unique("hubtest")
    env = _hub_env(database_url, routes, tmp_path, HUB_REDIS_NAMESPACE=namespace, HUB_SWEEP_EVERY="0.5",
                   HUB_REDIS_URL=os.environ.get("HUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    hub = _serve(env, tmp_path / "hub.log")
    workers = [subprocess.Popen([sys.executable, "-m", "hub", "worker", "--processes", "1", "--threads", "2"],
                                cwd=REPO, env=env, stdout=open(tmp_path / f"worker{n}.log", "wb"),
                                stderr=subprocess.STDOUT, start_new_session=True) for n in range(2)]
    engine = make_engine(database_url)
    since = _last_id(engine)
    try:
        patients = [unique("M") for _ in range(8)]
        frames = [adt(mrn=patients[n % 8], trigger="A08") for n in range(200)]
        assert all(b"MSA|AA" in a for a in asyncio.run(send_all("127.0.0.1", int(env["HUB_MLLP_PORT"]), frames)))
        deadline = time.monotonic() + 30
        while len(receiver.ids()) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.killpg(workers[0].pid, signal.SIGKILL)
        states = _outbox_states(engine, since, delivered=200, timeout=60)
        assert states.get("delivered", 0) == 200, (states, (tmp_path / "worker1.log").read_text()[-2000:])
        with engine.connect() as conn:
            rows = conn.execute(select(outbox.c.ordering_key, outbox.c.idempotency_key)
                                .where(outbox.c.id > since).order_by(outbox.c.id)).all()
        assert_per_patient_order(rows, receiver.ids())
    finally:
        _stop(hub, *workers)
        engine.dispose()
        receiver.stop()
        _forget(env["HUB_REDIS_URL"], namespace)


@pytest.mark.slow
@pytest.mark.redis
def test_an_idle_worker_delivers_a_new_message_promptly(database_url: str, tmp_path: Path) -> None:
    """After a quiet spell, a message is delivered within a poll of `hub worker --idle-poll-ms` (50 ms),
    not after dramatiq's idle back-off (up to its 1 s worker timeout: 0.5–1 s once idle for ~2 s)."""
    receiver = FakeMllpReceiver().start()
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.format(port=receiver.port))
    namespace = unique("hubtest")
    env = _hub_env(database_url, routes, tmp_path, HUB_REDIS_NAMESPACE=namespace,
                   HUB_REDIS_URL=os.environ.get("HUB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    hub = _serve(env, tmp_path / "hub.log")
    worker = subprocess.Popen([sys.executable, "-m", "hub", "worker", "--processes", "1", "--threads", "1"],
                              cwd=REPO, env=env, stdout=open(tmp_path / "worker.log", "wb"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    def send_one() -> float:
        """Send a message; seconds from its ACK until the receiver has it."""
        before = len(receiver.ids())
        [ack] = asyncio.run(send_all("127.0.0.1", int(env["HUB_MLLP_PORT"]), [adt(mrn=unique("M"), trigger="A08")]))
        acked = time.monotonic()
        assert b"MSA|AA" in ack
        assert receiver.wait_for(before + 1, timeout=30), (tmp_path / "worker.log").read_text()[-2000:]
        return receiver.received[-1].at - acked

    try:
        send_one()  # the worker has booted
        waits = []
        for _ in range(5):
            time.sleep(2.5)  # quiet: an idle consumer's back-off reaches its cap
            waits.append(send_one())
        assert sum(waits) / len(waits) < 0.2, waits
    finally:
        _stop(hub, worker)
        receiver.stop()
        _forget(env["HUB_REDIS_URL"], namespace)
