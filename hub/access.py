"""The one place patient data is read from, and the permissions endpoints declare.

Every API read of canonical records goes through `PatientData`, so that the audit trail
(a later issue) has a single place to record who saw what. Endpoints declare the
permission they need with `requires(...)`; until authentication lands, every caller is
allowed and the declaration is recorded on the request for the audit hook.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from enum import StrEnum

from fastapi import Request
from sqlalchemy import Engine

from hub.store.history import HistoryItem, history_page
from hub.store.uow import Criterion, RecordRow, RecordVersion, UnitOfWork

log = logging.getLogger("hub.access")


class Permission(StrEnum):
    HEALTH = "health"
    MESSAGE_SUBMIT = "message.submit"
    PATIENT_READ = "patient.read"
    PATIENT_WRITE = "patient.write"
    ADMIN = "admin"
    MPI_REVIEW = "mpi.review"
    """See review tasks and explanations (record and person ids, scores; no patient values)."""
    MPI_STEWARD = "mpi.steward"
    """Change links: link, unlink, merge persons, not-a-match."""
    ROUTES_RELOAD = "routes.reload"
    """Load the routes file again in the running hub (what goes where changes at once)."""


def requires(permission: Permission) -> Callable[[Request], Awaitable[None]]:
    """FastAPI dependency: declares (and, once roles exist, enforces) what an endpoint needs.

    Async on purpose: FastAPI runs a plain `def` dependency on its thread pool, a thread hop per request."""

    async def check(request: Request) -> None:
        request.state.permission = permission

    check.permission = permission  # type: ignore[attr-defined]
    return check


AccessRecorder = Callable[[str, str, Sequence[str]], None]
"""(permission, kind, record ids) → records an access; the audit trail plugs in here."""


def _no_audit(permission: str, kind: str, ids: Sequence[str]) -> None:
    return None


class PatientData:
    def __init__(
        self, engine: Engine, record_access: AccessRecorder = _no_audit, before_read: Callable[[], object] | None = None
    ) -> None:
        self.engine = engine
        self.record_access = record_access
        self.before_read = before_read
        """Read-your-writes: waits until messages already acknowledged have been processed."""

    def get(self, kind: str | None, record_id: str, *, wait: bool = True) -> RecordRow | None:
        """One record (deleted ones too: the caller says 410). `wait=False` right after a write of
        one's own, which is processed already."""
        if self.before_read and wait:
            self.before_read()
        with UnitOfWork(self.engine) as uow:
            row = uow.records.get(record_id, kind)
        self.record_access(Permission.PATIENT_READ, kind, [record_id] if row else [])
        return row

    def search(
        self, kind: str | Sequence[str], criteria: Sequence[Criterion], limit: int, offset: int, sort: str | None = None
    ) -> list[RecordRow]:
        if self.before_read:
            self.before_read()
        with UnitOfWork(self.engine) as uow:
            rows = uow.records.search(kind, criteria, limit, offset, sort=sort)
        self.record_access(Permission.PATIENT_READ, str(kind), [r.id for r in rows])
        return rows

    def count(self, kind: str | Sequence[str], criteria: Sequence[Criterion]) -> int:
        if self.before_read:
            self.before_read()
        with UnitOfWork(self.engine) as uow:
            return uow.records.count(kind, criteria)

    def get_many(self, kind: str, ids: Sequence[str]) -> list[RecordRow]:
        """Records by id (for `_include`), deleted ones left out."""
        with UnitOfWork(self.engine) as uow:
            found = uow.records.get_many(ids)
        rows = [r for r in found.values() if r.kind == kind and not r.deleted]
        self.record_access(Permission.PATIENT_READ, kind, [r.id for r in rows])
        return rows

    def history(self, kind: str, record_id: str) -> tuple[RecordRow | None, list[RecordVersion]]:
        """The current record and its superseded versions, newest first (vread, history)."""
        if self.before_read:
            self.before_read()
        with UnitOfWork(self.engine) as uow:
            row = uow.records.get(record_id, kind)
            versions = uow.records.versions(record_id) if row else []
        self.record_access(Permission.PATIENT_READ, kind, [record_id] if row else [])
        return row, versions

    def history_page(
        self, kinds: Sequence[str], since: datetime | None, limit: int, offset: int, record_id: str | None = None
    ) -> list[HistoryItem]:
        """Versions of every record of these kinds, or of one record, newest first (type, system and
        instance history)."""
        if self.before_read:
            self.before_read()
        with UnitOfWork(self.engine) as uow:
            items = history_page(uow.conn, kinds, since, limit, offset, record_id)
        for kind in {i.row.kind for i in items}:
            self.record_access(Permission.PATIENT_READ, kind, [i.row.id for i in items if i.row.kind == kind])
        return items

    def written(self, kind: str, ids: Sequence[str]) -> None:
        """Records a write (the audit trail sees writes as well as reads)."""
        self.record_access(Permission.PATIENT_WRITE, kind, ids)
