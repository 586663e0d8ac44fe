"""`hub routes reload`: ask a running `hub serve` (or a `hub worker` master) to load the routes again."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("reload")
@click.option("--pid-file", type=click.Path(dir_okay=False, path_type=Path),
              help="the server's pid file (default HUB_PID_FILE, else <HUB_DATA_DIR>/hub.pid); a `hub worker "
                   "--pid-file` restarts its worker processes with the new routes")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="HUB_DATA_DIR")
def routes_reload(pid_file: Path | None, data_dir: Path | None) -> None:
    """Send SIGHUP to the running hub: it loads its routes file again and uses it from its next batch
    on (no message is dropped). A file with problems is not used: check it first here (exit 2)."""
    from hub.routing import RoutesError, load_routes
    from hub.routing.reload import NoServer, default_pid_file, signal_reload
    from hub.settings import Settings

    settings = Settings(**({"data_dir": data_dir} if data_dir is not None else {}))
    try:
        load_routes(settings.routes)
    except RoutesError as exc:
        for problem in exc.problems:
            click.echo(str(problem))
        click.echo(f"{settings.routes}: {len(exc.problems)} problem(s); not reloaded", err=True)
        sys.exit(2)
    target = pid_file or settings.pid_file or default_pid_file(settings.data_dir)
    try:
        pid = signal_reload(target)
    except NoServer as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"asked process {pid} to reload {settings.routes} (its log says when it has)")
