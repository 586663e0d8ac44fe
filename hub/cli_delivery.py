"""`hub worker` (dramatiq delivery workers), `hub replay` (resend, replay, dry-run diff) and
`hub outbox prune` (delete old delivered rows)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click


@click.command()
@click.option("--processes", default=1, show_default=True, type=click.IntRange(1, 64), help="worker processes")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 256), help="threads per process")
@click.option("--redis-url", help="HUB_REDIS_URL (required)")
@click.option("--database-url", help="HUB_DATABASE_URL")
@click.option("--routes", type=click.Path(path_type=Path), help="HUB_ROUTES")
@click.option("--pid-file", type=click.Path(dir_okay=False, path_type=Path), help="write the main process id here (health checks)")
@click.option("--idle-poll-ms", default=50, show_default=True, type=click.IntRange(5, 5000),
              help="an idle worker looks for work at least this often (ms)")
def worker(
    processes: int, threads: int, redis_url: str | None, database_url: str | None, routes: Path | None,
    pid_file: Path | None, idle_poll_ms: int,
) -> None:
    """Run dramatiq delivery workers (PROCESSES × THREADS) against HUB_REDIS_URL and the database.

    An idle dramatiq consumer polls Redis with a growing back-off up to its worker timeout (1 s by
    default): a nudge arriving then waited up to a second (measured: p99 300–800 ms from inbound ACK
    to delivery at 500 msg/s). `--idle-poll-ms` caps that wait; each poll is one small Redis script."""
    env = dict(os.environ, dramatiq_worker_timeout=str(idle_poll_ms))
    for name, value in (("HUB_REDIS_URL", redis_url), ("HUB_DATABASE_URL", database_url), ("HUB_ROUTES", routes)):
        if value is not None:
            env[name] = str(value)
    if not env.get("HUB_REDIS_URL"):
        raise click.UsageError("workers need Redis: set HUB_REDIS_URL or --redis-url (without it, `hub serve` delivers)")
    from hub.jobs import QUEUE

    argv = [sys.executable, "-m", "dramatiq", "hub.jobs", "--processes", str(processes), "--threads", str(threads),
            "--queues", QUEUE]
    if pid_file is not None:
        argv += ["--pid-file", str(pid_file)]
    os.execvpe(sys.executable, argv, env)


@click.command()
@click.option("--message", "message_id", type=int, help="re-run this stored inbound message through the current routes")
@click.option("--outbox", "outbox_id", type=int, help="re-send this stored outbound row")
@click.option("--to", "destination", help="only / instead: this destination")
@click.option("--dry-run", is_flag=True, help="send nothing: print what would be sent and a diff against what was sent before")
@click.option("--database-url", help="HUB_DATABASE_URL")
@click.option("--routes", type=click.Path(path_type=Path), help="HUB_ROUTES")
def replay(message_id: int | None, outbox_id: int | None, destination: str | None, dry_run: bool,
           database_url: str | None, routes: Path | None) -> None:
    """Resend a stored outbound row, or replay a stored inbound message through the current routes.

    The rows are queued in the outbox; a running hub (or `hub worker`) delivers them."""
    if (message_id is None) == (outbox_id is None):
        raise click.UsageError("give exactly one of --message ID or --outbox ID")
    from hub.bootstrap import build
    from hub.delivery.outbox import RoutingUnitOfWork
    from hub.delivery.replay import ReplayError, rebuilder, resend
    from hub.delivery.replay import replay as run_replay
    from hub.settings import Settings
    from hub.store.migrate import upgrade

    overrides = {k: v for k, v in (("database_url", database_url), ("routes", routes)) if v is not None}
    hub = build(Settings(**overrides))
    upgrade(hub.engine)
    try:
        with RoutingUnitOfWork(hub.engine, hub.routing) as uow:
            if outbox_id is not None:
                if dry_run:
                    row = uow.outbox.get(outbox_id)
                    if row is None:
                        raise ReplayError(404, "no such outbox row")
                    click.echo(f"would send outbox/{row.id} ({row.summary}) to {destination or row.destination}:")
                    click.echo(_printable(row.payload))
                    return
                row = resend(uow, outbox_id, hub.destinations(), destination, rebuilder(hub.readers, hub.routing.planner))
                uow.commit()
                click.echo(f"outbox/{row.id} queued for {row.destination} ({row.summary})")
                return
            assert message_id is not None
            planned = run_replay(uow, hub.readers, hub.routing.planner, message_id, destination, dry_run)
            if not dry_run:
                uow.commit()
    except ReplayError as exc:
        click.echo(f"error: {exc.text}", err=True)
        sys.exit(1)
    finally:
        hub.engine.dispose()
    if not planned:
        click.echo("the current routes send nothing for this message")
    for p in planned:
        o = p.outbound
        if dry_run:
            click.echo(f"=== would send to {o.destination} via {o.route}: {o.summary} ({o.idempotency_key})")
            click.echo(_printable(o.payload))
            if p.previous is not None and not p.diff:
                click.echo(f"(identical to outbox/{p.previous.id}, sent before)")
            else:
                click.echo(p.diff, nl=False)
        else:
            click.echo(f"outbox/{p.queued_as} queued for {o.destination} via {o.route}: {o.summary}")


@click.group()
def outbox() -> None:
    """The outbox (delivery rows)."""


@outbox.command("prune")
@click.option("--delivered-older-than", "delivered_days", required=True, type=click.FloatRange(min=0), metavar="DAYS",
              help="delete rows delivered more than DAYS ago")
@click.option("--dead-older-than", "dead_days", type=click.FloatRange(min=0), metavar="DAYS",
              help="also delete dead rows written more than DAYS ago (dead rows are kept without it)")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100_000), help="rows per transaction")
@click.option("--database-url", help="HUB_DATABASE_URL")
def outbox_prune(delivered_days: float, dead_days: float | None, batch: int, database_url: str | None) -> None:
    """Delete old delivered rows (and, with --dead-older-than, old dead ones) with their attempts,
    a batch per transaction. Pending, sending and skipped rows are never deleted; that a destination
    was sent something about a patient is kept (link-change notices still find it)."""
    from datetime import timedelta

    from hub.settings import Settings
    from hub.store.engine import make_engine
    from hub.store.migrate import upgrade
    from hub.store.outbox import prune_outbox
    from hub.store.uow import utcnow

    settings = Settings(**({"database_url": database_url} if database_url else {}))
    engine = make_engine(settings.database)
    try:
        upgrade(engine)
        dead = timedelta(days=dead_days) if dead_days is not None else None
        pruned = prune_outbox(engine, utcnow(), timedelta(days=delivered_days), dead, batch)
    finally:
        engine.dispose()
    click.echo(f"pruned {pruned.delivered} delivered row(s), {pruned.dead} dead row(s)")


def _printable(payload: bytes) -> str:
    return payload.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")
