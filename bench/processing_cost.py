"""What processing (map → match → route) costs per HL7 v2 message, apart from the door.

Invented ADT^A08/ORU^R01 messages (the generator of `mllp_throughput.py`) are stored as the MLLP door
stores them, then processed in slices as the hub's writer does (`process_pending`), with the minimal
routes file and without routes. The baseline, in the same run, is storing the same messages (the door's
work). Prints milliseconds of wall and CPU time per message for each stage.

    python bench/processing_cost.py [--n 3000] [--slice 50] [--db sqlite|postgres] [--oru 0.3]

Run it under `py-spy record -o profile.svg -- python bench/processing_cost.py` to see where time goes.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from mllp_throughput import adt_message, make_patients, oru_message  # noqa: E402

from adapters.inbound.hl7v2.reader import read_message  # noqa: E402
from hub.delivery.outbox import Routing, RoutingUnitOfWork  # noqa: E402
from hub.pipeline import process_pending, store_batch  # noqa: E402
from hub.routing import load_routes  # noqa: E402
from hub.store.engine import make_engine  # noqa: E402
from hub.store.migrate import upgrade  # noqa: E402


def messages(n: int, oru_share: float, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    patients = make_patients(max(1, int(n * 0.8)), rng)
    moment = datetime(2026, 11, 1, 8, 0, tzinfo=timezone.utc)
    out = []
    for i in range(n):
        patient = rng.choice(patients)
        control = f"P{i:08d}"
        text = oru_message(patient, control, moment, rng) if rng.random() < oru_share else adt_message(patient, "A08", control, moment, rng)
        out.append(text.encode())
    return out


def timed(work: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def run(url: str, raw: list[bytes], slice_size: int, routes: Path | None) -> dict[str, tuple[float, float]]:
    engine = make_engine(url)
    upgrade(engine)
    table = load_routes(routes) if routes else None
    uow = partial(RoutingUnitOfWork, engine, Routing(planner=table.plan if table else None, table=table))
    read = {"hl7v2": read_message}

    def store() -> None:
        for start in range(0, len(raw), 20):  # the door's group commits are a few frames each
            store_batch(uow, [read_message(m, "mllp") for m in raw[start : start + 20]])

    def process() -> None:
        while process_pending(uow, read, limit=slice_size) is not None:
            pass

    result = {"store (door, baseline)": timed(store), "process": timed(process)}
    engine.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--slice", type=int, default=50)
    parser.add_argument("--oru", type=float, default=0.3, help="share of ORU^R01 among the messages")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--routes", default=str(ROOT / "mappings" / "routes.yaml"))
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    raw = messages(args.n, args.oru, args.seed)
    for label, routes in (("with routes", Path(args.routes)), ("without routes", None)):
        if args.db == "postgres":
            from tests.conftest import create_postgres_database, drop_postgres_database

            url = create_postgres_database()
            try:
                result = run(url, raw, args.slice, routes)
            finally:
                drop_postgres_database(url)
        else:
            result = run(f"sqlite:///{Path(tempfile.mkdtemp()) / 'hub.db'}", raw, args.slice, routes)
        for stage, (wall, cpu) in result.items():
            print(f"{args.db} {label:15} {stage:24} {wall * 1000 / len(raw):6.2f} ms/msg wall "
                  f"{cpu * 1000 / len(raw):6.2f} ms/msg CPU  ({len(raw) / wall:,.0f} msg/s)")


if __name__ == "__main__":
    main()
