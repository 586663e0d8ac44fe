"""`connections` in the routes file: read by the loader, bounds how many messages the engine has in
flight to a destination (different patients in parallel, one patient's messages in order)."""

from __future__ import annotations

import textwrap

import pytest
from sqlalchemy import Engine

from hub.routing import RoutesError, parse_routes
from hub.store.uow import UnitOfWork, utcnow
from tests.conftest import unique
from tests.integration.delivery_fakes import FakeMllpReceiver, outbound
from tests.integration.test_delivery_engine import (
    by_patient,
    engine_for,
    run_until,
    settled,
)


def routes_with(port: int, extra: str) -> str:
    return textwrap.dedent(f"""\
        destinations:
          ehr: {{transport: mllp, host: 127.0.0.1, port: {port}, profile: ehr, {extra}}}
        routes:
          - {{name: all, to: ehr}}
        """)


def test_connections_default_is_four_and_is_read() -> None:
    assert parse_routes(routes_with(6661, "ordering: per_patient")).destinations["ehr"].connections == 4
    assert parse_routes(routes_with(6661, "connections: 9")).destinations["ehr"].connections == 9


@pytest.mark.parametrize("value", ["0", "-1", "257", "many"])
def test_connections_out_of_range_is_a_problem_naming_the_key(value: str) -> None:
    with pytest.raises(RoutesError) as info:
        parse_routes(routes_with(6661, f"connections: {value}"), "routes.yaml")
    [problem] = info.value.problems
    assert problem.line == 2 and "`connections`" in problem.text and value not in problem.text.replace("256", "")


def test_loaded_connections_bound_messages_in_flight(db: Engine) -> None:
    receiver = FakeMllpReceiver(delay=0.02).start()
    try:
        table = parse_routes(routes_with(receiver.port, "connections: 2, timeout: 2, connect_timeout: 1"))
        dest = table.destinations["ehr"]
        name = unique("D")
        dest = type(dest)(**{**{f: getattr(dest, f) for f in dest.__dataclass_fields__}, "name": name})
        rows = [outbound(name, f"{name}P{p}-{n}", f"P{p}", n) for n in range(4) for p in range(8)]
        with UnitOfWork(db) as uow:
            uow.outbox.add([(None, n, o) for n, o in enumerate(rows)], utcnow())
            uow.commit()
        assert run_until(engine_for(db, dest), name, settled(db, name))
        received = by_patient(receiver)
        assert len(received) == 8 and all(order == [0, 1, 2, 3] for order in received.values()), received
        assert receiver.max_in_flight == 2, "two connections used at once, never more"
    finally:
        receiver.stop()
