"""Alembic environment: the engine comes from `hub.store.migrate`, never from an ini file."""

from alembic import context

import hub.store.mpi  # noqa: F401 — each table module adds its tables to the one metadata: without these,
import hub.store.outbox  # noqa: F401 — `alembic revision --autogenerate` would propose dropping them
from hub.store.tables import metadata

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
