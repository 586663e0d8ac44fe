"""The garbage collector in long-running processes (`hub serve`, its processing process, `hub import-csv`)."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Once a long-running process is set up: what it made at start (modules, schemas, the MPI model, the
    route table) lives until it exits, so the cyclic garbage collector stops scanning it; its full
    collections — pauses of the whole process — then scan only what was made since. Measured
    (`bench/delivery_throughput.py`, SQLite, 500 msg/s, five pairs): ACK→delivery p99 74–82 → 43–62 ms,
    ACK p99 27–31 → 20–26 ms, CPU unchanged."""
    gc.collect()
    gc.freeze()
