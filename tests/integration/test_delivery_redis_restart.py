"""Redis killed and restarted (empty) in the middle of a burst, with `hub serve` nudging over it and a
`hub worker` delivering: every accepted message is still delivered, in per-patient order, none
lost — the outbox holds the work, the workers' sweep makes up the nudges Redis lost."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from adapters.transport.mllp import send_all
from hub.store.engine import make_engine
from hub.store.outbox import outbox
from tests.conftest import adt, free_port, unique
from tests.integration.delivery_fakes import FakeMllpReceiver, assert_per_patient_order
from tests.integration.test_delivery_crash import (
    REPO,
    ROUTES,
    _hub_env,
    _last_id,
    _outbox_states,
    _serve,
    _stop,
)


class PrivateRedis:
    """A redis-server of this test's own on a free port, without persistence: a restart is empty."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url, socket_timeout=0.5).ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@pytest.mark.slow
@pytest.mark.redis
def test_redis_restart_mid_burst_loses_nothing_and_keeps_order(database_url: str, tmp_path: Path) -> None:
    receiver = FakeMllpReceiver(delay=0.003).start()
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.format(port=receiver.port))
    server = PrivateRedis(tmp_path / "redis.log").start()
    env = _hub_env(database_url, routes, tmp_path, HUB_REDIS_URL=server.url, HUB_REDIS_NAMESPACE=unique("hubtest"),
                   HUB_SWEEP_EVERY="0.5", dramatiq_restart_delay="500")
    hub = _serve(env, tmp_path / "hub.log")
    worker = subprocess.Popen([sys.executable, "-m", "hub", "worker", "--processes", "1", "--threads", "2"],
                              cwd=REPO, env=env, stdout=open(tmp_path / "worker.log", "wb"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    engine = make_engine(database_url)
    since = _last_id(engine)
    try:
        patients = [unique("M") for _ in range(10)]
        frames = [adt(mrn=patients[n % 10], trigger="A08") for n in range(400)]
        acks: list[bytes] = []
        sender = threading.Thread(
            target=lambda: acks.extend(asyncio.run(send_all("127.0.0.1", int(env["HUB_MLLP_PORT"]), frames))))
        sender.start()
        deadline = time.monotonic() + 60
        while len(receiver.ids()) < 30 and time.monotonic() < deadline:
            time.sleep(0.005)
        server.kill()  # mid-burst: queued nudges are gone, and nudging fails until it is back
        at_kill = len(receiver.ids())
        time.sleep(1.5)
        server.start()  # same port, empty
        sender.join(60)
        assert len(acks) == 400 and all(b"MSA|AA" in a for a in acks)
        assert at_kill < 400, "Redis went down before the burst was delivered"

        states = _outbox_states(engine, since, delivered=400, timeout=90)
        assert states == {"delivered": 400}, (states, (tmp_path / "worker.log").read_text()[-3000:])
        with engine.connect() as conn:
            rows = conn.execute(select(outbox.c.ordering_key, outbox.c.idempotency_key, outbox.c.attempts)
                                .where(outbox.c.id > since).order_by(outbox.c.id)).all()
        assert set(receiver.ids()) == {r.idempotency_key for r in rows}, "nothing lost"
        assert_per_patient_order(rows, receiver.ids())
        duplicates = {key for key, n in receiver.counts.items() if n > 1}
        assert duplicates <= {r.idempotency_key for r in rows if r.attempts > 1}
    finally:
        _stop(hub, worker)
        server.kill()
        engine.dispose()
        receiver.stop()
