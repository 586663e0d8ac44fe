"""Indexes a bulk load builds once at the end instead of row by row.

The search index's lookup B-tree (`ix_record_index_lookup`: kind, param, value) takes about ten
inserts for every patient record, each into a random page of it; at hundreds of thousands of records
those pages are most of what a bulk import's commits write, and the cost per row keeps growing with
the table. Built after the load from rows sorted once, it costs a fraction of that (measured in
docs/benchmarks.md). Nothing else reads it while records are written: processing finds records by
their source key and ids; searches during the load still answer, by scanning instead.

A load killed before its end leaves the index missing: `restore` (run by every `upgrade`, so by the
next `hub serve` or import) builds it again. A hub started while a load runs builds it at once too: the
load goes on, slower, never wrong. On PostgreSQL the build blocks writes to the search index while it
runs (seconds per hundred thousand records): a hub serving beside the import waits that long to process.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from sqlalchemy import Engine, Index, func, inspect, select

from hub.store.tables import record_index, records

log = logging.getLogger("hub.store")

DEFERRABLE: tuple[Index, ...] = tuple(i for i in record_index.indexes if i.name == "ix_record_index_lookup")
WORTH_IT_FROM = 50_000
"""Rows a load must bring (and at least as many as the records already stored) for a rebuild to cost
less than inserting into the index as it is."""


def worth_deferring(engine: Engine, incoming_rows: int) -> bool:
    """Rebuilding reads every index row, old ones too: only a load that at least doubles the records gains."""
    if incoming_rows < WORTH_IT_FROM:
        return False
    with engine.connect() as conn:
        return incoming_rows >= conn.execute(select(func.count()).select_from(records)).scalar_one()


@contextlib.contextmanager
def indexes_built_after(engine: Engine) -> Iterator[None]:
    """Drop the deferrable indexes for the block and build them after it (also when it raises)."""
    with engine.begin() as conn:
        for index in DEFERRABLE:
            index.drop(conn, checkfirst=True)
    try:
        yield
    finally:
        restore(engine)


def restore(engine: Engine) -> None:
    """Build every deferrable index that is missing (a load that did not finish)."""
    with engine.begin() as conn:
        present = {i["name"] for i in inspect(conn).get_indexes(record_index.name)}
        for index in DEFERRABLE:
            if index.name not in present:
                started = time.monotonic()
                index.create(conn)
                log.info("index %s built in %.1f s", index.name, time.monotonic() - started)
