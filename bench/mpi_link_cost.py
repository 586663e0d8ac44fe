"""Cost of the pipeline's match step per patient record, and what it decided, on a real database.

Synthetic records (`bench/mpi_synth.py`) are written as patient records in batches, as processing
would, and each batch is linked with `hub.mpi.service.link_batch` in the same transaction. Prints
milliseconds per record for the match step alone and the pairwise precision/recall of the links it
made (same person ↔ same enterprise id).

    python -m bench.mpi_link_cost [--persons 5000] [--batch 200] [--postgres | --database-url URL]

`--postgres` runs on a fresh database on the test server (dropped afterwards).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path

from sqlalchemy import select

from bench.mpi_synth import generate
from hub.mpi import service
from hub.mpi.service import link_batch
from hub.store.engine import make_engine
from hub.store.migrate import upgrade
from hub.store.mpi import links
from hub.store.uow import RecordChanges, RecordRow, UnitOfWork


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--persons", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--database-url")
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--max-scored", type=int, help="override hub.mpi.service.MAX_SCORED (to measure the cut)")
    parser.add_argument("--large-block", type=int, help="override hub.mpi.service.LARGE_BLOCK (to measure the rule)")
    args = parser.parse_args()
    if args.max_scored:
        service.MAX_SCORED = args.max_scored
    if args.large_block:
        service.LARGE_BLOCK = args.large_block
    if args.postgres:
        from tests.conftest import create_postgres_database, drop_postgres_database

        url = create_postgres_database()
        try:
            run(args, url)
        finally:
            drop_postgres_database(url)
        return
    run(args, args.database_url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'mpi.db'}")


def run(args: argparse.Namespace, url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    data = generate(args.persons, args.seed)
    truth: dict[str, int] = {}
    spent = cpu = 0.0
    for start in range(0, len(data.records), args.batch):
        at = datetime.now(UTC)
        rows = []
        for rec in data.records[start : start + args.batch]:
            row_id = str(uuid.uuid4())
            truth[row_id] = rec.person_id
            rows.append(RecordRow(row_id, "patient", f"urn:hub:{rec.feed.lower()}", f"{rec.record_id}", None, 1, True,
                                  rec.patient.model_dump(mode="json", exclude_none=True), rec.feed.lower(), None, at, at))
        with UnitOfWork(engine) as uow:
            changes = RecordChanges(inserted=rows)
            uow.records.write(changes)
            began, began_cpu = time.perf_counter(), time.process_time()
            link_batch(uow, changes, (), at)  # as processing calls it
            spent += time.perf_counter() - began
            cpu += time.process_time() - began_cpu
            uow.commit()
    with engine.connect() as conn:
        person_of = dict(conn.execute(select(links.c.record_id, links.c.person_id)).all())
    clusters: dict[str, list[str]] = defaultdict(list)
    for record_id, person in person_of.items():
        clusters[person].append(record_id)
    linked_pairs = {frozenset(p) for members in clusters.values() for p in combinations(members, 2)}
    by_truth: dict[int, list[str]] = defaultdict(list)
    for record_id, person in truth.items():
        by_truth[person].append(record_id)
    true_pairs = {frozenset(p) for members in by_truth.values() for p in combinations(members, 2)}
    hit = len(linked_pairs & true_pairs)
    print(f"{len(truth)} records of {args.persons} persons, batches of {args.batch}, {engine.dialect.name}, "
          f"MAX_SCORED {service.MAX_SCORED}, LARGE_BLOCK {service.LARGE_BLOCK}")
    print(f"match step: {spent * 1000 / len(truth):.2f} ms per record ({spent:.1f} s); this process's CPU "
          f"{cpu * 1000 / len(truth):.2f} ms per record (less sensitive to a loaded machine; excludes the server's)")
    print(f"pairwise precision {hit / max(len(linked_pairs), 1):.4f}, recall {hit / max(len(true_pairs), 1):.4f}; "
          f"{len(clusters)} persons")


if __name__ == "__main__":
    main()
