"""`hub import-csv`: the CSV door driven from the command line, through the same core as every door.

Output carries no patient data: the summary and progress name counts only; reject reasons name
columns. The report file (`FILE.rejects.csv` or `--rejects`) is the user's own data, written next
to their file: line, kind (rejected/warning), column, reason, and the raw row for rejects.
Exit code 0 when the file was processed (even with rejects), 1 when it could not be.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gc
import logging
import sys
import time
from pathlib import Path
from typing import TextIO

import click

from adapters.inbound.csv.mapping import Mapping, MappingError, check_delimiter, check_encoding, find_by_name, load_mapping
from adapters.inbound.csv.reader import CsvFileError
from adapters.inbound.csv.service import ReportEntry, Summary, import_csv
from hub.settings import Settings

log = logging.getLogger("hub.csv")
PLAIN_EVERY_SECONDS = 5.0


def resolve_mapping(ref: str) -> Mapping:
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise MappingError(f"{ref}: no such mapping file")
        return load_mapping(path)
    mapping = find_by_name(ref)
    if mapping is None:
        raise MappingError(f"{ref}: no such mapping file, nor a mapping of that name in mappings/csv/")
    return mapping


class Report:
    """The reject/warning report, written as rows arrive (nothing kept in memory). Always written
    (header only when the file was clean), so a report left by an earlier run never misleads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = None
        self._writer: csv.writer | None = None  # type: ignore[valid-type]
        self.entries = 0

    def open(self) -> None:
        self._file = open(self.path, "w", encoding="utf-8", newline="")  # noqa: SIM115
        self._writer = csv.writer(self._file)
        self._writer.writerow(["line", "kind", "column", "reason", "row"])

    def add(self, entry: ReportEntry) -> None:
        if self._writer is None:
            self.open()
        self.entries += 1
        row = entry.raw.decode("utf-8", errors="replace").rstrip("\r\n") if entry.raw else ""
        self._writer.writerow([entry.line, entry.kind, entry.column or "", entry.reason, row])

    def close(self, processed: bool) -> None:
        if self._file is None and processed:
            self.open()
        if self._file is not None:
            self._file.close()


class Progress:
    """A rich progress bar (rows, rows/s, ETA from the bytes read) on a terminal; plain lines otherwise."""

    def __init__(self, total_bytes: int, stream: TextIO = sys.stderr, every: float = PLAIN_EVERY_SECONDS) -> None:
        self.total = total_bytes
        self.every = every
        self.stream = stream
        self.tty = stream.isatty()
        self._last_plain = time.monotonic()
        self._bar = None
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            self._bar = RichProgress(
                TextColumn("[bold]import-csv"), BarColumn(), TextColumn("{task.fields[rows]:>10,} rows"),
                TextColumn("{task.fields[rate]:>8,.0f} rows/s"), TimeRemainingColumn(),
                console=Console(file=stream), transient=False,
            )
            self._task = self._bar.add_task("import", total=total_bytes or None, rows=0, rate=0.0)
            self._bar.start()

    def update(self, summary: Summary, position: int) -> None:
        rate = summary.rows_read / summary.seconds if summary.seconds else 0.0
        if self._bar is not None:
            self._bar.update(self._task, completed=position, rows=summary.rows_read, rate=rate)
            return
        now = time.monotonic()
        if now - self._last_plain >= self.every:
            self._last_plain = now
            pct = f" ({100 * position / self.total:.0f} %)" if self.total else ""
            print(f"import-csv: {summary.rows_read} rows{pct}, {rate:,.0f} rows/s", file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def run_import(
    file: Path, mapping_ref: str, encoding: str | None, delimiter: str | None, rejects_path: Path | None,
    chunk_rows: int, settings: Settings, progress_every: float = PLAIN_EVERY_SECONDS,
    defer_search_index: bool | None = None,
) -> int:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        mapping = resolve_mapping(mapping_ref)
        encoding = check_encoding(encoding, "--encoding") if encoding else None
        delimiter = check_delimiter(delimiter, "--delimiter") if delimiter else None
    except MappingError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    from hub.bootstrap import build
    from hub.heap import freeze_startup_objects
    from hub.store.deferred import indexes_built_after, worth_deferring
    from hub.store.migrate import upgrade

    report = Report(rejects_path or file.with_name(file.name + ".rejects.csv"))
    try:
        hub = build(settings, bulk_load=True)
        upgrade(hub.engine)
        if defer_search_index is None:
            defer_search_index = worth_deferring(hub.engine, _estimated_rows(file))
        # A batch process that allocates millions of short-lived objects without cycles: the cyclic
        # GC's full scans cost ~30 % of mapping time at the default thresholds. Freeze what startup
        # made and collect the young generation less often (memory stays flat: refcounting frees rows).
        freeze_startup_objects()
        gc.set_threshold(50_000, 20, 100)
    except Exception as exc:  # noqa: BLE001 — only the class: driver messages can quote values
        click.echo(f"error: the database is not usable ({type(exc).__name__})", err=True)
        return 1

    async def run() -> Summary:
        await hub.intake.start()
        try:
            with open(file, "rb") as stream:
                progress = Progress(file.stat().st_size, every=progress_every)
                try:
                    return await import_csv(
                        stream, mapping, hub.intake.accept, encoding=encoding, delimiter=delimiter,
                        chunk_rows=chunk_rows, report=report.add,
                        progress=lambda s: progress.update(s, _tell(stream)),
                        wait_processed=hub.intake.wait_until_processed,
                    )
                finally:
                    progress.close()
        finally:
            await hub.intake.drain()
            await hub.intake.stop()

    summary = None
    try:
        with indexes_built_after(hub.engine) if defer_search_index else contextlib.nullcontext():
            summary = asyncio.run(run())
            loaded = time.monotonic()
    except CsvFileError as exc:
        click.echo(f"error: {file.name} cannot be processed: {exc}", err=True)
        return 1
    except OSError as exc:
        click.echo(f"error: {file.name} cannot be read ({type(exc).__name__})", err=True)
        return 1
    finally:
        report.close(processed=summary is not None)
        hub.engine.dispose()
    click.echo(f"{file.name}: {summary.line()}")
    if defer_search_index:
        click.echo(f"search index built after the load ({time.monotonic() - loaded:.1f} s)")
    click.echo(f"report ({report.entries} rejects and warnings): {report.path}")
    if summary.not_stored:
        click.echo(f"error: {summary.not_stored} rows could not be stored", err=True)
        return 1
    return 0


def _estimated_rows(file: Path, sample_bytes: int = 1 << 20) -> int:
    """Rows in the file, from the line length of its first megabyte."""
    with open(file, "rb") as stream:
        sample = stream.read(sample_bytes)
    lines = sample.count(b"\n")
    return file.stat().st_size * lines // len(sample) if lines else 0


def _tell(stream) -> int:  # type: ignore[no-untyped-def]
    try:
        return stream.tell()
    except (OSError, ValueError):
        return 0
