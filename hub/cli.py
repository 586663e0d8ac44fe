"""`hub` command line: serve, db upgrade, ingest (file drop), import-csv, send (an MLLP client), reindex."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click

from hub.settings import Settings


def _settings(**overrides: object) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@click.group()
def main() -> None:
    """HL7 v2 / FHIR / CSV integration hub."""


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), help="HUB_DATA_DIR")
@click.option("--database-url", help="HUB_DATABASE_URL")
@click.option("--http-host", help="HUB_HTTP_HOST")
@click.option("--http-port", type=int, help="HUB_HTTP_PORT")
@click.option("--mllp-host", help="HUB_MLLP_HOST")
@click.option("--mllp-port", type=int, help="HUB_MLLP_PORT")
@click.option("--mllp-ack-mode", type=click.Choice(["original", "enhanced"]), help="HUB_MLLP_ACK_MODE")
@click.option("--mllp-max-frame-bytes", type=int, help="HUB_MLLP_MAX_FRAME_BYTES")
@click.option("--mllp-idle-timeout", type=float, help="HUB_MLLP_IDLE_TIMEOUT (seconds)")
@click.option("--redis-url", help="HUB_REDIS_URL")
@click.option("--routes", type=click.Path(path_type=Path), help="HUB_ROUTES")
@click.option("--pid-file", type=click.Path(dir_okay=False, path_type=Path), help="HUB_PID_FILE (default <data dir>/hub.pid)")
def serve(**options: object) -> None:
    """Run the HTTP API and the MLLP listener (applies database migrations first)."""
    from hub.bootstrap import build, serve as run
    from hub.heap import freeze_startup_objects

    settings = _settings(**options)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hub = build(settings)
    freeze_startup_objects()
    asyncio.run(run(hub))


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--database-url", help="HUB_DATABASE_URL")
def db_upgrade(database_url: str | None) -> None:
    """Apply all pending migrations."""
    from hub.store.engine import make_engine
    from hub.store.migrate import upgrade

    settings = _settings(database_url=database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(make_engine(settings.database))
    click.echo("database is at the latest schema")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--database-url", help="HUB_DATABASE_URL")
def ingest(files: tuple[Path, ...], database_url: str | None) -> None:
    """Ingest HL7 v2 files (one message, several, or FHS/BHS batches) through the pipeline."""
    from hub.bootstrap import build
    from hub.store.migrate import upgrade

    hub = build(_settings(database_url=database_url))
    upgrade(hub.engine)
    counts: dict[str, int] = {}

    async def run() -> None:
        await hub.intake.start()
        try:
            for path in files:
                for answer in await hub.http_door.with_feed("file").answer_all(path.read_bytes()):
                    counts[answer.code] = counts.get(answer.code, 0) + 1
                    click.echo(f"{path.name}: {answer.code}")
            await hub.intake.drain()
        finally:
            await hub.intake.stop()

    asyncio.run(run())
    click.echo(" ".join(f"{code}={n}" for code, n in sorted(counts.items())), err=True)
    sys.exit(0 if set(counts) <= {"AA"} else 1)


@main.command("import-csv")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--mapping", "mapping_ref", required=True, help="a mapping file (YAML), or the name of one in mappings/csv/")
@click.option("--encoding", help="the file's encoding (default UTF-8, with or without BOM; e.g. latin-1)")
@click.option("--delimiter", help="',', ';', '|' or 'tab' (default: detected from the header line)")
@click.option("--rejects", "rejects_path", type=click.Path(dir_okay=False, path_type=Path), help="report file (default FILE.rejects.csv)")
@click.option("--chunk-rows", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--progress-every", default=5.0, show_default=True, type=float, help="seconds between plain progress lines (not a terminal)")
@click.option("--database-url", help="HUB_DATABASE_URL")
@click.option("--defer-search-index/--keep-search-index", default=None,
              help="build the search index once after the load instead of row by row "
                   "(default: when the file brings at least 50,000 rows and as many as the records stored)")
def import_csv(
    file: Path, mapping_ref: str, encoding: str | None, delimiter: str | None, rejects_path: Path | None,
    chunk_rows: int, progress_every: float, database_url: str | None, defer_search_index: bool | None,
) -> None:
    """Import a CSV file with a mapping through the pipeline; bad rows go to the report file."""
    from hub.cli_csv import run_import

    settings = _settings(database_url=database_url)
    sys.exit(run_import(file, mapping_ref, encoding, delimiter, rejects_path, chunk_rows, settings, progress_every,
                        defer_search_index))


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=2575, show_default=True, type=int, envvar="HUB_MLLP_PORT",
              help="the hub's MLLP port (HUB_MLLP_PORT, as `hub serve` reads it)")
@click.option("--timeout", default=30.0, show_default=True, type=float)
def send(files: tuple[Path, ...], host: str, port: int, timeout: float) -> None:
    """Send HL7 v2 files over MLLP and print each ACK code (MSA-1)."""
    from adapters.inbound.hl7v2.service import split_batch
    from adapters.transport.mllp import MllpClient

    async def run() -> bool:
        ok = True
        async with MllpClient(host, port, timeout) as client:
            for path in files:
                for message in split_batch(path.read_bytes()):
                    ack = await client.send(message.replace(b"\r\n", b"\r").replace(b"\n", b"\r"))
                    code = _ack_code(ack)
                    ok &= code in ("AA", "CA")
                    click.echo(f"{path.name}: {code}")
        return ok

    sys.exit(0 if asyncio.run(run()) else 1)


@main.group()
def routes() -> None:
    """Routes and destinations (the routes file, HUB_ROUTES)."""


@routes.command("check")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
def routes_check(file: Path | None) -> None:
    """Check a routes file (default HUB_ROUTES): exit 0 with a summary, or 2 with every problem (file:line)."""
    from hub.routing import RoutesError, load_routes

    path = file or _settings().routes
    try:
        table = load_routes(path)
    except RoutesError as exc:
        for problem in exc.problems:
            click.echo(str(problem))
        click.echo(f"{path}: {len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''}", err=True)
        sys.exit(2)
    click.echo(f"{path}: ok, {table.summary()}")


def _ack_code(ack: bytes) -> str:
    for segment in ack.replace(b"\n", b"\r").split(b"\r"):
        if segment.startswith(b"MSA"):
            return segment[4:6].decode("ascii", errors="replace")
    return "??"


from hub.cli_mpi import mpi  # noqa: E402 — `hub mpi …` (master patient index)

main.add_command(mpi)

from hub.cli_delivery import outbox, replay, worker  # noqa: E402 — `hub worker`, `hub replay`, `hub outbox`

main.add_command(worker)
main.add_command(replay)
main.add_command(outbox)

from hub.cli_routes import routes_reload  # noqa: E402 — `hub routes reload` (SIGHUP to the server)

routes.add_command(routes_reload)

from hub.cli_reindex import reindex_command  # noqa: E402 — `hub reindex` (search index from stored records)

main.add_command(reindex_command)
