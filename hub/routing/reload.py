"""Reload the routes file in a running hub (`hub routes reload`, SIGHUP, `POST /api/routes/reload`)
without dropping a message.

Processing reads the planner once per batch (`hub.delivery.outbox.route_events`) and delivery reads
the destinations once per round, so swapping them is two attribute assignments: a batch in flight
finishes with the routes it started with, the next one uses the new routes, and no message waits
or is lost in between. A file with problems changes nothing: the old routes stay, and the log says
how many problems there are (the texts are for `hub routes check`: they name keys, never values,
but the log is kept to a count). The pid file lets `hub routes reload` find the server.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hub.routing.loader import RoutesError, RoutesProblem, load_routes

log = logging.getLogger("hub.routing")

_lock = threading.Lock()
"""One reload at a time (SIGHUP and the API may ask at once)."""


class Reloadable(Protocol):
    """What a reload swaps (`hub.bootstrap.Hub`): its routes and the planner processing uses."""

    routes: Any
    routing: Any
    settings: Any


@dataclass(frozen=True)
class ReloadOutcome:
    ok: bool
    summary: str = ""
    """`N destinations, M routes` when loaded."""
    problems: list[RoutesProblem] = field(default_factory=list)


def reload_routes(hub: Reloadable, path: Path | None = None) -> ReloadOutcome:
    """Load the routes file again; if it is valid, swap the hub's routes and planner, else keep them.

    A missing or unreadable file is a problem like any other (the routes stay): deleting the file
    by mistake must not stop every delivery."""
    path = path or hub.settings.routes
    with _lock:
        try:
            table = load_routes(path)
        except RoutesError as exc:
            count = len(exc.problems)
            log.error("routes not reloaded: %s has %d problem%s (`hub routes check` lists them); the current "
                      "routes stay", path, count, "" if count == 1 else "s")
            return ReloadOutcome(False, problems=list(exc.problems))
        hub.routes = table  # destinations first: a row planned by the new routes finds its destination
        swap_routes(hub.routing, table)
        if hub.routing.reloaded is not None:
            hub.routing.reloaded(path)
    log.info("routes reloaded from %s: %s", path, table.summary())
    return ReloadOutcome(True, table.summary())


def swap_routes(routing: Any, table: Any) -> None:
    """Processing plans with `table` from now on (None: no routes, no outbox rows)."""
    routing.table = table
    routing.planner = table.plan if table is not None else None


def default_pid_file(data_dir: Path) -> Path:
    return data_dir / "hub.pid"


def write_pid_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n", encoding="ascii")


def remove_pid_file(path: Path) -> None:
    """Remove the pid file if it is still ours (another server may have started since)."""
    try:
        if path.read_text(encoding="ascii").strip() == str(os.getpid()):
            path.unlink()
    except (OSError, ValueError):
        pass


class NoServer(Exception):
    """No running server to signal: the text says why (no pid file, a stale one …)."""


def signal_reload(pid_file: Path) -> int:
    """Send SIGHUP to the process named in the pid file (`hub serve`, or a `hub worker` master,
    which restarts its worker processes with the new file); returns the pid."""
    try:
        pid = int(pid_file.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        raise NoServer(f"no pid file at {pid_file}: is `hub serve` running with this data directory?") from None
    except (OSError, ValueError):
        raise NoServer(f"the pid file {pid_file} cannot be read") from None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise NoServer(f"no process {pid} (a stale pid file {pid_file})") from None
    except PermissionError:
        raise NoServer(f"not allowed to signal process {pid}") from None
    return pid


class FollowedDestinations:
    """The destinations of a routes file, read again when the file changes (dramatiq workers: they
    take no SIGHUP of their own, and a destination the hub's reloaded routes name must not wait for
    a worker restart). Looks at the file's modification time at most every `every` seconds; a
    changed file with problems keeps the destinations in use (the log says how many problems)."""

    def __init__(self, path: Path, every: float = 2.0) -> None:
        self.path = path
        self.every = every
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._stamp = self._mtime()
        table = load_routes(path) if self._stamp is not None else None
        self._destinations: dict[str, Any] = dict(table.destinations) if table is not None else {}

    def __call__(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._checked >= self.every:
            with self._lock:
                if now - self._checked >= self.every:
                    self._checked = now
                    self._follow()
        return self._destinations

    def _mtime(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return None

    def _follow(self) -> None:
        stamp = self._mtime()
        if stamp is None or stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            table = load_routes(self.path)
        except RoutesError as exc:
            log.error("routes not reloaded: %s has %d problem(s); the current destinations stay",
                      self.path, len(exc.problems))
            return
        self._destinations = dict(table.destinations)
        log.info("destinations reloaded from %s: %s", self.path, table.summary())
